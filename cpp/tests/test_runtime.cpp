// The runtime: programs, the slot simulator, the engine executor and the cost model.
//
// Every layout kernel runs on the simulator against a direct dense computation, and on the
// engine against the simulator; every run's operation counts must equal the cost model's.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/executor.hpp"
#include "test_util.hpp"

namespace fheprune::runtime {
namespace {

using ckks::testing::max_abs_diff;
using ckks::testing::small_params;

struct Dense {
  std::size_t out, in;
  std::vector<double> w, b;
  bool square_after = false;
};

// Random weights in [-0.5, 0.5] with whole blocks (rows x cols) zeroed at `zero_fraction`.
Dense random_layer(std::size_t out, std::size_t in, std::uint64_t seed, double zero_fraction,
                   std::size_t block_r, std::size_t block_c, bool bias = true) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> val(-0.5, 0.5);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  Dense d{out, in, std::vector<double>(out * in), {}, false};
  for (auto& x : d.w) x = val(gen);
  for (std::size_t r0 = 0; r0 < out; r0 += block_r) {
    for (std::size_t c0 = 0; c0 < in; c0 += block_c) {
      if (coin(gen) >= zero_fraction) continue;
      for (std::size_t r = r0; r < std::min(out, r0 + block_r); ++r) {
        for (std::size_t c = c0; c < std::min(in, c0 + block_c); ++c) d.w[r * in + c] = 0.0;
      }
    }
  }
  if (bias) {
    d.b.resize(out);
    for (auto& x : d.b) x = val(gen);
  }
  return d;
}

std::vector<double> reference(const std::vector<Dense>& layers, std::vector<double> x,
                              std::size_t count) {
  for (const Dense& l : layers) {
    std::vector<double> y(count * l.out, 0.0);
    for (std::size_t s = 0; s < count; ++s) {
      for (std::size_t r = 0; r < l.out; ++r) {
        double acc = l.b.empty() ? 0.0 : l.b[r];
        for (std::size_t c = 0; c < l.in; ++c) acc += l.w[r * l.in + c] * x[s * l.in + c];
        y[s * l.out + r] = l.square_after ? acc * acc : acc;
      }
    }
    x = std::move(y);
  }
  return x;
}

Program build(Program p, const std::vector<Dense>& layers) {
  for (std::size_t i = 0; i < layers.size(); ++i) {
    p.add_linear("fc" + std::to_string(i + 1), layers[i].out, layers[i].in, layers[i].w,
                 layers[i].b);
    if (layers[i].square_after) p.add_square("act" + std::to_string(i + 1));
  }
  return p;
}

template <class B>
std::vector<std::vector<double>> to_slots(const std::vector<std::optional<typename B::Ct>>& out,
                                          std::size_t slots,
                                          const std::function<std::vector<double>(const typename B::Ct&)>& read) {
  std::vector<std::vector<double>> v;
  for (const auto& c : out) v.push_back(c ? read(*c) : std::vector<double>(slots, 0.0));
  return v;
}

struct SimResult {
  std::vector<double> y;
  RunStats stats;
  std::size_t plaintext_bytes;
};

SimResult simulate(const Program& p, const std::vector<double>& x, std::size_t count) {
  auto ctx = ckks::make_context(p.parameters());
  SlotBackend backend(ctx, p.rotation_steps());
  Executor<SlotBackend> exec(p, backend);
  std::vector<SlotBackend::Ct> inputs;
  for (auto& v : p.pack_inputs(x, count)) {
    inputs.push_back(backend.encode(v, backend.top_level(), backend.default_scale()));
  }
  SimResult r;
  const auto out = exec.run(inputs, &r.stats);
  const auto slots = to_slots<SlotBackend>(out, p.slots(),
                                           [](const SlotBackend::Ct& c) { return c.slots; });
  r.y = p.unpack_outputs(slots, count);
  r.plaintext_bytes = exec.plaintext_bytes();
  return r;
}

OpCounts model_total(const Program& p, std::size_t groups) {
  OpCounts t;
  for (const auto& c : estimate_cost(p, p.parameters().chain_bits.size() - 1)) t += c.ops;
  return t.scaled(groups);
}

ckks::Parameters params(std::size_t n, std::size_t levels) {
  std::vector<int> chain{50};
  for (std::size_t i = 0; i < levels; ++i) chain.push_back(40);
  return small_params(chain, {50}, n);
}

// --- Tile layout ------------------------------------------------------------------------

struct TileCase {
  TileShape3 shape;
  std::vector<std::size_t> widths;  // in, hidden..., out
  bool square;
  double zero_fraction;
};

class TileLayoutTest : public ::testing::TestWithParam<TileCase> {};

TEST_P(TileLayoutTest, SimulatorMatchesDenseAndCostModel) {
  const TileCase& tc = GetParam();
  std::vector<Dense> layers;
  for (std::size_t i = 0; i + 1 < tc.widths.size(); ++i) {
    // Zero whole tiles (as the pruning produces), with the tile of this layer's orientation.
    const bool outer = i % 2 == 0;
    layers.push_back(random_layer(tc.widths[i + 1], tc.widths[i], 100 + i, tc.zero_fraction,
                                  outer ? tc.shape.inner : tc.shape.outer,
                                  outer ? tc.shape.outer : tc.shape.inner));
    layers.back().square_after = tc.square && i + 2 < tc.widths.size();
  }
  std::size_t levels = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) levels += 1 + (i >= 2 && i % 2 == 0) + layers[i].square_after;
  const auto prm = params(tc.shape.slots() * 2, levels);
  const Program p = build(Program::tile(prm, tc.shape, tc.widths[0]), layers);
  ASSERT_EQ(p.levels(), levels);
  const std::size_t count = tc.shape.batch * 2 + 1;  // three groups, the last one partial
  const auto x = ckks::testing::random_reals(count * tc.widths[0], 7);
  const SimResult r = simulate(p, x, count);
  EXPECT_LT(max_abs_diff(r.y, reference(layers, x, count)), 1e-9);
  EXPECT_EQ(r.stats.total(), model_total(p, 3));
  std::size_t model_bytes = 0;
  for (const auto& c : estimate_cost(p, prm.chain_bits.size() - 1)) model_bytes += c.plaintext_bytes;
  EXPECT_EQ(r.plaintext_bytes, model_bytes);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TileLayoutTest,
    ::testing::Values(TileCase{{4, 4, 32}, {20, 12, 5}, true, 0.0},
                      TileCase{{4, 4, 32}, {20, 12, 5}, true, 0.5},
                      TileCase{{8, 4, 16}, {30, 17, 9}, false, 0.4},
                      TileCase{{4, 8, 16}, {13, 40, 6}, true, 0.3},
                      // Three layers: the third rebuilds its replicated input (mask + replicate).
                      TileCase{{4, 4, 32}, {18, 10, 12, 7}, true, 0.3},
                      TileCase{{2, 8, 32}, {9, 16, 16, 16, 3}, false, 0.2}));

