#include <gtest/gtest.h>

#include <random>
#include <string>

#include "fheprune/ckks/context.hpp"

#include "ckks/ntt.hpp"
#include "ckks/primes.hpp"

namespace fheprune::ckks {
namespace {

// Schoolbook product in Z_q[X]/(X^n + 1).
std::vector<u64> negacyclic_naive(const std::vector<u64>& a, const std::vector<u64>& b,
                                  const Modulus& q) {
  const std::size_t n = a.size();
  std::vector<u64> c(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      const u64 p = q.mul(a[i], b[j]);
      const std::size_t k = i + j;
      if (k < n) {
        c[k] = q.add(c[k], p);
      } else {
        c[k - n] = q.sub(c[k - n], p);
      }
    }
  }
  return c;
}

class NttTest : public ::testing::TestWithParam<std::tuple<std::size_t, int>> {};

TEST_P(NttTest, PointwiseProductIsNegacyclicConvolution) {
  const auto [n, bits] = GetParam();
  const Modulus q(generate_ntt_primes(n, {bits}).front());
  NttTables ntt(n, q);
  std::mt19937_64 gen(n * 131 + static_cast<std::size_t>(bits));
  std::vector<u64> a(n), b(n);
  for (auto& v : a) v = gen() % q.value();
  for (auto& v : b) v = gen() % q.value();
  const auto expected = negacyclic_naive(a, b, q);
  ntt.forward(a.data());
  ntt.forward(b.data());
  for (std::size_t i = 0; i < n; ++i) a[i] = q.mul(a[i], b[i]);
  ntt.inverse(a.data());
  EXPECT_EQ(a, expected);
}

TEST_P(NttTest, InverseUndoesForwardAndOutputsAreReduced) {
  const auto [n, bits] = GetParam();
  const Modulus q(generate_ntt_primes(n, {bits}).front());
  NttTables ntt(n, q);
  std::mt19937_64 gen(n + static_cast<std::size_t>(bits));
  std::vector<u64> a(n);
  for (auto& v : a) v = gen() % q.value();
  a[0] = q.value() - 1;  // extreme values exercise the lazy bounds
  a[n - 1] = q.value() - 1;
  auto b = a;
  ntt.forward(b.data());
  for (u64 v : b) ASSERT_LT(v, q.value());
  ntt.inverse(b.data());
  EXPECT_EQ(a, b);
}

TEST_P(NttTest, SlotKEvaluatesAtOddPowerOfPsi) {
  const auto [n, bits] = GetParam();
  const Modulus q(generate_ntt_primes(n, {bits}).front());
  NttTables ntt(n, q);
  std::vector<u64> a(n);
  std::mt19937_64 gen(5);
  for (auto& v : a) v = gen() % q.value();
  auto b = a;
  ntt.forward(b.data());
  const int log_n = std::countr_zero(n);
  for (std::size_t k : {std::size_t{0}, std::size_t{1}, n / 3, n - 1}) {
    const u64 x = q.pow(ntt.root(), 2 * reverse_bits(k, log_n) + 1);
    u64 value = 0;
    for (std::size_t i = n; i-- > 0;) value = q.add(q.mul(value, x), a[i]);
    EXPECT_EQ(b[k], value) << "slot " << k;
  }
}

TEST_P(NttTest, VectorAndScalarKernelsAgree) {
  const auto [n, bits] = GetParam();
  const Modulus q(generate_ntt_primes(n, {bits}).front());
  NttTables::enable_vector_kernels(false);
  NttTables scalar(n, q);
  NttTables::enable_vector_kernels(true);
  NttTables fast(n, q);
  EXPECT_EQ(scalar.kernel(), NttTables::Kernel::kScalar);
  std::mt19937_64 gen(n * 7 + static_cast<std::size_t>(bits));
  std::vector<u64> a(n);
  for (auto& v : a) v = gen() % q.value();
  auto b = a;
  scalar.forward(a.data());
  fast.forward(b.data());
  ASSERT_EQ(a, b);
  scalar.inverse(a.data());
  fast.inverse(b.data());
  ASSERT_EQ(a, b);
}

// The rings the engine runs (up to 2^16) with primes up to the vector kernels' bound, on
// random and extreme inputs (every coefficient q - 1, a lone q - 1, alternating 0 and q - 1):
// the vector kernel of this CPU (checked by name) gives the scalar kernel's bits.
TEST(NttKernels, VectorKernelMatchesScalarOnLargeRingsAndExtremeInputs) {
  for (const std::size_t n : {std::size_t{1} << 14, std::size_t{1} << 16}) {
    for (const int bits : {36, 40, 49, 50, 51, 55, 60}) {
      const Modulus q(generate_ntt_primes(n, {bits}).front());
      NttTables::enable_vector_kernels(false);
      NttTables scalar(n, q);
      NttTables::enable_vector_kernels(true);
      NttTables fast(n, q);
      const std::string set = vector_kernel_set();
      const bool narrow = q.value() < kFmaPrimeBound;
      if (set == "avx512-ifma") {
        EXPECT_EQ(fast.kernel(), narrow ? NttTables::Kernel::kIfma52 : NttTables::Kernel::kAvx512);
      } else if (set == "avx2-fma") {
        EXPECT_EQ(fast.kernel(), narrow ? NttTables::Kernel::kFma52 : NttTables::Kernel::kAvx2);
      } else {
        EXPECT_EQ(fast.kernel(), NttTables::Kernel::kScalar);
      }
      std::mt19937_64 gen(n + static_cast<std::size_t>(bits));
      const u64 top = q.value() - 1;
      std::vector<std::vector<u64>> inputs(4, std::vector<u64>(n, 0));
      for (auto& v : inputs[0]) v = gen() % q.value();
      std::fill(inputs[1].begin(), inputs[1].end(), top);
      inputs[2][n / 3] = top;
      for (std::size_t j = 0; j < n; j += 2) inputs[3][j] = top;
      for (const auto& input : inputs) {
        auto a = input, b = input;
        scalar.forward(a.data());
        fast.forward(b.data());
        ASSERT_EQ(a, b) << "forward, n " << n << ", " << bits << " bits";
        // The inverse of the extreme inputs themselves too, not only of their transforms.
        const std::vector<const std::vector<u64>*> sources{&a, &input};
        for (const std::vector<u64>* source : sources) {
          auto c = *source, d = *source;
          scalar.inverse(c.data());
          fast.inverse(d.data());
          ASSERT_EQ(c, d) << "inverse, n " << n << ", " << bits << " bits";
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, NttTest,
                         ::testing::Combine(::testing::Values(8, 64, 256, 1024),
                                            ::testing::Values(30, 50, 60)));

}  // namespace
}  // namespace fheprune::ckks
