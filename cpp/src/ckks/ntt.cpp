#include "fheprune/ckks/ntt.hpp"

#include <immintrin.h>

#include <bit>

#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/primes.hpp"

namespace fheprune::ckks {

namespace {

// IFMA multiplies 52-bit operands; lazy values stay below 4q, so q must stay below 2^50.
constexpr u64 kIfmaPrimeBound = u64{1} << 50;

bool cpu_has_ifma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
#else
  return false;
#endif
}

u64 shoup52(u64 w, u64 q) { return static_cast<u64>((static_cast<u128>(w) << 52) / q); }

}  // namespace

NttTables::NttTables(std::size_t n, const Modulus& q) : n_(n), q_(q) {
  if (n < 2 || !std::has_single_bit(n)) throw ParameterError("NTT size must be a power of two");
  log_n_ = std::countr_zero(n);
  psi_ = minimal_primitive_root(2 * n, q);
  const u64 qv = q.value();
  const u64 psi_inv = q.inv(psi_);

  roots_.resize(n);
  inv_roots_.resize(n);
  u64 power = 1;
  u64 inv_power = 1;
  std::vector<u64> pow_table(n), inv_pow_table(n);
  for (std::size_t i = 0; i < n; ++i) {
    pow_table[i] = power;
    inv_pow_table[i] = inv_power;
    power = q.mul(power, psi_);
    inv_power = q.mul(inv_power, psi_inv);
  }
  for (std::size_t k = 0; k < n; ++k) {
    roots_[k] = pow_table[reverse_bits(k, log_n_)];
  }
  // The inverse walks layers from m = n/2 down to 1, visiting inv psi^bitrev(m+i) for i < m;
  // store them contiguously in visit order so the loop streams through memory.
  std::size_t idx = 0;
  for (std::size_t m = n >> 1; m >= 1; m >>= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      inv_roots_[idx++] = inv_pow_table[reverse_bits(m + i, log_n_)];
    }
  }
  roots_shoup_.resize(n);
  inv_roots_shoup_.resize(n);
  for (std::size_t k = 0; k < n; ++k) {
    roots_shoup_[k] = shoup_precompute(roots_[k], qv);
    inv_roots_shoup_[k] = shoup_precompute(inv_roots_[k], qv);
  }
  const u64 n_inv = q.inv(static_cast<u64>(n % qv));
  inv_n_ = MultiplyOperand(n_inv, q);
  inv_n_root_ = MultiplyOperand(q.mul(n_inv, inv_roots_[n - 2]), q);

  vectorized_ = qv < kIfmaPrimeBound && n >= 16 && cpu_has_ifma();
  if (vectorized_) {
    roots_shoup52_.resize(n);
    inv_roots_shoup52_.resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      roots_shoup52_[k] = shoup52(roots_[k], qv);
      inv_roots_shoup52_[k] = shoup52(inv_roots_[k], qv);
    }
  }
}

// Radix-2 Cooley-Tukey layers from (m, t) down to t = 1, then full reduction.
void NttTables::forward_scalar_layers(u64* a, std::size_t m, std::size_t t) const {
  const u64 q = q_.value();
  const u64 two_q = 2 * q;
  for (; t >= 1; m <<= 1, t >>= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      const u64 w = roots_[m + i];
      const u64 ws = roots_shoup_[m + i];
      u64* __restrict x = a + 2 * i * t;
      u64* __restrict y = x + t;
      for (std::size_t j = 0; j < t; ++j) {
        // Inputs in [0, 4q); outputs in [0, 4q).
        u64 u = x[j];
        u = u >= two_q ? u - two_q : u;
        const u64 v = mul_shoup_lazy(y[j], w, ws, q);
        x[j] = u + v;
        y[j] = u - v + two_q;
      }
    }
    if (t == 1) break;
  }
  for (std::size_t j = 0; j < n_; ++j) {
    u64 v = a[j];
    v = v >= two_q ? v - two_q : v;
    a[j] = v >= q ? v - q : v;
  }
}

