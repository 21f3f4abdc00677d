#include "ckks/ntt.hpp"

#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>

#include "fheprune/ckks/context.hpp"
#include "fheprune/ckks/errors.hpp"
#include "ckks/primes.hpp"

namespace fheprune::ckks {

namespace {

bool simd_from_environment() {
  const char* value = std::getenv("FHEPRUNE_SIMD");
  return value == nullptr || (std::strcmp(value, "0") != 0 && std::strcmp(value, "off") != 0);
}

std::atomic<bool> g_vector_kernels{simd_from_environment()};

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

  // Vector kernels. AVX-512: IFMA (52-bit lanes) when 4q < 2^52, otherwise 64-bit lanes; both
  // need n >= 64 so that the narrow layers' 8-wide twiddle loads stay inside the tables.
  // AVX2 (n >= 8 would do): doubles with FMA below 2^50, otherwise 64-bit lanes.
  if (n >= 64 && vector_kernels_enabled()) {
    if (avx512_ntt_available()) {
      kernel_ = qv < kIfmaPrimeBound ? Kernel::kIfma52 : Kernel::kAvx512;
    } else {
      kernel_ = qv < kFmaPrimeBound ? Kernel::kFma52 : Kernel::kAvx2;
    }
  }
  if (kernel_ == Kernel::kFma52) {
    const auto as_double = [qv](const std::vector<u64>& w, std::vector<double>& f,
                                std::vector<double>& fq) {
      f.resize(w.size());
      fq.resize(w.size());
      for (std::size_t k = 0; k < w.size(); ++k) {
        f[k] = static_cast<double>(w[k]);
        fq[k] = f[k] / static_cast<double>(qv);
      }
    };
    as_double(roots_, roots_f_, roots_fq_);
    as_double(inv_roots_, inv_roots_f_, inv_roots_fq_);
  }
  if (kernel_ == Kernel::kIfma52) {
    roots_shoup52_.resize(n);
    inv_roots_shoup52_.resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      roots_shoup52_[k] = shoup52(roots_[k], qv);
      inv_roots_shoup52_[k] = shoup52(inv_roots_[k], qv);
    }
  }
  inv_n_shoup52_ = shoup52(inv_n_.value, qv);
  inv_n_root_shoup52_ = shoup52(inv_n_root_.value, qv);
}

// Radix-2 Cooley-Tukey layers, then full reduction.
void NttTables::forward_scalar(u64* a) const {
  const u64 q = q_.value();
  const u64 two_q = 2 * q;
  for (std::size_t m = 1, t = n_ >> 1; t >= 1; m <<= 1, t >>= 1) {
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

void NttTables::enable_vector_kernels(bool enabled) { set_vector_kernels(enabled); }

bool vector_kernels_available() { return avx512_ntt_available() || fma_ntt_available(); }

const char* vector_kernel_set() {
  if (avx512_ntt_available()) return "avx512-ifma";
  if (fma_ntt_available()) return "avx2-fma";
  return "none";
}

bool vector_kernels_enabled() {
  return g_vector_kernels.load(std::memory_order_relaxed) && vector_kernels_available();
}

void set_vector_kernels(bool enabled) { g_vector_kernels.store(enabled); }

NttVectorView NttTables::vector_view() const {
  const bool ifma = kernel_ == Kernel::kIfma52;
  const u64 qv = q_.value();
  return NttVectorView{qv,
                       n_,
                       ifma,
                       roots_.data(),
                       ifma ? roots_shoup52_.data() : roots_shoup_.data(),
                       inv_roots_.data(),
                       ifma ? inv_roots_shoup52_.data() : inv_roots_shoup_.data(),
                       inv_n_.value,
                       ifma ? inv_n_shoup52_ : inv_n_.shoup,
                       inv_n_root_.value,
                       ifma ? inv_n_root_shoup52_ : inv_n_root_.shoup};
}

NttFmaView NttTables::fma_view() const {
  const double q = static_cast<double>(q_.value());
  const double n_inv = static_cast<double>(inv_n_.value);
  const double n_root = static_cast<double>(inv_n_root_.value);
  return NttFmaView{q_.value(),          n_,     roots_f_.data(), roots_fq_.data(),
                    inv_roots_f_.data(), inv_roots_fq_.data(), n_inv, n_inv / q, n_root,
                    n_root / q};
}

void NttTables::forward(u64* a) const {
  switch (kernel_) {
    case Kernel::kScalar:
      forward_scalar(a);
      return;
    case Kernel::kFma52:
      forward_fma(fma_view(), a);
      return;
    case Kernel::kAvx2:
      forward_avx2(vector_view(), a);
      return;
    case Kernel::kIfma52:
    case Kernel::kAvx512:
      forward_avx512(vector_view(), a);
      return;
  }
}

// Gentleman-Sande layers, the last one with n^-1 folded in.
void NttTables::inverse_scalar(u64* a) const {
  const u64 q = q_.value();
  const u64 two_q = 2 * q;
  std::size_t idx = 0;
  for (std::size_t m = n_ >> 1, t = 1; m > 1; m >>= 1, t <<= 1) {
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
  // Last layer (m = 1, t = n/2), with the n^-1 scaling folded in.
  const std::size_t half = n_ >> 1;
  for (std::size_t j = 0; j < half; ++j) {
    const u64 u = a[j];
    const u64 v = a[j + half];
    a[j] = mul_shoup(u + v, inv_n_.value, inv_n_.shoup, q);
    a[j + half] = mul_shoup(u - v + two_q, inv_n_root_.value, inv_n_root_.shoup, q);
  }
}

void NttTables::inverse(u64* a) const {
  switch (kernel_) {
    case Kernel::kScalar:
      inverse_scalar(a);
      return;
    case Kernel::kFma52:
      inverse_fma(fma_view(), a);
      return;
    case Kernel::kAvx2:
      inverse_avx2(vector_view(), a);
      return;
    case Kernel::kIfma52:
    case Kernel::kAvx512:
      inverse_avx512(vector_view(), a);
      return;
  }
}

}  // namespace fheprune::ckks
