// AVX2 NTT kernels for CPUs without AVX-512, four butterflies at a time:
// - primes below 2^50 in double precision with FMA (simd_fma.hpp explains the arithmetic):
//   the polynomial is converted to doubles in place, transformed, and converted back;
// - wider primes (the 60-bit ends of a chain) in 64-bit integer lanes, Harvey's butterflies
//   with 64 x 64-bit products built from 32 x 32-bit ones.
// Both end fully reduced, so the result is bit for bit the scalar kernel's. Layers with t >= 4
// run on contiguous vectors; the last two (t = 2, 1) pair up two vectors with 128-bit and
// in-lane shuffles.
#include "ckks/ntt.hpp"
#include "simd_fma.hpp"

namespace fheprune::ckks {

#if defined(FHEPRUNE_HAVE_FMA_PATH)

using simd::Fma52;
using simd::load;
using simd::store;

bool fma_ntt_available() { return simd::fma_available(); }

namespace {

// The two arithmetics share the layer loops. A butterfly policy holds one prime's constants
// and names the type of its twiddle tables; vectors are carried as __m256d either way (the
// integer policy casts, which costs nothing), so the shuffles of the narrow layers are shared.

// Doubles, primes below 2^50. Cooley-Tukey: |x| may grow to about 1.34q across layers (x is
// reduced first, the product is within q/2 + |y| q 2^-52); outputs stay below 2q.
// Gentleman-Sande: inputs and outputs within about q.
struct FmaButterfly {
  using Twiddle = double;  // w and w / q
  Fma52 m;
  FHEPRUNE_AVX2 explicit FmaButterfly(u64 q) : m(q) {}
  FHEPRUNE_AVX2 void ct(__m256d& x, __m256d& y, __m256d w, __m256d wq) const {
    const __m256d u = m.reduce(x);
    const __m256d v = m.mul(y, w, wq);
    x = _mm256_add_pd(u, v);
    y = _mm256_sub_pd(u, v);
  }
  FHEPRUNE_AVX2 void gs(__m256d& x, __m256d& y, __m256d w, __m256d wq) const {
    const __m256d diff = _mm256_sub_pd(x, y);
    x = m.reduce(_mm256_add_pd(x, y));
    y = m.mul(diff, w, wq);
  }
};

// 64-bit integer lanes, any prime below 2^61: Harvey's lazy butterflies as in the scalar
// kernel (Cooley-Tukey in [0, 4q), Gentleman-Sande in [0, 2q)).
struct LanesButterfly {
  using Twiddle = u64;  // w and floor(w 2^64 / q)
  simd::Lanes64x4 m;
  __m256i two_q;
  FHEPRUNE_AVX2 explicit LanesButterfly(u64 q)
      : m(q), two_q(_mm256_set1_epi64x(static_cast<long long>(2 * q))) {}
  FHEPRUNE_AVX2 void ct(__m256d& xd, __m256d& yd, __m256d w, __m256d ws) const {
    const __m256i x = simd::reduce_once(_mm256_castpd_si256(xd), two_q);
    const __m256i v =
        m.mul(_mm256_castpd_si256(yd), _mm256_castpd_si256(w), _mm256_castpd_si256(ws));
    yd = _mm256_castsi256_pd(_mm256_add_epi64(_mm256_sub_epi64(x, v), two_q));
    xd = _mm256_castsi256_pd(_mm256_add_epi64(x, v));
  }
  FHEPRUNE_AVX2 void gs(__m256d& xd, __m256d& yd, __m256d w, __m256d ws) const {
    const __m256i x = _mm256_castpd_si256(xd), y = _mm256_castpd_si256(yd);
    const __m256i diff = _mm256_add_epi64(_mm256_sub_epi64(x, y), two_q);
    xd = _mm256_castsi256_pd(simd::reduce_once(_mm256_add_epi64(x, y), two_q));
    yd = _mm256_castsi256_pd(m.mul(diff, _mm256_castpd_si256(w), _mm256_castpd_si256(ws)));
  }
};

FHEPRUNE_AVX2 inline __m256d broadcast(const double* p) { return _mm256_broadcast_sd(p); }
FHEPRUNE_AVX2 inline __m256d broadcast(const u64* p) {
  return _mm256_castsi256_pd(_mm256_set1_epi64x(static_cast<long long>(*p)));
}
FHEPRUNE_AVX2 inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }
FHEPRUNE_AVX2 inline __m256d load4(const u64* p) { return load(p); }
FHEPRUNE_AVX2 inline __m128d load2(const double* p) { return _mm_loadu_pd(p); }
FHEPRUNE_AVX2 inline __m128d load2(const u64* p) {
  return _mm_castsi128_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <bool kForward, class B>
FHEPRUNE_AVX2 inline void butterfly(const B& b, __m256d& x, __m256d& y, __m256d w, __m256d w2) {
  if constexpr (kForward) {
    b.ct(x, y, w, w2);
  } else {
    b.gs(x, y, w, w2);
  }
}

// Layers with t >= 4: contiguous vectors, one twiddle per group.
template <bool kForward, class B, class T>
FHEPRUNE_AVX2 void wide_layer(const B& b, u64* a, std::size_t groups, std::size_t t, const T* w,
                              const T* w2) {
  for (std::size_t i = 0; i < groups; ++i) {
    const __m256d vw = broadcast(w + i), vw2 = broadcast(w2 + i);
    u64* x = a + 2 * i * t;
    u64* y = x + t;
    for (std::size_t j = 0; j < t; j += 4) {
      __m256d vx = load(x + j), vy = load(y + j);
      butterfly<kForward>(b, vx, vy, vw, vw2);
      store(x + j, vx);
      store(y + j, vy);
    }
  }
}

// Layer t = 2: groups of four (x0 x1 y0 y1); two groups per pair of vectors.
template <bool kForward, class B, class T>
FHEPRUNE_AVX2 void layer_t2(const B& b, u64* a, std::size_t n, const T* w, const T* w2) {
  for (std::size_t s = 0, g = 0; s < n; s += 8, g += 2) {
    const __m256d va = load(a + s), vb = load(a + s + 4);
    __m256d x = _mm256_permute2f128_pd(va, vb, 0x20);
    __m256d y = _mm256_permute2f128_pd(va, vb, 0x31);
    // (w_g, w_g, w_g+1, w_g+1)
    const __m256d vw = _mm256_permute4x64_pd(_mm256_castpd128_pd256(load2(w + g)), 0x50);
    const __m256d vw2 = _mm256_permute4x64_pd(_mm256_castpd128_pd256(load2(w2 + g)), 0x50);
    butterfly<kForward>(b, x, y, vw, vw2);
    store(a + s, _mm256_permute2f128_pd(x, y, 0x20));
    store(a + s + 4, _mm256_permute2f128_pd(x, y, 0x31));
  }
}

// Layer t = 1: groups of two (x y); four groups per pair of vectors, the lanes holding
// groups g, g+2, g+1, g+3.
template <bool kForward, class B, class T>
FHEPRUNE_AVX2 void layer_t1(const B& b, u64* a, std::size_t n, const T* w, const T* w2) {
  for (std::size_t s = 0, g = 0; s < n; s += 8, g += 4) {
    const __m256d va = load(a + s), vb = load(a + s + 4);
    __m256d x = _mm256_unpacklo_pd(va, vb);
    __m256d y = _mm256_unpackhi_pd(va, vb);
    const __m256d vw = _mm256_permute4x64_pd(load4(w + g), 0xD8);
    const __m256d vw2 = _mm256_permute4x64_pd(load4(w2 + g), 0xD8);
    butterfly<kForward>(b, x, y, vw, vw2);
    store(a + s, _mm256_unpacklo_pd(x, y));
    store(a + s + 4, _mm256_unpackhi_pd(x, y));
  }
}

// Every layer but the inverse's last (t = n/2), which scales by n^-1 and is the caller's.
template <bool kForward, class B, class T>
FHEPRUNE_AVX2 void layers(const B& b, u64* a, std::size_t n, const T* w, const T* w2) {
  if constexpr (kForward) {
    std::size_t groups = 1, t = n >> 1;
    for (; t >= 4; groups <<= 1, t >>= 1) {
      wide_layer<true>(b, a, groups, t, w + groups, w2 + groups);
    }
    layer_t2<true>(b, a, n, w + groups, w2 + groups);
    groups <<= 1;
    layer_t1<true>(b, a, n, w + groups, w2 + groups);
  } else {
    // The inverse twiddles are stored in visit order: the layer of `groups` starts at
    // n - 2 groups.
    std::size_t groups = n >> 1;
    layer_t1<false>(b, a, n, w, w2);
    groups >>= 1;
    layer_t2<false>(b, a, n, w + (n - 2 * groups), w2 + (n - 2 * groups));
    groups >>= 1;
    for (std::size_t t = 4; groups > 1; groups >>= 1, t <<= 1) {
      wide_layer<false>(b, a, groups, t, w + (n - 2 * groups), w2 + (n - 2 * groups));
    }
  }
}

FHEPRUNE_AVX2 void to_doubles(u64* a, std::size_t n) {
  for (std::size_t j = 0; j < n; j += 4) {
    store(a + j, simd::to_double(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + j))));
  }
}

