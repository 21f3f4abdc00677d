// The validated parameters plus everything precomputed from them: primes, NTT tables, and the
// constants that rescaling, key switching and decoding need at each level.
#pragma once

#include <array>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "fheprune/ckks/modarith.hpp"
#include "fheprune/ckks/ntt.hpp"
#include "fheprune/ckks/parameters.hpp"
#include "fheprune/ckks/thread_pool.hpp"

namespace fheprune::ckks {

using Fingerprint = std::array<unsigned char, 32>;

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

  const std::vector<Modulus>& from() const { return from_; }
  const std::vector<Modulus>& to() const { return to_; }

 private:
  std::vector<Modulus> from_;
  std::vector<Modulus> to_;
  std::vector<MultiplyOperand> inv_punctured_;          // (B/b_j)^-1 mod b_j
  std::vector<std::vector<u64>> punctured_mod_target_;  // [t][j] = (B/b_j) mod c_t
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

class Context {
 public:
  explicit Context(const Parameters& params, std::size_t threads = 1);

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
  const Modulus& modulus(std::size_t i) const { return moduli_[i]; }
  const std::vector<Modulus>& moduli() const { return moduli_; }
  const NttTables& ntt(std::size_t i) const { return ntt_[i]; }
  const LevelData& level_data(std::size_t level) const { return levels_.at(level); }

  std::size_t digit_size() const { return special_size_; }
  std::size_t digit_count(std::size_t level) const {
    return (level + 1 + special_size_ - 1) / special_size_;
  }

  // Galois element for a left rotation of the slot vector by `step` (negative: right).
  std::uint64_t galois_element(long step) const;
  std::uint64_t conjugation_element() const { return 2 * n_ - 1; }
  // NTT-domain index permutation of the automorphism X -> X^g: out[k] = in[perm[k]].
  std::shared_ptr<const std::vector<std::uint32_t>> galois_permutation(std::uint64_t g) const;

  const Fingerprint& fingerprint() const { return fingerprint_; }
  ThreadPool& pool() const { return *pool_; }
  std::size_t threads() const { return pool_->threads(); }
  // Not safe while another thread runs operations on this context.
  void set_threads(std::size_t threads) const;

 private:
  Parameters params_;
  std::size_t n_;
  int log_n_;
  std::size_t chain_size_;
  std::size_t special_size_;
  std::vector<Modulus> moduli_;
  std::vector<NttTables> ntt_;
  std::vector<LevelData> levels_;
  std::vector<std::uint32_t> bit_reverse_;
  Fingerprint fingerprint_{};
  mutable std::unique_ptr<ThreadPool> pool_;  // execution resource, not part of the math
  mutable std::mutex galois_mutex_;
  mutable std::map<std::uint64_t, std::shared_ptr<const std::vector<std::uint32_t>>> galois_cache_;
};

using ContextPtr = std::shared_ptr<const Context>;

// Convenience: validate and build a shared context.
ContextPtr make_context(const Parameters& params, std::size_t threads = 1);

}  // namespace fheprune::ckks
