// Constant-time check of the compiled library, run under valgrind's memcheck (the ctgrind
// method): secret values are marked as undefined memory, so memcheck reports every
// conditional jump and every memory address that depends on them, in the code the library
// actually runs (the release build's scalar path where the CPU has AVX-512, which valgrind
// hides from the CPU checks; its AVX2 kernels where the CPU has only AVX2).
//
//   valgrind --error-exitcode=1 fheprune_ct_check      (ctest: constant_time)
//
// Checked: the samplers' per-sample maps (Gaussian errors, ternary secrets), the signed lift of
// secret and error coefficients, and key generation (public, relinearization, Galois keys),
// encryption and decryption with a secret key marked secret. Outputs are marked defined again
// before anything public uses them. Without valgrind the program just runs the same code.
#include <valgrind/memcheck.h>

#include <cstdio>
#include <cstdint>
#include <vector>

#include "ckks/context_tables.hpp"
#include "ckks/modarith.hpp"
#include "ckks/random.hpp"
#include "fheprune/ckks/ckks.hpp"

namespace ck = fheprune::ckks;

namespace {

template <class T>
void secret(T* data, std::size_t count) {
  VALGRIND_MAKE_MEM_UNDEFINED(data, count * sizeof(T));
}
template <class T>
void published(const T* data, std::size_t count) {
  VALGRIND_MAKE_MEM_DEFINED(data, count * sizeof(T));
}

}  // namespace

int main() {
  ck::SecureRandom rng;
  constexpr std::size_t kSamples = 4096;

  // Samplers: the random bits become the secret.
  std::vector<ck::u64> bits(kSamples);
  rng.fill(reinterpret_cast<unsigned char*>(bits.data()), bits.size() * sizeof(ck::u64));
  secret(bits.data(), bits.size());
  std::vector<std::int64_t> errors(kSamples);
  for (std::size_t i = 0; i < kSamples; ++i) errors[i] = ck::SecureRandom::gaussian_from_bits(bits[i]);

  std::vector<unsigned char> bytes(kSamples);
  rng.fill(bytes.data(), bytes.size());
  for (auto& b : bytes) b = static_cast<unsigned char>(b % 255);  // the accepted bytes
  secret(bytes.data(), bytes.size());
  std::vector<std::int8_t> ternary(kSamples);
  for (std::size_t i = 0; i < kSamples; ++i) ternary[i] = ck::SecureRandom::ternary_from_byte(bytes[i]);

  // Secret and error coefficients to residues.
  const ck::u64 q = (ck::u64{1} << 50) - 27;
  std::vector<ck::u64> lifted(kSamples);
  for (std::size_t i = 0; i < kSamples; ++i) {
    lifted[i] = ck::lift_signed(errors[i], q) + ck::lift_signed(ternary[i], q);
  }
  published(lifted.data(), lifted.size());

  // Keys, encryption and decryption under a secret key marked secret.
  ck::Parameters params;
  params.poly_degree = 1024;
  params.chain_bits = {40, 30, 30};
  params.special_bits = {40};
  params.scale_bits = 30;
  params.security = ck::SecurityLevel::kNoneInsecureTestingOnly;  // small ring: speed under valgrind
  const ck::ContextPtr ctx = ck::make_context(params);
  ck::KeyGenerator keygen(ctx);
  const ck::SecretKey& sk = keygen.secret_key();
  const std::size_t words = ctx->key_size() * ctx->poly_degree();
  secret(const_cast<ck::u64*>(sk.prime(0)), words);

  // The NTT of secret data (the key is stored in NTT form; decryption multiplies in it).
  std::vector<ck::u64> coefficients(ctx->poly_degree());
  for (std::size_t k = 0; k < coefficients.size(); ++k) {
    coefficients[k] = ck::lift_signed(ternary[k % kSamples], ctx->tables().modulus(0).value());
  }
  ctx->tables().ntt(0).forward(coefficients.data());
  ctx->tables().ntt(0).inverse(coefficients.data());
  published(coefficients.data(), coefficients.size());

  const ck::PublicKey pk = keygen.create_public_key();
  published(pk.data().data().data(), pk.data().data().size());
  const ck::RelinKey rk = keygen.create_relin_key();
  const ck::GaloisKeys gk = keygen.create_galois_keys({1, 2});

  ck::Encoder encoder(ctx);
  std::vector<double> x(ctx->slots(), 0.25);
  ck::Encryptor encryptor(ctx, pk);
  const ck::Ciphertext ct = encryptor.encrypt(encoder.encode(x));
  ck::Decryptor decryptor(ctx, sk);
  const ck::Plaintext pt = decryptor.decrypt(ct);
  published(pt.data().data(), pt.data().size());

  ck::Encryptor symmetric(ctx, sk);
  const ck::Ciphertext sct = symmetric.encrypt(encoder.encode(x));
  published(sct.data().data(), sct.data().size());

  published(const_cast<ck::u64*>(sk.prime(0)), words);
  std::printf("constant-time check ran: %zu samples, keys, encryption and decryption at N=%zu%s\n",
              kSamples, ctx->poly_degree(), RUNNING_ON_VALGRIND ? " (under valgrind)" : "");
  (void)rk;
  (void)gk;
  return 0;
}
