// CKKS bootstrapping: each stage against its cleartext definition, then whole refreshes.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <complex>
#include <numbers>

#include "ckks/context_tables.hpp"
#include "fheprune/ckks/bootstrapper.hpp"
#include "fheprune/ckks/ckks.hpp"
#include "test_util.hpp"

namespace fheprune::ckks {
namespace {

using testing::random_reals;
using testing::small_params;
using cd = std::complex<double>;

constexpr std::size_t kWeight = 64;  // the secret's Hamming weight; K = 12 covers it

// q0 = 55 bits against a 40-bit message scale (2^15 of room for the sine), two user levels,
// SlotToCoeff on 40-bit primes, EvalMod on 55-bit ones, CoeffToSlot on 60-bit ones (its
// plaintexts need the precision: the raised slots are 2^20 times the message).
Parameters bootstrap_params(std::size_t n = 1024, std::size_t dft_levels = 3) {
  std::vector<int> chain = {55, 40, 40};
  for (std::size_t i = 0; i < dft_levels; ++i) chain.push_back(40);
  for (int i = 0; i < 11; ++i) chain.push_back(55);  // EvalMod: 5 + 1 + 3, the arcsine 2
  for (std::size_t i = 0; i < dft_levels; ++i) chain.push_back(60);
  return small_params(chain, {60}, n);
}

struct Fixture {
  ContextPtr ctx;
  KeyGenerator keygen;
  Bootstrapper boot;
  EvaluationKeys keys;
  Encoder encoder;
  Encryptor encryptor;
  Decryptor decryptor;
  Evaluator evaluator;

  explicit Fixture(BootstrapConfig config = {.chebyshev_degree = 31},
                   std::size_t threads = 1)
      : ctx(make_context(bootstrap_params(), threads)),
        keygen(ctx, kWeight),
        boot(ctx, config),
        keys(keygen.create_evaluation_keys(boot.rotation_steps(), /*conjugation=*/true)),
        encoder(ctx),
        encryptor(ctx, keygen.secret_key()),
        decryptor(ctx, keygen.secret_key()),
        evaluator(ctx) {}

