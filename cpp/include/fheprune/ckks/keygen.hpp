// Generates a fresh secret key and the public and evaluation keys derived from it.
#pragma once

#include <cstdint>
#include <vector>

#include <memory>

#include "fheprune/ckks/keys.hpp"

namespace fheprune::ckks {

class SecureRandom;  // internal: the CSPRNG (cpp/src/ckks/random.hpp)

class KeyGenerator {
 public:
  // A fresh ternary secret from the OS CSPRNG.
  explicit KeyGenerator(ContextPtr ctx);
  // A fresh ternary secret with exactly `hamming_weight` non-zero coefficients (+-1 at random
  // places), as bootstrapping wants: its ModRaise overflow then stays small. Sparse secrets
  // are outside the HE standard's uniform-ternary tables; choose the weight with care.
  KeyGenerator(ContextPtr ctx, std::size_t hamming_weight);
  // Derive further keys for an existing secret (e.g. one loaded on the client).
  KeyGenerator(ContextPtr ctx, const SecretKey& secret);

  ~KeyGenerator();
  KeyGenerator(KeyGenerator&&) noexcept;
  KeyGenerator& operator=(KeyGenerator&&) noexcept;

  const SecretKey& secret_key() const { return secret_; }
  PublicKey create_public_key();
  RelinKey create_relin_key();
  // Keys for exactly these rotation steps (left rotations; negative = right) and, if asked,
  // conjugation. Duplicates and steps equivalent mod slots are merged; step 0 is ignored.
  GaloisKeys create_galois_keys(const std::vector<long>& steps, bool conjugation = false);
  // With `ephemeral_weight` > 0, the bundle also holds encapsulation keys for an ephemeral
  // secret of that Hamming weight (BootstrapConfig::ephemeral_weight).
  EvaluationKeys create_evaluation_keys(const std::vector<long>& steps, bool conjugation = false,
                                        std::size_t ephemeral_weight = 0);
  // Draws a fresh sparse secret of `hamming_weight`, makes the two switching keys between it
  // and this secret, and wipes it.
  EncapsulationKeys create_encapsulation_keys(std::size_t hamming_weight);

 private:
  // Key switching from s' (given per prime in NTT form, key_size primes) to s.
  KeySwitchKey make_switch_key(const std::vector<u64>& source);
  void set_secret(std::vector<std::int8_t>& coefficients);  // zeroes `coefficients`
  // Ternary coefficients with exactly `hamming_weight` non-zero ones at random places.
  std::vector<std::int8_t> sparse_ternary(std::size_t hamming_weight);
  // Signed coefficients in NTT form over every key prime.
  std::vector<u64> to_ntt(const std::vector<std::int8_t>& coefficients) const;

  ContextPtr ctx_;
  SecretKey secret_;
  std::unique_ptr<SecureRandom> rng_;
};

}  // namespace fheprune::ckks
