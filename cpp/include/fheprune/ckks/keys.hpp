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

// What a server needs, and all it may get.
struct EvaluationKeys {
  PublicKey public_key;
  RelinKey relin_key;
  GaloisKeys galois_keys;
};

}  // namespace fheprune::ckks