  Ciphertext encrypt(const std::vector<cd>& values, std::size_t level, double scale) {
    return encryptor.encrypt(encoder.encode(values, scale, level));
  }
  std::vector<cd> decrypt(const Ciphertext& ct) {
    return encoder.decode_complex(decryptor.decrypt(ct));
  }
};

Fixture& shared() {
  static Fixture f;
  return f;
}

std::vector<cd> random_complex(std::size_t count, std::uint64_t seed, double bound = 1.0) {
  const auto re = random_reals(count, seed, bound), im = random_reals(count, seed + 1, bound);
  std::vector<cd> out(count);
  for (std::size_t i = 0; i < count; ++i) out[i] = {re[i], im[i]};
  return out;
}

std::size_t bit_reverse(std::size_t i, std::size_t bits) {
  std::size_t r = 0;
  for (std::size_t b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
  return r;
}

// V w with V[j][i] = zeta^(5^j i), zeta = exp(i pi / N): the slots of sum_i w_i X^i.
std::vector<cd> encode_dense(const std::vector<cd>& w, std::size_t poly_degree) {
  const std::size_t n = w.size(), m = 2 * poly_degree;
  std::vector<cd> z(n, cd{0, 0});
  std::size_t g = 1;
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t i = 0; i < n; ++i) {
      z[j] += std::polar(1.0, std::numbers::pi * static_cast<double>((g * i) % m) /
                                  static_cast<double>(poly_degree)) *
              w[i];
    }
    g = (g * 5) % m;
  }
  return z;
}

std::vector<cd> apply_diagonals(const Diagonals& d, const std::vector<cd>& x) {
  const std::size_t n = x.size();
  std::vector<cd> y(n, cd{0, 0});
  for (const auto& [k, diag] : d) {
    for (std::size_t j = 0; j < n; ++j) y[j] += diag[j] * x[(j + k) % n];
  }
  return y;
}

double max_error(const std::vector<cd>& a, const std::vector<cd>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

TEST(Bootstrap, ButterflyStagesFactorTheEncodingMap) {
  for (const std::size_t poly_degree : {std::size_t{8}, std::size_t{64}, std::size_t{512}}) {
    const std::size_t n = poly_degree / 2, bits = static_cast<std::size_t>(std::countr_zero(n));
    const auto w = random_complex(n, poly_degree);
    std::vector<cd> reversed(n);
    for (std::size_t i = 0; i < n; ++i) reversed[bit_reverse(i, bits)] = w[i];
    const auto z = encode_dense(w, poly_degree);
    // V = stage[L-1] ... stage[0] * bit reversal, each stage three diagonals at most.
    std::vector<cd> x = reversed;
    for (const Diagonals& d : encoding_stages(poly_degree)) {
      EXPECT_LE(d.size(), 3u);
      x = apply_diagonals(d, x);
    }
    EXPECT_LT(max_error(x, z), 1e-9 * static_cast<double>(n));
    // The decoding stages undo it, leaving the coefficients bit-reversed.
    std::vector<cd> y = z;
    for (const Diagonals& d : decoding_stages(poly_degree)) y = apply_diagonals(d, y);
    EXPECT_LT(max_error(y, reversed), 1e-9);
    // Merged stages are the same map.
    EXPECT_LT(max_error(apply_diagonals(compose(encoding_stages(poly_degree), n), reversed), z),
              1e-9 * static_cast<double>(n));
  }
}

TEST(Bootstrap, ModRaiseKeepsTheMessageModuloQ0) {
  Fixture& f = shared();
  const auto z = random_complex(f.ctx->slots(), 1);
  const Ciphertext ct = f.encrypt(z, 0, f.ctx->default_scale());
  const Ciphertext raised = f.boot.mod_raise(ct);
  EXPECT_EQ(raised.level(), f.ctx->max_level());
  // t + q0 I is t again modulo q0: switching back down gives the same decryption, bit for bit.
  const Plaintext a = f.decryptor.decrypt(ct);
  const Plaintext b = f.decryptor.decrypt(f.evaluator.mod_switch_to(raised, 0));
  EXPECT_EQ(a.data(), b.data());
  EXPECT_THROW(f.boot.mod_raise(f.encrypt(z, 1, f.ctx->default_scale())), LevelError);
  // A ciphertext of other parameters (another q0) is refused, not raised into garbage.
  const ContextPtr other = make_context(small_params({50, 40}, {60}, 1024));
  KeyGenerator other_keys(other);
  Encryptor other_enc(other, other_keys.secret_key());
  const Ciphertext foreign = other_enc.encrypt(Encoder(other).encode(std::vector<double>{0.5}, std::nullopt, 0));
  EXPECT_THROW(f.boot.mod_raise(foreign), MismatchError);
}

TEST(Bootstrap, CoeffToSlotIsTheInverseEncodingUpToTheOverflow) {
  Fixture& f = shared();
  const std::size_t n = f.ctx->slots();
  const double scale = f.ctx->default_scale();
  const double q0 = static_cast<double>(f.ctx->primes()[0]);
  const double k1 = f.boot.config().k_bound + 1.0;
  const auto z = random_complex(n, 2);
  const auto parts = f.boot.coeff_to_slot(f.boot.mod_raise(f.encrypt(z, 0, scale)),
                                          f.keys.galois_keys);
  ASSERT_EQ(parts.size(), 2u);  // full slots: lo and hi
  const auto got_lo = f.decrypt(parts[0]), got_hi = f.decrypt(parts[1]);
  // Coefficient j (and j + N/2) of the message times the scale: w = V^-1 z, V[j][i] = zeta_j^i.
  const std::size_t two_n = 4 * n;
  std::size_t g = 1;
  std::vector<cd> w(n, cd{0, 0});
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t i = 0; i < n; ++i) {
      const double angle = std::numbers::pi * static_cast<double>((g * i) % two_n) / (2.0 * static_cast<double>(n));
      w[i] += std::conj(std::polar(1.0, angle)) * z[j] / static_cast<double>(n);
    }
    g = (g * 5) % two_n;
  }
  double worst = 0;
  const std::size_t bits = static_cast<std::size_t>(std::countr_zero(n));
  for (std::size_t r = 0; r < n; ++r) {
    const std::size_t i = bit_reverse(r, bits);  // CoeffToSlot leaves them bit-reversed
    for (const auto& [value, want] : {std::pair{got_lo[r], w[i].real()}, {got_hi[r], w[i].imag()}}) {
      const double y = value.real() * k1;            // I + t / q0
      const double overflow = std::round(y);
      EXPECT_LE(std::abs(overflow), f.boot.config().k_bound);
      worst = std::max(worst, std::abs((y - overflow) - want * scale / q0));
      EXPECT_LT(std::abs(value.imag()), 1e-6);  // real slots
    }
  }
  // In units of the message: |error| * q0 / scale.
  EXPECT_LT(worst * q0 / scale, 1e-4);
}

