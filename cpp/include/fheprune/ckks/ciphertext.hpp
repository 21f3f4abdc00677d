// Plaintexts and ciphertexts: RNS polynomials in NTT form at a level, with their scale.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "fheprune/ckks/context.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

// A scale must be a positive finite number: 0, a negative number, inf or NaN would make every
// decoding of the object inf or NaN.
inline double checked_scale(double scale) {
  if (!(std::isfinite(scale) && scale > 0.0)) {
    throw ScaleError("a scale must be a positive finite number, got " + std::to_string(scale));
  }
  return scale;
}

// A polynomial encoded at `level` (chain primes 0..level), evaluation (NTT) form.
class Plaintext {
 public:
  Plaintext() = default;
  Plaintext(const Context& ctx, std::size_t level, double scale);

  std::size_t level() const { return level_; }
  std::size_t primes() const { return level_ + 1; }
  std::size_t poly_degree() const { return n_; }
  double scale() const { return scale_; }
  void set_scale(double scale) { scale_ = checked_scale(scale); }
  const Fingerprint& params() const { return params_; }

  u64* prime(std::size_t i) { return data_.data() + i * n_; }
  const u64* prime(std::size_t i) const { return data_.data() + i * n_; }
  Residues& data() { return data_; }
  const Residues& data() const { return data_; }

 private:
  friend class Serializer;
  Residues data_;
  std::size_t n_ = 0;
  std::size_t level_ = 0;
  double scale_ = 1.0;
  Fingerprint params_{};
};

// (c_0, ..., c_{size-1}) decrypting to sum_k c_k s^k; size 2, or 3 after multiply().
class Ciphertext {
 public:
  Ciphertext() = default;
  Ciphertext(const Context& ctx, std::size_t size, std::size_t level, double scale,
             const KeyId& key_id);

  std::size_t size() const { return size_; }
  std::size_t level() const { return level_; }
  std::size_t primes() const { return level_ + 1; }
  std::size_t poly_degree() const { return n_; }
  double scale() const { return scale_; }
  void set_scale(double scale) { scale_ = checked_scale(scale); }
  const Fingerprint& params() const { return params_; }
  const KeyId& key_id() const { return key_id_; }

  u64* poly(std::size_t k, std::size_t i) { return data_.data() + (k * (level_ + 1) + i) * n_; }
  const u64* poly(std::size_t k, std::size_t i) const {
    return data_.data() + (k * (level_ + 1) + i) * n_;
  }
  Residues& data() { return data_; }
  const Residues& data() const { return data_; }

 private:
  friend class Serializer;
  Residues data_;
  std::size_t n_ = 0;
  std::size_t size_ = 0;
  std::size_t level_ = 0;
  double scale_ = 1.0;
  Fingerprint params_{};
  KeyId key_id_{};
};

// A ciphertext multiplied by the special modulus P, over the chain primes of its level and the
// special primes (NTT form): what a key switch holds before its ModDown (the division by P).
// Rotations and plaintext products can stay in this form and be summed, so that a linear
// transform divides by P once per giant step instead of once per rotation ("double
// hoisting"). `scale` is that of the ciphertext it stands for; P is not counted in it.
struct ExtendedCiphertext {
  std::size_t level = 0;
  std::size_t extended = 0;  // level + 1 + special primes
  std::size_t n = 0;
  double scale = 1.0;
  KeyId key_id{};
  ScratchBuffer data;  // [component 0, 1][extended prime][n]

  u64* poly(std::size_t k, std::size_t e) { return data.data() + (k * extended + e) * n; }
  const u64* poly(std::size_t k, std::size_t e) const {
    return data.data() + (k * extended + e) * n;
  }
};

// A plaintext over the chain primes of `level` and the special primes, to multiply
// ExtendedCiphertexts of that level (Encoder::encode_extended).
struct ExtendedPlaintext {
  std::size_t level = 0;
  std::size_t extended = 0;
  std::size_t n = 0;
  double scale = 1.0;
  Fingerprint params{};
  ScratchBuffer data;  // [extended prime][n]

  const u64* prime(std::size_t e) const { return data.data() + e * n; }
};

}  // namespace fheprune::ckks
