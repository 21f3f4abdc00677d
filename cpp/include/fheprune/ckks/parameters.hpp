// CKKS parameters as the user states them, and their security check.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace fheprune::ckks {

enum class SecurityLevel {
  kClassical128,            // HomomorphicEncryption.org standard, ternary secret, 128-bit
  kNoneInsecureTestingOnly  // no bound at all: for unit tests with toy ring sizes, never for data
};

struct Parameters {
  std::size_t poly_degree = 8192;    // N, a power of two in [2^12, 2^16] (2^10 with no security)
  std::vector<int> chain_bits;       // data primes q_0 .. q_L, q_0 first (the decryption prime)
  std::vector<int> special_bits;     // key-switching primes P; digits have this many primes
  int scale_bits = 40;               // default scale 2^scale_bits
  SecurityLevel security = SecurityLevel::kClassical128;

  // Throws ParameterError (malformed) or InsecureParametersError (too large a modulus).
  void validate() const;
  int total_bits() const;  // sum of all requested prime sizes: an upper bound on log2(QP)
  std::string describe() const;
};

// The security level is the decision of whoever loads a file, never of the file: parameters
// read from a file (parameter files, program files, client specs) that say "no security, testing
// only" are refused with InsecureParametersError unless this process has opted in. For test
// suites with toy ring sizes; a deployment never calls it. Process-wide, thread-safe.
void allow_insecure_parameter_files(bool allow);
bool insecure_parameter_files_allowed();

// Largest log2(QP) with 128-bit classical security for a ternary secret (HE standard table;
// 2^16 from the lattice-estimator tables that libraries publish). 0 for unsupported N.
int max_modulus_bits_128(std::size_t poly_degree);

}  // namespace fheprune::ckks
