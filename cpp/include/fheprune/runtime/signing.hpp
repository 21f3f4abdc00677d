// Authenticity of the files a model owner hands to other parties: program files (to the server)
// and client specs (to the client). The envelope's checksum only catches accidents (anyone can
// rewrite a file and recompute it); a signature catches a file changed on the way. The owner
// signs with an Ed25519 signing key it keeps; the client and the server check with the owner's
// verification key, which they get out of band (like an SSH host key).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace fheprune::runtime {

using Signature = std::array<std::uint8_t, 64>;

class VerifyKey {
 public:
  VerifyKey() = default;
  explicit VerifyKey(const std::array<std::uint8_t, 32>& bytes) : bytes_(bytes) {}
  // 64 hexadecimal digits; MismatchError for anything else.
  static VerifyKey from_hex(const std::string& hex);
  std::string hex() const;
  const std::array<std::uint8_t, 32>& bytes() const { return bytes_; }
  bool operator==(const VerifyKey&) const = default;

 private:
  std::array<std::uint8_t, 32> bytes_{};
};

class SigningKey {
 public:
  // A fresh key from the OS CSPRNG.
  static SigningKey generate();
  // From the 32-byte seed written by `seed()` (the owner's private file).
  static SigningKey from_seed(const std::array<std::uint8_t, 32>& seed);
  SigningKey(const SigningKey&) = default;
  SigningKey& operator=(const SigningKey&) = default;
  ~SigningKey();  // wipes the secret

  const VerifyKey& verify_key() const { return verify_key_; }
  std::array<std::uint8_t, 32> seed() const;
  Signature sign(std::span<const std::uint8_t> data) const;

 private:
  SigningKey() = default;
  std::array<std::uint8_t, 64> secret_{};
  VerifyKey verify_key_;
};

// Throws ckks::MismatchError unless `signature` is `owner`'s signature of exactly `data`;
// `what` names the file in the message.
void verify_signature(std::span<const std::uint8_t> data, std::span<const std::uint8_t> signature,
                      const VerifyKey& owner, const std::string& what);

}  // namespace fheprune::runtime
