// Shared decryptions and the secret key (IND-CPA-D): from the real slots of two decrypted
// ciphertexts, whoever holds the ciphertexts recovers the secret key exactly, as Li and
// Micciancio showed; after noise flooding the same attack recovers nothing.
#include <gtest/gtest.h>

#include <cmath>

#include "ckks/context_tables.hpp"
#include "fheprune/ckks/flooding.hpp"
#include "test_util.hpp"

namespace fheprune::ckks {
namespace {

using testing::Fixture;
using testing::random_reals;
using testing::small_params;

// The attack, on the first prime q0 in the NTT domain. Re-encoding the shared real slots at
// twice the scale gives p + conj(p) exactly, where p = c0 + c1 s is the decrypted polynomial
// and conj is X -> X^-1, which in the NTT domain reads index perm[k]. Per pair (k, perm[k])
// two ciphertexts give two linear equations in s[k] and s[perm[k]]:
//   c1[k] s[k] + c1[perm k] s[perm k] = shared2[k] - c0[k] - c0[perm k].
// Returns how many of the N residues of s it got right.
std::size_t recovered_residues(Fixture& f, const Ciphertext& a, const Ciphertext& b,
                               const std::vector<double>& shared_a,
                               const std::vector<double>& shared_b) {
  const Context& ctx = *f.ctx;
  const Modulus& q = ctx.tables().modulus(0);
  const std::size_t n = ctx.poly_degree();
  const auto perm = ctx.tables().galois_permutation(ctx.conjugation_element());
  const Plaintext pa = f.encoder.encode(shared_a, 2 * a.scale(), 0);
  const Plaintext pb = f.encoder.encode(shared_b, 2 * b.scale(), 0);
  const u64* secret = f.keygen.secret_key().prime(0);
  std::size_t right = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t j = (*perm)[k];
    const u64 a1 = a.poly(1, 0)[k], a2 = a.poly(1, 0)[j];
    const u64 b1 = b.poly(1, 0)[k], b2 = b.poly(1, 0)[j];
    const u64 ra = q.sub(pa.prime(0)[k], q.add(a.poly(0, 0)[k], a.poly(0, 0)[j]));
    const u64 rb = q.sub(pb.prime(0)[k], q.add(b.poly(0, 0)[k], b.poly(0, 0)[j]));
    const u64 det = q.sub(q.mul(a1, b2), q.mul(a2, b1));
    if (det == 0) continue;
    const u64 s_k = q.mul(q.sub(q.mul(ra, b2), q.mul(a2, rb)), q.inv(det));
    right += s_k == secret[k];
  }
  return right;
}

struct Shared {
  Ciphertext a, b;
};

Shared two_ciphertexts(Fixture& f) {
  auto make = [&](std::uint64_t seed) {
    const Ciphertext ct = f.encryptor.encrypt(f.encoder.encode(random_reals(f.ctx->slots(), seed)));
    return f.evaluator.mod_switch_to(ct, 0);
  };
  return {make(1), make(2)};
}

TEST(NoiseFlooding, SharedDecryptionsRevealTheSecretKeyWithoutIt) {
  Fixture f(small_params({50, 40}, {50}, 2048));
  const Shared s = two_ciphertexts(f);
  const auto da = f.encoder.decode(f.decryptor.decrypt(s.a));
  const auto db = f.encoder.decode(f.decryptor.decrypt(s.b));
  EXPECT_EQ(recovered_residues(f, s.a, s.b, da, db), f.ctx->poly_degree());  // all of s
}

TEST(NoiseFlooding, FloodedDecryptionsRevealNothingOfTheKey) {
  Fixture f(small_params({50, 40}, {50}, 2048));
  const Shared s = two_ciphertexts(f);
  NoiseFlooder flooder(f.ctx, 32);
  FloodingReport report;
  const auto da = flooder.decode(f.decryptor.decrypt(s.a), &report);
  const auto db = flooder.decode(f.decryptor.decrypt(s.b));
  // A residue is right by chance with probability about 1/q.
  EXPECT_LE(recovered_residues(f, s.a, s.b, da, db), 2u);

  // The price: 2^16 * sqrt(N) * 6 times the measured noise, and no more.
  EXPECT_GT(report.noise_std, 0.0);
  const double factor = 65536.0 * std::sqrt(2048.0) * 6.0;
  EXPECT_NEAR(report.flooding_std / report.noise_std, factor, factor * 1e-12);
  const auto clean = f.encoder.decode(f.decryptor.decrypt(s.a));
  double worst = 0.0;
  for (std::size_t j = 0; j < da.size(); ++j) worst = std::max(worst, std::abs(da[j] - clean[j]));
  EXPECT_LT(worst, 8 * report.flooding_std);
  EXPECT_GT(worst, report.flooding_std);  // among 1024 Gaussian draws, one passes 1 sigma
}

TEST(NoiseFlooding, RefusesAStatisticalParameterOutOfRange) {
  Fixture f(small_params());
  EXPECT_THROW(NoiseFlooder(f.ctx, 4), ParameterError);
  EXPECT_THROW(NoiseFlooder(f.ctx, 200), ParameterError);
  EXPECT_THROW(NoiseFlooder(f.ctx, 32, 0), ParameterError);
}

}  // namespace
}  // namespace fheprune::ckks
