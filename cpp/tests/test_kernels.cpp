// The vector kernels against the scalar ones and against wide arithmetic.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "ckks/kernels.hpp"
#include "ckks/primes.hpp"
#include "fheprune/ckks/context.hpp"

namespace fheprune::ckks {
namespace {

class KernelTest : public ::testing::TestWithParam<int> {};

TEST_P(KernelTest, InnerProductMatchesWideArithmetic) {
  const Modulus q(generate_ntt_primes(1024, {GetParam()}).front());
  std::mt19937_64 gen(static_cast<unsigned>(GetParam()));
  const std::size_t n = 264;  // 32-coefficient passes and one 8-coefficient tail
  // 17 > 16 exercises the lazy flush; 2047 and 2048 the two reductions of the IFMA path
  // (in vector lanes below 2^11 digits, scalar above) and the AVX2 path's last size and its
  // scalar fallback; 1023 and 1024 the wide primes' vector path and its scalar fallback;
  // residues near q in every digit.
  for (std::size_t digits : {1u, 3u, 8u, 17u, 1023u, 1024u, 2047u, 2048u}) {
    std::vector<std::vector<u64>> x(digits, std::vector<u64>(n)), b = x, a = x;
    std::vector<const u64*> px, pb, pa;
    for (std::size_t d = 0; d < digits; ++d) {
      for (std::size_t j = 0; j < n; ++j) {
        x[d][j] = gen() % q.value();
        b[d][j] = gen() % q.value();
        a[d][j] = j == 0 ? q.value() - 1 : gen() % q.value();
      }
      x[d][1] = q.value() - 1;
      x[d][2] = b[d][2] = a[d][2] = q.value() - 1;  // the largest sums
      px.push_back(x[d].data());
      pb.push_back(b[d].data());
      pa.push_back(a[d].data());
    }
    // The version these sizes run: a vector one wherever one applies on this machine.
    const auto kernel = kernels::inner_product_kernel(q, digits, n);
    const bool below50 = q.value() < (u64{1} << 50);
    if (vector_kernels_enabled() && std::string(vector_kernel_set()) == "avx512-ifma") {
      const bool narrow = below50 && digits < 4096;
      const bool wide = q.value() > (u64{1} << 52) && digits < 1024;
      EXPECT_EQ(kernel, narrow ? kernels::InnerProductKernel::kIfma
                        : wide ? kernels::InnerProductKernel::kWide
                               : kernels::InnerProductKernel::kScalar)
          << GetParam() << " bits, " << digits << " digits";
    } else if (vector_kernels_enabled() && std::string(vector_kernel_set()) == "avx2-fma") {
      const bool fma = q.value() < (u64{1} << 40) && digits < 2048;
      EXPECT_EQ(kernel, fma ? kernels::InnerProductKernel::kFma
                            : kernels::InnerProductKernel::kScalar)
          << GetParam() << " bits, " << digits << " digits";
    } else {  // no vector kernels, or switched off
      EXPECT_EQ(kernel, kernels::InnerProductKernel::kScalar);
    }
    std::vector<u64> r0(n), r1(n), s0(n), s1(n);
    kernels::inner_product(px.data(), pb.data(), pa.data(), digits, n, q, r0.data(), r1.data());
    kernels::scalar::inner_product(px.data(), pb.data(), pa.data(), digits, n, q, s0.data(),
                                   s1.data());
    for (std::size_t j = 0; j < n; ++j) {
      u64 want0 = 0, want1 = 0;
      for (std::size_t d = 0; d < digits; ++d) {
        want0 = q.add(want0, q.mul(x[d][j], b[d][j]));
        want1 = q.add(want1, q.mul(x[d][j], a[d][j]));
      }
      ASSERT_EQ(r0[j], want0) << digits << " " << j;
      ASSERT_EQ(r1[j], want1);
      ASSERT_EQ(s0[j], want0);
      ASSERT_EQ(s1[j], want1);
    }
  }
}

TEST_P(KernelTest, SubScaleMatchesWideArithmetic) {
  const Modulus q(generate_ntt_primes(1024, {GetParam()}).front());
  std::mt19937_64 gen(static_cast<unsigned>(GetParam()) + 1);
  const std::size_t n = 64;
  std::vector<u64> c(n), t(n), base(n);
  for (std::size_t j = 0; j < n; ++j) {
    c[j] = gen() % q.value();
    t[j] = gen() % q.value();
    base[j] = gen() % q.value();
  }
  c[0] = 0;
  t[0] = q.value() - 1;
  const MultiplyOperand w(gen() % q.value(), q);
  for (bool accumulate : {false, true}) {
    std::vector<u64> fast = base, slow = base;
    kernels::sub_scale(c.data(), t.data(), w, q.value(), fast.data(), n, accumulate);
    kernels::scalar::sub_scale(c.data(), t.data(), w, q.value(), slow.data(), n, accumulate);
    for (std::size_t j = 0; j < n; ++j) {
      u64 want = q.mul(q.sub(c[j], t[j]), w.value);
      if (accumulate) want = q.add(want, base[j]);
      ASSERT_EQ(fast[j], want) << j;
      ASSERT_EQ(slow[j], want) << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(PrimeSizes, KernelTest,
                         ::testing::Values(20, 30, 36, 40, 49, 50, 52, 53, 59, 60));

}  // namespace
}  // namespace fheprune::ckks
