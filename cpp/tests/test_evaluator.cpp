#include <gtest/gtest.h>

#include <cmath>

#include "test_util.hpp"

namespace fheprune::ckks {
namespace {

using testing::Fixture;
using testing::max_abs_diff;
using testing::random_reals;

constexpr double kTol = 1e-6;  // at scale 2^40, errors are ~1e-9 .. 1e-7

std::vector<double> rotate_left(const std::vector<double>& v, long step) {
  const long n = static_cast<long>(v.size());
  std::vector<double> out(v.size());
  for (long i = 0; i < n; ++i) out[i] = v[((i + step) % n + n) % n];
  return out;
}

class EvaluatorTest : public ::testing::Test {
 protected:
  Fixture f{testing::small_params()};
  std::vector<double> x = random_reals(f.ctx->slots(), 11);
  std::vector<double> y = random_reals(f.ctx->slots(), 12);
};

TEST_F(EvaluatorTest, PublicAndSymmetricEncryptionDecrypt) {
  EXPECT_LT(max_abs_diff(f.decrypt(f.encrypt(x)), x), kTol);
  Encryptor sym(f.ctx, f.keygen.secret_key());
  const auto ct = sym.encrypt(f.encoder.encode(x));
  EXPECT_LT(max_abs_diff(f.encoder.decode(f.decryptor.decrypt(ct)), x), kTol);
}

TEST_F(EvaluatorTest, MultiplyPlainSumEqualsSumOfProducts) {
  std::vector<Ciphertext> cts;
  std::vector<Plaintext> pts;
  std::vector<double> expect(x.size(), 0.0);
  for (std::uint64_t t = 0; t < 5; ++t) {
    const auto a = random_reals(x.size(), 40 + t), b = random_reals(x.size(), 50 + t);
    cts.push_back(f.encrypt(a));
    pts.push_back(f.encoder.encode(b));
    for (std::size_t i = 0; i < x.size(); ++i) expect[i] += a[i] * b[i];
  }
  std::vector<const Ciphertext*> cp;
  std::vector<const Plaintext*> pp;
  for (std::size_t t = 0; t < cts.size(); ++t) cp.push_back(&cts[t]), pp.push_back(&pts[t]);
  const Ciphertext sum = f.evaluator.multiply_plain_sum(cp, pp);
  Ciphertext ref = f.evaluator.multiply_plain(cts[0], pts[0]);
  for (std::size_t t = 1; t < cts.size(); ++t) {
    f.evaluator.add_inplace(ref, f.evaluator.multiply_plain(cts[t], pts[t]));
  }
  EXPECT_EQ(sum.data(), ref.data());  // exact: both reduce mod q
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.rescale(sum)), expect), 1e-5);
  pp.pop_back();
  EXPECT_THROW(f.evaluator.multiply_plain_sum(cp, pp), FheError);
}

// The process-wide switch to the scalar kernels changes the speed only: key switching
// (relinearize, rotate) and sums of products give the same bits on both paths.
TEST_F(EvaluatorTest, ScalarAndVectorKernelsGiveTheSameBits) {
  const auto gk = f.keygen.create_galois_keys(std::vector<long>{3});
  const auto ct = f.encrypt(x);
  const auto pt = f.encoder.encode(y);
  const std::vector<const Ciphertext*> cp{&ct, &ct};
  const std::vector<const Plaintext*> pp{&pt, &pt};
  auto run = [&] {
    auto sq = f.evaluator.multiply_relin(ct, ct, f.rk);
    return std::make_pair(f.evaluator.rotate(sq, 3, gk).data(),
                          f.evaluator.multiply_plain_sum(cp, pp).data());
  };
  const bool was = vector_kernels_enabled();
  const auto fast = run();
  set_vector_kernels(false);
  EXPECT_FALSE(vector_kernels_enabled());
  const auto slow = run();
  set_vector_kernels(was);
  EXPECT_EQ(vector_kernels_enabled(), was);
  EXPECT_EQ(fast.first, slow.first);
  EXPECT_EQ(fast.second, slow.second);
}

