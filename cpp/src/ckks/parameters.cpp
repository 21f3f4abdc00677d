#include "fheprune/ckks/parameters.hpp"

#include <atomic>
#include <bit>
#include <numeric>
#include <sstream>

#include "fheprune/ckks/errors.hpp"
#include "ckks/modarith.hpp"

namespace fheprune::ckks {

namespace {
std::atomic<bool> g_insecure_files_allowed{false};
}  // namespace

void allow_insecure_parameter_files(bool allow) {
  g_insecure_files_allowed.store(allow, std::memory_order_relaxed);
}

bool insecure_parameter_files_allowed() {
  return g_insecure_files_allowed.load(std::memory_order_relaxed);
}

int max_modulus_bits_128(std::size_t poly_degree) {
  switch (poly_degree) {
    case 1024: return 27;
    case 2048: return 54;
    case 4096: return 109;
    case 8192: return 218;
    case 16384: return 438;
    case 32768: return 881;
    case 65536: return 1747;  // the most conservative published bound (OpenFHE's table)
    default: return 0;
  }
}

int Parameters::total_bits() const {
  return std::accumulate(chain_bits.begin(), chain_bits.end(), 0) +
         std::accumulate(special_bits.begin(), special_bits.end(), 0);
}

std::string Parameters::describe() const {
  std::ostringstream out;
  out << "N=" << poly_degree << " chain=[";
  for (std::size_t i = 0; i < chain_bits.size(); ++i) out << (i ? "," : "") << chain_bits[i];
  out << "] special=[";
  for (std::size_t i = 0; i < special_bits.size(); ++i) out << (i ? "," : "") << special_bits[i];
  out << "] scale=2^" << scale_bits << " log2(QP)<=" << total_bits();
  return out.str();
}

void Parameters::validate() const {
  const bool testing = security == SecurityLevel::kNoneInsecureTestingOnly;
  const std::size_t min_n = testing ? 1024 : 4096;
  if (!std::has_single_bit(poly_degree) || poly_degree < min_n || poly_degree > 65536) {
    throw ParameterError("poly_degree must be a power of two in [" + std::to_string(min_n) +
                         ", 65536]; got " + std::to_string(poly_degree));
  }
  if (chain_bits.empty()) throw ParameterError("chain_bits needs at least one prime");
  if (special_bits.empty()) {
    throw ParameterError("special_bits needs at least one key-switching prime");
  }
  for (int b : chain_bits) {
    if (b < 20 || b > kMaxPrimeBits) {
      throw ParameterError("chain prime sizes must be in [20, 60] bits; got " + std::to_string(b));
    }
  }
  for (int b : special_bits) {
    if (b < 20 || b > kMaxPrimeBits) {
      throw ParameterError("special prime sizes must be in [20, 60] bits; got " +
                           std::to_string(b));
    }
  }
  // Key-switching noise is divided by P; a digit (special_bits.size() chain primes) larger than
  // P would leave noise larger than the message.
  const int special_total = std::accumulate(special_bits.begin(), special_bits.end(), 0);
  const std::size_t alpha = special_bits.size();
  for (std::size_t start = 0; start < chain_bits.size(); start += alpha) {
    int digit_bits = 0;
    for (std::size_t i = start; i < std::min(start + alpha, chain_bits.size()); ++i) {
      digit_bits += chain_bits[i];
    }
    if (digit_bits > special_total) {
      throw ParameterError("key-switching digit of " + std::to_string(digit_bits) +
                           " bits exceeds the special modulus of " +
                           std::to_string(special_total) + " bits; make special primes larger");
    }
  }
  if (scale_bits < 10 || scale_bits >= chain_bits.front() + 20 || scale_bits > 60) {
    throw ParameterError("scale_bits must be in [10, 60] and not far above the first prime; got " +
                         std::to_string(scale_bits));
  }
  if (!testing) {
    const int bound = max_modulus_bits_128(poly_degree);
    if (total_bits() > bound) {
      throw InsecureParametersError(
          "log2(QP) = " + std::to_string(total_bits()) + " exceeds " + std::to_string(bound) +
          ", the 128-bit security bound for N = " + std::to_string(poly_degree) +
          "; use fewer or smaller primes, or a larger N");
    }
  }
}

}  // namespace fheprune::ckks