TEST(Bootstrap, EvalModRemovesTheOverflow) {
  Fixture& f = shared();
  const std::size_t n = f.ctx->slots();
  const std::size_t level = f.ctx->max_level() - f.boot.config().cts_levels;
  const double scale = static_cast<double>(f.ctx->primes()[level]);
  const double k1 = f.boot.config().k_bound + 1.0;
  // x = (I + e) / (K + 1): integers plus offsets, the inputs EvalMod sees. Offsets up to 1e-2
  // (a message 2^7 below q0), where sin(2 pi e) is 4e-5 away from 2 pi e.
  const auto off = random_reals(n, 3, 1e-2);
  const auto ints = random_reals(n, 4, f.boot.config().k_bound);
  std::vector<cd> x(n), line(n), sine(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double y = std::round(ints[i]) + off[i];
    x[i] = y / k1;
    line[i] = 2.0 * std::numbers::pi * off[i];
    sine[i] = std::sin(2.0 * std::numbers::pi * y);
  }
  EXPECT_GT(max_error(line, sine), 2e-5);  // the two targets differ
  // With the arcsine (the default): 2 pi e itself.
  const Ciphertext out = f.boot.eval_mod(f.encrypt(x, level, scale), f.keys.relin_key);
  EXPECT_EQ(out.level(), f.boot.output_level() + f.boot.config().stc_levels);
  EXPECT_LT(max_error(f.decrypt(out), line), 1e-6);
  // Without it: the sine, two levels higher.
  const Bootstrapper plain(f.ctx, {.chebyshev_degree = 31, .arcsine = false});
  const Ciphertext sin_out = plain.eval_mod(f.encrypt(x, level, scale), f.keys.relin_key);
  EXPECT_EQ(sin_out.level(), out.level() + 2);
  EXPECT_LT(max_error(f.decrypt(sin_out), sine), 1e-6);
}

TEST(Bootstrap, DepthMatchesTheLevelBudgetForEveryDegree) {
  // The Chebyshev sum's baby-step giant-step depth is at most ceil(log2 d) + 1, and EvalMod
  // ends exactly where levels_consumed() says for every degree.
  Fixture& f = shared();
  const std::size_t level = f.ctx->max_level() - f.boot.config().cts_levels;
  const double scale = static_cast<double>(f.ctx->primes()[level]);
  const std::vector<cd> x(f.ctx->slots(), cd{0.25, 0});
  for (const std::size_t d : {std::size_t{3}, std::size_t{7}, std::size_t{15}, std::size_t{20},
                              std::size_t{31}}) {
    const Bootstrapper boot(f.ctx, {.chebyshev_degree = d, .double_angles = 1});
    const Ciphertext out = boot.eval_mod(f.encrypt(x, level, scale), f.keys.relin_key);
    const std::size_t used = level - out.level();
    // Basis and coefficients, one double angle, the arcsine's two.
    EXPECT_EQ(used, static_cast<std::size_t>(std::bit_width(d - 1)) + 1 + 1 + 2) << "degree " << d;
    EXPECT_EQ(used, boot.eval_mod_levels());
  }
}

