#include "fheprune/ckks/serialization.hpp"

#include <sodium.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "ckks/context_tables.hpp"
#include "fheprune/ckks/errors.hpp"
#include "ckks/wire.hpp"

namespace fheprune::ckks {

static_assert(std::endian::native == std::endian::little,
              "serialization assumes a little-endian host");

namespace {

constexpr char kMagic[8] = {'F', 'H', 'E', 'P', 'R', 'U', 'N', 'E'};
constexpr std::size_t kHashBytes = 32;
constexpr std::size_t kHeaderBytes = 8 + 2 + 2 + 32 + 8;
// No single object may claim more than this (a 2^16 ring with 64 primes and 64 digits of keys
// is far below it); bounds every allocation a hostile length could ask for.
constexpr std::uint64_t kMaxPayload = std::uint64_t{1} << 36;

const char* kind_name(ObjectKind k) {
  switch (k) {
    case ObjectKind::kParameters: return "parameters";
    case ObjectKind::kPlaintext: return "plaintext";
    case ObjectKind::kCiphertext: return "ciphertext";
    case ObjectKind::kPublicKey: return "public key";
    case ObjectKind::kRelinKey: return "relinearization key";
    case ObjectKind::kGaloisKeys: return "Galois keys";
    case ObjectKind::kEvaluationKeys: return "evaluation keys";
    case ObjectKind::kSecretKey: return "secret key";
    case ObjectKind::kProgram: return "program";
  }
  return "unknown object";
}

}  // namespace


namespace {

using detail::Reader;
using detail::Writer;

Bytes seal(ObjectKind kind, const Fingerprint& fp, const Bytes& payload) {
  Writer w;
  w.bytes(kMagic, sizeof kMagic);
  w.u16(kFormatVersion);
  w.u16(static_cast<std::uint16_t>(kind));
  w.bytes(fp.data(), fp.size());
  w.u64(payload.size());
  w.bytes(payload.data(), payload.size());
  Bytes& out = w.buffer();
  unsigned char hash[kHashBytes];
  crypto_generichash(hash, sizeof hash, out.data(), out.size(), nullptr, 0);
  out.insert(out.end(), hash, hash + kHashBytes);
  return out;
}

struct Opened {
  ObjectKind kind;
  Fingerprint fingerprint;
  std::span<const std::uint8_t> payload;
};

Opened open(std::span<const std::uint8_t> bytes) {
  if (bytes.size() < kHeaderBytes + kHashBytes) {
    throw SerializationError("truncated data: " + std::to_string(bytes.size()) +
                             " bytes is shorter than any fheprune object");
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    throw SerializationError("not an fheprune object (bad magic bytes)");
  }
  Reader r(bytes.subspan(sizeof kMagic));
  const std::uint16_t version = r.u16();
  if (version != kFormatVersion) {
    throw SerializationError("unsupported format version " + std::to_string(version) +
                             "; this build reads version " + std::to_string(kFormatVersion));
  }
  const std::uint16_t kind = r.u16();
  if (kind < 1 || kind > 9) {
    throw SerializationError("corrupted data: unknown object kind " + std::to_string(kind));
  }
  Opened o{static_cast<ObjectKind>(kind), {}, {}};
  r.bytes(o.fingerprint.data(), o.fingerprint.size());
  const std::uint64_t length = r.u64();
  if (length > kMaxPayload || length != bytes.size() - kHeaderBytes - kHashBytes) {
    throw SerializationError("truncated or corrupted data: header announces " +
                             std::to_string(length) + " payload bytes, file holds " +
                             std::to_string(bytes.size() - kHeaderBytes - kHashBytes));
  }
  unsigned char hash[kHashBytes];
  crypto_generichash(hash, sizeof hash, bytes.data(), kHeaderBytes + length, nullptr, 0);
  if (sodium_memcmp(hash, bytes.data() + kHeaderBytes + length, kHashBytes) != 0) {
    throw SerializationError("corrupted data: checksum mismatch");
  }
  o.payload = bytes.subspan(kHeaderBytes, length);
  return o;
}

Opened open_expect(const Context* ctx, std::span<const std::uint8_t> bytes, ObjectKind want) {
  Opened o = open(bytes);
  if (o.kind != want) {
    throw SerializationError(std::string("expected ") + kind_name(want) + " data, got " +
                             kind_name(o.kind));
  }
  if (ctx && o.fingerprint != ctx->fingerprint()) {
    throw MismatchError(std::string(kind_name(want)) +
                        " was made under different parameters than this context");
  }
  return o;
}

// `blocks` runs of `primes` polynomials of n words, polynomial i of a run at prime i; every
// word must be below its prime.
void read_residues(Reader& r, const Context& ctx, std::uint64_t* out, std::size_t primes,
                   std::size_t blocks) {
  const std::size_t n = ctx.poly_degree();
  for (std::size_t b = 0; b < blocks; ++b) {
    for (std::size_t i = 0; i < primes; ++i) {
      std::uint64_t* dst = out + (b * primes + i) * n;
      r.words(dst, n);
      const std::size_t pi = i;
      const std::uint64_t q = ctx.tables().modulus(pi).value();
      for (std::size_t k = 0; k < n; ++k) {
        if (dst[k] >= q) {
          throw SerializationError("corrupted data: residue out of range for prime " +
                                   std::to_string(pi));
        }
      }
    }
  }
}

std::uint64_t read_count(Reader& r, std::uint64_t lo, std::uint64_t hi, const char* what) {
  const std::uint64_t v = r.u64();
  if (v < lo || v > hi) {
    throw SerializationError(std::string("corrupted data: ") + what + " = " + std::to_string(v) +
                             " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) +
                             "]");
  }
  return v;
}

double read_scale(Reader& r) {
  const double s = r.f64();
  if (!std::isfinite(s) || s < 1.0 || s > 0x1p1000) {
    throw SerializationError("corrupted data: scale is not a finite number in [1, 2^1000]");
  }
  return s;
}

}  // namespace

// ---- Friends: they need the private fields of the data classes. ----

Bytes Serializer::save(const Parameters& p) {
  p.validate();
  Writer w;
  w.u64(p.poly_degree);
  w.u64(p.chain_bits.size());
  for (int b : p.chain_bits) w.u64(static_cast<std::uint64_t>(b));
  w.u64(p.special_bits.size());
  for (int b : p.special_bits) w.u64(static_cast<std::uint64_t>(b));
  w.u64(static_cast<std::uint64_t>(p.scale_bits));
  w.u16(p.security == SecurityLevel::kClassical128 ? 128 : 0);
  return seal(ObjectKind::kParameters, Fingerprint{}, w.buffer());
}

Parameters Serializer::load_parameters(std::span<const std::uint8_t> bytes) {
  Opened o = open_expect(nullptr, bytes, ObjectKind::kParameters);
  Reader r(o.payload);
  Parameters p;
  p.poly_degree = read_count(r, 1024, 65536, "poly_degree");
  const std::uint64_t chain = read_count(r, 1, 64, "chain length");
  for (std::uint64_t i = 0; i < chain; ++i) {
    p.chain_bits.push_back(static_cast<int>(read_count(r, 20, 60, "prime bits")));
  }
  const std::uint64_t special = read_count(r, 1, 64, "special prime count");
  for (std::uint64_t i = 0; i < special; ++i) {
    p.special_bits.push_back(static_cast<int>(read_count(r, 20, 60, "prime bits")));
  }
  p.scale_bits = static_cast<int>(read_count(r, 10, 60, "scale bits"));
  const std::uint16_t security = r.u16();
  if (security != 128 && security != 0) {
    throw SerializationError("corrupted data: unknown security level");
  }
  p.security =
      security == 128 ? SecurityLevel::kClassical128 : SecurityLevel::kNoneInsecureTestingOnly;
  r.expect_end();
  if (p.security != SecurityLevel::kClassical128 && !insecure_parameter_files_allowed()) {
    throw InsecureParametersError(
        "the file's parameters (" + p.describe() + ") switch off the 128-bit security check "
        "(testing only); a file cannot lower the security level. Use parameters that pass "
        "it, or, in a test suite only, call allow_insecure_parameter_files(true) first");
  }
  p.validate();
  return p;
}

Bytes Serializer::save(const Context& ctx, const Plaintext& pt) {
  Writer w;
  w.u64(pt.poly_degree());
  w.u64(pt.level());
  w.f64(pt.scale());
  w.words(pt.data());
  return seal(ObjectKind::kPlaintext, ctx.fingerprint(), w.buffer());
}

Plaintext Serializer::load_plaintext(const Context& ctx, std::span<const std::uint8_t> bytes) {
  Opened o = open_expect(&ctx, bytes, ObjectKind::kPlaintext);
  Reader r(o.payload);
  read_count(r, ctx.poly_degree(), ctx.poly_degree(), "poly_degree");
  const std::size_t level = read_count(r, 0, ctx.max_level(), "level");
  const double scale = read_scale(r);
  Plaintext pt(ctx, level, scale);
  read_residues(r, ctx, pt.data_.data(), level + 1, 1);
  r.expect_end();
  return pt;
}

Bytes Serializer::save(const Context& ctx, const Ciphertext& ct) {
  Writer w;
  write(w, ct);
  return seal(ObjectKind::kCiphertext, ctx.fingerprint(), w.buffer());
}

void Serializer::write(Writer& w, const Ciphertext& ct) {
  w.u64(ct.poly_degree());
  w.u64(ct.size());
  w.u64(ct.level());
  w.f64(ct.scale());
  w.bytes(ct.key_id().data(), ct.key_id().size());
  w.words(ct.data());
}

Ciphertext Serializer::read_ciphertext(Reader& r, const Context& ctx) {
  read_count(r, ctx.poly_degree(), ctx.poly_degree(), "poly_degree");
  const std::size_t size = read_count(r, 2, 3, "ciphertext size");
  const std::size_t level = read_count(r, 0, ctx.max_level(), "level");
  const double scale = read_scale(r);
  KeyId id;
  r.bytes(id.data(), id.size());
  Ciphertext ct(ctx, size, level, scale, id);
  read_residues(r, ctx, ct.data_.data(), level + 1, size);
  return ct;
}

Ciphertext Serializer::load_ciphertext(const Context& ctx, std::span<const std::uint8_t> bytes) {
  Opened o = open_expect(&ctx, bytes, ObjectKind::kCiphertext);
  Reader r(o.payload);
  Ciphertext ct = read_ciphertext(r, ctx);
  r.expect_end();
  return ct;
}

Bytes Serializer::save(const Context& ctx, const PublicKey& pk) {
  Writer w;
  write(w, pk.data_);
  return seal(ObjectKind::kPublicKey, ctx.fingerprint(), w.buffer());
}

PublicKey Serializer::read_public_key(Reader& r, const Context& ctx) {
  PublicKey pk;
  pk.data_ = read_ciphertext(r, ctx);
  if (pk.data_.size() != 2 || pk.data_.level() != ctx.max_level()) {
    throw SerializationError("corrupted data: a public key is a size-2 top-level ciphertext");
  }
  return pk;
}

PublicKey Serializer::load_public_key(const Context& ctx, std::span<const std::uint8_t> bytes) {
  Opened o = open_expect(&ctx, bytes, ObjectKind::kPublicKey);
  Reader r(o.payload);
  PublicKey pk = read_public_key(r, ctx);
  r.expect_end();
  return pk;
}

void Serializer::write(Writer& w, const Context& ctx, const KeySwitchKey& k) {
  w.u64(ctx.poly_degree());
  w.u64(k.digits_);
  w.u64(k.key_primes_);
  w.words(k.data_);
}

KeySwitchKey Serializer::read_switch_key(Reader& r, const Context& ctx) {
  KeySwitchKey k;
  k.n_ = read_count(r, ctx.poly_degree(), ctx.poly_degree(), "poly_degree");
  const std::size_t digits = ctx.digit_count(ctx.max_level());
  k.digits_ = read_count(r, digits, digits, "key-switching digits");
  k.key_primes_ = read_count(r, ctx.key_size(), ctx.key_size(), "key primes");
  if (r.remaining() < k.digits_ * 2 * k.key_primes_ * k.n_ * 8) {
    throw SerializationError("truncated data: key-switching key is incomplete");
  }
  k.data_.resize(k.digits_ * 2 * k.key_primes_ * k.n_);
  read_residues(r, ctx, k.data_.data(), k.key_primes_, 2 * k.digits_);
  return k;
}

Bytes Serializer::save(const Context& ctx, const RelinKey& rk) {
  Writer w;
  w.bytes(rk.id_.data(), rk.id_.size());
  write(w, ctx, rk.key_);
  return seal(ObjectKind::kRelinKey, ctx.fingerprint(), w.buffer());
}

RelinKey Serializer::read_relin_key(Reader& r, const Context& ctx) {
  RelinKey rk;
  r.bytes(rk.id_.data(), rk.id_.size());
  rk.key_ = read_switch_key(r, ctx);
  rk.params_ = ctx.fingerprint();
  return rk;
}

RelinKey Serializer::load_relin_key(const Context& ctx, std::span<const std::uint8_t> bytes) {
  Opened o = open_expect(&ctx, bytes, ObjectKind::kRelinKey);
  Reader r(o.payload);
  RelinKey rk = read_relin_key(r, ctx);
  r.expect_end();
  return rk;
}

void Serializer::write(Writer& w, const Context& ctx, const GaloisKeys& gk) {
  w.bytes(gk.id_.data(), gk.id_.size());
  w.u64(gk.keys_.size());
  for (const auto& [g, key] : gk.keys_) {
    w.u64(g);
    write(w, ctx, key);
  }
}

GaloisKeys Serializer::read_galois_keys(Reader& r, const Context& ctx) {
  GaloisKeys gk;
  r.bytes(gk.id_.data(), gk.id_.size());
  gk.params_ = ctx.fingerprint();
  const std::uint64_t count = read_count(r, 0, ctx.poly_degree(), "Galois key count");
  std::uint64_t previous = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t g = read_count(r, 3, 2 * ctx.poly_degree() - 1, "Galois element");
    if ((g & 1) == 0 || g <= previous) {
      throw SerializationError("corrupted data: Galois elements must be odd and increasing");
    }
    previous = g;
    gk.keys_.emplace(g, read_switch_key(r, ctx));
  }
  return gk;
}