// Many sums at once, sharing ciphertexts across sums (a layer's baby steps), give exactly the
// sums made one by one; blocks at a lower level and bad blocks are handled like single sums.
TEST_F(EvaluatorTest, MultiplyPlainSumsEqualsOneSumEach) {
  std::vector<Ciphertext> cts;
  std::vector<Plaintext> pts;
  for (std::uint64_t t = 0; t < 6; ++t) {
    cts.push_back(f.encrypt(random_reals(x.size(), 70 + t)));
    pts.push_back(f.encoder.encode(random_reals(x.size(), 80 + t)));
  }
  const Ciphertext low = f.evaluator.mod_switch_to(cts[0], cts[0].level() - 1);
  std::vector<std::vector<const Ciphertext*>> cp{{&cts[0], &cts[1], &cts[2]},
                                                 {&cts[2], &cts[0]},
                                                 {&cts[5]},
                                                 {&low, &low}};
  std::vector<std::vector<const Plaintext*>> pp{{&pts[0], &pts[1], &pts[2]},
                                                {&pts[3], &pts[4]},
                                                {&pts[5]},
                                                {&pts[1], &pts[2]}};
  const std::vector<Ciphertext> sums = f.evaluator.multiply_plain_sums(cp, pp);
  ASSERT_EQ(sums.size(), cp.size());
  for (std::size_t b = 0; b < cp.size(); ++b) {
    const Ciphertext one = f.evaluator.multiply_plain_sum(cp[b], pp[b]);
    EXPECT_EQ(sums[b].data(), one.data()) << b;
    EXPECT_EQ(sums[b].level(), one.level()) << b;
    EXPECT_DOUBLE_EQ(sums[b].scale(), one.scale()) << b;
  }
  EXPECT_TRUE(f.evaluator.multiply_plain_sums({}, {}).empty());
  pp[1].pop_back();
  EXPECT_THROW(f.evaluator.multiply_plain_sums(cp, pp), FheError);
  pp.pop_back();
  EXPECT_THROW(f.evaluator.multiply_plain_sums(cp, pp), FheError);
}

TEST_F(EvaluatorTest, FreshEncryptionsDiffer) {
  const auto a = f.encrypt(x);
  const auto b = f.encrypt(x);
  EXPECT_NE(a.data(), b.data());
}

TEST_F(EvaluatorTest, AdditiveOperations) {
  const auto cx = f.encrypt(x);
  const auto cy = f.encrypt(y);
  const auto py = f.encoder.encode(y);
  std::vector<double> sum(x.size()), diff(x.size()), neg(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    sum[i] = x[i] + y[i];
    diff[i] = x[i] - y[i];
    neg[i] = -x[i];
  }
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.add(cx, cy)), sum), kTol);
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.sub(cx, cy)), diff), kTol);
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.negate(cx)), neg), kTol);
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.add_plain(cx, py)), sum), kTol);
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.sub_plain(cx, py)), diff), kTol);
}

TEST_F(EvaluatorTest, MultiplyPlainThenRescale) {
  const auto prod = f.evaluator.rescale(f.evaluator.multiply_plain(f.encrypt(x), f.encoder.encode(y)));
  std::vector<double> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = x[i] * y[i];
  EXPECT_EQ(prod.level(), f.ctx->max_level() - 1);
  EXPECT_LT(max_abs_diff(f.decrypt(prod), want), kTol);
}

TEST_F(EvaluatorTest, MultiplyRelinearizeRescale) {
  const auto cx = f.encrypt(x);
  const auto cy = f.encrypt(y);
  const auto size3 = f.evaluator.multiply(cx, cy);
  EXPECT_EQ(size3.size(), 3u);
  std::vector<double> want(x.size()), want_sq(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    want[i] = x[i] * y[i];
    want_sq[i] = x[i] * x[i];
  }
  // Size-3 ciphertexts decrypt directly too.
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.rescale(size3)), want), kTol);
  const auto relin = f.evaluator.rescale(f.evaluator.relinearize(size3, f.rk));
  EXPECT_EQ(relin.size(), 2u);
  EXPECT_LT(max_abs_diff(f.decrypt(relin), want), kTol);
  const auto sq = f.evaluator.rescale(f.evaluator.relinearize(f.evaluator.square(cx), f.rk));
  EXPECT_LT(max_abs_diff(f.decrypt(sq), want_sq), kTol);
}