TEST(Bootstrap, RefreshRestoresLevelsAndKeepsTheMessage) {
  Fixture& f = shared();
  const std::size_t n = f.ctx->slots();
  const auto z = random_complex(n, 5);
  const Ciphertext ct = f.encrypt(z, 0, f.ctx->default_scale());
  const Ciphertext fresh = f.boot.refresh(ct, f.keys);
  EXPECT_EQ(fresh.level(), f.boot.output_level());
  EXPECT_DOUBLE_EQ(fresh.scale(), ct.scale());
  const double err = max_error(f.decrypt(fresh), z);
  RecordProperty("precision_bits_min", std::to_string(-std::log2(err)));
  EXPECT_LT(err, std::ldexp(1.0, -15)) << "precision " << -std::log2(err) << " bits";
}

TEST(Bootstrap, MessageRatioAndArcsineKeepEveryMessageShapePrecise) {
  Fixture& f = shared();
  const std::size_t n = f.ctx->slots();
  const double scale = f.ctx->default_scale();
  const Bootstrapper sine_only(f.ctx, {.chebyshev_degree = 31, .arcsine = false});
  const Bootstrapper neither(f.ctx,
                             {.chebyshev_degree = 31, .message_ratio_bits = 0, .arcsine = false});
  EXPECT_EQ(f.boot.message_boost(scale), 128u);  // q0 = 2^55 over 2^40, down to 2^8
  EXPECT_EQ(neither.message_boost(scale), 1u);
  const auto error = [&](const Bootstrapper& b, const std::vector<cd>& z) {
    const Ciphertext fresh = b.refresh(f.encrypt(z, 0, scale), f.keys);
    EXPECT_DOUBLE_EQ(fresh.scale(), scale);
    return max_error(f.decrypt(fresh), z);
  };
  // A spread-out message: the larger message is worth several bits.
  const auto z = random_complex(n, 21);
  const double spread = error(f.boot, z), unscaled = error(neither, z);
  EXPECT_LT(spread, unscaled / 8) << -std::log2(spread) << " against " << -std::log2(unscaled);
  // A constant is one coefficient as large as the message: the sine alone is off by
  // (2 pi 0.9 / 2^8)^2 / 6 of it, about 2^-14; the arcsine brings it back.
  const std::vector<cd> constant(n, cd{0.9, 0});
  const double corrected = error(f.boot, constant), sine = error(sine_only, constant);
  EXPECT_GT(sine, std::ldexp(1.0, -15));
  EXPECT_LT(corrected, std::ldexp(1.0, -18)) << -std::log2(corrected) << " bits";
}

TEST(Bootstrap, PlaintextCacheStaysBoundedOverManyInputScales) {
  Fixture& f = shared();
  const Bootstrapper boot(f.ctx, f.boot.config());  // a cache of its own
  const auto z = random_complex(f.ctx->slots(), 31);
  // One scale: a set per DFT group. Each further scale re-encodes the last group of each DFT.
  double scale = f.ctx->default_scale();
  EXPECT_LT(max_error(f.decrypt(boot.refresh(f.encrypt(z, 0, scale), f.keys)), z), 1e-5);
  EXPECT_EQ(boot.cached_plaintext_sets(), 6u);
  for (int k = 1; k <= 8; ++k) {
    scale *= 1.001;
    const Ciphertext fresh = boot.refresh(f.encrypt(z, 0, scale), f.keys);
    EXPECT_LT(max_error(f.decrypt(fresh), z), 1e-5) << "scale " << k;
    EXPECT_LE(boot.cached_plaintext_sets(), Bootstrapper::kMaxPlaintextSets);
  }
  EXPECT_EQ(boot.cached_plaintext_sets(), Bootstrapper::kMaxPlaintextSets);
}