Bytes Serializer::save(const Context& ctx, const GaloisKeys& gk) {
  Writer w;
  write(w, ctx, gk);
  return seal(ObjectKind::kGaloisKeys, ctx.fingerprint(), w.buffer());
}

GaloisKeys Serializer::load_galois_keys(const Context& ctx, std::span<const std::uint8_t> bytes) {
  Opened o = open_expect(&ctx, bytes, ObjectKind::kGaloisKeys);
  Reader r(o.payload);
  GaloisKeys gk = read_galois_keys(r, ctx);
  r.expect_end();
  return gk;
}

Bytes Serializer::save(const Context& ctx, const EvaluationKeys& keys) {
  Writer w;
  write(w, keys.public_key.data_);
  w.bytes(keys.relin_key.id_.data(), keys.relin_key.id_.size());
  write(w, ctx, keys.relin_key.key_);
  write(w, ctx, keys.galois_keys);
  // Encapsulation keys, when there are any: their weight, the secret's id, the level-0 key's
  // four residue blocks (b, a at q0 and p), then the top-level key. A bundle without them ends
  // after the Galois keys (as bundles written before they existed), so that every bundle has
  // exactly one encoding.
  const EncapsulationKeys& e = keys.encapsulation;
  if (!e.empty()) {
    w.u64(e.hamming_weight_);
    w.bytes(e.id_.data(), e.id_.size());
    w.words(e.to_sparse_.data_);
    write(w, ctx, e.from_sparse_);
  }
  return seal(ObjectKind::kEvaluationKeys, ctx.fingerprint(), w.buffer());
}

