// The small value types every public engine header shares.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace fheprune::ckks {

// One residue of an RNS polynomial (primes are below 2^61).
using u64 = std::uint64_t;
// A serialized object (engine objects, programs).
using Bytes = std::vector<std::uint8_t>;
// BLAKE2b-256 of the parameters (N, every prime, the scale): objects made under other
// parameters are refused with MismatchError.
using Fingerprint = std::array<unsigned char, 32>;
// Identifies the secret key a ciphertext or evaluation key belongs to (random, not derived from
// the key), so that mixing two clients' objects fails with a clear error.
using KeyId = std::array<unsigned char, 16>;

}  // namespace fheprune::ckks