TEST(Bootstrap, RepeatedRefreshesDoNotDrift) {
  Fixture& f = shared();
  const auto z = random_complex(f.ctx->slots(), 6);
  Ciphertext ct = f.encrypt(z, 0, f.ctx->default_scale());
  double first = 0;
  for (int i = 0; i < 5; ++i) {
    ct = f.boot.refresh(ct, f.keys);
    const double err = max_error(f.decrypt(ct), z);
    if (i == 0) first = err;
    EXPECT_LT(err, std::ldexp(1.0, -14)) << "refresh " << i;
  }
  EXPECT_LT(max_error(f.decrypt(ct), z), 8 * first + 1e-9);
}

// Sparse slots: a bootstrapper for messages of period n, with its own keys (its rotations are
// the trace's n, 2n, ... and the small DFTs').
struct Sparse {
  Bootstrapper boot;
  EvaluationKeys keys;
  Sparse(Fixture& f, std::size_t n, std::size_t dft_levels)
      : boot(f.ctx, {.chebyshev_degree = 31, .cts_levels = dft_levels, .stc_levels = dft_levels,
                     .slots = n}),
        keys(f.keygen.create_evaluation_keys(boot.rotation_steps(), true)) {}
};

std::vector<cd> periodic(std::size_t slots, std::size_t period, std::uint64_t seed) {
  const auto one = random_complex(period, seed);
  std::vector<cd> out(slots);
  for (std::size_t j = 0; j < slots; ++j) out[j] = one[j % period];
  return out;
}

TEST(Bootstrap, SparseCoeffToSlotIsTheSubringsInverseEncoding) {
  Fixture& f = shared();
  const std::size_t full = f.ctx->slots(), n = 8;
  Sparse s(f, n, 3);
  const double scale = f.ctx->default_scale();
  const double q0 = static_cast<double>(f.ctx->primes()[0]);
  const double k1 = s.boot.config().k_bound + 1.0;
  const auto z = periodic(full, n, 12);
  const auto parts = s.boot.coeff_to_slot(s.boot.mod_raise(f.encrypt(z, 0, scale)),
                                          s.keys.galois_keys);
  ASSERT_EQ(parts.size(), 1u);  // sparse: lo and hi packed into one ciphertext
  const auto got = f.decrypt(parts[0]);
  // The subring of degree 2n has n slots at the 4n-th roots zeta^(5^j): its coefficients are
  // w = V^-1 z over one period, exactly as for a ring of degree 2n.
  const std::size_t four_n = 4 * n;
  std::size_t g = 1;
  std::vector<cd> w(n, cd{0, 0});
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t i = 0; i < n; ++i) {
      const double angle = 2.0 * std::numbers::pi * static_cast<double>((g * i) % four_n) /
                           static_cast<double>(four_n);
      w[i] += std::conj(std::polar(1.0, angle)) * z[j] / static_cast<double>(n);
    }
    g = (g * 5) % four_n;
  }
  double worst = 0;
  const std::size_t bits = static_cast<std::size_t>(std::countr_zero(n));
  for (std::size_t r = 0; r < full; ++r) {  // every 2n slots: lo (n of them), then hi
    const bool lo = r % (2 * n) < n;
    const std::size_t i = bit_reverse(r % n, bits);
    const cd value = got[r];
    const double want = lo ? w[i].real() : w[i].imag();
    const double y = value.real() * k1;
    const double overflow = std::round(y);
    EXPECT_LE(std::abs(overflow), s.boot.config().k_bound);
    worst = std::max(worst, std::abs((y - overflow) - want * scale / q0));
    EXPECT_LT(std::abs(value.imag()), 1e-6);
  }
  EXPECT_LT(worst * q0 / scale, 1e-4);
  // The trace's rotations and the small DFTs' only: every step below n or a multiple of it.
  for (long step : s.boot.rotation_steps()) {
    EXPECT_TRUE(step < static_cast<long>(n) || step % static_cast<long>(n) == 0) << step;
  }
}

