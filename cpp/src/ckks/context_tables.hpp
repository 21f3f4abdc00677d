// The engine's precomputed tables for one Context: primes, NTT tables, the constants that
// rescaling, key switching and decoding need at each level, the Galois permutations, and the
// thread pool. Internal to the engine (not installed); reached through Context::tables().
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "ckks/modarith.hpp"
#include "ckks/ntt.hpp"
#include "ckks/thread_pool.hpp"
#include "fheprune/ckks/context.hpp"

namespace fheprune::ckks {

// Fast base conversion from one set of primes to another (exact up to a small multiple of the
// source product, which key switching absorbs).
class BaseConverter {
 public:
  BaseConverter() = default;
  BaseConverter(std::vector<Modulus> from, std::vector<Modulus> to);

  // in: from.size() pointers to n residues each; out: to.size() pointers to n residues each.
  void convert(const u64* const* in, u64* const* out, std::size_t n) const;
  // Only target t (so callers can spread targets over threads).
  void convert_to(const u64* const* in, u64* out, std::size_t t, std::size_t n) const;

  // The same conversion in two phases, so that the first (which does not depend on the
  // target) runs once per source instead of once per source and target:
  // scale_source: y_j = x_j * (B/b_j)^-1 mod b_j for source j (in may equal out);
  void scale_source(std::size_t j, const u64* in, u64* out, std::size_t n) const;
  // combine_to: target t from the scaled sources, sum_j y_j * ((B/b_j) mod c_t) mod c_t,
  // summed in 128 bits and reduced every few terms.
  void combine_to(const u64* const* scaled, u64* out, std::size_t t, std::size_t n) const;

  const std::vector<Modulus>& from() const { return from_; }
  const std::vector<Modulus>& to() const { return to_; }

 private:
  std::vector<Modulus> from_;
  std::vector<Modulus> to_;
  std::vector<MultiplyOperand> inv_punctured_;          // (B/b_j)^-1 mod b_j
  std::vector<std::vector<u64>> punctured_mod_target_;  // [t][j] = (B/b_j) mod c_t
  std::size_t lazy_terms_ = 1;  // products summed before a reduction keeps the sum < c * 2^64
};

// Per-level constants. Level l uses chain primes 0..l.
struct LevelData {
  std::size_t level = 0;
  // Rescale: q_l^-1 mod q_i and q_l mod q_i for i < l.
  std::vector<MultiplyOperand> inv_last_mod;
  std::vector<u64> last_mod;
  // Key switching: digit d covers chain primes [d*alpha, min((d+1)*alpha, l+1)).
  std::vector<BaseConverter> mod_up;            // digit residues -> the other primes of Q_l and P
  std::vector<std::vector<std::size_t>> mod_up_targets;  // key-index of each output of mod_up[d]
  BaseConverter mod_down;                       // P -> Q_l
  std::vector<MultiplyOperand> inv_special_mod;  // P^-1 mod q_i
  // Decoding (Garner): inv_prefix[i][j] = q_j^-1 mod q_i, for j < i.
  std::vector<std::vector<MultiplyOperand>> garner_inv;
};

class ContextTables {
 public:
  ContextTables(const Context& ctx, std::size_t threads);

  const Modulus& modulus(std::size_t i) const { return moduli_[i]; }
  const std::vector<Modulus>& moduli() const { return moduli_; }
  const NttTables& ntt(std::size_t i) const { return ntt_[i]; }
  const LevelData& level_data(std::size_t level) const { return levels_.at(level); }
  ThreadPool& pool() const { return *pool_; }
  // The pool's thread count, readable while set_threads replaces the pool.
  std::size_t threads() const { return threads_.load(std::memory_order_relaxed); }
  void set_threads(std::size_t threads) const;
  // NTT-domain index permutation of the automorphism X -> X^g: out[k] = in[perm[k]].
  std::shared_ptr<const std::vector<std::uint32_t>> galois_permutation(std::uint64_t g) const;

 private:
  std::size_t n_;
  std::vector<Modulus> moduli_;
  std::vector<NttTables> ntt_;
  std::vector<LevelData> levels_;
  std::vector<std::uint32_t> bit_reverse_;
  mutable std::unique_ptr<ThreadPool> pool_;  // execution resource, not part of the math
  mutable std::atomic<std::size_t> threads_{1};
  mutable std::mutex galois_mutex_;
  mutable std::map<std::uint64_t, std::shared_ptr<const std::vector<std::uint32_t>>> galois_cache_;
};

}  // namespace fheprune::ckks
