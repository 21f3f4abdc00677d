// Shared pieces of the libFuzzer targets: the fixed small context, the resealing helper that
// gives every fuzz input a valid header and checksum, the exception policy and the round-trip
// oracle.
//
// Why reseal: every serialized object ends in a BLAKE2b-256 checksum of all preceding bytes,
// and the loaders reject a wrong checksum before they parse a single payload byte. A mutated
// input almost never carries a matching checksum, so on raw inputs a fuzzer would only ever
// test the header checks. Each target therefore runs every loader twice: on the raw input
// (header, length and checksum checks) and on reseal(input), which keeps the input's magic,
// version and kind, puts in the fixed context's fingerprint and the true payload length, and
// appends a correct checksum, so that the payload parsers see arbitrary bytes.
#pragma once

#include <cxxabi.h>
#include <sodium.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <typeinfo>
#include <utility>

#include "fheprune/ckks/ckks.hpp"

namespace fheprune::fuzz {

using ByteSpan = std::span<const std::uint8_t>;

// Byte layout of a serialized object (serialization.hpp): magic "FHEPRUNE" | u16 version |
// u16 kind | 32-byte parameter fingerprint | u64 payload length | payload | 32-byte BLAKE2b of
// everything before it; integers little-endian. Restated here: the engine keeps it private.
inline constexpr std::size_t kMagicBytes = 8;
inline constexpr std::size_t kVersionOffset = 8;
inline constexpr std::size_t kKindOffset = 10;
inline constexpr std::size_t kFingerprintOffset = 12;
inline constexpr std::size_t kLengthOffset = 44;
inline constexpr std::size_t kHeaderBytes = 52;
inline constexpr std::size_t kHashBytes = 32;
inline constexpr char kMagic[kMagicBytes] = {'F', 'H', 'E', 'P', 'R', 'U', 'N', 'E'};
static_assert(kFingerprintOffset + sizeof(ckks::Fingerprint) == kLengthOffset);
static_assert(kLengthOffset + 8 == kHeaderBytes);

// The fixed small context every context-bound target and the seed generator use. Small, so
// that an object is a few tens of kilobytes and the fuzzer gets through many per second.
inline ckks::Parameters small_parameters() {
  ckks::Parameters p;
  p.poly_degree = 1024;
  p.chain_bits = {30, 30};
  p.special_bits = {30};
  p.security = ckks::SecurityLevel::kNoneInsecureTestingOnly;
  return p;
}

// The targets and the seed generator work on toy rings, so the fuzzing process opts in to loading
// parameter and program files marked insecure (otherwise every program input would stop at that
// check and the loader behind it would go unfuzzed).
[[maybe_unused]] inline const bool kInsecureFilesAllowed = [] {
  ckks::allow_insecure_parameter_files(true);
  return true;
}();

// Built once per process, on first use.
inline const ckks::ContextPtr& small_context_ptr() {
  static const ckks::ContextPtr ctx = ckks::make_context(small_parameters(), 1);
  return ctx;
}
inline const ckks::Context& small_context() { return *small_context_ptr(); }

inline void init() {
  if (sodium_init() < 0) {
    std::fputs("fuzz: libsodium failed to initialise\n", stderr);
    std::abort();
  }
}

namespace detail {

inline void put_le(std::uint8_t* out, std::uint64_t value, std::size_t bytes) {
  for (std::size_t i = 0; i < bytes; ++i) out[i] = static_cast<std::uint8_t>(value >> (8 * i));
}

inline std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> out(
      abi::__cxa_demangle(name, nullptr, nullptr, &status), &std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

[[noreturn]] inline void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "\n==fheprune-fuzz== FINDING in %s: %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace detail

// The payload of an input read as a serialized object: what lies between the 52-byte header
// and the final 32 bytes (the old checksum, dropped). Empty for inputs too short to hold one.
inline ByteSpan payload_of(ByteSpan input) {
  if (input.size() <= kHeaderBytes + kHashBytes) return {};
  return input.subspan(kHeaderBytes, input.size() - kHeaderBytes - kHashBytes);
}

// A copy of `input` with a valid checksum: magic, version and kind from the input's first 12
// bytes (canonical values, and `fallback_kind`, for whatever a short input lacks), then
// `fingerprint`, the true length of payload_of(input), that payload, and the BLAKE2b-256 of
// all of it, computed exactly like seal() in serialization.cpp. A valid object reseals to
// itself (given the same fingerprint), so a corpus of valid objects stays valid.
inline ckks::Bytes reseal(ByteSpan input, const ckks::Fingerprint& fingerprint,
                          ckks::ObjectKind fallback_kind) {
  ckks::Bytes out(kHeaderBytes);
  std::memcpy(out.data(), kMagic, kMagicBytes);
  detail::put_le(out.data() + kVersionOffset, ckks::kFormatVersion, 2);
  detail::put_le(out.data() + kKindOffset, static_cast<std::uint16_t>(fallback_kind), 2);
  const std::size_t own = std::min(input.size(), kFingerprintOffset);
  if (own != 0) std::memcpy(out.data(), input.data(), own);
  std::memcpy(out.data() + kFingerprintOffset, fingerprint.data(), fingerprint.size());
  const ByteSpan payload = payload_of(input);
  detail::put_le(out.data() + kLengthOffset, payload.size(), 8);
  out.insert(out.end(), payload.begin(), payload.end());
  unsigned char hash[kHashBytes];
  crypto_generichash(hash, sizeof hash, out.data(), out.size(), nullptr, 0);
  out.insert(out.end(), hash, hash + kHashBytes);
  return out;
}

// Runs a loader. Returns what it loaded, or nothing when it rejected the input with an
// FheError (the documented way to fail). Any other exception is a finding: it is reported
// with its type and message, and the process aborts so that libFuzzer saves the input.
// Crashes and sanitizer reports inside the loader are findings by themselves.
template <typename Load>
auto try_load(const char* what, Load&& load) -> std::optional<decltype(load())> {
  try {
    return load();
  } catch (const ckks::FheError&) {
    return std::nullopt;
  } catch (const std::exception& e) {
    detail::finding(what, "threw " + detail::demangle(typeid(e).name()) +
                              " (not an FheError): " + e.what());
  } catch (...) {
    detail::finding(what, "threw an exception that is not a std::exception");
  }
}

// Oracle for inputs a loader accepted: saving the loaded object must give back the same
// bytes. Parameters carry no fingerprint (the loader ignores it, save writes zeros), so for
// them `compare_fingerprint` is false and the fingerprint and checksum are left out.
inline void check_round_trip(const char* what, ByteSpan loaded, const ckks::Bytes& saved,
                             bool compare_fingerprint = true) {
  bool same = loaded.size() == saved.size();
  if (same && compare_fingerprint) {
    same = std::equal(loaded.begin(), loaded.end(), saved.begin());
  } else if (same) {
    const std::size_t end = loaded.size() - kHashBytes;
    same = std::equal(loaded.begin(), loaded.begin() + kFingerprintOffset, saved.begin()) &&
           std::equal(loaded.begin() + kLengthOffset, loaded.begin() + end,
                      saved.begin() + kLengthOffset);
  }
  if (!same) {
    detail::finding(what, "accepted input does not round-trip: saving the loaded object gives " +
                              std::to_string(saved.size()) + " different bytes for " +
                              std::to_string(loaded.size()) + " input bytes");
  }
}

}  // namespace fheprune::fuzz
