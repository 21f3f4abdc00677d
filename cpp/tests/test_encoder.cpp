#include <gtest/gtest.h>

#include <cmath>

#include "test_util.hpp"

namespace fheprune::ckks {
namespace {

using testing::random_reals;

TEST(Encoder, RealRoundTripIsPreciseAtEveryLevel) {
  auto ctx = make_context(testing::small_params());
  Encoder enc(ctx);
  const auto v = random_reals(ctx->slots(), 1, 10.0);
  for (std::size_t level = 0; level <= ctx->max_level(); ++level) {
    const auto out = enc.decode(enc.encode(v, std::nullopt, level));
    EXPECT_LT(testing::max_abs_diff(v, out), 1e-8) << "level " << level;
  }
}

TEST(Encoder, ComplexRoundTripAndPartialVectors) {
  auto ctx = make_context(testing::small_params());
  Encoder enc(ctx);
  std::vector<std::complex<double>> v(100);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = {std::sin(static_cast<double>(i) * 0.1), std::cos(static_cast<double>(i) * 0.3)};
  const auto out = enc.decode_complex(enc.encode(v));
  ASSERT_EQ(out.size(), ctx->slots());
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::complex<double> want = i < v.size() ? v[i] : std::complex<double>{0, 0};
    ASSERT_LT(std::abs(out[i] - want), 1e-8) << i;
  }
}

TEST(Encoder, LargeScalesUseMultiWordResidues) {
  // Scale 2^80 with values up to 2^10 gives coefficients near 2^90: beyond 64-bit integers.
  auto ctx = make_context(testing::small_params());
  Encoder enc(ctx);
  const auto v = random_reals(ctx->slots(), 2, 1000.0);
  const auto out = enc.decode(enc.encode(v, std::ldexp(1.0, 80)));
  EXPECT_LT(testing::max_abs_diff(v, out), 1e-6);
}

TEST(Encoder, ConstantFillsEverySlot) {
  auto ctx = make_context(testing::small_params());
  Encoder enc(ctx);
  const auto out = enc.decode(enc.encode_constant(-3.25));
  for (double x : out) ASSERT_NEAR(x, -3.25, 1e-9);
}

TEST(Encoder, ConstantIsTheEncodingOfAConstantVector) {
  // encode_constant writes the NTT form directly (c in every position); encoding the vector
  // of slots all equal to c through the FFT and the NTT must give the same residues.
  auto ctx = make_context(testing::small_params());
  Encoder enc(ctx);
  for (const double c : {-3.25, 0.0, 1.0, 123.5, -0.0078125}) {
    for (const std::size_t level : {std::size_t{0}, ctx->max_level()}) {
      const Plaintext direct = enc.encode_constant(c, std::nullopt, level);
      const Plaintext viaFft = enc.encode(std::vector<double>(ctx->slots(), c), std::nullopt, level);
      ASSERT_EQ(direct.primes(), viaFft.primes());
      EXPECT_EQ(direct.data(), viaFft.data()) << "c = " << c << ", level " << level;
    }
  }
  // Coefficients beyond 64 bits (scale 2^80) take the multi-word residue path.
  const auto out = enc.decode(enc.encode_constant(-700.5, std::ldexp(1.0, 80)));
  for (double x : out) ASSERT_NEAR(x, -700.5, 1e-6);
  // A constant too large for the level's modulus is refused, as a vector is.
  EXPECT_THROW(enc.encode_constant(std::ldexp(1.0, 30), std::nullopt, 0), EncodingError);
}

TEST(Encoder, RejectsBadInput) {
  auto ctx = make_context(testing::small_params());
  Encoder enc(ctx);
  EXPECT_THROW(enc.encode(std::vector<double>(ctx->slots() + 1, 0.0)), EncodingError);
  EXPECT_THROW(enc.encode(std::vector<double>{1.0, NAN}), EncodingError);
  EXPECT_THROW(enc.encode(std::vector<double>{INFINITY}), EncodingError);
  EXPECT_THROW(enc.encode(std::vector<double>{1.0}, -1.0), ScaleError);
  EXPECT_THROW(enc.encode(std::vector<double>{1.0}, std::nullopt, 9), LevelError);
  // 2^40 * 2^30 does not fit in the 50-bit prime at level 0.
  EXPECT_THROW(enc.encode(std::vector<double>{std::ldexp(1.0, 30)}, std::nullopt, 0),
               EncodingError);
}

}  // namespace
}  // namespace fheprune::ckks