void NttTables::forward(u64* a) const {
  if (vectorized_) {
    forward_ifma(a);
  } else {
    forward_scalar_layers(a, 1, n_ >> 1);
  }
}

// Gentleman-Sande layers while t < stop_t (all but the last when stop_t = n/2).
void NttTables::inverse_scalar_layers(u64* a, std::size_t& m, std::size_t& t, std::size_t& idx,
                                      std::size_t stop_t) const {
  const u64 q = q_.value();
  const u64 two_q = 2 * q;
  for (; m > 1 && t < stop_t; m >>= 1, t <<= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      const u64 w = inv_roots_[idx];
      const u64 ws = inv_roots_shoup_[idx];
      ++idx;
      u64* __restrict x = a + 2 * i * t;
      u64* __restrict y = x + t;
      for (std::size_t j = 0; j < t; ++j) {
        // Inputs in [0, 2q); outputs in [0, 2q).
        const u64 u = x[j];
        const u64 v = y[j];
        u64 s = u + v;
        s = s >= two_q ? s - two_q : s;
        x[j] = s;
        y[j] = mul_shoup_lazy(u - v + two_q, w, ws, q);
      }
    }
  }
}

void NttTables::inverse(u64* a) const {
  if (vectorized_) {
    inverse_ifma(a);
    return;
  }
  const u64 q = q_.value();
  const u64 two_q = 2 * q;
  std::size_t m = n_ >> 1;
  std::size_t t = 1;
  std::size_t idx = 0;
  inverse_scalar_layers(a, m, t, idx, n_);
  // Last layer (m = 1, t = n/2), with the n^-1 scaling folded in.
  const std::size_t half = n_ >> 1;
  for (std::size_t j = 0; j < half; ++j) {
    const u64 u = a[j];
    const u64 v = a[j + half];
    a[j] = mul_shoup(u + v, inv_n_.value, inv_n_.shoup, q);
    a[j + half] = mul_shoup(u - v + two_q, inv_n_root_.value, inv_n_root_.shoup, q);
  }
}

// ---- AVX-512 IFMA kernels: eight 52-bit butterflies per instruction stream. ----
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FHEPRUNE_IFMA __attribute__((target("avx512f,avx512ifma")))
// GCC 12 reports a false 'maybe uninitialized' inside _mm512_min_epu64's own header.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

// w * y mod q in [0, 2q) for y < 2^52 (Shoup with beta = 2^52).
FHEPRUNE_IFMA inline __m512i mul_shoup52(__m512i y, __m512i w, __m512i w52, __m512i neg_q,
                                          __m512i mask52) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i quot = _mm512_madd52hi_epu64(zero, y, w52);
  __m512i r = _mm512_madd52lo_epu64(zero, y, w);
  r = _mm512_madd52lo_epu64(r, quot, neg_q);  // + low52(-quot * q)
  return _mm512_and_si512(r, mask52);
}

// x >= bound ? x - bound : x, for x < 2 * bound.
FHEPRUNE_IFMA inline __m512i reduce_once(__m512i x, __m512i bound) {
  return _mm512_min_epu64(x, _mm512_sub_epi64(x, bound));
}

}  // namespace

FHEPRUNE_IFMA void NttTables::forward_ifma(u64* a) const {
  const u64 q = q_.value();
  const __m512i two_q = _mm512_set1_epi64(static_cast<long long>(2 * q));
  const __m512i neg_q = _mm512_set1_epi64(static_cast<long long>((u64{1} << 52) - q));
  const __m512i mask52 = _mm512_set1_epi64(static_cast<long long>((u64{1} << 52) - 1));
  std::size_t m = 1;
  std::size_t t = n_ >> 1;
  for (; t >= 8; m <<= 1, t >>= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      const __m512i w = _mm512_set1_epi64(static_cast<long long>(roots_[m + i]));
      const __m512i w52 = _mm512_set1_epi64(static_cast<long long>(roots_shoup52_[m + i]));
      u64* x = a + 2 * i * t;
      u64* y = x + t;
      for (std::size_t j = 0; j < t; j += 8) {
        __m512i vx = _mm512_loadu_si512(x + j);
        const __m512i vy = _mm512_loadu_si512(y + j);
        vx = reduce_once(vx, two_q);
        const __m512i v = mul_shoup52(vy, w, w52, neg_q, mask52);
        _mm512_storeu_si512(x + j, _mm512_add_epi64(vx, v));
        _mm512_storeu_si512(y + j, _mm512_add_epi64(_mm512_sub_epi64(vx, v), two_q));
      }
    }
  }
  // The last three layers (t = 4, 2, 1) and the final reduction, scalar.
  forward_scalar_layers(a, m, t);
}

