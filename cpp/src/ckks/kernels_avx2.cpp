// The inner product of key switching and of fused plaintext sums, and the scaled difference
// of ModDown and rescaling, on CPUs with AVX2 and FMA but no AVX-512 (internal to the engine;
// kernels.cpp dispatches to them).
//
// Residues below 2^40 split into 20-bit halves, x = x1 2^20 + x0, so a product is
//   x0 y0 + (x1 y0 + x0 y1) 2^20 + x1 y1 2^40,
// four products of integers below 2^20 that double-precision FMAs sum exactly into three
// sums by weight (below 2^52 for fewer than 2^11 digits). The sums reduce in vector lanes at
// the end (simd::Fma52), so the result is the scalar kernel's, bit for bit.
//
// The digits run in the outer loop over blocks of coefficients whose sums stay in L1, and
// each digit prefetches the next one's operands: the plaintexts of a fused sum and the keys
// of a rotation arrive from memory in short runs that the hardware prefetchers do not
// follow, and without the prefetch the faster arithmetic only waits longer for them.
#include "kernels.hpp"

#include <algorithm>

#include "ckks/ntt.hpp"
#include "simd_fma.hpp"

#if defined(FHEPRUNE_HAVE_FMA_PATH)

namespace fheprune::ckks::kernels {

namespace {

constexpr double kTwo20 = 1048576.0;

// x = hi 2^20 + lo for an integer x in [0, 2^40) held as a double.
struct Halves {
  __m256d lo, hi;
};

FHEPRUNE_AVX2 inline Halves split(const u64* p) {
  const __m256d x = simd::to_double(simd::load_int(p));
  const __m256d hi = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.0 / kTwo20)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  return {_mm256_fnmadd_pd(hi, _mm256_set1_pd(kTwo20), x), hi};
}

// sums[0..2] += the weight-2^0, 2^20 and 2^40 parts of x y.
FHEPRUNE_AVX2 inline void madd(double* const* sums, std::size_t j, const Halves& x,
                               const Halves& y) {
  const __m256d s0 = _mm256_load_pd(sums[0] + j);
  const __m256d s1 = _mm256_load_pd(sums[1] + j);
  const __m256d s2 = _mm256_load_pd(sums[2] + j);
  _mm256_store_pd(sums[0] + j, _mm256_fmadd_pd(x.lo, y.lo, s0));
  _mm256_store_pd(sums[1] + j, _mm256_fmadd_pd(x.hi, y.lo, _mm256_fmadd_pd(x.lo, y.hi, s1)));
  _mm256_store_pd(sums[2] + j, _mm256_fmadd_pd(x.hi, y.hi, s2));
}

// (s0 + s1 2^20 + s2 2^40) mod q in [0, q) for sums in [0, 2^52).
struct Combine {
  simd::Fma52 m;
  __m256d c20, c20_q, c40, c40_q;
  FHEPRUNE_AVX2 explicit Combine(const Modulus& q) : m(q.value()) {
    const double qd = static_cast<double>(q.value());
    const double w20 = static_cast<double>((u64{1} << 20) % q.value());
    const double w40 = static_cast<double>((u64{1} << 40) % q.value());
    c20 = _mm256_set1_pd(w20);
    c20_q = _mm256_set1_pd(w20 / qd);
    c40 = _mm256_set1_pd(w40);
    c40_q = _mm256_set1_pd(w40 / qd);
  }
  // Each sum first comes to within q/2 (1 + 2^-50) of zero, inside Fma52::mul's bound, whose
  // products by 2^20 and 2^40 mod q are then within q; the total, within 5q/2, is far inside
  // canonical()'s 2^53.
  FHEPRUNE_AVX2 __m256i operator()(__m256d s0, __m256d s1, __m256d s2) const {
    const __m256d t1 = m.mul(m.reduce(s1), c20, c20_q);
    const __m256d t2 = m.mul(m.reduce(s2), c40, c40_q);
    const __m256d total = _mm256_add_pd(_mm256_add_pd(m.reduce(s0), t1), t2);
    return simd::to_u64(m.canonical(total));
  }
};

}  // namespace

