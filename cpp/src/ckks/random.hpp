// Randomness for keys and encryption: a ChaCha20 stream (libsodium) keyed from OS entropy.
//
// Every sampler draws from this generator; nothing uses rand() or a non-cryptographic PRNG.
//
// Safe across fork(): a child process inherits the parent's key, nonce and buffered bytes, and
// drawing the same stream in both would give two encryptions the same mask (their difference
// would reveal m1 - m2) and two key generations the same keys. A fork handler bumps a process
// generation counter in the child; every draw compares it with the generation the stream was
// keyed in and, after a fork, rekeys from the OS (and drops the buffered bytes) first.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ckks/modarith.hpp"

namespace fheprune::ckks {

// How many times this process's ancestors forked to make it (0 in the original process);
// bumped in every child by a pthread_atfork handler registered on the first call. The CSPRNG
// and the thread pool compare it with the value they were made under.
std::uint64_t fork_generation();

class SecureRandom {
 public:
  // Keyed from the operating system's CSPRNG (libsodium's randombytes).
  SecureRandom();
  ~SecureRandom();
  SecureRandom(const SecureRandom&) = delete;
  SecureRandom& operator=(const SecureRandom&) = delete;

  void fill(unsigned char* out, std::size_t size);
  u64 next_u64();

  // Uniform in [0, q) by rejection sampling (no modulo bias).
  void uniform_mod(const Modulus& q, u64* out, std::size_t n);
  // Uniform in {-1, 0, 1}.
  void ternary(std::int8_t* out, std::size_t n);
  // Discrete Gaussian with sigma = kErrorSigma, tails cut at 6 sigma, by cumulative table.
  void gaussian(std::int64_t* out, std::size_t n);

  static constexpr double kErrorSigma = 3.19;

  // The per-sample maps behind the samplers, out of line so that the constant-time check
  // (cpp/tools/ct_check.cpp, under valgrind) examines the code the library runs:
  // 64 random bits -> a discrete Gaussian sample; a byte below 255 -> a ternary value.
  static std::int64_t gaussian_from_bits(u64 bits);
  static std::int8_t ternary_from_byte(unsigned char byte);

 private:
  void refill();
  void stream(unsigned char* out, std::size_t size);  // keystream under a fresh nonce
  void rekey();  // fresh key from the OS, nonce 0, buffer dropped
  std::array<unsigned char, 32> key_{};
  std::uint64_t generation_ = 0;  // the process generation (fork count) the key was drawn in
  std::uint64_t nonce_ = 0;
  std::vector<unsigned char> buffer_;
  std::size_t used_ = 0;
};

}  // namespace fheprune::ckks
