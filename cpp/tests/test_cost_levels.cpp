// The cost model's operations by level (LayerCost::ops_by_level): for every layer kind, the
// level each operation runs at must be the one the executor runs it at. A backend that records
// the level of every call it receives runs each program; its record must equal the model's,
// the executor's own per-layer counts must equal the model's totals, and small programs of
// each kind are checked against counts worked out by hand.
#include <gtest/gtest.h>

#include <random>

#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/executor.hpp"
#include "test_util.hpp"

namespace fheprune::runtime {
namespace {

using ckks::testing::small_params;

// The slot simulator, recording every operation the executor asks of it by the level of the
// ciphertext it acts on (the names of OpsByLevel). A constant output is encrypted once per
// executor, on first use: with one group of samples each encryption is one constant.
class LevelRecorder : public SlotBackend {
 public:
  using SlotBackend::SlotBackend;

  mutable OpsByLevel ops;

  Ct encrypt(const Pt& p) const {
    note("constant", p.level);
    return SlotBackend::encrypt(p);
  }
  Ct refresh(const Ct& a) const {
    note("refresh", a.level);
    return SlotBackend::refresh(a);
  }
  Ct mul_plain(const Ct& a, const Pt& p) const {
    note("mul_plain", a.level);
    return SlotBackend::mul_plain(a, p);
  }
  Ct mul_plain_sum(const std::vector<const Ct*>& a, const std::vector<const Pt*>& p) const {
    note("mul_plain", a.at(0)->level, a.size());
    note("add_fused", a.at(0)->level, a.size() - 1);
    return SlotBackend::mul_plain_sum(a, p);
  }
  std::vector<Ct> mul_plain_sums(const std::vector<std::vector<const Ct*>>& a,
                                 const std::vector<std::vector<const Pt*>>& p) const {
    for (const auto& block : a) {
      note("mul_plain", block.at(0)->level, block.size());
      note("add_fused", block.at(0)->level, block.size() - 1);
    }
    return SlotBackend::mul_plain_sums(a, p);
  }
  void add_inplace(Ct& a, const Ct& b) const {
    note("add", a.level);
    SlotBackend::add_inplace(a, b);
  }
  void add_plain_inplace(Ct& a, const Pt& p) const {
    note("add_plain", a.level);
    SlotBackend::add_plain_inplace(a, p);
  }
  Ct rescale(const Ct& a) const {
    note("rescale", a.level);
    return SlotBackend::rescale(a);
  }
  Ct rotate(const Ct& a, long step) const {
    note("rotate", a.level);
    return SlotBackend::rotate(a, step);
  }
  std::vector<Ct> rotate_hoisted(const Ct& a, const std::vector<long>& steps) const {
    note("rotate_hoisted", a.level, steps.size());
    return SlotBackend::rotate_hoisted(a, steps);
  }
  Ct square(const Ct& a) const {  // the engine's multiply_relin
    note("multiply", a.level);
    note("relinearize", a.level);
    return SlotBackend::square(a);
  }
  Ct square_unrelinearized(const Ct& a) const {
    note("multiply", a.level);
    return SlotBackend::square_unrelinearized(a);
  }
  Ct relinearize(const Ct& a) const {
    note("relinearize", a.level);
    return SlotBackend::relinearize(a);
  }