FHEPRUNE_AVX2 void inner_product_fma(const u64* const* x, const u64* const* b,
                                     const u64* const* a, std::size_t digits, std::size_t n,
                                     const Modulus& q, u64* r0, u64* r1) {
  constexpr std::size_t kBlock = 256;  // six sums of 256 doubles: 12 KiB, in L1
  alignas(32) double sum[6][kBlock];
  double* const sb[3] = {sum[0], sum[1], sum[2]};
  double* const sa[3] = {sum[3], sum[4], sum[5]};
  const Combine combine(q);
  for (std::size_t start = 0; start < n; start += kBlock) {
    const std::size_t len = std::min(kBlock, n - start);
    for (auto& s : sum) std::fill(s, s + len, 0.0);
    for (std::size_t d = 0; d < digits; ++d) {
      const u64* xd = x[d] + start;
      const u64* bd = b[d] + start;
      const u64* ad = a[d] + start;
      const NextRun next = next_run(x, b, a, d, digits, start, kBlock, n);
      for (std::size_t j = 0; j < len; j += 4) {
        if (j % 8 == 0) next.line(j);  // one line of each operand per 8 coefficients
        const Halves xv = split(xd + j);
        madd(sb, j, xv, split(bd + j));
        madd(sa, j, xv, split(ad + j));
      }
    }
    for (std::size_t j = 0; j < len; j += 4) {
      simd::store_int(r0 + start + j, combine(_mm256_load_pd(sb[0] + j), _mm256_load_pd(sb[1] + j),
                                              _mm256_load_pd(sb[2] + j)));
      simd::store_int(r1 + start + j, combine(_mm256_load_pd(sa[0] + j), _mm256_load_pd(sa[1] + j),
                                              _mm256_load_pd(sa[2] + j)));
    }
  }
}

FHEPRUNE_AVX2 void sub_scale_avx2(const u64* c, const u64* t, const MultiplyOperand& w, u64 q,
                                  u64* out, std::size_t n, bool accumulate) {
  if (q < kFmaPrimeBound) {
    // c - t lies in (-q, q), within Fma52::mul's bounds; its product is within q of zero.
    const simd::Fma52 m(q);
    const __m256d wd = _mm256_set1_pd(static_cast<double>(w.value));
    const __m256d wq = _mm256_set1_pd(static_cast<double>(w.value) / static_cast<double>(q));
    const __m256d zero = _mm256_setzero_pd();
    for (std::size_t j = 0; j < n; j += 4) {
      const __m256d diff = _mm256_sub_pd(simd::to_double(simd::load_int(c + j)),
                                         simd::to_double(simd::load_int(t + j)));
      __m256d v = m.mul(diff, wd, wq);
      v = _mm256_add_pd(v, _mm256_and_pd(_mm256_cmp_pd(v, zero, _CMP_LT_OQ), m.q));
      if (accumulate) {
        v = _mm256_add_pd(v, simd::to_double(simd::load_int(out + j)));
        v = _mm256_sub_pd(v, _mm256_and_pd(_mm256_cmp_pd(v, m.q, _CMP_GE_OQ), m.q));
      }
      simd::store_int(out + j, simd::to_u64(v));
    }
    return;
  }
  // Wider primes: Shoup products in 64-bit integer lanes, as the integer-lane NTT.
  const simd::Lanes64x4 m(q);
  const __m256i vw = _mm256_set1_epi64x(static_cast<long long>(w.value));
  const __m256i vws = _mm256_set1_epi64x(static_cast<long long>(w.shoup));
  for (std::size_t j = 0; j < n; j += 4) {
    const __m256i diff = _mm256_sub_epi64(_mm256_add_epi64(simd::load_int(c + j), m.q),
                                          simd::load_int(t + j));
    __m256i v = simd::reduce_once(m.mul(diff, vw, vws), m.q);
    if (accumulate) v = simd::reduce_once(_mm256_add_epi64(v, simd::load_int(out + j)), m.q);
    simd::store_int(out + j, v);
  }
}

}  // namespace fheprune::ckks::kernels

#endif