TEST_F(EvaluatorTest, MultiplicationChainThroughAllLevels) {
  // x^(2^L) with values near 1 so the result stays O(1); one square per level.
  std::vector<double> v = random_reals(f.ctx->slots(), 13, 0.2);
  for (auto& a : v) a += 1.0;
  auto ct = f.encrypt(v);
  std::vector<double> want = v;
  while (ct.level() > 0) {
    ct = f.evaluator.rescale(f.evaluator.multiply_relin(ct, ct, f.rk));
    for (auto& a : want) a *= a;
  }
  EXPECT_EQ(ct.level(), 0u);
  EXPECT_LT(max_abs_diff(f.decrypt(ct), want), 1e-4);
  EXPECT_THROW(f.evaluator.rescale(ct), LevelError);
}

TEST_F(EvaluatorTest, RotationsForManyStepsAndHoistingMatches) {
  std::vector<long> steps = {1, 2, 3, 7, 16, 100, -1, -5, 511, 1023};
  GaloisKeys gk = f.keygen.create_galois_keys(steps);
  const auto ct = f.encrypt(x);
  const auto hoisted = f.evaluator.rotate_hoisted(ct, steps, gk);
  ASSERT_EQ(hoisted.size(), steps.size());
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const auto single = f.evaluator.rotate(ct, steps[i], gk);
    EXPECT_LT(max_abs_diff(f.decrypt(single), rotate_left(x, steps[i])), kTol) << steps[i];
    // Hoisting changes the order of work, not the arithmetic: bit-identical results.
    EXPECT_EQ(single.data(), hoisted[i].data()) << steps[i];
  }
  // Step 0 needs no key and returns the input.
  EXPECT_EQ(f.evaluator.rotate(ct, 0, gk).data(), ct.data());
}

// Double hoisting: a rotation kept multiplied by P, then divided by P, is the rotation. Not bit
// for bit: the ordinary rotation divides by P before permuting, and the base conversion does
// not commute exactly with the automorphism's signs (both errors are below the key switch's).
TEST_F(EvaluatorTest, ExtendedRotationsDivideBackToRotations) {
  const std::vector<long> steps = {0, 1, 5, -3, 100};
  GaloisKeys gk = f.keygen.create_galois_keys(steps);
  const auto ct = f.encrypt(x);
  const auto extended = f.evaluator.rotate_hoisted_extended(ct, steps, gk);
  ASSERT_EQ(extended.size(), steps.size());
  for (std::size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(extended[i].extended, ct.primes() + f.ctx->special_size());
    EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.mod_down(extended[i])), rotate_left(x, steps[i])),
              kTol)
        << steps[i];
  }
  // Step 0 is P * ct, and P * c vanishes at the special primes: exactly ct again.
  EXPECT_EQ(f.evaluator.mod_down(extended[0]).data(), ct.data());
  // One rotation into an empty accumulator, a second added: P (rot 1 + rot 5).
  ExtendedCiphertext acc;
  f.evaluator.rotate_accumulate(ct, 1, gk, acc);
  f.evaluator.rotate_accumulate(ct, 5, gk, acc);
  std::vector<double> want = rotate_left(x, 1);
  const auto five = rotate_left(x, 5);
  for (std::size_t i = 0; i < want.size(); ++i) want[i] += five[i];
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.mod_down(acc)), want), kTol);
  // Adding extended ciphertexts is adding what they stand for.
  ExtendedCiphertext twice = extended[0];
  f.evaluator.add_extended_inplace(twice, extended[0]);
  std::vector<double> doubled = x;
  for (auto& v : doubled) v *= 2;
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.mod_down(twice)), doubled), kTol);
}

