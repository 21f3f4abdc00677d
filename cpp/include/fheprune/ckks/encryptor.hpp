// Encryption (public-key or symmetric) and decryption.
#pragma once

#include <optional>

#include <memory>

#include "fheprune/ckks/keys.hpp"

namespace fheprune::ckks {

class SecureRandom;  // internal: the CSPRNG (cpp/src/ckks/random.hpp)

class Encryptor {
 public:
  // Public-key encryption: anyone holding the public key can encrypt.
  Encryptor(ContextPtr ctx, const PublicKey& public_key);
  // Symmetric encryption under the secret key (smaller noise; client side only).
  Encryptor(ContextPtr ctx, const SecretKey& secret_key);

  ~Encryptor();
  Encryptor(Encryptor&&) noexcept;
  Encryptor& operator=(Encryptor&&) noexcept;

  Ciphertext encrypt(const Plaintext& pt);

 private:
  ContextPtr ctx_;
  std::optional<PublicKey> public_key_;
  std::optional<SecretKey> secret_key_;
  std::unique_ptr<SecureRandom> rng_;
};

class Decryptor {
 public:
  Decryptor(ContextPtr ctx, const SecretKey& secret_key);
  // Accepts size-2 and size-3 ciphertexts.
  Plaintext decrypt(const Ciphertext& ct) const;

 private:
  ContextPtr ctx_;
  SecretKey secret_key_;
};

}  // namespace fheprune::ckks