EvaluationKeys Serializer::load_evaluation_keys(const Context& ctx,
                                                std::span<const std::uint8_t> bytes) {
  Opened o = open(bytes);
  if (o.kind == ObjectKind::kSecretKey) {
    throw SerializationError("refusing to load a secret key as evaluation keys");
  }
  o = open_expect(&ctx, bytes, ObjectKind::kEvaluationKeys);
  Reader r(o.payload);
  EvaluationKeys keys;
  keys.public_key = read_public_key(r, ctx);
  keys.relin_key = read_relin_key(r, ctx);
  keys.galois_keys = read_galois_keys(r, ctx);
  if (r.remaining() > 0) {
    EncapsulationKeys& e = keys.encapsulation;
    const std::size_t n = ctx.poly_degree();
    e.hamming_weight_ = read_count(r, 1, n, "ephemeral Hamming weight");
    if (ctx.special_size() == 0) {
      throw SerializationError("corrupted data: encapsulation keys need a special prime");
    }
    r.bytes(e.id_.data(), e.id_.size());
    KeySwitchKey& k = e.to_sparse_;
    k.n_ = n;
    k.digits_ = 1;
    k.key_primes_ = 2;
    if (r.remaining() < 4 * n * 8) {
      throw SerializationError("truncated data: encapsulation key is incomplete");
    }
    k.data_.resize(4 * n);
    r.words(k.data_.data(), 4 * n);
    for (std::size_t block = 0; block < 4; ++block) {
      const std::size_t prime = block % 2 == 0 ? 0 : ctx.chain_size();
      const std::uint64_t q = ctx.tables().modulus(prime).value();
      for (std::size_t c = 0; c < n; ++c) {
        if (k.data_[block * n + c] >= q) {
          throw SerializationError("corrupted data: encapsulation key residue out of range "
                                   "for prime " + std::to_string(prime));
        }
      }
    }
    e.from_sparse_ = read_switch_key(r, ctx);
  }
  r.expect_end();
  const KeyId& id = keys.public_key.id();
  if (keys.relin_key.id() != id || keys.galois_keys.id() != id ||
      (!keys.encapsulation.empty() && keys.encapsulation.id() != id)) {
    throw MismatchError("evaluation keys in this bundle belong to different secret keys");
  }
  return keys;
}