// sum_t diag_t * rot(x, t) computed extended (one ModDown in all) against the ordinary way.
TEST_F(EvaluatorTest, ExtendedSumOfProductsMatchesTheOrdinaryOne) {
  const std::vector<long> steps = {0, 2, 9};
  GaloisKeys gk = f.keygen.create_galois_keys(steps);
  const auto ct = f.encrypt(x);
  const auto babies = f.evaluator.rotate_hoisted_extended(ct, steps, gk);
  const std::size_t level = ct.level();
  std::vector<ExtendedPlaintext> pts;
  std::vector<double> want(x.size(), 0.0);
  for (std::size_t t = 0; t < steps.size(); ++t) {
    const auto d = random_reals(x.size(), 70 + t);
    std::vector<std::complex<double>> dc(d.begin(), d.end());
    pts.push_back(f.encoder.encode_extended(dc, f.ctx->default_scale(), level));
    const auto r = rotate_left(x, steps[t]);
    for (std::size_t i = 0; i < x.size(); ++i) want[i] += d[i] * r[i];
  }
  std::vector<const ExtendedCiphertext*> cp;
  std::vector<const ExtendedPlaintext*> pp;
  for (std::size_t t = 0; t < steps.size(); ++t) cp.push_back(&babies[t]), pp.push_back(&pts[t]);
  const ExtendedCiphertext sum = f.evaluator.multiply_plain_sum_extended(cp, pp);
  EXPECT_DOUBLE_EQ(sum.scale, ct.scale() * f.ctx->default_scale());
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.rescale(f.evaluator.mod_down(sum))), want), 1e-5);
  // Typed errors: a count mismatch, a plaintext at another level, mismatched accumulators.
  pp.pop_back();
  EXPECT_THROW(f.evaluator.multiply_plain_sum_extended(cp, pp), FheError);
  const auto low = f.encoder.encode_extended({{1.0, 0.0}}, f.ctx->default_scale(), level - 1);
  pp.push_back(&low);
  EXPECT_THROW(f.evaluator.multiply_plain_sum_extended(cp, pp), LevelError);
  ExtendedCiphertext lower;
  f.evaluator.rotate_accumulate(f.evaluator.mod_switch_to(ct, level - 1), 2, gk, lower);
  ExtendedCiphertext top = babies[0];
  EXPECT_THROW(f.evaluator.add_extended_inplace(top, lower), MismatchError);
  EXPECT_THROW(f.evaluator.rotate_accumulate(ct, 2, gk, lower), MismatchError);
  // Same level and key, another scale: summing them would be garbage, so it is refused.
  const Ciphertext doubled =
      f.evaluator.multiply_plain(ct, f.encoder.encode_constant(1.0, 2.0, ct.level()));
  ExtendedCiphertext other_scale;
  f.evaluator.rotate_accumulate(doubled, 2, gk, other_scale);
  EXPECT_THROW(f.evaluator.add_extended_inplace(top, other_scale), MismatchError);
  EXPECT_THROW(f.evaluator.rotate_accumulate(ct, 2, gk, other_scale), MismatchError);
}

TEST_F(EvaluatorTest, RotationAfterRescaleAtLowerLevel) {
  GaloisKeys gk = f.keygen.create_galois_keys({3});
  auto ct = f.evaluator.rescale(f.evaluator.multiply_plain(f.encrypt(x), f.encoder.encode_constant(2.0)));
  ct = f.evaluator.rescale(f.evaluator.multiply_plain(ct, f.encoder.encode_constant(0.5, std::nullopt, ct.level())));
  EXPECT_EQ(ct.level(), f.ctx->max_level() - 2);
  EXPECT_LT(max_abs_diff(f.decrypt(f.evaluator.rotate(ct, 3, gk)), rotate_left(x, 3)), kTol);
}

TEST_F(EvaluatorTest, Conjugation) {
  GaloisKeys gk = f.keygen.create_galois_keys({}, /*conjugation=*/true);
  std::vector<std::complex<double>> v(f.ctx->slots());
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = {x[i], y[i]};
  const auto out = f.encoder.decode_complex(
      f.decryptor.decrypt(f.evaluator.conjugate(f.encryptor.encrypt(f.encoder.encode(v)), gk)));
  for (std::size_t i = 0; i < v.size(); ++i) ASSERT_LT(std::abs(out[i] - std::conj(v[i])), kTol);
}

TEST_F(EvaluatorTest, MissingRotationKeyNamesTheStep) {
  GaloisKeys gk = f.keygen.create_galois_keys({1});
  const auto ct = f.encrypt(x);
  try {
    f.evaluator.rotate(ct, 5, gk);
    FAIL() << "expected MissingKeyError";
  } catch (const MissingKeyError& e) {
    EXPECT_NE(std::string(e.what()).find("rotation step 5"), std::string::npos) << e.what();
  }
  EXPECT_THROW(f.evaluator.conjugate(ct, gk), MissingKeyError);
}