 private:
  void note(const char* op, std::size_t level, std::size_t count = 1) const {
    if (count > 0) ops[op][level] += count;
  }
};

OpsByLevel merged(const std::vector<LayerCost>& costs) {
  OpsByLevel all;
  for (const LayerCost& c : costs) {
    for (const auto& [op, levels] : c.ops_by_level) {
      for (const auto& [level, count] : levels) all[op][level] += count;
    }
  }
  return all;
}

// Runs one group of `p` on the recorder and holds the model to it: per level in all, per layer
// in counts, and each layer's levels to its counts. Returns the model.
std::vector<LayerCost> check_against_executor(const Program& p,
                                               const std::optional<RefreshModel>& refresh = {}) {
  auto ctx = ckks::make_context(p.parameters());
  LevelRecorder backend(ctx, p.rotation_steps());
  if (refresh) backend.set_refresh(*refresh);
  Executor<LevelRecorder> exec(p, backend);
  std::vector<LevelRecorder::Ct> inputs;
  const std::size_t count = p.samples_per_group();
  const auto x = ckks::testing::random_reals(count * p.in_features(), 5, 0.5);
  for (const auto& v : p.pack_inputs(x, count)) {
    inputs.push_back(backend.encode(v, p.input_level(), backend.default_scale()));
  }
  RunStats stats;
  exec.run(inputs, &stats);
  const std::vector<LayerCost> costs = estimate_cost(p, p.input_level());
  EXPECT_EQ(merged(costs), backend.ops);
  for (std::size_t i = 0; i < costs.size(); ++i) {
    EXPECT_EQ(stats.layers[i].ops, costs[i].ops) << costs[i].name;
  }
  return costs;
}

ckks::Parameters params(std::size_t n, std::size_t levels) {
  std::vector<int> chain{50};
  for (std::size_t i = 0; i < levels; ++i) chain.push_back(40);
  return small_params(chain, {50}, n);
}

std::vector<double> random_weights(std::size_t count, std::uint64_t seed, double zero_fraction) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u(-0.5, 0.5), coin(0.0, 1.0);
  std::vector<double> w(count);
  for (auto& v : w) v = coin(gen) < zero_fraction ? 0.0 : u(gen);
  return w;
}

// --- Tile layout: products at the input level (one below after a rebuild), rotate-and-add
// one below the products; the rebuild's mask at the input level, its replication one below.

TEST(CostLevels, TileWithAndWithoutRebuildByHand) {
  const TileShape3 shape{4, 4, 32};
  Program p = Program::tile(params(shape.slots() * 2, 4), shape, 8);
  p.add_linear("fc1", 8, 8, random_weights(64, 1, 0.0), random_weights(8, 2, 0.0));
  p.add_linear("fc2", 8, 8, random_weights(64, 3, 0.0), {});
  p.add_linear("fc3", 4, 8, random_weights(32, 4, 0.0), random_weights(4, 5, 0.0));
  ASSERT_TRUE(std::get<TileLinear>(p.layers()[2]).rebuild_input);
  const auto costs = check_against_executor(p);
  // fc1 at 4: two output tiles of two products, log2(4) rotate-and-adds each, biased.
  EXPECT_EQ(costs[0].ops_by_level, (OpsByLevel{{"mul_plain", {{4, 4}}},
                                               {"add_fused", {{4, 2}}},
                                               {"rescale", {{4, 2}}},
                                               {"rotate", {{3, 4}}},
                                               {"add", {{3, 4}}},
                                               {"add_plain", {{3, 2}}}}));
  // fc2 at 3, no bias.
  EXPECT_EQ(costs[1].ops_by_level, (OpsByLevel{{"mul_plain", {{3, 4}}},
                                               {"add_fused", {{3, 2}}},
                                               {"rescale", {{3, 2}}},
                                               {"rotate", {{2, 4}}},
                                               {"add", {{2, 4}}}}));
  // fc3 at 2: two input tiles masked at 2 and replicated at 1, then one output tile at 1.
  EXPECT_EQ(costs[2].ops_by_level, (OpsByLevel{{"mul_plain", {{2, 2}, {1, 2}}},
                                               {"add_fused", {{1, 1}}},
                                               {"rescale", {{2, 2}, {1, 1}}},
                                               {"rotate", {{1, 4}, {0, 2}}},
                                               {"add", {{1, 4}, {0, 2}}},
                                               {"add_plain", {{0, 1}}}}));
}

TEST(CostLevels, TileConstantOutputsAtTheOutputLevel) {
  const TileShape3 shape{4, 4, 32};
  std::vector<double> w = random_weights(64, 1, 0.0);
  for (std::size_t k = 32; k < 64; ++k) w[k] = 0.0;  // rows 4..7: output tile 1 is its bias
  Program p = Program::tile(params(shape.slots() * 2, 1), shape, 8);
  p.add_linear("fc", 8, 8, w, random_weights(8, 2, 0.0));
  const auto costs = check_against_executor(p);
  EXPECT_EQ(costs[0].ops_by_level, (OpsByLevel{{"mul_plain", {{1, 2}}},
                                               {"add_fused", {{1, 1}}},
                                               {"rescale", {{1, 1}}},
                                               {"rotate", {{0, 2}}},
                                               {"add", {{0, 2}}},
                                               {"add_plain", {{0, 1}}},
                                               {"constant", {{0, 1}}}}));
}

TEST(CostLevels, RandomTilePrograms) {
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    const TileShape3 shape = seed % 2 ? TileShape3{4, 4, 32} : TileShape3{8, 4, 16};
    const std::vector<std::size_t> widths{13, 11, 9, 7, 5};
    Program p = Program::tile(params(shape.slots() * 2, 8), shape, widths[0]);
    for (std::size_t i = 0; i + 1 < widths.size(); ++i) {
      p.add_linear("fc" + std::to_string(i), widths[i + 1], widths[i],
                   random_weights(widths[i] * widths[i + 1], seed * 10 + i, 0.6),
                   random_weights(widths[i + 1], seed * 20 + i, 0.3));
      if (i == 1) p.add_square("sq");
    }
    check_against_executor(p);
  }
}

