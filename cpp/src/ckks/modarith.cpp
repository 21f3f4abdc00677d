#include "ckks/modarith.hpp"

#include <bit>

#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

Modulus::Modulus(u64 q) : q_(q) {
  if (q < 2 || q >= (u64{1} << (kMaxPrimeBits + 1))) {
    throw ParameterError("modulus must be in [2, 2^61); got " + std::to_string(q));
  }
  bits_ = 64 - std::countl_zero(q);
  // floor(2^128 / q) computed as floor((2^128 - 1) / q), equal because q is not a power of two
  // (a prime > 2); for q = 2 the tiny error is irrelevant since 2 is never used as a modulus.
  const u128 all_ones = ~u128{0};
  const u128 ratio = all_ones / q;
  ratio_hi_ = static_cast<u64>(ratio >> 64);
  ratio_lo_ = static_cast<u64>(ratio);
}

u64 Modulus::pow(u64 base, u64 exp) const {
  u64 result = 1 % q_;
  base = reduce(base);
  while (exp != 0) {
    if (exp & 1) result = mul(result, base);
    base = mul(base, base);
    exp >>= 1;
  }
  return result;
}

u64 Modulus::inv(u64 a) const {
  a = reduce(a);
  if (a == 0) throw ParameterError("zero has no inverse modulo " + std::to_string(q_));
  return pow(a, q_ - 2);
}

}  // namespace fheprune::ckks
