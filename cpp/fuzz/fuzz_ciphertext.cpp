// libFuzzer target: Serializer::load_ciphertext and Serializer::load_plaintext against the
// fixed small context (fuzz_util.hpp: N = 1024, chain {30, 30}, special {30}).
//
// Each input goes to both loaders twice: as given, and resealed (valid checksum, the fixed
// context's fingerprint, the input's own magic, version and kind) so that the payload
// parsers run on arbitrary bytes. Objects a loader accepts must save back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_util.hpp"

namespace {

using fheprune::ckks::Context;
using fheprune::ckks::ObjectKind;
using fheprune::ckks::Serializer;
namespace fuzz = fheprune::fuzz;

void exercise(const Context& ctx, fuzz::ByteSpan bytes) {
  if (const auto ct = fuzz::try_load(
          "load_ciphertext", [&] { return Serializer::load_ciphertext(ctx, bytes); })) {
    fuzz::check_round_trip("load_ciphertext", bytes, Serializer::save(ctx, *ct));
  }
  if (const auto pt = fuzz::try_load(
          "load_plaintext", [&] { return Serializer::load_plaintext(ctx, bytes); })) {
    fuzz::check_round_trip("load_plaintext", bytes, Serializer::save(ctx, *pt));
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
  exercise(ctx, input);
  exercise(ctx, fuzz::reseal(input, ctx.fingerprint(), ObjectKind::kCiphertext));
  return 0;
}
