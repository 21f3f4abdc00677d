// Deterministic generation of NTT-friendly primes (q = 1 mod 2N).
#pragma once

#include <cstddef>
#include <vector>

#include "ckks/modarith.hpp"

namespace fheprune::ckks {

// Deterministic Miller-Rabin for 64-bit integers.
bool is_prime(u64 n);

// For each requested bit size b, the largest unused prime q < 2^b with q = 1 (mod 2n).
// The same input always gives the same primes. Throws ParameterError if a size has no room.
std::vector<u64> generate_ntt_primes(std::size_t n, const std::vector<int>& bit_sizes);

// A generator of the multiplicative group mod q raised to (q-1)/(2n): a primitive 2n-th root
// of unity, the smallest such root (so the choice is deterministic).
u64 minimal_primitive_root(std::size_t two_n, const Modulus& q);

}  // namespace fheprune::ckks
