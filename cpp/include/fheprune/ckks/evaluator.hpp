// Homomorphic operations on ciphertexts. Every operation checks its operands (parameters, keys,
// levels, scales) and throws a typed error naming the problem and the fix.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "fheprune/ckks/keys.hpp"

namespace fheprune::ckks {

// A ciphertext component decomposed into key-switching digits, each raised to all primes of
// its level plus the special primes, in NTT form. Computing it is most of a key switch; many
// rotations of the same ciphertext share one (hoisting).
struct Decomposition {
  std::size_t level = 0;
  std::size_t digits = 0;
  std::size_t extended = 0;  // level + 1 + special primes
  ScratchBuffer data;        // [digit][extended prime][n], every residue written
};

class Evaluator {
 public:
  explicit Evaluator(ContextPtr ctx);

  Ciphertext add(const Ciphertext& a, const Ciphertext& b) const;
  void add_inplace(Ciphertext& a, const Ciphertext& b) const;
  Ciphertext sub(const Ciphertext& a, const Ciphertext& b) const;
  void sub_inplace(Ciphertext& a, const Ciphertext& b) const;
  Ciphertext negate(const Ciphertext& a) const;

  // Plaintexts may sit at a higher level than the ciphertext (their extra primes are ignored).
  Ciphertext add_plain(const Ciphertext& a, const Plaintext& p) const;
  void add_plain_inplace(Ciphertext& a, const Plaintext& p) const;
  Ciphertext sub_plain(const Ciphertext& a, const Plaintext& p) const;
  Ciphertext multiply_plain(const Ciphertext& a, const Plaintext& p) const;
  void multiply_plain_inplace(Ciphertext& a, const Plaintext& p) const;
  // sum_i cts[i] * pts[i] in one pass with lazy reduction (no temporaries): the inner loop of
  // every packed linear layer. Ciphertexts share level and scale; plaintexts share scale.
  Ciphertext multiply_plain_sum(const std::vector<const Ciphertext*>& cts,
                                const std::vector<const Plaintext*>& pts) const;
  // Several such sums at once (sum b is sum_i cts[b][i] * pts[b][i]), computed a slice of
  // coefficients at a time: ciphertexts shared by many sums (a layer's baby steps) are read
  // from memory once per slice instead of once per sum. The same values as one call each.
  std::vector<Ciphertext> multiply_plain_sums(
      const std::vector<std::vector<const Ciphertext*>>& cts,
      const std::vector<std::vector<const Plaintext*>>& pts) const;

  // Size-3 product; relinearize before rotating or multiplying again.
  Ciphertext multiply(const Ciphertext& a, const Ciphertext& b) const;
  Ciphertext square(const Ciphertext& a) const;
  Ciphertext relinearize(const Ciphertext& a, const RelinKey& rk) const;
  void relinearize_inplace(Ciphertext& a, const RelinKey& rk) const;
  Ciphertext multiply_relin(const Ciphertext& a, const Ciphertext& b, const RelinKey& rk) const;

  // Divide by the last prime: scale / q_l, one level down.
  Ciphertext rescale(const Ciphertext& a) const;
  // Drop primes down to `level` without changing the scale.
  Ciphertext mod_switch_to(const Ciphertext& a, std::size_t level) const;
  Plaintext mod_switch_to(const Plaintext& p, std::size_t level) const;

  // Left rotation of the slot vector by `step` (negative: right).
  Ciphertext rotate(const Ciphertext& a, long step, const GaloisKeys& gk) const;
  // Many rotations of one ciphertext sharing one decomposition.
  std::vector<Ciphertext> rotate_hoisted(const Ciphertext& a, const std::vector<long>& steps,
                                         const GaloisKeys& gk) const;
  Ciphertext conjugate(const Ciphertext& a, const GaloisKeys& gk) const;

  // (c0, 0) + keyswitch(c1) with `key`: from the secret the key encrypts to the one it was
  // made under. The caller vouches that the key belongs with a's secret (KeyIds do not say).
  Ciphertext switch_key(const Ciphertext& a, const KeySwitchKey& key) const;

