// libFuzzer target: the key loaders (load_public_key, load_relin_key, load_galois_keys,
// load_evaluation_keys, load_secret_key) and peek_kind, against the fixed small context
// (fuzz_util.hpp).
//
// Each input goes to every loader and to peek_kind as given (header, length, checksum and kind
// checks). It is then resealed (valid checksum, the fixed context's fingerprint, the input's
// own magic, version and kind; fuzz_util.hpp), and the resealed bytes go to the loader the
// kind field names (load_evaluation_keys also gets secret keys, which it must refuse), or to
// peek_kind when it names no key. Sending the resealed bytes to the other loaders would only
// repeat the kind check, which the raw pass covers, at the price of one BLAKE2b pass over the
// input each: skipping them makes the target about 1.5x faster. Objects a loader accepts must
// save back to the same bytes, and peek_kind must agree with the kind field of what it
// accepts.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "fuzz_util.hpp"

namespace {

using fheprune::ckks::Context;
using fheprune::ckks::ObjectKind;
using fheprune::ckks::Serializer;
namespace fuzz = fheprune::fuzz;

// Which loaders get an input: all of them, or (Only::kMatchingKind) just those that can get
// past the kind check for the input's kind field.
enum class Only { kAll, kMatchingKind };

bool wants(Only only, fuzz::ByteSpan bytes, ObjectKind kind) {
  if (only == Only::kAll) return true;
  if (bytes.size() < fuzz::kKindOffset + 2) return false;
  const unsigned field = bytes[fuzz::kKindOffset] | (unsigned{bytes[fuzz::kKindOffset + 1]} << 8);
  return field == static_cast<unsigned>(kind);
}

void exercise(const Context& ctx, fuzz::ByteSpan bytes, Only only) {
  bool any = false;
  if (wants(only, bytes, ObjectKind::kPublicKey)) {
    any = true;
    if (const auto pk = fuzz::try_load(
            "load_public_key", [&] { return Serializer::load_public_key(ctx, bytes); })) {
      fuzz::check_round_trip("load_public_key", bytes, Serializer::save(ctx, *pk));
    }
  }
  if (wants(only, bytes, ObjectKind::kRelinKey)) {
    any = true;
    if (const auto rk = fuzz::try_load(
            "load_relin_key", [&] { return Serializer::load_relin_key(ctx, bytes); })) {
      fuzz::check_round_trip("load_relin_key", bytes, Serializer::save(ctx, *rk));
    }
  }
  if (wants(only, bytes, ObjectKind::kGaloisKeys)) {
    any = true;
    if (const auto gk = fuzz::try_load(
            "load_galois_keys", [&] { return Serializer::load_galois_keys(ctx, bytes); })) {
      fuzz::check_round_trip("load_galois_keys", bytes, Serializer::save(ctx, *gk));
    }
  }
  // Also for secret keys: the bundle loader must refuse them.
  if (wants(only, bytes, ObjectKind::kEvaluationKeys) ||
      wants(only, bytes, ObjectKind::kSecretKey)) {
    any = true;
    if (const auto ek = fuzz::try_load("load_evaluation_keys", [&] {
          return Serializer::load_evaluation_keys(ctx, bytes);
        })) {
      fuzz::check_round_trip("load_evaluation_keys", bytes, Serializer::save(ctx, *ek));
    }
  }
  if (wants(only, bytes, ObjectKind::kSecretKey)) {
    any = true;
    if (const auto sk = fuzz::try_load(
            "load_secret_key", [&] { return Serializer::load_secret_key(ctx, bytes); })) {
      fuzz::check_round_trip("load_secret_key", bytes, Serializer::save_secret_key(ctx, *sk));
    }
  }
  if (only == Only::kAll || !any) {
    if (const auto kind =
            fuzz::try_load("peek_kind", [&] { return Serializer::peek_kind(bytes); })) {
      const unsigned field =
          bytes[fuzz::kKindOffset] | (unsigned{bytes[fuzz::kKindOffset + 1]} << 8);
      if (static_cast<unsigned>(*kind) != field) {
        fuzz::detail::finding("peek_kind", "returned kind " +
                                               std::to_string(static_cast<unsigned>(*kind)) +
                                               " for kind field " + std::to_string(field));
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  fuzz::init();
  (void)fuzz::small_context();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Context& ctx = fuzz::small_context();
  const fuzz::ByteSpan input(data, size);
  exercise(ctx, input, Only::kAll);
  exercise(ctx, fuzz::reseal(input, ctx.fingerprint(), ObjectKind::kEvaluationKeys),
           Only::kMatchingKind);
  return 0;
}
