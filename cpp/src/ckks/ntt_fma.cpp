// AVX2 + FMA NTT kernels for primes below 2^50: four butterflies at a time in double
// precision (simd_fma.hpp explains the arithmetic), on CPUs without AVX-512.
//
// The polynomial is converted to doubles in place, transformed, and converted back fully
// reduced, so the result is bit for bit the scalar kernel's. Layers with t >= 4 run on
// contiguous vectors; the last two (t = 2, 1) pair up two vectors with 128-bit and in-lane
// shuffles.
#include "ckks/ntt.hpp"
#include "simd_fma.hpp"

namespace fheprune::ckks {

#if defined(FHEPRUNE_HAVE_FMA_PATH)

using simd::Fma52;
using simd::load;
using simd::store;

bool fma_ntt_available() { return simd::fma_available(); }

namespace {

// Cooley-Tukey: |x| may grow to about 1.34q across layers (x is reduced first, the product
// is within q/2 + |y| q 2^-52); outputs stay below 2q.
FHEPRUNE_AVX2 inline void ct_butterfly(const Fma52& m, __m256d& x, __m256d& y, __m256d w,
                                       __m256d wq) {
  const __m256d u = m.reduce(x);
  const __m256d v = m.mul(y, w, wq);
  x = _mm256_add_pd(u, v);
  y = _mm256_sub_pd(u, v);
}

// Gentleman-Sande: inputs and outputs within about q.
FHEPRUNE_AVX2 inline void gs_butterfly(const Fma52& m, __m256d& x, __m256d& y, __m256d w,
                                       __m256d wq) {
  const __m256d diff = _mm256_sub_pd(x, y);
  x = m.reduce(_mm256_add_pd(x, y));
  y = m.mul(diff, w, wq);
}

// Layer t = 2: groups of four (x0 x1 y0 y1); two groups per pair of vectors.
template <bool kForward>
FHEPRUNE_AVX2 void layer_t2(const Fma52& m, u64* a, std::size_t n, const double* w,
                            const double* wq) {
  for (std::size_t s = 0, g = 0; s < n; s += 8, g += 2) {
    const __m256d va = load(a + s), vb = load(a + s + 4);
    __m256d x = _mm256_permute2f128_pd(va, vb, 0x20);
    __m256d y = _mm256_permute2f128_pd(va, vb, 0x31);
    // (w_g, w_g, w_g+1, w_g+1)
    const __m256d vw = _mm256_permute4x64_pd(_mm256_castpd128_pd256(_mm_loadu_pd(w + g)), 0x50);
    const __m256d vwq =
        _mm256_permute4x64_pd(_mm256_castpd128_pd256(_mm_loadu_pd(wq + g)), 0x50);
    if constexpr (kForward) {
      ct_butterfly(m, x, y, vw, vwq);
    } else {
      gs_butterfly(m, x, y, vw, vwq);
    }
    store(a + s, _mm256_permute2f128_pd(x, y, 0x20));
    store(a + s + 4, _mm256_permute2f128_pd(x, y, 0x31));
  }
}

// Layer t = 1: groups of two (x y); four groups per pair of vectors, the lanes holding
// groups g, g+2, g+1, g+3.
template <bool kForward>
FHEPRUNE_AVX2 void layer_t1(const Fma52& m, u64* a, std::size_t n, const double* w,
                            const double* wq) {
  for (std::size_t s = 0, g = 0; s < n; s += 8, g += 4) {
    const __m256d va = load(a + s), vb = load(a + s + 4);
    __m256d x = _mm256_unpacklo_pd(va, vb);
    __m256d y = _mm256_unpackhi_pd(va, vb);
    const __m256d vw = _mm256_permute4x64_pd(_mm256_loadu_pd(w + g), 0xD8);
    const __m256d vwq = _mm256_permute4x64_pd(_mm256_loadu_pd(wq + g), 0xD8);
    if constexpr (kForward) {
      ct_butterfly(m, x, y, vw, vwq);
    } else {
      gs_butterfly(m, x, y, vw, vwq);
    }
    store(a + s, _mm256_unpacklo_pd(x, y));
    store(a + s + 4, _mm256_unpackhi_pd(x, y));
  }
}

FHEPRUNE_AVX2 void to_doubles(u64* a, std::size_t n) {
  for (std::size_t j = 0; j < n; j += 4) {
    store(a + j, simd::to_double(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + j))));
  }
}

