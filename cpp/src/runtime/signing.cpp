#include "fheprune/runtime/signing.hpp"

#include <sodium.h>

#include "fheprune/ckks/errors.hpp"

namespace fheprune::runtime {

namespace {

void init_sodium() {
  if (sodium_init() < 0) throw ckks::FheError("libsodium failed to initialise");
}

}  // namespace

VerifyKey VerifyKey::from_hex(const std::string& hex) {
  std::array<std::uint8_t, 32> bytes{};
  std::size_t written = 0;
  const char* end = nullptr;
  if (hex.size() != 64 ||
      sodium_hex2bin(bytes.data(), bytes.size(), hex.data(), hex.size(), nullptr, &written,
                     &end) != 0 ||
      written != bytes.size() || end != hex.data() + hex.size()) {
    throw ckks::MismatchError("a verification key is 64 hexadecimal digits, got '" + hex + "'");
  }
  return VerifyKey(bytes);
}

std::string VerifyKey::hex() const {
  std::string out(2 * bytes_.size() + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), bytes_.data(), bytes_.size());
  out.pop_back();
  return out;
}

SigningKey SigningKey::generate() {
  init_sodium();
  std::array<std::uint8_t, 32> seed{};
  randombytes_buf(seed.data(), seed.size());
  SigningKey key = from_seed(seed);
  sodium_memzero(seed.data(), seed.size());
  return key;
}

SigningKey SigningKey::from_seed(const std::array<std::uint8_t, 32>& seed) {
  init_sodium();
  SigningKey key;
  std::array<std::uint8_t, 32> pk{};
  crypto_sign_seed_keypair(pk.data(), key.secret_.data(), seed.data());
  key.verify_key_ = VerifyKey(pk);
  return key;
}

SigningKey::~SigningKey() { sodium_memzero(secret_.data(), secret_.size()); }

std::array<std::uint8_t, 32> SigningKey::seed() const {
  std::array<std::uint8_t, 32> out{};
  crypto_sign_ed25519_sk_to_seed(out.data(), secret_.data());
  return out;
}

Signature SigningKey::sign(std::span<const std::uint8_t> data) const {
  Signature sig{};
  crypto_sign_detached(sig.data(), nullptr, data.data(), data.size(), secret_.data());
  return sig;
}

void verify_signature(std::span<const std::uint8_t> data, std::span<const std::uint8_t> signature,
                      const VerifyKey& owner, const std::string& what) {
  init_sodium();
  if (signature.size() != crypto_sign_BYTES) {
    throw ckks::MismatchError("the signature of the " + what + " has " +
                              std::to_string(signature.size()) + " bytes, an Ed25519 signature " +
                              std::to_string(crypto_sign_BYTES));
  }
  if (crypto_sign_verify_detached(signature.data(), data.data(), data.size(),
                                  owner.bytes().data()) != 0) {
    throw ckks::MismatchError("the " + what + " does not carry a valid signature of the owner's "
                              "key " + owner.hex().substr(0, 16) + "...: it was changed after "
                              "signing, or signed by another key; refusing it");
  }
}

}  // namespace fheprune::runtime