TEST(Bootstrap, SparseRefreshKeepsAPeriodicMessageAndAveragesOtherwise) {
  Fixture& f = shared();
  const std::size_t full = f.ctx->slots();
  double packed_64 = 0;
  for (const std::size_t n : {std::size_t{8}, std::size_t{64}, full / 2}) {
    Sparse s(f, n, 3);  // the chain's DFT levels (bootstrap_params)
    EXPECT_EQ(s.boot.slots(), n);
    const auto z = periodic(full, n, 13 + n);
    const Ciphertext fresh = s.boot.refresh(f.encrypt(z, 0, f.ctx->default_scale()), s.keys);
    EXPECT_EQ(fresh.level(), s.boot.output_level());
    const double err = max_error(f.decrypt(fresh), z);
    EXPECT_LT(err, std::ldexp(1.0, -15)) << "n = " << n << ": " << -std::log2(err) << " bits";
    if (n == 64) packed_64 = err;
  }
  // Unpacked (two EvalMods): two halves out of CoeffToSlot, and the message back. Packing
  // costs no precision: its rotation runs before CoeffToSlot's last rescale (after it, it
  // cost about 4 bits).
  {
    const Bootstrapper boot(f.ctx, {.chebyshev_degree = 31, .slots = 64, .pack_halves = false});
    const EvaluationKeys keys = f.keygen.create_evaluation_keys(boot.rotation_steps(), true);
    const auto z = periodic(full, 64, 13 + 64);
    const Ciphertext ct = f.encrypt(z, 0, f.ctx->default_scale());
    EXPECT_EQ(boot.coeff_to_slot(boot.mod_raise(ct), keys.galois_keys).size(), 2u);
    const double err = max_error(f.decrypt(boot.refresh(ct, keys)), z);
    EXPECT_LT(err, std::ldexp(1.0, -15));
    EXPECT_LT(packed_64, 4 * err) << "packed " << -std::log2(packed_64) << " bits, two EvalMods "
                                  << -std::log2(err);
  }
  // A message without the period comes back as its mean over the period's copies.
  Sparse s(f, 8, 3);
  const auto z = random_complex(full, 14);
  std::vector<cd> mean(full, cd{0, 0});
  for (std::size_t j = 0; j < full; ++j) mean[j % 8] += z[j] / static_cast<double>(full / 8);
  for (std::size_t j = 8; j < full; ++j) mean[j] = mean[j % 8];
  const Ciphertext fresh = s.boot.refresh(f.encrypt(z, 0, f.ctx->default_scale()), s.keys);
  EXPECT_LT(max_error(f.decrypt(fresh), mean), std::ldexp(1.0, -15));
}

TEST(Bootstrap, RejectsChainsTooShortAndBadConfigs) {
  EXPECT_THROW(Bootstrapper(make_context(small_params({55, 40, 40, 40}, {60}, 1024))),
               ParameterError);
  EXPECT_THROW(Bootstrapper(make_context(bootstrap_params()), {.cts_levels = 10}), ParameterError);
  EXPECT_THROW(Bootstrapper(make_context(bootstrap_params()), {.stc_levels = 0}), ParameterError);
  EXPECT_THROW(Bootstrapper(make_context(bootstrap_params()), {.message_ratio_bits = -1}),
               ParameterError);
  EXPECT_THROW(Bootstrapper(make_context(bootstrap_params()), {.cts_lift = 1.5}), ParameterError);
  for (const std::size_t slots : {std::size_t{1}, std::size_t{12}, std::size_t{1024}}) {
    EXPECT_THROW(Bootstrapper(make_context(bootstrap_params()), {.slots = slots}), ParameterError);
  }
  // Four slots have two butterfly stages: three DFT levels do not fit.
  EXPECT_THROW(Bootstrapper(make_context(bootstrap_params()), {.slots = 4}), ParameterError);
  EXPECT_THROW(KeyGenerator(make_context(small_params()), 0), ParameterError);
}

