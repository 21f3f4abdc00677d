// The small value types every public engine header shares.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>
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

// An allocator whose resize() leaves new elements uninitialized: for scratch buffers that are
// written in full right after (zeroing megabytes first is a measurable share of a key switch).
template <class T>
struct UninitializedAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <class U>
  UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialization: no value written
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// Residues written in full before they are read.
using ScratchBuffer = std::vector<u64, UninitializedAllocator<u64>>;

}  // namespace fheprune::ckks
