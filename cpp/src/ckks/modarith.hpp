// Word-sized modular arithmetic for primes below 2^61.
//
// Hot loops use two tricks: Shoup multiplication when one factor is fixed (twiddles, key
// constants), and Barrett reduction of 128-bit products otherwise. "Lazy" variants leave
// results in [0, 2q) so butterflies can skip a conditional subtraction.
#pragma once

#include <cstdint>
#include <vector>

#include "fheprune/ckks/types.hpp"

namespace fheprune::ckks {

__extension__ using u128 = unsigned __int128;  // GCC/Clang builtin

inline constexpr int kMaxPrimeBits = 60;

// A small signed integer (a secret or error coefficient, |v| < q) as a residue in [0, q),
// without a branch on its sign: the arithmetic shift gives all ones for a negative v, and
// 2^64 + v + q wraps to q - |v|. Secret-derived values go through here so that the release
// build does not branch on them.
inline u64 lift_signed(std::int64_t v, u64 q) {
  const u64 negative_mask = static_cast<u64>(v >> 63);
  return static_cast<u64>(v) + (q & negative_mask);
}

// x - bound if x >= bound, else x, with a mask instead of a branch: residues of secret
// polynomials pass through here, and the release build must not branch on them
// (cpp/tools/ct_check.cpp checks it under valgrind).
inline u64 subtract_if_at_least(u64 x, u64 bound) {
  return x - (bound & (u64{0} - static_cast<u64>(x >= bound)));
}

// A prime modulus with its Barrett constant floor(2^128 / q) split in two words. The modular
// operations are branch-free.
class Modulus {
 public:
  Modulus() = default;
  explicit Modulus(u64 q);

  u64 value() const { return q_; }
  int bits() const { return bits_; }

  // x mod q for any 64-bit x.
  u64 reduce(u64 x) const {
    const u64 quot = static_cast<u64>((static_cast<u128>(x) * ratio_hi_) >> 64);
    return subtract_if_at_least(x - quot * q_, q_);
  }

  // x mod q for a 128-bit x < q * 2^64 (e.g. a sum of up to 2^64/q products of residues).
  u64 reduce128(u128 x) const {
    const u64 x0 = static_cast<u64>(x);
    const u64 x1 = static_cast<u64>(x >> 64);
    // Approximate floor(x * ratio / 2^128); the estimate is low by at most one q.
    const u128 a = static_cast<u128>(x0) * ratio_lo_;
    const u128 b = static_cast<u128>(x0) * ratio_hi_ + (a >> 64);
    const u128 c = static_cast<u128>(x1) * ratio_lo_ + static_cast<u64>(b);
    const u64 quot = x1 * ratio_hi_ + static_cast<u64>(b >> 64) + static_cast<u64>(c >> 64);
    return subtract_if_at_least(x0 - quot * q_, q_);
  }

  u64 mul(u64 a, u64 b) const { return reduce128(static_cast<u128>(a) * b); }
  u64 add(u64 a, u64 b) const { return subtract_if_at_least(a + b, q_); }
  u64 sub(u64 a, u64 b) const { return subtract_if_at_least(a + q_ - b, q_); }
  u64 neg(u64 a) const { return (q_ - a) & (u64{0} - static_cast<u64>(a != 0)); }
  u64 pow(u64 base, u64 exp) const;
  // Inverse of a non-zero residue (q is prime); throws ParameterError on zero.
  u64 inv(u64 a) const;

  bool operator==(const Modulus& other) const { return q_ == other.q_; }

 private:
  u64 q_ = 0;
  int bits_ = 0;
  u64 ratio_hi_ = 0;  // floor(2^128 / q) >> 64
  u64 ratio_lo_ = 0;  // floor(2^128 / q) mod 2^64
};

// Shoup's precomputation for multiplying by a fixed w < q: w' = floor(w * 2^64 / q).
inline u64 shoup_precompute(u64 w, u64 q) {
  return static_cast<u64>((static_cast<u128>(w) << 64) / q);
}

// w * x mod q, result in [0, 2q), for any 64-bit x.
inline u64 mul_shoup_lazy(u64 x, u64 w, u64 w_shoup, u64 q) {
  const u64 hi = static_cast<u64>((static_cast<u128>(x) * w_shoup) >> 64);
  return w * x - hi * q;
}

inline u64 mul_shoup(u64 x, u64 w, u64 w_shoup, u64 q) {
  const u64 r = mul_shoup_lazy(x, w, w_shoup, q);
  return r >= q ? r - q : r;
}

// A fixed multiplier with its Shoup constant.
struct MultiplyOperand {
  u64 value = 0;
  u64 shoup = 0;
  MultiplyOperand() = default;
  MultiplyOperand(u64 w, const Modulus& q) : value(w), shoup(shoup_precompute(w, q.value())) {}
};

}  // namespace fheprune::ckks
