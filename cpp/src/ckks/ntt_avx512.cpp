// AVX-512 NTT kernels: eight butterflies at a time, for every layer.
//
// Two multiplier policies share one butterfly code: IFMA for primes below 2^50 (52-bit
// multiply-add, Shoup constants scaled by 2^52), and 64-bit lanes for larger primes (high half
// of a 64x64 product built from four 32x32 products, Shoup constants scaled by 2^64). Layers
// with t >= 8 run on contiguous vectors; the last three (t = 4, 2, 1) gather the x and y halves
// of consecutive groups with permutes.
#include "ckks/ntt.hpp"
#include "simd.hpp"

namespace fheprune::ckks {

#if defined(FHEPRUNE_HAVE_AVX512_PATH)

using simd::Ifma52;
using simd::Lanes64;
using simd::reduce_once;
using simd::set1;

bool avx512_ntt_available() { return simd::avx512_available(); }

namespace {

// Permutation indices that split 16 values into the x and y halves of groups of width 2t.
struct NarrowIndex {
  __m512i x, y, back_a, back_b, twiddle;
  FHEPRUNE_AVX512 explicit NarrowIndex(std::size_t t) {
    alignas(64) long long ix[8], iy[8], ia[8], ib[8], iw[8];
    for (std::size_t l = 0; l < 8; ++l) {
      ix[l] = static_cast<long long>(2 * t * (l / t) + l % t);
      iy[l] = ix[l] + static_cast<long long>(t);
      iw[l] = static_cast<long long>(l / t);
    }
    for (std::size_t p = 0; p < 16; ++p) {
      const std::size_t g = p / (2 * t), r = p % (2 * t);
      const long long src = r < t ? static_cast<long long>(g * t + r)
                                  : static_cast<long long>(8 + g * t + r - t);
      (p < 8 ? ia[p] : ib[p - 8]) = src;
    }
    x = _mm512_load_si512(ix);
    y = _mm512_load_si512(iy);
    back_a = _mm512_load_si512(ia);
    back_b = _mm512_load_si512(ib);
    twiddle = _mm512_load_si512(iw);
  }
};

// Cooley-Tukey butterfly: inputs in [0, 4q), outputs in [0, 4q).
template <typename Mul>
FHEPRUNE_AVX512 inline void ct_butterfly(const Mul& m, __m512i& x, __m512i& y, __m512i w,
                                         __m512i ws, __m512i two_q) {
  x = reduce_once(x, two_q);
  const __m512i v = m.mul(y, w, ws);
  y = _mm512_add_epi64(_mm512_sub_epi64(x, v), two_q);
  x = _mm512_add_epi64(x, v);
}

// Gentleman-Sande butterfly: inputs in [0, 2q), outputs in [0, 2q).
template <typename Mul>
FHEPRUNE_AVX512 inline void gs_butterfly(const Mul& m, __m512i& x, __m512i& y, __m512i w,
                                         __m512i ws, __m512i two_q) {
  const __m512i diff = _mm512_add_epi64(_mm512_sub_epi64(x, y), two_q);
  x = reduce_once(_mm512_add_epi64(x, y), two_q);
  y = m.mul(diff, w, ws);
}

template <bool kForward, typename Mul>
FHEPRUNE_AVX512 void narrow_layer(const Mul& m, u64* a, std::size_t n, std::size_t t,
                                  const u64* w, const u64* ws, __m512i two_q) {
  const NarrowIndex idx(t);
  for (std::size_t s = 0; s < n; s += 16) {
    const __m512i va = _mm512_loadu_si512(a + s);
    const __m512i vb = _mm512_loadu_si512(a + s + 8);
    __m512i x = _mm512_permutex2var_epi64(va, idx.x, vb);
    __m512i y = _mm512_permutex2var_epi64(va, idx.y, vb);
    const std::size_t group = s / (2 * t);
    const __m512i vw = _mm512_permutexvar_epi64(idx.twiddle, _mm512_loadu_si512(w + group));
    const __m512i vws = _mm512_permutexvar_epi64(idx.twiddle, _mm512_loadu_si512(ws + group));
    if constexpr (kForward) {
      ct_butterfly(m, x, y, vw, vws, two_q);
    } else {
      gs_butterfly(m, x, y, vw, vws, two_q);
    }
    _mm512_storeu_si512(a + s, _mm512_permutex2var_epi64(x, idx.back_a, y));
    _mm512_storeu_si512(a + s + 8, _mm512_permutex2var_epi64(x, idx.back_b, y));
  }
}

template <typename Mul>
FHEPRUNE_AVX512 void forward_impl(const NttVectorView& v, const Mul& mul, u64* a) {
  const __m512i two_q = set1(2 * v.q);
  std::size_t m = 1;
  std::size_t t = v.n >> 1;
  for (; t >= 8; m <<= 1, t >>= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      const __m512i w = set1(v.roots[m + i]);
      const __m512i ws = set1(v.roots_shoup[m + i]);
      u64* x = a + 2 * i * t;
      u64* y = x + t;
      for (std::size_t j = 0; j < t; j += 8) {
        __m512i vx = _mm512_loadu_si512(x + j);
        __m512i vy = _mm512_loadu_si512(y + j);
        ct_butterfly(mul, vx, vy, w, ws, two_q);
        _mm512_storeu_si512(x + j, vx);
        _mm512_storeu_si512(y + j, vy);
      }
    }
  }
  for (; t >= 1; m <<= 1, t >>= 1) {
    narrow_layer<true>(mul, a, v.n, t, v.roots + m, v.roots_shoup + m, two_q);
  }
  const __m512i q = set1(v.q);
  for (std::size_t j = 0; j < v.n; j += 8) {
    const __m512i x = _mm512_loadu_si512(a + j);
    _mm512_storeu_si512(a + j, reduce_once(reduce_once(x, two_q), q));
  }
}

template <typename Mul>
FHEPRUNE_AVX512 void inverse_impl(const NttVectorView& v, const Mul& mul, u64* a) {
  const __m512i two_q = set1(2 * v.q);
  std::size_t m = v.n >> 1;
  std::size_t t = 1;
  std::size_t idx = 0;
  for (; t < 8; m >>= 1, t <<= 1) {
    narrow_layer<false>(mul, a, v.n, t, v.inv_roots + idx, v.inv_roots_shoup + idx, two_q);
    idx += m;
  }
  for (; m > 1; m >>= 1, t <<= 1) {
    for (std::size_t i = 0; i < m; ++i, ++idx) {
      const __m512i w = set1(v.inv_roots[idx]);
      const __m512i ws = set1(v.inv_roots_shoup[idx]);
      u64* x = a + 2 * i * t;
      u64* y = x + t;
      for (std::size_t j = 0; j < t; j += 8) {
        __m512i vx = _mm512_loadu_si512(x + j);
        __m512i vy = _mm512_loadu_si512(y + j);
        gs_butterfly(mul, vx, vy, w, ws, two_q);
        _mm512_storeu_si512(x + j, vx);
        _mm512_storeu_si512(y + j, vy);
      }
    }
  }
  // Last layer with n^-1 folded in, fully reduced.
  const __m512i q = set1(v.q);
  const __m512i n_inv = set1(v.inv_n), n_inv_s = set1(v.inv_n_shoup);
  const __m512i n_root = set1(v.inv_n_root), n_root_s = set1(v.inv_n_root_shoup);
  const std::size_t half = v.n >> 1;
  for (std::size_t j = 0; j < half; j += 8) {
    const __m512i x = _mm512_loadu_si512(a + j);
    const __m512i y = _mm512_loadu_si512(a + j + half);
    const __m512i sum = _mm512_add_epi64(x, y);
    const __m512i diff = _mm512_add_epi64(_mm512_sub_epi64(x, y), two_q);
    _mm512_storeu_si512(a + j, reduce_once(mul.mul(sum, n_inv, n_inv_s), q));
    _mm512_storeu_si512(a + j + half, reduce_once(mul.mul(diff, n_root, n_root_s), q));
  }
}

}  // namespace

FHEPRUNE_AVX512 void forward_avx512(const NttVectorView& v, u64* a) {
  if (v.ifma) {
    forward_impl(v, Ifma52(v.q), a);
  } else {
    forward_impl(v, Lanes64(v.q), a);
  }
}

FHEPRUNE_AVX512 void inverse_avx512(const NttVectorView& v, u64* a) {
  if (v.ifma) {
    inverse_impl(v, Ifma52(v.q), a);
  } else {
    inverse_impl(v, Lanes64(v.q), a);
  }
}

#else

bool avx512_ntt_available() { return false; }
void forward_avx512(const NttVectorView&, u64*) {}
void inverse_avx512(const NttVectorView&, u64*) {}

#endif

}  // namespace fheprune::ckks