// --- Diagonal layout: baby steps hoisted at the input level with the products; the giant
// rotations, their sum, the hybrid fold and the bias one below.

TEST(CostLevels, DiagonalByHand) {
  Program p = Program::diagonal(params(1024, 3), 8);
  p.add_linear("fc1", 8, 8, random_weights(64, 1, 0.0), random_weights(8, 2, 0.0));
  p.add_square("sq");
  p.add_linear("fc2", 2, 8, random_weights(16, 3, 0.0), {});
  const auto& fc1 = std::get<DiagonalLinear>(p.layers()[0]);
  const auto& fc2 = std::get<DiagonalLinear>(p.layers()[2]);
  ASSERT_EQ(fc1.baby, 2u);  // 8 diagonals: babies {1}, giants {1, 2, 3}
  ASSERT_EQ(fc2.baby, 1u);  // diagonals 0 and 1: giant {1}, then fold 8 -> 2
  const auto costs = check_against_executor(p);
  EXPECT_EQ(costs[0].ops_by_level, (OpsByLevel{{"rotate_hoisted", {{3, 1}}},
                                               {"mul_plain", {{3, 8}}},
                                               {"add_fused", {{3, 4}}},
                                               {"rescale", {{3, 4}}},
                                               {"rotate", {{2, 3}}},
                                               {"add", {{2, 3}}},
                                               {"add_plain", {{2, 1}}}}));
  EXPECT_EQ(costs[1].ops_by_level, (OpsByLevel{{"multiply", {{2, 1}}},
                                               {"relinearize", {{2, 1}}},
                                               {"rescale", {{2, 1}}}}));
  EXPECT_EQ(costs[2].ops_by_level, (OpsByLevel{{"mul_plain", {{1, 2}}},
                                               {"rescale", {{1, 2}}},
                                               {"rotate", {{0, 1 + 2}}},
                                               {"add", {{0, 1 + 2}}}}));
}

TEST(CostLevels, DiagonalConstantAndRandomPrograms) {
  Program zero = Program::diagonal(params(1024, 1), 8);
  zero.add_linear("fc", 8, 8, std::vector<double>(64, 0.0), random_weights(8, 2, 0.0));
  EXPECT_EQ(check_against_executor(zero)[0].ops_by_level, (OpsByLevel{{"constant", {{0, 1}}}}));
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    Program p = Program::diagonal(params(2048, 4), 16);
    p.add_linear("fc1", 16, 16, random_weights(256, seed, 0.7), random_weights(16, seed + 1, 0.0));
    p.add_square("sq");
    p.add_linear("fc2", 4, 16, random_weights(64, seed + 2, 0.5), random_weights(4, seed + 3, 0.0));
    p.add_linear("fc3", 8, 4, random_weights(32, seed + 4, 0.3), {});
    check_against_executor(p);
  }
}