  // Double hoisting: rotations (step 0 allowed) of one ciphertext sharing one decomposition,
  // left multiplied by P (no ModDown each).
  std::vector<ExtendedCiphertext> rotate_hoisted_extended(const Ciphertext& a,
                                                          const std::vector<long>& steps,
                                                          const GaloisKeys& gk) const;
  // sum_i cts[i] * pts[i]; the ciphertexts share level and scale, the plaintexts their level
  // and scale.
  ExtendedCiphertext multiply_plain_sum_extended(
      const std::vector<const ExtendedCiphertext*>& cts,
                                        const std::vector<const ExtendedPlaintext*>& pts) const;
  // acc += P * rot(a, step); a at acc's level and scale. An empty acc (no data) starts at 0.
  void rotate_accumulate(const Ciphertext& a, long step, const GaloisKeys& gk,
                         ExtendedCiphertext& acc) const;
  void add_extended_inplace(ExtendedCiphertext& a, const ExtendedCiphertext& b) const;
  // Divide by P (rounding): the ciphertext `a` stands for.
  Ciphertext mod_down(const ExtendedCiphertext& a) const;

  // Building blocks for custom hoisting.
  Decomposition decompose(const Ciphertext& a, std::size_t component) const;
  // Applies the automorphism `g` (1 = identity) and the key switch to a decomposed c1:
  // returns (sigma(c0) + ks_0, ks_1).
  Ciphertext apply_galois(const Ciphertext& a, const Decomposition& c1, std::uint64_t g,
                          const GaloisKeys& gk) const;

 private:
  void check_operand(const Ciphertext& a) const;
  void check_pair(const Ciphertext& a, const Ciphertext& b, bool same_scale) const;
  void check_sum(const std::vector<const Ciphertext*>& cts,
                 const std::vector<const Plaintext*>& pts, const char* what) const;
  void check_plain(const Ciphertext& a, const Plaintext& p, bool same_scale) const;
  const KeySwitchKey& galois_key(const Ciphertext& a, std::uint64_t g, long step,
                                 const GaloisKeys& gk) const;
  // out_k += keyswitch(digits permuted by perm) for k = 0, 1, over the ciphertext's primes.
  void key_switch_accumulate(const Decomposition& dec, const std::vector<std::uint32_t>* perm,
                             const KeySwitchKey& key, Ciphertext& out) const;
  // <digits, key> for k = 0, 1 at every extended prime: [k][extended prime][n].
  ScratchBuffer key_products(const Decomposition& dec, const KeySwitchKey& key) const;
  // out_k += (prod_k / P) read through perm (when given), at `level`'s primes; overwrites
  // prod's special-prime residues.
  void mod_down_accumulate(ScratchBuffer& prod, std::size_t level,
                           const std::vector<std::uint32_t>* perm, Ciphertext& out) const;
  // out (+)= P * galois(a, g) in extended form; c1 is a's decomposed component 1 (unused for
  // g = 1).
  void galois_extended(const Ciphertext& a, const Decomposition* c1, std::uint64_t g,
                       const GaloisKeys& gk, ExtendedCiphertext& out, bool accumulate) const;
  ExtendedCiphertext extended_like(const Ciphertext& a) const;
  // The key-prime index (chain primes, then special ones) of extended prime e at `level`.
  std::size_t key_prime(std::size_t e, std::size_t level) const;
  // The hoisting both rotate_hoisted flavours share: checks a and every step's key, decomposes
  // a's c1 once (if any step needs a key switch), then calls one(i, galois element of step i,
  // the decomposition or null), whole steps per thread when there are enough of them.
  void for_each_hoisted(
      const Ciphertext& a, const std::vector<long>& steps, const GaloisKeys& gk,
      const std::function<void(std::size_t, std::uint64_t, const Decomposition*)>& one) const;

  ContextPtr ctx_;
};

}  // namespace fheprune::ckks