TEST(TileLayout, ZeroTilesCostNothingAndDeadOutputsSkipRotations) {
  const TileShape3 shape{4, 4, 32};
  Dense l1 = random_layer(8, 8, 1, 0.0, 4, 4, false);
  Dense l2 = random_layer(3, 8, 2, 0.0, 4, 4, false);
  // Kill the second output tile of fc1 entirely (rows 4..7): its rotations must disappear, and
  // fc2's tile that reads it must be skipped as well.
  for (std::size_t r = 4; r < 8; ++r) {
    for (std::size_t c = 0; c < 8; ++c) l1.w[r * 8 + c] = 0.0;
  }
  const auto prm = params(shape.slots() * 2, 2);
  const Program dense = build(Program::tile(prm, shape, 8), {random_layer(8, 8, 1, 0.0, 4, 4, false), l2});
  const Program pruned = build(Program::tile(prm, shape, 8), {l1, l2});
  const auto d = model_total(dense, 1), q = model_total(pruned, 1);
  // Dense: fc1 2x2 tiles, 2 outputs x log2(4) rotations; fc2 1x2 tiles, 1 x 2 rotations.
  EXPECT_EQ(d.mul_plain, 6u);
  EXPECT_EQ(d.rotate, 6u);
  EXPECT_EQ(q.mul_plain, 3u);  // fc1's two zero tiles, and fc2's tile reading the dead output
  EXPECT_EQ(q.rotate, 4u);
  const auto x = ckks::testing::random_reals(32 * 8, 3);
  const SimResult r = simulate(pruned, x, 32);
  EXPECT_LT(max_abs_diff(r.y, reference({l1, l2}, x, 32)), 1e-9);
  EXPECT_EQ(r.stats.total(), q);
}

