#include "fheprune/ckks/ntt.hpp"

#include <bit>

#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/primes.hpp"

namespace fheprune::ckks {

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
}

void NttTables::forward(u64* a) const {
  const u64 q = q_.value();
  const u64 two_q = 2 * q;
  std::size_t t = n_ >> 1;
  for (std::size_t m = 1; m < n_; m <<= 1, t >>= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      const u64 w = roots_[m + i];
      const u64 ws = roots_shoup_[m + i];
      u64* x = a + 2 * i * t;
      u64* y = x + t;
      for (std::size_t j = 0; j < t; ++j) {
        // Inputs in [0, 4q); outputs in [0, 4q).
        u64 u = x[j];
        u = u >= two_q ? u - two_q : u;
        const u64 v = mul_shoup_lazy(y[j], w, ws, q);
        x[j] = u + v;
        y[j] = u - v + two_q;
      }
    }
  }
  for (std::size_t j = 0; j < n_; ++j) {
    u64 v = a[j];
    v = v >= two_q ? v - two_q : v;
    a[j] = v >= q ? v - q : v;
  }
}

void NttTables::inverse(u64* a) const {
  const u64 q = q_.value();
  const u64 two_q = 2 * q;
  std::size_t t = 1;
  std::size_t root_idx = 0;
  for (std::size_t m = n_ >> 1; m > 1; m >>= 1, t <<= 1) {
    for (std::size_t i = 0; i < m; ++i) {
      const u64 w = inv_roots_[root_idx];
      const u64 ws = inv_roots_shoup_[root_idx];
      ++root_idx;
      u64* x = a + 2 * i * t;
      u64* y = x + t;
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

}  // namespace fheprune::ckks