TEST_F(EvaluatorTest, LevelAndScaleMismatchesAreTypedErrors) {
  const auto a = f.encrypt(x);
  const auto low = f.evaluator.mod_switch_to(a, 1);
  EXPECT_THROW(f.evaluator.add(a, low), LevelError);
  EXPECT_THROW(f.evaluator.multiply(a, low), LevelError);
  // Aligning levels by mod switching makes the addition valid.
  const auto aligned = f.evaluator.add(f.evaluator.mod_switch_to(a, 1), low);
  std::vector<double> twice(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) twice[i] = 2 * x[i];
  EXPECT_LT(max_abs_diff(f.decrypt(aligned), twice), kTol);

  const auto scaled = f.encryptor.encrypt(f.encoder.encode(x, std::ldexp(1.0, 35)));
  EXPECT_THROW(f.evaluator.add(a, scaled), ScaleError);
  EXPECT_THROW(f.evaluator.add_plain(a, f.encoder.encode(x, std::ldexp(1.0, 30))), ScaleError);
  EXPECT_THROW(f.evaluator.multiply_plain(a, f.encoder.encode(x, std::nullopt, 1)), LevelError);
  EXPECT_THROW(f.evaluator.mod_switch_to(low, 2), LevelError);
  // A product whose scale overflows the remaining modulus.
  auto at0 = f.evaluator.mod_switch_to(a, 0);
  EXPECT_THROW(f.evaluator.multiply(at0, at0), ScaleError);
  EXPECT_THROW(f.evaluator.rotate(f.evaluator.multiply(a, a), 1, f.keygen.create_galois_keys({1})),
               FheError);
}

TEST(EvaluatorKeys, ObjectsFromAnotherClientAreRejected) {
  Fixture alice(testing::small_params());
  Fixture bob(testing::small_params());
  const auto v = random_reals(16, 1);
  const auto ca = alice.encrypt(v);
  const auto cb = bob.encrypt(v);
  EXPECT_THROW(alice.evaluator.add(ca, cb), MismatchError);
  EXPECT_THROW(alice.evaluator.relinearize(alice.evaluator.multiply(ca, ca), bob.rk), MismatchError);
  EXPECT_THROW(alice.evaluator.rotate(ca, 1, bob.keygen.create_galois_keys({1})), MismatchError);
  EXPECT_THROW(alice.decryptor.decrypt(cb), MismatchError);

  Fixture other(testing::small_params({50, 40, 40}));
  EXPECT_THROW(other.evaluator.negate(ca), MismatchError);
  EXPECT_THROW(other.encoder.decode(alice.decryptor.decrypt(ca)), MismatchError);
}

TEST(EvaluatorThreads, ResultsAreIdenticalForAnyThreadCount) {
  Fixture f(testing::small_params({50, 40, 40, 40, 40}, {50}, 4096), 1);
  const auto x = random_reals(f.ctx->slots(), 21);
  GaloisKeys gk = f.keygen.create_galois_keys({1, 2, 3, 4});
  const auto ct = f.encrypt(x);
  auto run = [&] {
    auto m = f.evaluator.rescale(f.evaluator.multiply_relin(ct, ct, f.rk));
    auto r = f.evaluator.rotate_hoisted(m, {1, 2, 3, 4}, gk);
    auto s = f.evaluator.add(r[0], r[3]);
    return s.data();
  };
  const auto one = run();
  f.ctx->set_threads(2);
  const auto two = run();
  f.ctx->set_threads(3);
  const auto three = run();
  EXPECT_EQ(one, two);
  EXPECT_EQ(one, three);
}

TEST(EvaluatorHybrid, TwoSpecialPrimesPerDigit) {
  // alpha = 2: digits of two chain primes, ModUp by real base conversion.
  Fixture f(testing::small_params({50, 40, 40, 40, 40}, {50, 50}, 2048));
  const auto x = random_reals(f.ctx->slots(), 31);
  GaloisKeys gk = f.keygen.create_galois_keys({1, 7});
  auto ct = f.encrypt(x);
  std::vector<double> want = x;
  for (int round = 0; round < 3; ++round) {
    ct = f.evaluator.rescale(f.evaluator.multiply_relin(ct, ct, f.rk));
    for (auto& a : want) a *= a;
    ct = f.evaluator.rotate(ct, 7, gk);
    want = rotate_left(want, 7);
  }
  EXPECT_LT(max_abs_diff(f.decrypt(ct), want), 1e-5);
}

}  // namespace
}  // namespace fheprune::ckks