TEST(TileLayout, ConstantOutputsOfDeadTilesAreEncrypted) {
  const TileShape3 shape{4, 4, 32};
  Dense l1 = random_layer(6, 8, 1, 0.0, 4, 4, true);
  for (std::size_t c = 0; c < 8; ++c) l1.w[5 * 8 + c] = 0.0;
  for (std::size_t r = 4; r < 6; ++r) {
    for (std::size_t c = 0; c < 8; ++c) l1.w[r * 8 + c] = 0.0;
  }
  const Program p = build(Program::tile(params(shape.slots() * 2, 1), shape, 8), {l1});
  const auto x = ckks::testing::random_reals(32 * 8, 3);
  const SimResult r = simulate(p, x, 32);
  EXPECT_LT(max_abs_diff(r.y, reference({l1}, x, 32)), 1e-9);
  EXPECT_EQ(r.stats.total().constant, 1u);
}

// Zero (rows x cols) blocks of a row-major [out][in] weight, tiled from the top-left corner.
std::size_t nonzero_blocks(const Dense& d, std::size_t rows, std::size_t cols) {
  std::size_t live = 0;
  for (std::size_t r0 = 0; r0 < d.out; r0 += rows) {
    for (std::size_t c0 = 0; c0 < d.in; c0 += cols) {
      bool any = false;
      for (std::size_t r = r0; r < std::min(d.out, r0 + rows); ++r) {
        for (std::size_t c = c0; c < std::min(d.in, c0 + cols); ++c) any = any || d.w[r * d.in + c] != 0.0;
      }
      live += any ? 1 : 0;
    }
  }
  return live;
}

TEST(TileLayout, PlanGivesEveryLayersUnitAndLevels) {
  // A rectangular tile: the weight tile is inner x outer on even layers, outer x inner on odd
  // ones. Blocks are zeroed in both orientations, so a wrong unit would count differently.
  const TileShape3 shape{2, 8, 32};
  const auto prm = params(shape.slots() * 2, 7);
  std::vector<Dense> layers = {random_layer(12, 10, 1, 0.5, 8, 2), random_layer(9, 12, 2, 0.5, 2, 8),
                               random_layer(14, 9, 3, 0.5, 8, 2), random_layer(5, 14, 4, 0.5, 2, 8)};
  layers[1].square_after = true;
  const Program p = build(Program::tile(prm, shape, 10), layers);
  std::vector<LayerKind> kinds;
  std::size_t index = 0;
  for (const Layer& l : p.layers()) {
    const auto* t = std::get_if<TileLinear>(&l);
    kinds.push_back(t != nullptr ? LayerKind::kLinear : LayerKind::kSquare);
    if (t == nullptr) continue;
    const TileLayerPlan plan = tile_layer_plan(shape, index);
    EXPECT_EQ(plan.tile_rows, index % 2 == 0 ? 8u : 2u);
    EXPECT_EQ(t->sum, plan.sum);
    EXPECT_EQ(t->rebuild_input, plan.rebuild_input);
    EXPECT_EQ(t->units.size(), nonzero_blocks(layers[index], plan.tile_rows, plan.tile_cols))
        << "layer " << index;
    ++index;
  }
  EXPECT_EQ(index, 4u);
  const auto sum = [](const std::vector<std::size_t>& v) {
    return std::accumulate(v.begin(), v.end(), std::size_t{0});
  };
  EXPECT_EQ(layer_levels(Layout::kTile, kinds), (std::vector<std::size_t>{1, 1, 1, 2, 1}));
  EXPECT_EQ(sum(layer_levels(Layout::kTile, kinds)), p.levels());
  EXPECT_EQ(p.levels(), 6u);  // four products, one square, one rebuild (the third layer)
  EXPECT_EQ(sum(layer_levels(Layout::kDiagonal, kinds)), 5u);
  EXPECT_THROW(layer_levels(Layout::kTile, {LayerKind::kLinear, LayerKind::kRotateSum}),
               CompileError);
}

