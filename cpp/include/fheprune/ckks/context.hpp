// The validated parameters and what every engine object checks against: ring size, levels,
// primes, the default scale and the parameter fingerprint. The precomputed tables (NTT twiddles,
// per-level rescaling and key-switching constants) and the thread pool are engine internals,
// kept behind `tables()` (cpp/src/ckks/context_tables.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "fheprune/ckks/parameters.hpp"
#include "fheprune/ckks/types.hpp"

namespace fheprune::ckks {

class ContextTables;  // internal (cpp/src/ckks/context_tables.hpp)

class Context {
 public:
  // `threads`: engine threads for every operation on this context (0 means 1); more than four
  // per hardware thread is a ParameterError.
  explicit Context(const Parameters& params, std::size_t threads = 1);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const Parameters& parameters() const { return params_; }
  std::size_t poly_degree() const { return n_; }
  std::size_t slots() const { return n_ / 2; }
  int log_n() const { return log_n_; }
  std::size_t max_level() const { return chain_size_ - 1; }
  std::size_t chain_size() const { return chain_size_; }
  std::size_t special_size() const { return special_size_; }
  std::size_t key_size() const { return chain_size_ + special_size_; }
  double default_scale() const;

  // All primes: chain primes first (index 0..L-1), then special primes (L..L+k-1).
  u64 prime(std::size_t i) const;
  std::vector<u64> primes() const;

  std::size_t digit_size() const { return special_size_; }
  std::size_t digit_count(std::size_t level) const {
    return (level + 1 + special_size_ - 1) / special_size_;
  }

  // Galois element for a left rotation of the slot vector by `step` (negative: right).
  std::uint64_t galois_element(long step) const;
  std::uint64_t conjugation_element() const { return 2 * n_ - 1; }

  const Fingerprint& fingerprint() const { return fingerprint_; }
  std::size_t threads() const;
  // Not safe while another thread runs operations on this context.
  void set_threads(std::size_t threads) const;
  // Runs body(i) for i in [0, count) on this context's threads and returns when all are done
  // (the first exception is rethrown). Engine operations inside `body` run on the calling
  // thread only, so independent operations (output tiles of a layer) spread over the threads
  // instead of each splitting its primes across them.
  void parallel_for(std::size_t count, const std::function<void(std::size_t)>& body) const;

  // Engine internals; their header is not installed.
  const ContextTables& tables() const { return *tables_; }

 private:
  Parameters params_;
  std::size_t n_;
  int log_n_;
  std::size_t chain_size_;
  std::size_t special_size_;
  Fingerprint fingerprint_{};
  std::unique_ptr<ContextTables> tables_;
};

using ContextPtr = std::shared_ptr<const Context>;

// The most engine threads a context may have on this machine (four per hardware thread, at
// least 8).
std::size_t max_threads();

// The engine's vector kernels: AVX-512 (IFMA) where the CPU has it, else AVX2 with FMA (the
// NTT: doubles for primes below 2^50, 64-bit integer lanes above). Whether they run,
// and a process-wide switch to the portable scalar path, for comparisons with engines built
// without them (every path gives the same bits). Contexts made after a switch build their NTT
// tables for the new path; the other kernels check at every call. Starts off when
// FHEPRUNE_SIMD=0 is in the environment.
bool vector_kernels_available();  // the CPU has AVX-512 F, DQ and IFMA, or AVX2 and FMA
bool vector_kernels_enabled();    // available and not switched off
// Which set runs where enabled: "avx512-ifma", "avx2-fma" or "none".
const char* vector_kernel_set();
void set_vector_kernels(bool enabled);

// Convenience: validate and build a shared context.
ContextPtr make_context(const Parameters& params, std::size_t threads = 1);

}  // namespace fheprune::ckks
