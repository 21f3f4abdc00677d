// AVX2 + FMA building blocks for CPUs without AVX-512 (internal to the engine): double-
// precision arithmetic for primes below 2^50 (Fma52), 64-bit integer lanes for wider ones
// (Lanes64x4).
//
// AVX2 has no 64 x 64-bit multiplier, but its double-precision FMA units multiply 53-bit
// integers and return the exact rounding error: with h = fl(x w), l = fma(x, w, -h) the
// product is exactly h + l. For a prime q < 2^50 and residues held as doubles (every integer
// below 2^53 is exact), x w mod q is then h - round(x w / q) q + l, which one more FMA computes
// exactly because the result is small. Everything stays an exact integer, so these kernels
// give the same bits as the scalar ones. Values may be negative: the NTT keeps them in about
// (-1.5q, 1.5q) and only the last pass brings them to [0, q).
//
// Functions carry target attributes, so this compiles without -march flags; callers check
// fma_available() before running any of it.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FHEPRUNE_HAVE_FMA_PATH 1

#include <immintrin.h>

#include "ckks/modarith.hpp"

#define FHEPRUNE_AVX2 __attribute__((target("avx2,fma")))

namespace fheprune::ckks::simd {

// AVX2 and FMA, checked once.
inline bool fma_available() {
  static const bool available = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return available;
}

// The bits of 2^52 as a double: or-ing an integer below 2^52 into its mantissa and
// subtracting 2^52 converts it exactly (AVX2 has no 64-bit integer conversion).
inline constexpr long long kTwo52Bits = 0x4330000000000000LL;

FHEPRUNE_AVX2 inline __m256d to_double(__m256i x) {
  const __m256i magic = _mm256_set1_epi64x(kTwo52Bits);
  return _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(x, magic)),
                       _mm256_castsi256_pd(magic));
}

// For integers in [0, 2^52).
FHEPRUNE_AVX2 inline __m256i to_u64(__m256d x) {
  const __m256i magic = _mm256_set1_epi64x(kTwo52Bits);
  return _mm256_xor_si256(_mm256_castpd_si256(_mm256_add_pd(x, _mm256_castsi256_pd(magic))),
                          magic);
}

FHEPRUNE_AVX2 inline __m256i load_int(const u64* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
FHEPRUNE_AVX2 inline void store_int(u64* p, __m256i x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x);
}

FHEPRUNE_AVX2 inline __m256d load(const u64* p) {
  return _mm256_castsi256_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
FHEPRUNE_AVX2 inline void store(u64* p, __m256d x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_castpd_si256(x));
}

// Modular arithmetic on integers held as doubles, for one prime q < 2^50.
struct Fma52 {
  __m256d q, q_inv;
  FHEPRUNE_AVX2 explicit Fma52(u64 modulus)
      : q(_mm256_set1_pd(static_cast<double>(modulus))),
        q_inv(_mm256_set1_pd(1.0 / static_cast<double>(modulus))) {}

  FHEPRUNE_AVX2 static __m256d round(__m256d x) {
    return _mm256_round_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // x - round(x / q) q, exactly: |result| <= q/2 (1 + 2^-50) for |x| < 2^52.
  FHEPRUNE_AVX2 __m256d reduce(__m256d x) const {
    return _mm256_fnmadd_pd(round(_mm256_mul_pd(x, q_inv)), q, x);
  }
  // x w - k q for the k nearest x w / q, exactly; wq = w / q (rounded), w in [0, q).
  // The estimate of x w / q is off by at most |x| 2^-52 (two roundings), so for |x| <= 2q
  // |result| <= q/2 + |x| 2^-52 q < q. h - k q is an integer of magnitude below
  // |result| + |l| < 2^51 + 2^48, exact in one FMA; l (the product's rounding error) is exact.
  FHEPRUNE_AVX2 __m256d mul(__m256d x, __m256d w, __m256d wq) const {
    const __m256d k = round(_mm256_mul_pd(x, wq));
    const __m256d h = _mm256_mul_pd(x, w);
    const __m256d l = _mm256_fmsub_pd(x, w, h);
    return _mm256_add_pd(_mm256_fnmadd_pd(k, q, h), l);
  }
  // The residue in [0, q) of an integer x with |x| < 2^53.
  FHEPRUNE_AVX2 __m256d canonical(__m256d x) const {
    const __m256d r = reduce(x);
    return _mm256_add_pd(r, _mm256_and_pd(_mm256_cmp_pd(r, _mm256_setzero_pd(), _CMP_LT_OQ), q));
  }
};

// Shoup multiplication in 64-bit integer lanes for any prime below 2^61, AVX2 having no
// 64 x 64-bit multiplier: each 64-bit product is built from 32 x 32-bit ones (vpmuludq).
struct Lanes64x4 {
  __m256i q, low32;
  FHEPRUNE_AVX2 explicit Lanes64x4(u64 modulus)
      : q(_mm256_set1_epi64x(static_cast<long long>(modulus))),
        low32(_mm256_set1_epi64x(0xffffffffLL)) {}
  // The high 64 bits of a b.
  FHEPRUNE_AVX2 __m256i mulhi(__m256i a, __m256i b) const {
    const __m256i a_hi = _mm256_srli_epi64(a, 32);
    const __m256i b_hi = _mm256_srli_epi64(b, 32);
    const __m256i ll = _mm256_mul_epu32(a, b);
    const __m256i lh = _mm256_mul_epu32(a, b_hi);
    const __m256i hl = _mm256_mul_epu32(a_hi, b);
    const __m256i hh = _mm256_mul_epu32(a_hi, b_hi);
    __m256i mid = _mm256_add_epi64(_mm256_srli_epi64(ll, 32), _mm256_and_si256(lh, low32));
    mid = _mm256_add_epi64(mid, _mm256_and_si256(hl, low32));
    __m256i hi = _mm256_add_epi64(hh, _mm256_srli_epi64(lh, 32));
    hi = _mm256_add_epi64(hi, _mm256_srli_epi64(hl, 32));
    return _mm256_add_epi64(hi, _mm256_srli_epi64(mid, 32));
  }
  // The low 64 bits of a b.
  FHEPRUNE_AVX2 static __m256i mullo(__m256i a, __m256i b) {
    const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)),
                                           _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b));
    return _mm256_add_epi64(_mm256_mul_epu32(a, b), _mm256_slli_epi64(cross, 32));
  }
  // w y mod q in [0, 2q) for any 64-bit y (ws = floor(w 2^64 / q)).
  FHEPRUNE_AVX2 __m256i mul(__m256i y, __m256i w, __m256i ws) const {
    return _mm256_sub_epi64(mullo(y, w), mullo(mulhi(y, ws), q));
  }
};

// x >= bound ? x - bound : x, for x < 2 bound < 2^63 (a signed comparison is then exact).
FHEPRUNE_AVX2 inline __m256i reduce_once(__m256i x, __m256i bound) {
  return _mm256_sub_epi64(x, _mm256_andnot_si256(_mm256_cmpgt_epi64(bound, x), bound));
}

}  // namespace fheprune::ckks::simd

#endif