Bytes Serializer::save_secret_key(const Context& ctx, const SecretKey& sk) {
  Writer w;
  w.u64(ctx.poly_degree());
  w.bytes(sk.id_.data(), sk.id_.size());
  w.words(sk.data_);
  return seal(ObjectKind::kSecretKey, ctx.fingerprint(), w.buffer());
}

SecretKey Serializer::load_secret_key(const Context& ctx, std::span<const std::uint8_t> bytes) {
  Opened o = open_expect(&ctx, bytes, ObjectKind::kSecretKey);
  Reader r(o.payload);
  SecretKey sk;
  sk.n_ = read_count(r, ctx.poly_degree(), ctx.poly_degree(), "poly_degree");
  r.bytes(sk.id_.data(), sk.id_.size());
  sk.params_ = ctx.fingerprint();
  sk.data_.resize(ctx.key_size() * sk.n_);
  read_residues(r, ctx, sk.data_.data(), ctx.key_size(), 1);
  r.expect_end();
  return sk;
}

ObjectKind Serializer::peek_kind(std::span<const std::uint8_t> bytes) { return open(bytes).kind; }

Bytes Serializer::seal_envelope(ObjectKind kind, const Fingerprint& fp, const Bytes& payload) {
  return seal(kind, fp, payload);
}

std::span<const std::uint8_t> Serializer::open_envelope(std::span<const std::uint8_t> bytes,
                                                        ObjectKind want, Fingerprint* fp) {
  Opened o = open_expect(nullptr, bytes, want);
  if (fp) *fp = o.fingerprint;
  return o.payload;
}

}  // namespace fheprune::ckks
