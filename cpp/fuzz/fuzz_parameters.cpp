// libFuzzer target: Serializer::load_parameters.
//
// Each input is loaded twice: as given (header, length and checksum checks) and resealed
// (fuzz_util.hpp), which reaches the payload parser and Parameters::validate(). Parameters
// the loader accepts must round-trip through save(), and, when they are small enough to be
// cheap, must also build a Context (the next thing any caller does with them) failing, if at
// all, only with an FheError.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_util.hpp"

namespace {

using fheprune::ckks::Context;
using fheprune::ckks::ObjectKind;
using fheprune::ckks::Parameters;
using fheprune::ckks::Serializer;
namespace fuzz = fheprune::fuzz;

// Context construction is quadratic in the prime count; bound it so one input stays fast.
constexpr std::size_t kMaxContextDegree = 4096;
constexpr std::size_t kMaxContextPrimes = 6;

void exercise(fuzz::ByteSpan bytes) {
  const auto params =
      fuzz::try_load("load_parameters", [&] { return Serializer::load_parameters(bytes); });
  if (!params) return;
  fuzz::check_round_trip("load_parameters", bytes, Serializer::save(*params),
                         /*compare_fingerprint=*/false);
  if (params->poly_degree <= kMaxContextDegree &&
      params->chain_bits.size() + params->special_bits.size() <= kMaxContextPrimes) {
    fuzz::try_load("Context(loaded parameters)", [&] { return Context(*params, 1).max_level(); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fuzz::ByteSpan input(data, size);
  exercise(input);
  // save() writes an all-zero fingerprint for parameters.
  exercise(fuzz::reseal(input, fheprune::ckks::Fingerprint{}, ObjectKind::kParameters));
  return 0;
}
