#include <gtest/gtest.h>

#include <random>

#include "ckks/context_tables.hpp"
#include "fheprune/ckks/errors.hpp"
#include "ckks/modarith.hpp"
#include "ckks/primes.hpp"

namespace fheprune::ckks {
namespace {

TEST(Modulus, ReduceAndMultiplyMatchWideArithmetic) {
  std::mt19937_64 gen(7);
  for (int bits : {20, 30, 40, 50, 59, 60}) {
    const u64 q = generate_ntt_primes(1024, {bits}).front();
    const Modulus m(q);
    for (int i = 0; i < 20000; ++i) {
      const u64 a = gen() % q;
      const u64 b = gen() % q;
      const u64 x = gen();
      ASSERT_EQ(m.reduce(x), x % q);
      ASSERT_EQ(m.mul(a, b), static_cast<u64>(static_cast<u128>(a) * b % q));
      // Sums of 16 products: the lazy accumulation bound used by key switching.
      u128 acc = 0;
      for (int k = 0; k < 16; ++k) acc += static_cast<u128>(q - 1) * (q - 1);
      ASSERT_EQ(m.reduce128(acc), static_cast<u64>(acc % q));
      ASSERT_EQ(m.add(a, b), (a + b) % q);
      ASSERT_EQ(m.sub(a, b), (a + q - b) % q);
    }
  }
}

TEST(Modulus, ShoupMultiplicationIsExact) {
  std::mt19937_64 gen(8);
  const u64 q = generate_ntt_primes(4096, {60}).front();
  for (int i = 0; i < 20000; ++i) {
    const u64 w = gen() % q;
    const u64 x = gen();  // any 64-bit input
    const u64 ws = shoup_precompute(w, q);
    const u64 lazy = mul_shoup_lazy(x, w, ws, q);
    ASSERT_LT(lazy, 2 * q);
    ASSERT_EQ(mul_shoup(x, w, ws, q), static_cast<u64>(static_cast<u128>(x) * w % q));
  }
}

TEST(Modulus, InverseAndPower) {
  const Modulus m(generate_ntt_primes(2048, {45}).front());
  for (u64 a : {u64{1}, u64{2}, u64{12345}, m.value() - 1}) EXPECT_EQ(m.mul(a, m.inv(a)), 1u);
  EXPECT_EQ(m.pow(3, 0), 1u);
  EXPECT_EQ(m.pow(3, m.value() - 1), 1u);  // Fermat
  EXPECT_THROW(m.inv(0), ParameterError);
}

TEST(Primes, MillerRabinAgreesWithTrialDivision) {
  auto slow = [](u64 n) {
    if (n < 2) return false;
    for (u64 d = 2; d * d <= n; ++d)
      if (n % d == 0) return false;
    return true;
  };
  for (u64 n = 0; n < 20000; ++n) ASSERT_EQ(is_prime(n), slow(n)) << n;
  EXPECT_TRUE(is_prime(1152921504606584833ULL));    // a 60-bit NTT prime
  EXPECT_FALSE(is_prime(3215031751ULL));            // strong pseudoprime to bases 2,3,5,7
  EXPECT_FALSE(is_prime(3825123056546413051ULL));   // strong pseudoprime to bases up to 23
}

TEST(Primes, GeneratedPrimesAreNttFriendlyDistinctAndDeterministic) {
  const std::vector<int> bits = {60, 40, 40, 40, 60};
  const auto a = generate_ntt_primes(8192, bits);
  const auto b = generate_ntt_primes(8192, bits);
  EXPECT_EQ(a, b);
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(is_prime(a[i]));
    EXPECT_EQ(a[i] % (2 * 8192), 1u);
    EXPECT_LT(a[i], u64{1} << bits[i]);
    EXPECT_GE(a[i], u64{1} << (bits[i] - 1));
    for (std::size_t j = 0; j < i; ++j) EXPECT_NE(a[i], a[j]);
  }
  EXPECT_THROW(generate_ntt_primes(8192, {61}), ParameterError);
  EXPECT_THROW(generate_ntt_primes(8192, {19}), ParameterError);
}

TEST(Primes, PrimitiveRootHasOrderTwoN) {
  const std::size_t n = 4096;
  const Modulus q(generate_ntt_primes(n, {50}).front());
  const u64 psi = minimal_primitive_root(2 * n, q);
  EXPECT_EQ(q.pow(psi, n), q.value() - 1);
  EXPECT_EQ(q.pow(psi, 2 * n), 1u);
}

TEST(BaseConversion, ReconstructsSmallIntegersUpToAMultipleOfTheSource) {
  const std::size_t n = 64;
  const auto primes = generate_ntt_primes(1024, {40, 41, 42, 50});
  std::vector<Modulus> from = {Modulus(primes[0]), Modulus(primes[1]), Modulus(primes[2])};
  std::vector<Modulus> to = {Modulus(primes[3])};
  BaseConverter conv(from, to);
  std::mt19937_64 gen(3);
  // Integers below 2^62 (well below the 123-bit source product).
  std::vector<u64> x(n);
  for (auto& v : x) v = gen() >> 2;
  std::vector<std::vector<u64>> in(3, std::vector<u64>(n));
  for (std::size_t j = 0; j < 3; ++j)
    for (std::size_t k = 0; k < n; ++k) in[j][k] = x[k] % from[j].value();
  std::vector<u64> out(n);
  const u64* ptrs[3] = {in[0].data(), in[1].data(), in[2].data()};
  u64* outs[1] = {out.data()};
  conv.convert(ptrs, outs, n);
  const Modulus& c = to[0];
  u64 b_mod = 1;
  for (const auto& f : from) b_mod = c.mul(b_mod, c.reduce(f.value()));
  for (std::size_t k = 0; k < n; ++k) {
    // Fast base conversion returns x + u*B with 0 <= u < number of source primes.
    bool ok = false;
    for (u64 u = 0; u < 3; ++u) ok |= out[k] == c.add(c.reduce(x[k]), c.mul(u, b_mod));
    ASSERT_TRUE(ok) << k;
  }
}

TEST(LiftSigned, SmallSignedIntegersBecomeResiduesWithoutBranching) {
  for (const u64 q : {u64{3}, u64{65537}, (u64{1} << 60) - 93}) {
    for (std::int64_t v = -40; v <= 40; ++v) {
      if (static_cast<u64>(v < 0 ? -v : v) >= q) continue;
      const u64 want = v < 0 ? q - static_cast<u64>(-v) : static_cast<u64>(v);
      EXPECT_EQ(lift_signed(v, q), want) << v << " mod " << q;
    }
  }
}

}  // namespace
}  // namespace fheprune::ckks
