// Key material. Roles: the client keeps the SecretKey; the server receives an EvaluationKeys
// bundle (public, relinearization and Galois keys), which by construction holds no secret.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "fheprune/ckks/ciphertext.hpp"

namespace fheprune::ckks {

// Ternary secret s in NTT form over every prime (chain and special). Wiped on destruction.
class SecretKey {
 public:
  SecretKey() = default;
  SecretKey(const SecretKey&) = default;
  SecretKey& operator=(const SecretKey&) = default;
  ~SecretKey();

  const KeyId& id() const { return id_; }
  const Fingerprint& params() const { return params_; }
  const u64* prime(std::size_t i) const { return data_.data() + i * n_; }

 private:
  friend class KeyGenerator;
  friend class Serializer;
  std::vector<u64> data_;
  std::size_t n_ = 0;
  KeyId id_{};
  Fingerprint params_{};
};

// An RLWE encryption of zero at the top level: (b = -a s + e, a).
class PublicKey {
 public:
  const Ciphertext& data() const { return data_; }
  const KeyId& id() const { return data_.key_id(); }

 private:
  friend class KeyGenerator;
  friend class Serializer;
  Ciphertext data_;
};

// Switches a ciphertext component under s' to one under s. One (b, a) pair per digit of
// `digit_size` chain primes, each pair over all key primes (chain then special), NTT form.
class KeySwitchKey {
 public:
  std::size_t digits() const { return digits_; }
  std::size_t key_primes() const { return key_primes_; }
  const u64* b(std::size_t digit, std::size_t prime) const {
    return data_.data() + ((digit * 2 + 0) * key_primes_ + prime) * n_;
  }
  const u64* a(std::size_t digit, std::size_t prime) const {
    return data_.data() + ((digit * 2 + 1) * key_primes_ + prime) * n_;
  }
  std::size_t byte_size() const { return data_.size() * sizeof(u64); }

 private:
  friend class KeyGenerator;
  friend class Serializer;
  std::vector<u64> data_;
  std::size_t n_ = 0;
  std::size_t digits_ = 0;
  std::size_t key_primes_ = 0;
};

class RelinKey {
 public:
  const KeySwitchKey& key() const { return key_; }
  const KeyId& id() const { return id_; }
  const Fingerprint& params() const { return params_; }

 private:
  friend class KeyGenerator;
  friend class Serializer;
  KeySwitchKey key_;
  KeyId id_{};
  Fingerprint params_{};
};

// Keys for a chosen set of automorphisms (rotation steps, conjugation), keyed by Galois element.
class GaloisKeys {
 public:
  bool has(std::uint64_t galois_element) const { return keys_.count(galois_element) != 0; }
  const KeySwitchKey& key(std::uint64_t galois_element) const { return keys_.at(galois_element); }
  std::vector<std::uint64_t> elements() const;
  const KeyId& id() const { return id_; }
  const Fingerprint& params() const { return params_; }
  std::size_t byte_size() const;

 private:
  friend class KeyGenerator;
  friend class Serializer;
  std::map<std::uint64_t, KeySwitchKey> keys_;
  KeyId id_{};
  Fingerprint params_{};
};

// Sparse-secret encapsulation for bootstrapping (Bossuat, Troncoso-Pastoriza, Hubaux 2022):
// keys between the secret s and an ephemeral sparse secret s' that the client draws, uses here
// and forgets. A refresh switches its level-0 ciphertext to s' (to_sparse), so that ModRaise's
// overflow is that of a sparse secret (a smaller K, a cheaper EvalMod), and back to s right
// after ModRaise (from_sparse). to_sparse encrypts s under s' modulo q0 * p only (p the first
// special prime: one digit, two primes), the small modulus at which a sparse secret is safe;
// from_sparse encrypts s' under s like every other switching key.
class EncapsulationKeys {
 public:
  bool empty() const { return hamming_weight_ == 0; }
  std::size_t hamming_weight() const { return hamming_weight_; }  // of s'
  const KeySwitchKey& to_sparse() const { return to_sparse_; }
  const KeySwitchKey& from_sparse() const { return from_sparse_; }
  const KeyId& id() const { return id_; }  // of s
  std::size_t byte_size() const { return to_sparse_.byte_size() + from_sparse_.byte_size(); }

 private:
  friend class KeyGenerator;
  friend class Serializer;
  std::size_t hamming_weight_ = 0;
  KeySwitchKey to_sparse_;
  KeySwitchKey from_sparse_;
  KeyId id_{};
};

// What a server needs, and all it may get. `encapsulation` is empty unless a refresh with an
// ephemeral secret (BootstrapConfig::ephemeral_weight) was asked for.
struct EvaluationKeys {
  PublicKey public_key;
  RelinKey relin_key;
  GaloisKeys galois_keys;
  EncapsulationKeys encapsulation;
};

}  // namespace fheprune::ckks