TEST(TileLayout, RejectsShapesThatDoNotFit) {
  const auto prm = params(1024, 2);
  EXPECT_THROW(Program::tile(prm, {2, 4, 16}, 8), CompileError);  // 128 values, 512 slots
  EXPECT_THROW(Program::tile(prm, {3, 4, 32}, 8), CompileError);  // not a power of two
  EXPECT_THROW(Program::tile(prm, {4, 4, 32}, 0), CompileError);  // no inputs
  Program p = Program::tile(prm, {4, 4, 32}, 8);
  EXPECT_THROW(p.add_linear("fc", 2, 9, std::vector<double>(18), {}), CompileError);
  EXPECT_THROW(p.add_linear("fc", 2, 8, std::vector<double>(15), {}), CompileError);
  std::vector<double> w(16, 0.0);
  w[3] = std::nan("");
  EXPECT_THROW(p.add_linear("fc", 2, 8, w, {}), CompileError);
}

// --- Diagonal layout --------------------------------------------------------------------

struct DiagCase {
  std::vector<std::size_t> widths;
  bool square;
  double zero_fraction;  // of single diagonals
};

class DiagonalLayoutTest : public ::testing::TestWithParam<DiagCase> {};

Dense zero_diagonals(Dense d, double fraction, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  const std::size_t ni = std::bit_ceil(d.in), no = std::bit_ceil(d.out);
  for (std::size_t k = 0; k < std::min(ni, no); ++k) {
    if (coin(gen) >= fraction) continue;
    for (std::size_t r = 0; r < std::max(ni, no); ++r) {
      const std::size_t row = r % no, col = (r + k) % ni;
      if (row < d.out && col < d.in) d.w[row * d.in + col] = 0.0;
    }
  }
  return d;
}

