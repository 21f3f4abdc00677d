#include "fheprune/ckks/encryptor.hpp"

#include <sodium.h>

#include <string>

#include "ckks/context_tables.hpp"
#include "ckks/random.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

namespace {

void check_params(const Context& ctx, const Fingerprint& fp, const char* what) {
  if (fp != ctx.fingerprint()) {
    throw MismatchError(std::string(what) + " was made under different parameters");
  }
}

// Signed small integers into [0, q).
inline u64 lift(std::int64_t v, const Modulus& q) { return lift_signed(v, q.value()); }

}  // namespace

Encryptor::Encryptor(ContextPtr ctx, const PublicKey& public_key)
    : ctx_(std::move(ctx)), public_key_(public_key), rng_(std::make_unique<SecureRandom>()) {
  check_params(*ctx_, public_key.data().params(), "public key");
}

Encryptor::Encryptor(ContextPtr ctx, const SecretKey& secret_key)
    : ctx_(std::move(ctx)), secret_key_(secret_key), rng_(std::make_unique<SecureRandom>()) {
  check_params(*ctx_, secret_key.params(), "secret key");
}

Encryptor::~Encryptor() = default;
Encryptor::Encryptor(Encryptor&&) noexcept = default;
Encryptor& Encryptor::operator=(Encryptor&&) noexcept = default;

Ciphertext Encryptor::encrypt(const Plaintext& pt) {
  check_params(*ctx_, pt.params(), "plaintext");
  const std::size_t n = ctx_->poly_degree();
  const std::size_t level = pt.level();
  const KeyId& id = public_key_ ? public_key_->id() : secret_key_->id();
  Ciphertext ct(*ctx_, 2, level, pt.scale(), id);

  // Sample everything first (the generator is sequential), then transform in parallel.
  std::vector<std::int64_t> e0(n), e1(n);
  rng_->gaussian(e0.data(), n);
  std::vector<std::int8_t> u;
  if (public_key_) {
    rng_->gaussian(e1.data(), n);
    u.resize(n);
    rng_->ternary(u.data(), n);
  } else {
    for (std::size_t i = 0; i <= level; ++i) rng_->uniform_mod(ctx_->tables().modulus(i), ct.poly(1, i), n);
  }

  ctx_->tables().pool().parallel_for(level + 1, [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    const NttTables& ntt = ctx_->tables().ntt(i);
    u64* c0 = ct.poly(0, i);
    u64* c1 = ct.poly(1, i);
    const u64* m = pt.prime(i);
    for (std::size_t k = 0; k < n; ++k) c0[k] = lift(e0[k], q);
    ntt.forward(c0);
    if (public_key_) {
      std::vector<u64> ui(n);
      for (std::size_t k = 0; k < n; ++k) ui[k] = lift(u[k], q);
      ntt.forward(ui.data());
      for (std::size_t k = 0; k < n; ++k) c1[k] = lift(e1[k], q);
      ntt.forward(c1);
      const u64* b = public_key_->data().poly(0, i);
      const u64* a = public_key_->data().poly(1, i);
      for (std::size_t k = 0; k < n; ++k) {
        c0[k] = q.add(q.add(c0[k], q.mul(ui[k], b[k])), m[k]);
        c1[k] = q.add(c1[k], q.mul(ui[k], a[k]));
      }
      sodium_memzero(ui.data(), ui.size() * sizeof(u64));
    } else {
      const u64* s = secret_key_->prime(i);
      for (std::size_t k = 0; k < n; ++k) {
        c0[k] = q.add(q.sub(c0[k], q.mul(c1[k], s[k])), m[k]);
      }
    }
  });
  sodium_memzero(e0.data(), e0.size() * sizeof(std::int64_t));
  sodium_memzero(e1.data(), e1.size() * sizeof(std::int64_t));
  if (!u.empty()) sodium_memzero(u.data(), u.size());
  return ct;
}

Decryptor::Decryptor(ContextPtr ctx, const SecretKey& secret_key)
    : ctx_(std::move(ctx)), secret_key_(secret_key) {
  check_params(*ctx_, secret_key.params(), "secret key");
}

Plaintext Decryptor::decrypt(const Ciphertext& ct) const {
  check_params(*ctx_, ct.params(), "ciphertext");
  if (ct.key_id() != secret_key_.id()) {
    throw MismatchError("ciphertext was encrypted under a different key than this secret key");
  }
  if (ct.size() < 2 || ct.size() > 3) {
    throw FheError("can decrypt ciphertexts of size 2 or 3; got size " +
                   std::to_string(ct.size()));
  }
  const std::size_t n = ctx_->poly_degree();
  Plaintext pt(*ctx_, ct.level(), ct.scale());
  ctx_->tables().pool().parallel_for(ct.primes(), [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    const u64* s = secret_key_.prime(i);
    const u64* c0 = ct.poly(0, i);
    const u64* c1 = ct.poly(1, i);
    u64* m = pt.prime(i);
    if (ct.size() == 3) {
      const u64* c2 = ct.poly(2, i);
      for (std::size_t k = 0; k < n; ++k) {
        // c0 + s (c1 + s c2)
        m[k] = q.add(c0[k], q.mul(s[k], q.add(c1[k], q.mul(s[k], c2[k]))));
      }
    } else {
      for (std::size_t k = 0; k < n; ++k) m[k] = q.add(c0[k], q.mul(s[k], c1[k]));
    }
  });
  return pt;
}

}  // namespace fheprune::ckks