// Encapsulation: a dense ternary secret (weight about 2N/3, overflows far beyond K = 12)
// refreshes through an ephemeral secret of weight 64, which K = 12 covers.
TEST(Bootstrap, EncapsulationRefreshesUnderADenseSecret) {
  const ContextPtr ctx = make_context(bootstrap_params());
  KeyGenerator keygen(ctx);  // uniform ternary
  const BootstrapConfig config{.chebyshev_degree = 31, .ephemeral_weight = kWeight};
  const Bootstrapper boot(ctx, config);
  const EvaluationKeys keys = keygen.create_evaluation_keys(boot.rotation_steps(), true, kWeight);
  ASSERT_FALSE(keys.encapsulation.empty());
  EXPECT_EQ(keys.encapsulation.hamming_weight(), kWeight);
  // The level-0 key spans q0 and one special prime only (the small modulus): 2 x 2 residues.
  EXPECT_EQ(keys.encapsulation.to_sparse().byte_size(), 4 * ctx->poly_degree() * sizeof(u64));
  Encoder encoder(ctx);
  Encryptor encryptor(ctx, keygen.secret_key());
  Decryptor decryptor(ctx, keygen.secret_key());
  Evaluator evaluator(ctx);
  const auto z = random_complex(ctx->slots(), 41);
  const Ciphertext ct = encryptor.encrypt(encoder.encode(z, ctx->default_scale(), 0));
  // to_sparse, ModRaise and from_sparse alone: back at level 0 the message is there again.
  const Ciphertext there = boot.to_sparse(ct, keys.encapsulation);
  const Ciphertext back = evaluator.switch_key(boot.mod_raise(there),
                                               keys.encapsulation.from_sparse());
  EXPECT_LT(max_error(encoder.decode_complex(decryptor.decrypt(evaluator.mod_switch_to(back, 0))), z),
            1e-6);
  const Ciphertext fresh = boot.refresh(ct, keys);
  const double err = max_error(encoder.decode_complex(decryptor.decrypt(fresh)), z);
  EXPECT_LT(err, std::ldexp(1.0, -15)) << "precision " << -std::log2(err) << " bits";
  // Without encapsulation the dense secret's overflow leaves [-K, K]: the refresh is garbage.
  const Bootstrapper plain(ctx, BootstrapConfig{.chebyshev_degree = 31});
  const EvaluationKeys plain_keys = keygen.create_evaluation_keys(plain.rotation_steps(), true);
  EXPECT_GT(max_error(encoder.decode_complex(decryptor.decrypt(plain.refresh(ct, plain_keys))), z),
            0.01);
  // Typed errors: no encapsulation keys, keys for another weight, a weight beyond N.
  EXPECT_THROW(boot.refresh(ct, plain_keys), MissingKeyError);
  const EvaluationKeys other = keygen.create_evaluation_keys(boot.rotation_steps(), true, 32);
  EXPECT_THROW(boot.refresh(ct, other), MismatchError);
  EXPECT_THROW(Bootstrapper(ctx, BootstrapConfig{.ephemeral_weight = 4096}), ParameterError);
}

TEST(Bootstrap, SparseSecretHasExactlyItsWeight) {
  const ContextPtr ctx = make_context(bootstrap_params());
  for (const std::size_t h : {std::size_t{1}, std::size_t{64}, std::size_t{1024}}) {
    const KeyGenerator keygen(ctx, h);
    const Modulus& q = ctx->tables().modulus(0);
    std::vector<u64> s(keygen.secret_key().prime(0), keygen.secret_key().prime(0) + 1024);
    ctx->tables().ntt(0).inverse(s.data());
    std::size_t plus = 0, minus = 0;
    for (const u64 v : s) {
      plus += v == 1;
      minus += v == q.value() - 1;
      EXPECT_TRUE(v == 0 || v == 1 || v == q.value() - 1);
    }
    EXPECT_EQ(plus + minus, h);
    if (h == 1024) {  // signs are random: both occur
      EXPECT_GT(plus, 400u);
      EXPECT_GT(minus, 400u);
    }
  }
}

}  // namespace
}  // namespace fheprune::ckks
