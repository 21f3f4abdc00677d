#include "kernels.hpp"

#include <immintrin.h>

#include <algorithm>

namespace fheprune::ckks::kernels {

namespace {

// Products of two residues below 2^60 summed in 128 bits stay below q * 2^64 for 16 terms.
constexpr std::size_t kLazyTerms = 16;

void inner_product_scalar(const u64* const* x, const u64* const* b, const u64* const* a,
                          std::size_t digits, std::size_t n, const Modulus& q, u64* r0, u64* r1) {
  // Blocks of coefficients keep the 128-bit accumulators in L1 while the digits stream through.
  constexpr std::size_t kBlock = 256;
  u128 acc0[kBlock];
  u128 acc1[kBlock];
  for (std::size_t start = 0; start < n; start += kBlock) {
    const std::size_t len = std::min(kBlock, n - start);
    std::fill(acc0, acc0 + len, 0);
    std::fill(acc1, acc1 + len, 0);
    for (std::size_t d = 0; d < digits; ++d) {
      const u64* __restrict xd = x[d] + start;
      const u64* __restrict bd = b[d] + start;
      const u64* __restrict ad = a[d] + start;
      for (std::size_t j = 0; j < len; ++j) {
        acc0[j] += static_cast<u128>(xd[j]) * bd[j];
        acc1[j] += static_cast<u128>(xd[j]) * ad[j];
      }
      if ((d + 1) % kLazyTerms == 0 && d + 1 < digits) {
        for (std::size_t j = 0; j < len; ++j) {
          acc0[j] = q.reduce128(acc0[j]);
          acc1[j] = q.reduce128(acc1[j]);
        }
      }
    }
    for (std::size_t j = 0; j < len; ++j) {
      r0[start + j] = q.reduce128(acc0[j]);
      r1[start + j] = q.reduce128(acc1[j]);
    }
  }
}

}  // namespace

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

bool ifma_available() {
  static const bool available = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
  }();
  return available;
}

namespace {

// Residues below 2^50: each 100-bit product splits into its low and high 52 bits, summed in
// separate 64-bit lanes (no carries to track for up to 2^12 digits).
__attribute__((target("avx512f,avx512ifma"))) void inner_product_ifma(
    const u64* const* x, const u64* const* b, const u64* const* a, std::size_t digits,
    std::size_t n, const Modulus& q, u64* r0, u64* r1) {
  alignas(64) u64 lo0[8], hi0[8], lo1[8], hi1[8];
  for (std::size_t j = 0; j < n; j += 8) {
    __m512i l0 = _mm512_setzero_si512();
    __m512i h0 = _mm512_setzero_si512();
    __m512i l1 = _mm512_setzero_si512();
    __m512i h1 = _mm512_setzero_si512();
    for (std::size_t d = 0; d < digits; ++d) {
      const __m512i vx = _mm512_loadu_si512(x[d] + j);
      const __m512i vb = _mm512_loadu_si512(b[d] + j);
      const __m512i va = _mm512_loadu_si512(a[d] + j);
      l0 = _mm512_madd52lo_epu64(l0, vx, vb);
      h0 = _mm512_madd52hi_epu64(h0, vx, vb);
      l1 = _mm512_madd52lo_epu64(l1, vx, va);
      h1 = _mm512_madd52hi_epu64(h1, vx, va);
    }
    _mm512_store_si512(lo0, l0);
    _mm512_store_si512(hi0, h0);
    _mm512_store_si512(lo1, l1);
    _mm512_store_si512(hi1, h1);
    for (std::size_t k = 0; k < 8; ++k) {
      r0[j + k] = q.reduce128((static_cast<u128>(hi0[k]) << 52) + lo0[k]);
      r1[j + k] = q.reduce128((static_cast<u128>(hi1[k]) << 52) + lo1[k]);
    }
  }
}

}  // namespace

void inner_product(const u64* const* x, const u64* const* b, const u64* const* a,
                   std::size_t digits, std::size_t n, const Modulus& q, u64* r0, u64* r1) {
  if (ifma_available() && q.value() < (u64{1} << 50) && n % 8 == 0 && digits < (1u << 12)) {
    inner_product_ifma(x, b, a, digits, n, q, r0, r1);
  } else {
    inner_product_scalar(x, b, a, digits, n, q, r0, r1);
  }
}

#else

bool ifma_available() { return false; }

void inner_product(const u64* const* x, const u64* const* b, const u64* const* a,
                   std::size_t digits, std::size_t n, const Modulus& q, u64* r0, u64* r1) {
  inner_product_scalar(x, b, a, digits, n, q, r0, r1);
}

#endif

}  // namespace fheprune::ckks::kernels
