// Versioned, validated binary serialization.
//
// Layout: magic "FHEPRUNE" | format version u16 | kind u16 | parameter fingerprint (32 bytes) |
// payload length u64 | payload | BLAKE2b-256 of everything before it. All integers are
// little-endian. Loading checks every field (sizes, levels, residues below their prime, the
// checksum, the parameters) and throws SerializationError or MismatchError; it never trusts a
// length it has not bounded.
//
// The secret key has its own explicitly named functions; nothing else ever writes it, and the
// evaluation-key bundle cannot hold it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "fheprune/ckks/keys.hpp"
#include "fheprune/ckks/types.hpp"

namespace fheprune::ckks {

enum class ObjectKind : std::uint16_t {
  kParameters = 1,
  kPlaintext = 2,
  kCiphertext = 3,
  kPublicKey = 4,
  kRelinKey = 5,
  kGaloisKeys = 6,
  kEvaluationKeys = 7,
  kSecretKey = 8,
  kProgram = 9,  // a compiled runtime program (fheprune/runtime/program.hpp)
};

inline constexpr std::uint16_t kFormatVersion = 1;

namespace detail {
class Reader;
class Writer;
}  // namespace detail


class Serializer {
 public:
  static Bytes save(const Parameters& params);
  static Parameters load_parameters(std::span<const std::uint8_t> bytes);

  static Bytes save(const Context& ctx, const Plaintext& pt);
  static Plaintext load_plaintext(const Context& ctx, std::span<const std::uint8_t> bytes);
  static Bytes save(const Context& ctx, const Ciphertext& ct);
  static Ciphertext load_ciphertext(const Context& ctx, std::span<const std::uint8_t> bytes);
  static Bytes save(const Context& ctx, const PublicKey& pk);
  static PublicKey load_public_key(const Context& ctx, std::span<const std::uint8_t> bytes);
  static Bytes save(const Context& ctx, const RelinKey& rk);
  static RelinKey load_relin_key(const Context& ctx, std::span<const std::uint8_t> bytes);
  static Bytes save(const Context& ctx, const GaloisKeys& gk);
  static GaloisKeys load_galois_keys(const Context& ctx, std::span<const std::uint8_t> bytes);
  // The server bundle: public, relinearization and Galois keys. Never the secret key.
  static Bytes save(const Context& ctx, const EvaluationKeys& keys);
  static EvaluationKeys load_evaluation_keys(const Context& ctx,
                                             std::span<const std::uint8_t> bytes);

  // Client side only.
  static Bytes save_secret_key(const Context& ctx, const SecretKey& sk);
  static SecretKey load_secret_key(const Context& ctx, std::span<const std::uint8_t> bytes);

  // Reads just the header: which kind of object the bytes hold (validates magic, version and
  // checksum).
  static ObjectKind peek_kind(std::span<const std::uint8_t> bytes);

  // The envelope (magic, version, kind, fingerprint, length, checksum) around another module's
  // payload, so every fheprune file is checked the same way. `open_envelope` validates the
  // header and checksum, that the kind is `want`, and returns the payload and fingerprint.
  static Bytes seal_envelope(ObjectKind kind, const Fingerprint& fp, const Bytes& payload);
  static std::span<const std::uint8_t> open_envelope(std::span<const std::uint8_t> bytes,
                                                     ObjectKind want, Fingerprint* fp);

 private:
  static void write(detail::Writer& w, const Ciphertext& ct);
  static void write(detail::Writer& w, const Context& ctx, const KeySwitchKey& k);
  static void write(detail::Writer& w, const Context& ctx, const GaloisKeys& gk);
  static Ciphertext read_ciphertext(detail::Reader& r, const Context& ctx);
  static PublicKey read_public_key(detail::Reader& r, const Context& ctx);
  static KeySwitchKey read_switch_key(detail::Reader& r, const Context& ctx);
  static RelinKey read_relin_key(detail::Reader& r, const Context& ctx);
  static GaloisKeys read_galois_keys(detail::Reader& r, const Context& ctx);
};

}  // namespace fheprune::ckks