FHEPRUNE_AVX2 void store_residues(const Fma52& m, u64* p, __m256d x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), simd::to_u64(m.canonical(x)));
}

}  // namespace

FHEPRUNE_AVX2 void forward_fma(const NttFmaView& v, u64* a) {
  const FmaButterfly b(v.q);
  to_doubles(a, v.n);
  layers<true>(b, a, v.n, v.roots, v.roots_q);
  for (std::size_t j = 0; j < v.n; j += 4) store_residues(b.m, a + j, load(a + j));
}

FHEPRUNE_AVX2 void inverse_fma(const NttFmaView& v, u64* a) {
  const FmaButterfly b(v.q);
  to_doubles(a, v.n);
  layers<false>(b, a, v.n, v.inv_roots, v.inv_roots_q);
  // Last layer (t = n/2) with n^-1 folded in, fully reduced.
  const Fma52& m = b.m;
  const __m256d n_inv = _mm256_set1_pd(v.inv_n), n_inv_q = _mm256_set1_pd(v.inv_n_q);
  const __m256d n_root = _mm256_set1_pd(v.inv_n_root), n_root_q = _mm256_set1_pd(v.inv_n_root_q);
  const std::size_t half = v.n >> 1;
  for (std::size_t j = 0; j < half; j += 4) {
    const __m256d x = load(a + j), y = load(a + j + half);
    store_residues(m, a + j, m.mul(_mm256_add_pd(x, y), n_inv, n_inv_q));
    store_residues(m, a + j + half, m.mul(_mm256_sub_pd(x, y), n_root, n_root_q));
  }
}

