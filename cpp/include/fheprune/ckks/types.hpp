// The small value types every public engine header shares.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
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

namespace detail {
// Large scratch blocks (a key switch's decomposition and products, extended ciphertexts) come
// from a process-wide cache of freed blocks (buffer_pool.cpp): malloc gives blocks freed on a
// pool thread back to the kernel, and faulting them in again made a two-thread refresh at
// N = 2^16 about a tenth slower (docs/bootstrapping.md, "Two threads").
void* allocate_scratch(std::size_t bytes);
void release_scratch(void* block, std::size_t bytes) noexcept;
// Bytes held by the cache now: freed blocks kept for reuse, at most this many (past it, the
// blocks freed longest ago go back to the system).
std::size_t cached_scratch_bytes() noexcept;
inline constexpr std::size_t kMaxCachedScratchBytes = std::size_t{1} << 30;
}  // namespace detail

// Storage whose large blocks are recycled through detail::allocate_scratch; elements are
// value-initialized as usual (plaintexts' and ciphertexts' residues start at zero).
template <class T>
struct RecyclingAllocator {
  using value_type = T;
  RecyclingAllocator() = default;
  template <class U>
  RecyclingAllocator(const RecyclingAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(detail::allocate_scratch(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { detail::release_scratch(p, n * sizeof(T)); }
  friend bool operator==(const RecyclingAllocator&, const RecyclingAllocator&) { return true; }
};

// The residues of a plaintext or ciphertext.
using Residues = std::vector<u64, RecyclingAllocator<u64>>;

// The same recycling, but resize() leaves new elements uninitialized: for scratch buffers that
// are written in full right after (zeroing megabytes first is a measurable share of a key
// switch).
template <class T>
struct UninitializedAllocator : RecyclingAllocator<T> {
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