// --- Map layout: baby steps hoisted at the input level with the products; giant rotations,
// their sum and the bias one below. Window sums consume no level: everything at the input's.

TEST(CostLevels, MapWindowSumAndSquareByHand) {
  const std::size_t slots = 512;
  Program p = Program::map(params(2 * slots, 2), 2);
  // Two inputs, three outputs: outputs 0 and 1 read both inputs at shifts b + 128 g
  // (b < 3, g < 2), split as babies b and giant 128; output 2 is its bias alone.
  std::vector<std::uint32_t> out, in;
  std::vector<std::size_t> shift, baby;
  std::vector<double> values;
  for (std::uint32_t o = 0; o < 2; ++o) {
    for (std::uint32_t i = 0; i < 2; ++i) {
      for (std::size_t g = 0; g < 2; ++g) {
        for (std::size_t b = 0; b < 3; ++b) {
          out.push_back(o);
          in.push_back(i);
          shift.push_back(b + 128 * g);
          baby.push_back(b);
          values.push_back(0.1 + 0.01 * static_cast<double>(values.size()));
        }
      }
    }
  }
  const std::vector<double> bias{0.5, 0.0, -0.25};  // output 1 unbiased
  p.add_map_linear("conv", 3, out, in, shift, values, 1, bias, 1, baby);
  p.add_rotate_sum("pool", {{3, 2}}, 3);  // fold the three, then a window of 3
  p.add_square("act");
  const auto costs = check_against_executor(p);
  EXPECT_EQ(costs[0].ops_by_level, (OpsByLevel{{"rotate_hoisted", {{2, 2 * 2}}},
                                               {"mul_plain", {{2, 24}}},
                                               {"add_fused", {{2, 4 * 5}}},
                                               {"rescale", {{2, 4}}},
                                               {"rotate", {{1, 2}}},
                                               {"add", {{1, 2}}},
                                               {"add_plain", {{1, 1}}},
                                               {"constant", {{1, 1}}}}));
  // Two fold additions, then rotate-and-add by 2 and by 2 again (3 = 0b11).
  EXPECT_EQ(costs[1].ops_by_level, (OpsByLevel{{"rotate", {{1, 2}}}, {"add", {{1, 2 + 2}}}}));
  EXPECT_EQ(costs[2].ops_by_level, (OpsByLevel{{"multiply", {{1, 1}}},
                                               {"relinearize", {{1, 1}}},
                                               {"rescale", {{1, 1}}}}));
}

// A square before a folding pool: its products at its level, then the pool's fold additions,
// relinearizations and rescales there too (one per folded sum), its window one level down.
TEST(CostLevels, SquareBeforeAFoldingPoolByHand) {
  const std::size_t slots = 512;
  Program p = Program::map(params(2 * slots, 2), 4);
  p.add_square("act");
  p.add_rotate_sum("pool", {{3, 2}}, 2);  // inputs 0 + 2 and 1 + 3, then a window of 3
  p.add_square("act2");
  ASSERT_TRUE(p.defers_relinearization(0));
  ASSERT_FALSE(p.defers_relinearization(2));
  const auto costs = check_against_executor(p);
  EXPECT_EQ(costs[0].ops_by_level, (OpsByLevel{{"multiply", {{2, 4}}}}));
  EXPECT_EQ(costs[1].level, 2u);
  EXPECT_EQ(costs[1].ops_by_level, (OpsByLevel{{"add", {{2, 2}, {1, 2 * 2}}},
                                               {"relinearize", {{2, 2}}},
                                               {"rescale", {{2, 2}}},
                                               {"rotate", {{1, 2 * 2}}}}));
  EXPECT_EQ(costs[2].ops_by_level, (OpsByLevel{{"multiply", {{1, 2}}},
                                               {"relinearize", {{1, 2}}},
                                               {"rescale", {{1, 2}}}}));
}

