#include <gtest/gtest.h>

#include "ckks/context_tables.hpp"
#include "test_util.hpp"

namespace fheprune::ckks {
namespace {

Parameters secure(std::size_t n, std::vector<int> chain, std::vector<int> special) {
  Parameters p;
  p.poly_degree = n;
  p.chain_bits = std::move(chain);
  p.special_bits = std::move(special);
  return p;
}

TEST(Parameters, AcceptsStandardSecureSets) {
  EXPECT_NO_THROW(secure(8192, {60, 40, 40}, {60}).validate());              // 200 <= 218
  EXPECT_NO_THROW(secure(16384, {60, 40, 40, 40, 40, 40, 40, 40}, {60}).validate());
  EXPECT_NO_THROW(secure(4096, {36, 36}, {37}).validate());                 // 109
}

TEST(Parameters, RefusesModuliAboveTheSecurityBound) {
  EXPECT_THROW(secure(8192, {60, 40, 40, 40}, {60}).validate(), InsecureParametersError);
  EXPECT_THROW(secure(4096, {40, 40}, {40}).validate(), InsecureParametersError);
  try {
    secure(8192, {60, 40, 40, 40}, {60}).validate();
    FAIL();
  } catch (const InsecureParametersError& e) {
    EXPECT_NE(std::string(e.what()).find("218"), std::string::npos) << e.what();
  }
  // The explicitly named testing switch lifts the bound, and nothing else does.
  auto p = secure(8192, {60, 40, 40, 40}, {60});
  p.security = SecurityLevel::kNoneInsecureTestingOnly;
  EXPECT_NO_THROW(p.validate());
}

TEST(Parameters, RejectsMalformedSets) {
  EXPECT_THROW(secure(3000, {40}, {40}).validate(), ParameterError);
  EXPECT_THROW(secure(2048, {40}, {40}).validate(), ParameterError);  // below 2^12 needs opt-in
  EXPECT_THROW(secure(131072, {40}, {40}).validate(), ParameterError);
  EXPECT_THROW(secure(8192, {}, {60}).validate(), ParameterError);
  EXPECT_THROW(secure(8192, {60, 40}, {}).validate(), ParameterError);
  EXPECT_THROW(secure(8192, {61, 40}, {60}).validate(), ParameterError);
  EXPECT_THROW(secure(8192, {60, 40}, {50}).validate(), ParameterError);  // digit > P
  auto p = secure(8192, {60, 40}, {60});
  p.scale_bits = 5;
  EXPECT_THROW(p.validate(), ParameterError);
}

TEST(Context, FingerprintIdentifiesParameters) {
  auto a = make_context(testing::small_params());
  auto b = make_context(testing::small_params());
  auto c = make_context(testing::small_params({50, 40, 40}));
  EXPECT_EQ(a->fingerprint(), b->fingerprint());
  EXPECT_NE(a->fingerprint(), c->fingerprint());
  EXPECT_EQ(a->max_level(), 3u);
  EXPECT_EQ(a->slots(), 1024u);
}

TEST(Context, GaloisElementsArePowersOfFive) {
  auto ctx = make_context(testing::small_params());
  const std::uint64_t two_n = 2 * ctx->poly_degree();
  EXPECT_EQ(ctx->galois_element(0), 1u);
  EXPECT_EQ(ctx->galois_element(1), 5u);
  EXPECT_EQ(ctx->galois_element(2), 25u);
  // Right rotation by 1 = left rotation by slots - 1.
  EXPECT_EQ(ctx->galois_element(-1), ctx->galois_element(static_cast<long>(ctx->slots()) - 1));
  EXPECT_EQ(ctx->galois_element(1) * ctx->galois_element(-1) % two_n, 1u);
  EXPECT_THROW(ctx->tables().galois_permutation(4), ParameterError);
}

TEST(Parameters, RingOf65536UsesTheMostConservativeBound) {
  EXPECT_EQ(max_modulus_bits_128(65536), 1747);
  Parameters p;
  p.poly_degree = 65536;
  p.special_bits = {60};
  p.chain_bits.assign(28, 60);  // 28 * 60 + 60 = 1740 bits: within
  p.chain_bits.push_back(27);  // 1767 bits: within the old bound (1772), above 1747
  EXPECT_THROW(p.validate(), InsecureParametersError);
  p.chain_bits.back() = 20;  // 1760 bits
  EXPECT_THROW(p.validate(), InsecureParametersError);
  p.chain_bits.pop_back();
  EXPECT_NO_THROW(p.validate());
}

TEST(Context, ThreadCountsAreBoundedByTheMachine) {
  // One OS thread per requested thread: a huge count is refused by name, not a hang.
  try {
    make_context(testing::small_params(), 1'000'000);
    FAIL() << "a million engine threads were accepted";
  } catch (const ParameterError& e) {
    EXPECT_NE(std::string(e.what()).find("hardware threads"), std::string::npos) << e.what();
  }
  const auto ctx = make_context(testing::small_params(), 2);
  EXPECT_THROW(ctx->set_threads(std::size_t{1} << 40), ParameterError);
  EXPECT_EQ(ctx->threads(), 2u);  // unchanged by the refused request
}

TEST(Ciphertext, ScalesArePositiveAndFinite) {
  const auto ctx = make_context(testing::small_params());
  Plaintext p(*ctx, 0, 1.0);
  for (double bad : {0.0, -2.0, std::nan(""), HUGE_VAL}) {
    EXPECT_THROW(p.set_scale(bad), ScaleError) << bad;
  }
  p.set_scale(1024.0);
  EXPECT_EQ(p.scale(), 1024.0);
}

}  // namespace
}  // namespace fheprune::ckks
