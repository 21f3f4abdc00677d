// AVX-512 building blocks shared by the vector kernels (internal to the engine). Functions
// carry target attributes, so this compiles without -march flags; callers check
// avx512_available() before running any of it.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FHEPRUNE_HAVE_AVX512_PATH 1

#include <immintrin.h>

#include "ckks/modarith.hpp"

#define FHEPRUNE_AVX512 __attribute__((target("avx512f,avx512dq,avx512ifma")))
// GCC 12 reports a false 'maybe uninitialized' inside _mm512_min_epu64's own header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fheprune::ckks::simd {

// AVX-512 F, DQ and IFMA, checked once.
inline bool avx512_available() {
  static const bool available = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512ifma");
  }();
  return available;
}

FHEPRUNE_AVX512 inline __m512i set1(u64 v) { return _mm512_set1_epi64(static_cast<long long>(v)); }

// x >= bound ? x - bound : x, for x < 2 * bound.
FHEPRUNE_AVX512 inline __m512i reduce_once(__m512i x, __m512i bound) {
  return _mm512_min_epu64(x, _mm512_sub_epi64(x, bound));
}

// w * y mod q in [0, 2q) for y < 2^52 (Shoup with beta = 2^52).
struct Ifma52 {
  __m512i neg_q, mask52;
  FHEPRUNE_AVX512 explicit Ifma52(u64 q)
      : neg_q(set1((u64{1} << 52) - q)), mask52(set1((u64{1} << 52) - 1)) {}
  FHEPRUNE_AVX512 __m512i mul(__m512i y, __m512i w, __m512i ws) const {
    const __m512i zero = _mm512_setzero_si512();
    const __m512i quot = _mm512_madd52hi_epu64(zero, y, ws);
    __m512i r = _mm512_madd52lo_epu64(zero, y, w);
    r = _mm512_madd52lo_epu64(r, quot, neg_q);  // + low52(-quot * q)
    return _mm512_and_si512(r, mask52);
  }
};

// w * y mod q in [0, 2q) for any 64-bit y (Shoup with beta = 2^64).
struct Lanes64 {
  __m512i q;
  FHEPRUNE_AVX512 explicit Lanes64(u64 modulus) : q(set1(modulus)) {}
  FHEPRUNE_AVX512 static __m512i mulhi(__m512i a, __m512i b) {
    const __m512i low32 = set1(0xffffffffULL);
    const __m512i a_hi = _mm512_srli_epi64(a, 32);
    const __m512i b_hi = _mm512_srli_epi64(b, 32);
    const __m512i ll = _mm512_mul_epu32(a, b);
    const __m512i lh = _mm512_mul_epu32(a, b_hi);
    const __m512i hl = _mm512_mul_epu32(a_hi, b);
    const __m512i hh = _mm512_mul_epu32(a_hi, b_hi);
    __m512i mid = _mm512_add_epi64(_mm512_srli_epi64(ll, 32), _mm512_and_si512(lh, low32));
    mid = _mm512_add_epi64(mid, _mm512_and_si512(hl, low32));
    __m512i hi = _mm512_add_epi64(hh, _mm512_srli_epi64(lh, 32));
    hi = _mm512_add_epi64(hi, _mm512_srli_epi64(hl, 32));
    return _mm512_add_epi64(hi, _mm512_srli_epi64(mid, 32));
  }
  FHEPRUNE_AVX512 __m512i mul(__m512i y, __m512i w, __m512i ws) const {
    const __m512i quot = mulhi(y, ws);
    return _mm512_sub_epi64(_mm512_mullo_epi64(y, w), _mm512_mullo_epi64(quot, q));
  }
};

}  // namespace fheprune::ckks::simd

#endif