TEST(CostLevels, RandomMapPrograms) {
  const std::size_t slots = 512;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    std::mt19937_64 gen(seed);
    const std::size_t ins = 1 + seed % 3, mid = 2 + seed % 2, outs = 1 + seed % 2;
    auto terms = [&](std::size_t n_in, std::size_t n_out, std::size_t count) {
      std::vector<std::uint32_t> o, i;
      std::vector<std::size_t> s;
      for (std::size_t k = 0; k < count; ++k) {
        o.push_back(static_cast<std::uint32_t>(gen() % n_out));
        i.push_back(static_cast<std::uint32_t>(gen() % n_in));
        s.push_back(gen() % slots);
      }
      return std::tuple{o, i, s};
    };
    Program p = Program::map(params(2 * slots, 3), ins);
    auto [o1, i1, s1] = terms(ins, mid, 10 + seed * 3);
    p.add_map_linear("map1", mid, o1, i1, s1, random_weights(o1.size() * 4, seed, 0.0), 4,
                     random_weights(mid * 4, seed + 1, 0.0), 4);
    p.add_rotate_sum("pool", {{1 + seed % 4, 3}, {2, 16}});
    p.add_square("act");
    auto [o2, i2, s2] = terms(mid, outs, 6 + seed);
    p.add_map_linear("map2", outs, o2, i2, s2, random_weights(o2.size(), seed + 2, 0.0), 1, {},
                     0);
    check_against_executor(p);
  }
}

// --- Refresh: at the level of its input (the output is at the refresh's to_level).

TEST(CostLevels, RefreshesAtTheirInputLevel) {
  std::vector<int> chain = {55};
  for (int i = 0; i < 6; ++i) chain.push_back(40);  // as test_refresh.cpp: six user levels,
  for (int i = 0; i < 3; ++i) chain.push_back(40);  // then the refresh's own primes
  for (int i = 0; i < 11; ++i) chain.push_back(55);
  for (int i = 0; i < 3; ++i) chain.push_back(60);
  const ckks::Parameters prm = small_params(chain, {60}, 1024);
  Program p = Program::diagonal(prm, 8);
  for (std::size_t k = 0; k < 8; ++k) {
    p.add_linear("fc" + std::to_string(k), 8, 8, random_weights(64, k, 0.0),
                 random_weights(8, k + 100, 0.0));
    p.add_square("sq" + std::to_string(k));
  }
  const std::size_t placed = p.place_refreshes({.chebyshev_degree = 31});
  ASSERT_GE(placed, 1u);
  std::size_t to_level = 0;
  for (const Layer& l : p.layers()) {
    if (const auto* r = std::get_if<Refresh>(&l)) to_level = r->to_level;
  }
  const auto costs = check_against_executor(
      p, RefreshModel{.to_level = to_level, .error = 0.0, .input_bound = 1e9, .period = 8});
  const std::vector<std::size_t> schedule = p.level_schedule(p.input_level());
  std::size_t seen = 0;
  for (std::size_t i = 0; i < costs.size(); ++i) {
    if (costs[i].kind != "refresh") continue;
    ++seen;
    EXPECT_EQ(costs[i].ops_by_level, (OpsByLevel{{"refresh", {{schedule[i], 1}}}}));
  }
  EXPECT_EQ(seen, placed);
}

TEST(CostLevels, OpsTotalFoldsTheSplitNamesBack) {
  const OpsByLevel by_level{{"rotate", {{1, 2}}}, {"rotate_hoisted", {{2, 3}}},
                            {"add", {{0, 1}}},    {"add_fused", {{2, 4}, {1, 1}}},
                            {"constant", {{0, 1}}}};
  OpCounts want;
  want.rotate = 5;
  want.add = 6;
  want.constant = 1;
  EXPECT_EQ(ops_total(by_level), want);
  EXPECT_THROW(ops_total({{"teleport", {{0, 1}}}}), std::invalid_argument);
}

}  // namespace
}  // namespace fheprune::runtime
