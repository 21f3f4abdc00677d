// Hot loops of key switching, with AVX-512 IFMA versions for primes below 2^50 and for the
// wide primes from 2^52 to 2^61, AVX2 versions (the inner product for primes below 2^40,
// sub_scale for all), and portable scalar versions. Internal to the engine.
#pragma once

#include <cstddef>

#include "ckks/modarith.hpp"

namespace fheprune::ckks::kernels {

// r0 = sum_d x[d] * b[d], r1 = sum_d x[d] * a[d] (element-wise, mod q), for n coefficients.
// `inner_product_kernel` names the version it runs for these sizes: on AVX-512 "ifma"
// (q < 2^50, fewer than 2^12 digits) or "wide" (2^52 < q < 2^61, fewer than 2^10 digits); on
// AVX2 + FMA "fma" (q < 2^40, fewer than 2^11 digits); else "scalar".
enum class InnerProductKernel { kIfma, kWide, kFma, kScalar };
InnerProductKernel inner_product_kernel(const Modulus& q, std::size_t digits, std::size_t n);
void inner_product(const u64* const* x, const u64* const* b, const u64* const* a,
                   std::size_t digits, std::size_t n, const Modulus& q, u64* r0, u64* r1);

// out = (c - t) * w mod q, or out += that when accumulating; c, t in [0, q). out may be t.
void sub_scale(const u64* c, const u64* t, const MultiplyOperand& w, u64 q, u64* out,
               std::size_t n, bool accumulate);

// The inner products sum digit after digit over blocks of coefficients, and each digit's
// operands are a short run of separate arrays (plaintexts, key parts), too short for the
// hardware prefetchers. NextRun names the run needed after digit d of the block at `start`:
// the next digit's, or after the last digit the next block's first; `line(j)` prefetches one
// 64-byte line of each of its three operands (past the end of an array it is a no-op: a
// prefetch does not fault).
struct NextRun {
  const u64* x;
  const u64* b;
  const u64* a;
  void line(std::size_t j) const {
    __builtin_prefetch(x + j);
    __builtin_prefetch(b + j);
    __builtin_prefetch(a + j);
  }
};
inline NextRun next_run(const u64* const* x, const u64* const* b, const u64* const* a,
                        std::size_t d, std::size_t digits, std::size_t start, std::size_t block,
                        std::size_t n) {
  const bool last = d + 1 == digits;
  const std::size_t next_d = last ? 0 : d + 1;
  const std::size_t next_start = last && start + block < n ? start + block : start;
  return {x[next_d] + next_start, b[next_d] + next_start, a[next_d] + next_start};
}

// The AVX2 + FMA version (kernels_avx2.cpp); the caller checks simd::fma_available(), q < 2^40,
// digits < 2^11 and n % 4 == 0.
void inner_product_fma(const u64* const* x, const u64* const* b, const u64* const* a,
                       std::size_t digits, std::size_t n, const Modulus& q, u64* r0, u64* r1);

// The AVX2 version of sub_scale (kernels_avx2.cpp); the caller checks simd::fma_available()
// and n % 4 == 0.
void sub_scale_avx2(const u64* c, const u64* t, const MultiplyOperand& w, u64 q, u64* out,
                    std::size_t n, bool accumulate);

// The portable versions, always available (the dispatchers above fall back to them).
namespace scalar {
void inner_product(const u64* const* x, const u64* const* b, const u64* const* a,
                   std::size_t digits, std::size_t n, const Modulus& q, u64* r0, u64* r1);
void sub_scale(const u64* c, const u64* t, const MultiplyOperand& w, u64 q, u64* out,
               std::size_t n, bool accumulate);
}  // namespace scalar

}  // namespace fheprune::ckks::kernels
