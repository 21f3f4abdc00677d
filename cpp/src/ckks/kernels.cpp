#include "kernels.hpp"

#include <algorithm>

#include "fheprune/ckks/context.hpp"
#include "simd.hpp"
#include "simd_fma.hpp"

namespace fheprune::ckks::kernels {

namespace scalar {

// Products of two residues below 2^60 summed in 128 bits stay below q * 2^64 for 16 terms.
constexpr std::size_t kLazyTerms = 16;

void inner_product(const u64* const* x, const u64* const* b, const u64* const* a,
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
      const NextRun next = next_run(x, b, a, d, digits, start, kBlock, n);
      for (std::size_t j0 = 0; j0 < len; j0 += 8) {  // one line of each per 8 coefficients
        next.line(j0);
        const std::size_t j1 = std::min(len, j0 + 8);
        for (std::size_t j = j0; j < j1; ++j) {
          acc0[j] += static_cast<u128>(xd[j]) * bd[j];
          acc1[j] += static_cast<u128>(xd[j]) * ad[j];
        }
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

void sub_scale(const u64* c, const u64* t, const MultiplyOperand& w, u64 q, u64* out,
                      std::size_t n, bool accumulate) {
  for (std::size_t j = 0; j < n; ++j) {
    const u64 v = mul_shoup(c[j] + q - t[j], w.value, w.shoup, q);
    if (accumulate) {
      const u64 s = out[j] + v;
      out[j] = s >= q ? s - q : s;
    } else {
      out[j] = v;
    }
  }
}

}  // namespace scalar

#if defined(FHEPRUNE_HAVE_AVX512_PATH)

namespace {

FHEPRUNE_AVX512 void sub_scale_avx512(const u64* c, const u64* t, const MultiplyOperand& w,
                                      u64 q, u64* out, std::size_t n, bool accumulate) {
  const simd::Lanes64 mul(q);
  const __m512i vq = simd::set1(q);
  const __m512i vw = simd::set1(w.value);
  const __m512i vws = simd::set1(w.shoup);
  for (std::size_t j = 0; j < n; j += 8) {
    const __m512i diff = _mm512_sub_epi64(_mm512_add_epi64(_mm512_loadu_si512(c + j), vq),
                                          _mm512_loadu_si512(t + j));
    __m512i v = simd::reduce_once(mul.mul(diff, vw, vws), vq);
    if (accumulate) v = simd::reduce_once(_mm512_add_epi64(v, _mm512_loadu_si512(out + j)), vq);
    _mm512_storeu_si512(out + j, v);
  }
}

// (lo + hi * 2^52) mod q for q < 2^50 and lo, hi < 2^63, in vector lanes: with lo = l0 +
// l1 * 2^52 and hi + l1 = h0 + h1 * 2^52 (all parts below 2^52), the value is l0 + h0 * 2^52
// + h1 * 2^104, three Shoup products by the constants 1, 2^52 and 2^104 mod q.
struct Reduce104 {
  simd::Ifma52 m;
  __m512i q, mask, one, one_s, c52, c52_s, c104, c104_s;
  FHEPRUNE_AVX512 explicit Reduce104(u64 qv)
      : m(qv), q(simd::set1(qv)), mask(simd::set1((u64{1} << 52) - 1)) {
    const auto shoup = [qv](u64 w) { return static_cast<u64>((static_cast<u128>(w) << 52) / qv); };
    const u64 w52 = static_cast<u64>((u128{1} << 52) % qv);
    const u64 w104 = static_cast<u64>(static_cast<u128>(w52) * w52 % qv);
    one = simd::set1(1);
    one_s = simd::set1(shoup(1));
    c52 = simd::set1(w52);
    c52_s = simd::set1(shoup(w52));
    c104 = simd::set1(w104);
    c104_s = simd::set1(shoup(w104));
  }
  FHEPRUNE_AVX512 __m512i operator()(__m512i lo, __m512i hi) const {
    const __m512i l0 = _mm512_and_si512(lo, mask);
    const __m512i h = _mm512_add_epi64(hi, _mm512_srli_epi64(lo, 52));
    const __m512i h0 = _mm512_and_si512(h, mask);
    const __m512i h1 = _mm512_srli_epi64(h, 52);
    __m512i r = simd::reduce_once(m.mul(l0, one, one_s), q);
    r = simd::reduce_once(_mm512_add_epi64(r, simd::reduce_once(m.mul(h0, c52, c52_s), q)), q);
    return simd::reduce_once(_mm512_add_epi64(r, simd::reduce_once(m.mul(h1, c104, c104_s), q)),
                             q);
  }
};

// Residues below 2^50: each 100-bit product splits into its low and high 52 bits, summed in
// separate 64-bit lanes (no carries to track for up to 2^12 digits). Below 2^11 digits both
// sums stay under 2^63 and the reduction runs in vector lanes too (Reduce104).
FHEPRUNE_AVX512 void inner_product_ifma(
    const u64* const* x, const u64* const* b, const u64* const* a, std::size_t digits,
    std::size_t n, const Modulus& q, u64* r0, u64* r1) {
  alignas(64) u64 lo0[8], hi0[8], lo1[8], hi1[8];
  const bool vector_reduce = digits < (1u << 11);
  const Reduce104 reduce(q.value());
  std::size_t j = 0;
  // Four vectors of coefficients per pass: sixteen independent accumulators hide the
  // multiply-add latency, and each digit's three pointers are loaded once per 32 coefficients.
  alignas(64) u64 wide[16][8];
  for (; j + 32 <= n; j += 32) {
    __m512i acc[16];
    for (auto& v : acc) v = _mm512_setzero_si512();
    for (std::size_t d = 0; d < digits; ++d) {
      const u64* xd = x[d] + j;
      const u64* bd = b[d] + j;
      const u64* ad = a[d] + j;
      for (int k = 0; k < 4; ++k) {
        const __m512i vx = _mm512_loadu_si512(xd + 8 * k);
        const __m512i vb = _mm512_loadu_si512(bd + 8 * k);
        const __m512i va = _mm512_loadu_si512(ad + 8 * k);
        acc[4 * k] = _mm512_madd52lo_epu64(acc[4 * k], vx, vb);
        acc[4 * k + 1] = _mm512_madd52hi_epu64(acc[4 * k + 1], vx, vb);
        acc[4 * k + 2] = _mm512_madd52lo_epu64(acc[4 * k + 2], vx, va);
        acc[4 * k + 3] = _mm512_madd52hi_epu64(acc[4 * k + 3], vx, va);
      }
    }
    if (vector_reduce) {
      for (int k = 0; k < 4; ++k) {
        _mm512_storeu_si512(r0 + j + 8 * k, reduce(acc[4 * k], acc[4 * k + 1]));
        _mm512_storeu_si512(r1 + j + 8 * k, reduce(acc[4 * k + 2], acc[4 * k + 3]));
      }
      continue;
    }
    for (int v = 0; v < 16; ++v) _mm512_store_si512(wide[v], acc[v]);
    for (int k = 0; k < 4; ++k) {
      for (int e = 0; e < 8; ++e) {
        const std::size_t at = j + 8 * static_cast<std::size_t>(k) + static_cast<std::size_t>(e);
        r0[at] = q.reduce128((static_cast<u128>(wide[4 * k + 1][e]) << 52) + wide[4 * k][e]);
        r1[at] = q.reduce128((static_cast<u128>(wide[4 * k + 3][e]) << 52) + wide[4 * k + 2][e]);
      }
    }
  }
  for (; j < n; j += 8) {
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
    if (vector_reduce) {
      _mm512_storeu_si512(r0 + j, reduce(l0, h0));
      _mm512_storeu_si512(r1 + j, reduce(l1, h1));
      continue;
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

// Residues of 2^52 < q < 2^61 (the wide primes at the ends of the chain). Each operand splits
// into its low 52 bits and a high part below 2^9, so a product x * b is
//   xl bl + (xl bh + xh bl) 2^52 + xh bh 2^104,
// seven multiply-adds into three 64-bit accumulators by weight: L (2^0), H (2^52), G (2^104).
// Per digit L gains one 52-bit part and H three, so below 2^10 digits neither reaches 2^64.
// The sum then reduces in vector lanes: L = l0 + l1 2^52, H + l1 = h0 + h1 2^52, and the value
// is l0 + h0 2^52 + (G + h1) 2^104, with l0 < q and two Shoup products by 2^52 and 2^104 mod q.
struct WideSum {
  __m512i l, h, g;
};

FHEPRUNE_AVX512 inline void wide_madd(WideSum& s, __m512i x, __m512i xh, __m512i y) {
  const __m512i yh = _mm512_srli_epi64(y, 52);
  s.l = _mm512_madd52lo_epu64(s.l, x, y);
  s.h = _mm512_madd52hi_epu64(s.h, x, y);
  s.h = _mm512_madd52lo_epu64(s.h, x, yh);
  s.g = _mm512_madd52hi_epu64(s.g, x, yh);
  s.h = _mm512_madd52lo_epu64(s.h, xh, y);
  s.g = _mm512_madd52hi_epu64(s.g, xh, y);
  s.g = _mm512_madd52lo_epu64(s.g, xh, yh);
}

struct WideReduce {
  simd::Lanes64 m;
  __m512i q, mask, c52, c52_s, c104, c104_s;
  FHEPRUNE_AVX512 explicit WideReduce(u64 qv)
      : m(qv), q(simd::set1(qv)), mask(simd::set1((u64{1} << 52) - 1)) {
    const auto shoup = [qv](u64 w) { return static_cast<u64>((static_cast<u128>(w) << 64) / qv); };
    const u64 w52 = static_cast<u64>((u128{1} << 52) % qv);
    const u64 w104 = static_cast<u64>(static_cast<u128>(w52) * w52 % qv);
    c52 = simd::set1(w52);
    c52_s = simd::set1(shoup(w52));
    c104 = simd::set1(w104);
    c104_s = simd::set1(shoup(w104));
  }
  FHEPRUNE_AVX512 __m512i operator()(const WideSum& s) const {
    const __m512i l0 = _mm512_and_si512(s.l, mask);
    const __m512i h = _mm512_add_epi64(s.h, _mm512_srli_epi64(s.l, 52));
    const __m512i h0 = _mm512_and_si512(h, mask);
    const __m512i g = _mm512_add_epi64(s.g, _mm512_srli_epi64(h, 52));
    __m512i r = simd::reduce_once(_mm512_add_epi64(
                                      l0, simd::reduce_once(m.mul(h0, c52, c52_s), q)),
                                  q);
    return simd::reduce_once(
        _mm512_add_epi64(r, simd::reduce_once(m.mul(g, c104, c104_s), q)), q);
  }
};

FHEPRUNE_AVX512 void inner_product_wide(const u64* const* x, const u64* const* b,
                                        const u64* const* a, std::size_t digits, std::size_t n,
                                        const Modulus& q, u64* r0, u64* r1) {
  const WideReduce reduce(q.value());
  // Two vectors of coefficients per pass: four independent sums hide the multiply-add latency.
  std::size_t j = 0;
  for (; j + 16 <= n; j += 16) {
    WideSum sb[2], sa[2];
    for (int k = 0; k < 2; ++k) {
      sb[k] = sa[k] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    }
    for (std::size_t d = 0; d < digits; ++d) {
      for (int k = 0; k < 2; ++k) {
        const __m512i vx = _mm512_loadu_si512(x[d] + j + 8 * k);
        const __m512i vxh = _mm512_srli_epi64(vx, 52);
        wide_madd(sb[k], vx, vxh, _mm512_loadu_si512(b[d] + j + 8 * k));
        wide_madd(sa[k], vx, vxh, _mm512_loadu_si512(a[d] + j + 8 * k));
      }
    }
    for (int k = 0; k < 2; ++k) {
      _mm512_storeu_si512(r0 + j + 8 * k, reduce(sb[k]));
      _mm512_storeu_si512(r1 + j + 8 * k, reduce(sa[k]));
    }
  }
  for (; j < n; j += 8) {
    WideSum sb{_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    WideSum sa = sb;
    for (std::size_t d = 0; d < digits; ++d) {
      const __m512i vx = _mm512_loadu_si512(x[d] + j);
      const __m512i vxh = _mm512_srli_epi64(vx, 52);
      wide_madd(sb, vx, vxh, _mm512_loadu_si512(b[d] + j));
      wide_madd(sa, vx, vxh, _mm512_loadu_si512(a[d] + j));
    }
    _mm512_storeu_si512(r0 + j, reduce(sb));
    _mm512_storeu_si512(r1 + j, reduce(sa));
  }
}

}  // namespace

#endif  // FHEPRUNE_HAVE_AVX512_PATH

InnerProductKernel inner_product_kernel(const Modulus& q, [[maybe_unused]] std::size_t digits,
                                        [[maybe_unused]] std::size_t n) {
  if (!vector_kernels_enabled()) return InnerProductKernel::kScalar;
  [[maybe_unused]] const u64 qv = q.value();
#if defined(FHEPRUNE_HAVE_AVX512_PATH)
  if (simd::avx512_available() && n % 8 == 0) {
    if (qv < (u64{1} << 50) && digits < (1u << 12)) return InnerProductKernel::kIfma;
    if (qv > (u64{1} << 52) && qv < (u64{1} << 61) && digits < (1u << 10)) {
      return InnerProductKernel::kWide;
    }
  }
#endif
#if defined(FHEPRUNE_HAVE_FMA_PATH)
  if (simd::fma_available() && n % 4 == 0 && qv < (u64{1} << 40) && digits < (1u << 11)) {
    return InnerProductKernel::kFma;
  }
#endif
  return InnerProductKernel::kScalar;
}

void inner_product(const u64* const* x, const u64* const* b, const u64* const* a,
                   std::size_t digits, std::size_t n, const Modulus& q, u64* r0, u64* r1) {
  switch (inner_product_kernel(q, digits, n)) {
#if defined(FHEPRUNE_HAVE_AVX512_PATH)
    case InnerProductKernel::kIfma:
      inner_product_ifma(x, b, a, digits, n, q, r0, r1);
      return;
    case InnerProductKernel::kWide:
      inner_product_wide(x, b, a, digits, n, q, r0, r1);
      return;
#endif
#if defined(FHEPRUNE_HAVE_FMA_PATH)
    case InnerProductKernel::kFma:
      inner_product_fma(x, b, a, digits, n, q, r0, r1);
      return;
#endif
    default:
      break;
  }
  scalar::inner_product(x, b, a, digits, n, q, r0, r1);
}

void sub_scale(const u64* c, const u64* t, const MultiplyOperand& w, u64 q, u64* out,
               std::size_t n, bool accumulate) {
#if defined(FHEPRUNE_HAVE_AVX512_PATH)
  if (vector_kernels_enabled() && simd::avx512_available() && n % 8 == 0) {
    sub_scale_avx512(c, t, w, q, out, n, accumulate);
    return;
  }
#endif
#if defined(FHEPRUNE_HAVE_FMA_PATH)
  if (vector_kernels_enabled() && simd::fma_available() && n % 4 == 0) {
    sub_scale_avx2(c, t, w, q, out, n, accumulate);
    return;
  }
#endif
  scalar::sub_scale(c, t, w, q, out, n, accumulate);
}

}  // namespace fheprune::ckks::kernels