FHEPRUNE_AVX2 void forward_avx2(const NttVectorView& v, u64* a) {
  const LanesButterfly b(v.q);
  layers<true>(b, a, v.n, v.roots, v.roots_shoup);
  const __m256i q = _mm256_set1_epi64x(static_cast<long long>(v.q));
  for (std::size_t j = 0; j < v.n; j += 4) {
    __m256i* p = reinterpret_cast<__m256i*>(a + j);
    _mm256_storeu_si256(p, simd::reduce_once(simd::reduce_once(_mm256_loadu_si256(p), b.two_q), q));
  }
}

FHEPRUNE_AVX2 void inverse_avx2(const NttVectorView& v, u64* a) {
  const LanesButterfly b(v.q);
  layers<false>(b, a, v.n, v.inv_roots, v.inv_roots_shoup);
  const __m256i q = _mm256_set1_epi64x(static_cast<long long>(v.q));
  const __m256i n_inv = _mm256_set1_epi64x(static_cast<long long>(v.inv_n));
  const __m256i n_inv_s = _mm256_set1_epi64x(static_cast<long long>(v.inv_n_shoup));
  const __m256i n_root = _mm256_set1_epi64x(static_cast<long long>(v.inv_n_root));
  const __m256i n_root_s = _mm256_set1_epi64x(static_cast<long long>(v.inv_n_root_shoup));
  const std::size_t half = v.n >> 1;
  for (std::size_t j = 0; j < half; j += 4) {
    __m256i* px = reinterpret_cast<__m256i*>(a + j);
    __m256i* py = reinterpret_cast<__m256i*>(a + j + half);
    const __m256i x = _mm256_loadu_si256(px), y = _mm256_loadu_si256(py);
    const __m256i sum = _mm256_add_epi64(x, y);
    const __m256i diff = _mm256_add_epi64(_mm256_sub_epi64(x, y), b.two_q);
    _mm256_storeu_si256(px, simd::reduce_once(b.m.mul(sum, n_inv, n_inv_s), q));
    _mm256_storeu_si256(py, simd::reduce_once(b.m.mul(diff, n_root, n_root_s), q));
  }
}

#else

bool fma_ntt_available() { return false; }
void forward_fma(const NttFmaView&, u64*) {}
void inverse_fma(const NttFmaView&, u64*) {}
void forward_avx2(const NttVectorView&, u64*) {}
void inverse_avx2(const NttVectorView&, u64*) {}

#endif

}  // namespace fheprune::ckks
