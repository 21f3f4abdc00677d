// Shared helpers for the engine tests: small contexts and random test vectors.
#pragma once

#include <gtest/gtest.h>

#include <complex>
#include <random>
#include <vector>

#include "fheprune/ckks/ckks.hpp"

namespace fheprune::ckks::testing {

// The tests build toy ring sizes and write them to files, so this test process opts in to
// loading files whose parameters are marked insecure; tests of the refusal switch it off for
// their scope with RefuseInsecureFiles.
[[maybe_unused]] inline const bool kInsecureFilesAllowed = [] {
  allow_insecure_parameter_files(true);
  return true;
}();

struct RefuseInsecureFiles {
  RefuseInsecureFiles() { allow_insecure_parameter_files(false); }
  ~RefuseInsecureFiles() { allow_insecure_parameter_files(true); }
  RefuseInsecureFiles(const RefuseInsecureFiles&) = delete;
  RefuseInsecureFiles& operator=(const RefuseInsecureFiles&) = delete;
};

// Small ring for fast tests; the insecure switch is named for what it is.
inline Parameters small_params(std::vector<int> chain = {50, 40, 40, 40},
                               std::vector<int> special = {50}, std::size_t n = 2048) {
  Parameters p;
  p.poly_degree = n;
  p.chain_bits = std::move(chain);
  p.special_bits = std::move(special);
  p.scale_bits = 40;
  p.security = SecurityLevel::kNoneInsecureTestingOnly;
  return p;
}

// Test data only (never key material): a seeded Mersenne Twister.
inline std::vector<double> random_reals(std::size_t count, std::uint64_t seed, double bound = 1.0) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(-bound, bound);
  std::vector<double> v(count);
  for (auto& x : v) x = dist(gen);
  return v;
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Everything one client holds, for tests.
struct Fixture {
  ContextPtr ctx;
  KeyGenerator keygen;
  PublicKey pk;
  RelinKey rk;
  Encoder encoder;
  Encryptor encryptor;
  Decryptor decryptor;
  Evaluator evaluator;

  explicit Fixture(const Parameters& p, std::size_t threads = 1)
      : ctx(make_context(p, threads)),
        keygen(ctx),
        pk(keygen.create_public_key()),
        rk(keygen.create_relin_key()),
        encoder(ctx),
        encryptor(ctx, pk),
        decryptor(ctx, keygen.secret_key()),
        evaluator(ctx) {}

  Ciphertext encrypt(const std::vector<double>& v) { return encryptor.encrypt(encoder.encode(v)); }
  std::vector<double> decrypt(const Ciphertext& ct) {
    return encoder.decode(decryptor.decrypt(ct));
  }
};

}  // namespace fheprune::ckks::testing