TEST_P(DiagonalLayoutTest, SimulatorMatchesDenseAndCostModel) {
  const DiagCase& dc = GetParam();
  std::vector<Dense> layers;
  for (std::size_t i = 0; i + 1 < dc.widths.size(); ++i) {
    layers.push_back(zero_diagonals(random_layer(dc.widths[i + 1], dc.widths[i], 200 + i, 0.0, 1, 1),
                                    dc.zero_fraction, 300 + i));
    layers.back().square_after = dc.square && i + 2 < dc.widths.size();
  }
  std::size_t levels = 0;
  for (const auto& l : layers) levels += 1 + l.square_after;
  const auto prm = params(1024, levels);
  const Program p = build(Program::diagonal(prm, dc.widths[0]), layers);
  const std::size_t count = 3;
  const auto x = ckks::testing::random_reals(count * dc.widths[0], 9);
  const SimResult r = simulate(p, x, count);
  EXPECT_LT(max_abs_diff(r.y, reference(layers, x, count)), 1e-9);
  EXPECT_EQ(r.stats.total(), model_total(p, count));
  // BSGS never does worse than one rotation per diagonal, and the bound holds.
  for (const auto& c : estimate_cost(p, prm.chain_bits.size() - 1)) {
    if (c.kind != "diagonal") continue;
    EXPECT_GE(static_cast<double>(c.ops.rotate) + 1e-9, c.rotation_lower_bound);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DiagonalLayoutTest,
                         ::testing::Values(DiagCase{{64, 16, 10}, true, 0.0},
                                           DiagCase{{64, 16, 10}, true, 0.6},
                                           DiagCase{{10, 32, 32, 4}, false, 0.5},
                                           DiagCase{{30, 30}, false, 0.3},
                                           DiagCase{{5, 100, 3}, true, 0.7}));

TEST(DiagonalLayout, BabyStepSizeFollowsTheDiagonalsPresent) {
  // Only diagonals 0..3 of a 64 x 64 matrix: n1 = 2 (babies {1}, giants {2}) needs 2 rotations,
  // where the fixed split n1 = sqrt(64) would need 3.
  Dense d{64, 64, std::vector<double>(64 * 64, 0.0), {}, false};
  for (std::size_t r = 0; r < 64; ++r) {
    for (std::size_t k = 0; k < 4; ++k) d.w[r * 64 + (r + k) % 64] = 1.0 + static_cast<double>(k);
  }
  const Program p = build(Program::diagonal(params(1024, 1), 64), {d});
  const auto cost = estimate_cost(p, 1);
  EXPECT_EQ(cost[0].ops.rotate, 2u);
  EXPECT_EQ(cost[0].ops.mul_plain, 4u);
}

// --- Engine == simulator, typed errors, files -----------------------------------------------

TEST(EngineExecutor, EncryptedRunMatchesSimulatorWithSameCounts) {
  for (const bool tile : {true, false}) {
    std::vector<Dense> layers{random_layer(12, 20, 5, 0.3, 4, 4), random_layer(5, 12, 6, 0.3, 4, 4)};
    layers[0].square_after = true;
    const auto prm = params(1024, 3);
    const Program p = build(tile ? Program::tile(prm, {4, 4, 32}, 20) : Program::diagonal(prm, 20),
                            layers);
    const std::size_t count = tile ? 32 : 2;
    const auto x = ckks::testing::random_reals(count * 20, 4);
    const SimResult sim = simulate(p, x, count);

    ckks::testing::Fixture f(prm);
    const auto keys = std::make_shared<const ckks::EvaluationKeys>(
      f.keygen.create_evaluation_keys(p.rotation_steps()));
    EngineBackend backend(f.ctx, keys);
    Executor<EngineBackend> exec(p, backend);
    std::vector<ckks::Ciphertext> inputs;
    for (auto& v : p.pack_inputs(x, count)) inputs.push_back(f.encrypt(v));
    RunStats stats;
    const auto out = exec.run(inputs, &stats);
    const auto slots = to_slots<EngineBackend>(out, p.slots(), [&](const ckks::Ciphertext& c) {
      return f.decrypt(c);
    });
    EXPECT_LT(max_abs_diff(p.unpack_outputs(slots, count), sim.y), 1e-5) << "tile=" << tile;
    EXPECT_EQ(stats.total(), sim.stats.total());
    EXPECT_EQ(exec.plaintext_bytes(), sim.plaintext_bytes);
    EXPECT_GT(stats.peak_ciphertexts, 0u);
  }
}

TEST(EngineExecutor, TypedErrors) {
  Dense l = random_layer(4, 8, 1, 0.0, 4, 4);
  l.square_after = true;
  Dense l2 = random_layer(2, 4, 2, 0.0, 4, 4);
  const auto prm = params(1024, 2);  // the program below needs 3 levels
  const Program p = build(Program::tile(prm, {4, 4, 32}, 8), {l, l2});
  auto ctx = ckks::make_context(prm);
  SlotBackend backend(ctx, p.rotation_steps());
  EXPECT_THROW(Executor<SlotBackend>(p, backend), ckks::LevelError);

  const Program ok = build(Program::tile(params(1024, 1), {4, 4, 32}, 8), {random_layer(4, 8, 3, 0.0, 4, 4)});
  auto ctx1 = ckks::make_context(ok.parameters());
  SlotBackend no_keys(ctx1, {});
  Executor<SlotBackend> exec(ok, no_keys);
  std::vector<SlotBackend::Ct> in;
  for (auto& v : ok.pack_inputs(std::vector<double>(8, 0.5), 1)) in.push_back(no_keys.encode(v, 1, no_keys.default_scale()));
  EXPECT_THROW(exec.run(in), ckks::MissingKeyError);
  EXPECT_THROW(exec.run(std::vector<SlotBackend::Ct>{}), CompileError);
}

TEST(ProgramFile, RoundTripAndRejectsDamage) {
  std::vector<Dense> layers{random_layer(12, 20, 5, 0.3, 4, 4), random_layer(5, 12, 6, 0.3, 4, 4)};
  layers[0].square_after = true;
  const Program p = build(Program::tile(params(1024, 3), {4, 4, 32}, 20), layers);
  const ckks::Bytes bytes = p.save();
  const Program q = Program::load(bytes);
  EXPECT_EQ(q.save(), bytes);
  EXPECT_EQ(q.rotation_steps(), p.rotation_steps());
  EXPECT_EQ(q.levels(), p.levels());
  ckks::Bytes truncated(bytes.begin(), bytes.end() - 40);
  EXPECT_THROW(Program::load(truncated), ckks::SerializationError);
  ckks::Bytes flipped = bytes;
  flipped[bytes.size() / 2] ^= 1;
  EXPECT_THROW(Program::load(flipped), ckks::SerializationError);
  // A ciphertext file is not a program.
  ckks::testing::Fixture f(params(1024, 1));
  EXPECT_THROW(Program::load(ckks::Serializer::save(*f.ctx, f.encrypt({1.0}))),
               ckks::SerializationError);
}

}  // namespace
}  // namespace fheprune::runtime