FHEPRUNE_AVX2 void to_residues(const Fma52& m, u64* a, std::size_t n) {
  for (std::size_t j = 0; j < n; j += 4) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + j), simd::to_u64(m.canonical(load(a + j))));
  }
}

}  // namespace

FHEPRUNE_AVX2 void forward_fma(const NttFmaView& v, u64* a) {
  const Fma52 m(v.q);
  to_doubles(a, v.n);
  std::size_t m_groups = 1;
  std::size_t t = v.n >> 1;
  for (; t >= 4; m_groups <<= 1, t >>= 1) {
    for (std::size_t i = 0; i < m_groups; ++i) {
      const __m256d w = _mm256_set1_pd(v.roots[m_groups + i]);
      const __m256d wq = _mm256_set1_pd(v.roots_q[m_groups + i]);
      u64* x = a + 2 * i * t;
      u64* y = x + t;
      for (std::size_t j = 0; j < t; j += 4) {
        __m256d vx = load(x + j), vy = load(y + j);
        ct_butterfly(m, vx, vy, w, wq);
        store(x + j, vx);
        store(y + j, vy);
      }
    }
  }
  layer_t2<true>(m, a, v.n, v.roots + m_groups, v.roots_q + m_groups);
  m_groups <<= 1;
  layer_t1<true>(m, a, v.n, v.roots + m_groups, v.roots_q + m_groups);
  to_residues(m, a, v.n);
}

FHEPRUNE_AVX2 void inverse_fma(const NttFmaView& v, u64* a) {
  const Fma52 m(v.q);
  to_doubles(a, v.n);
  // The inverse twiddles are stored in visit order: layer m starts at n - 2m.
  std::size_t m_groups = v.n >> 1;
  layer_t1<false>(m, a, v.n, v.inv_roots, v.inv_roots_q);
  m_groups >>= 1;
  layer_t2<false>(m, a, v.n, v.inv_roots + (v.n - 2 * m_groups), v.inv_roots_q + (v.n - 2 * m_groups));
  m_groups >>= 1;
  for (std::size_t t = 4; m_groups > 1; m_groups >>= 1, t <<= 1) {
    const std::size_t base = v.n - 2 * m_groups;
    for (std::size_t i = 0; i < m_groups; ++i) {
      const __m256d w = _mm256_set1_pd(v.inv_roots[base + i]);
      const __m256d wq = _mm256_set1_pd(v.inv_roots_q[base + i]);
      u64* x = a + 2 * i * t;
      u64* y = x + t;
      for (std::size_t j = 0; j < t; j += 4) {
        __m256d vx = load(x + j), vy = load(y + j);
        gs_butterfly(m, vx, vy, w, wq);
        store(x + j, vx);
        store(y + j, vy);
      }
    }
  }
  // Last layer (t = n/2) with n^-1 folded in, fully reduced.
  const __m256d n_inv = _mm256_set1_pd(v.inv_n), n_inv_q = _mm256_set1_pd(v.inv_n_q);
  const __m256d n_root = _mm256_set1_pd(v.inv_n_root), n_root_q = _mm256_set1_pd(v.inv_n_root_q);
  const std::size_t half = v.n >> 1;
  for (std::size_t j = 0; j < half; j += 4) {
    const __m256d x = load(a + j), y = load(a + j + half);
    const __m256d lo = m.mul(_mm256_add_pd(x, y), n_inv, n_inv_q);
    const __m256d hi = m.mul(_mm256_sub_pd(x, y), n_root, n_root_q);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + j), simd::to_u64(m.canonical(lo)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + j + half), simd::to_u64(m.canonical(hi)));
  }
}

#else

bool fma_ntt_available() { return false; }
void forward_fma(const NttFmaView&, u64*) {}
void inverse_fma(const NttFmaView&, u64*) {}

#endif

}  // namespace fheprune::ckks
