// Scales of two operands that must be equal (sums, accumulators): equal up to the rounding of
// the doubles that track them.
#pragma once

#include <algorithm>
#include <cmath>

namespace fheprune::ckks {

inline constexpr double kScaleTolerance = 1e-9;

inline bool scales_match(double a, double b) {
  return std::fabs(a - b) <= kScaleTolerance * std::max(std::fabs(a), std::fabs(b));
}

}  // namespace fheprune::ckks