FHEPRUNE_IFMA void NttTables::inverse_ifma(u64* a) const {
  const u64 q = q_.value();
  const __m512i vq = _mm512_set1_epi64(static_cast<long long>(q));
  const __m512i two_q = _mm512_set1_epi64(static_cast<long long>(2 * q));
  const __m512i neg_q = _mm512_set1_epi64(static_cast<long long>((u64{1} << 52) - q));
  const __m512i mask52 = _mm512_set1_epi64(static_cast<long long>((u64{1} << 52) - 1));
  std::size_t m = n_ >> 1;
  std::size_t t = 1;
  std::size_t idx = 0;
  inverse_scalar_layers(a, m, t, idx, 8);  // t = 1, 2, 4
  for (; m > 1; m >>= 1, t <<= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      const __m512i w = _mm512_set1_epi64(static_cast<long long>(inv_roots_[idx]));
      const __m512i w52 = _mm512_set1_epi64(static_cast<long long>(inv_roots_shoup52_[idx]));
      ++idx;
      u64* x = a + 2 * i * t;
      u64* y = x + t;
      for (std::size_t j = 0; j < t; j += 8) {
        const __m512i vx = _mm512_loadu_si512(x + j);
        const __m512i vy = _mm512_loadu_si512(y + j);
        _mm512_storeu_si512(x + j, reduce_once(_mm512_add_epi64(vx, vy), two_q));
        const __m512i diff = _mm512_add_epi64(_mm512_sub_epi64(vx, vy), two_q);
        _mm512_storeu_si512(y + j, mul_shoup52(diff, w, w52, neg_q, mask52));
      }
    }
  }
  // Last layer with n^-1 folded in, fully reduced.
  const __m512i n_inv = _mm512_set1_epi64(static_cast<long long>(inv_n_.value));
  const __m512i n_inv52 = _mm512_set1_epi64(static_cast<long long>(shoup52(inv_n_.value, q)));
  const __m512i n_root = _mm512_set1_epi64(static_cast<long long>(inv_n_root_.value));
  const __m512i n_root52 =
      _mm512_set1_epi64(static_cast<long long>(shoup52(inv_n_root_.value, q)));
  const std::size_t half = n_ >> 1;
  for (std::size_t j = 0; j < half; j += 8) {
    const __m512i vx = _mm512_loadu_si512(a + j);
    const __m512i vy = _mm512_loadu_si512(a + j + half);
    const __m512i sum = _mm512_add_epi64(vx, vy);
    const __m512i diff = _mm512_add_epi64(_mm512_sub_epi64(vx, vy), two_q);
    _mm512_storeu_si512(a + j, reduce_once(mul_shoup52(sum, n_inv, n_inv52, neg_q, mask52), vq));
    _mm512_storeu_si512(a + j + half,
                        reduce_once(mul_shoup52(diff, n_root, n_root52, neg_q, mask52), vq));
  }
}

#else
void NttTables::forward_ifma(u64* a) const { forward_scalar_layers(a, 1, n_ >> 1); }
void NttTables::inverse_ifma(u64* a) const {
  std::size_t m = n_ >> 1, t = 1, idx = 0;
  inverse_scalar_layers(a, m, t, idx, n_);
}
#endif

}  // namespace fheprune::ckks
