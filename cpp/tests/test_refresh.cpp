// Refreshes in the runtime: where the program places them (the fewest), how every part of the
// runtime reads the level schedule they make, and a program three times deeper than its chain
// run end to end on the engine, against the simulator and the cleartext.
#include <gtest/gtest.h>

#include <random>

#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/executor.hpp"
#include "fheprune/runtime/server.hpp"
#include "test_util.hpp"

namespace fheprune::runtime {
namespace {

using ckks::testing::small_params;
using Cost = std::pair<std::uint64_t, std::uint64_t>;

// The cost of refreshing in front of `at`, or nullopt when a layer runs out of levels.
std::optional<Cost> placement_cost(const std::vector<std::size_t>& levels,
                                   const std::vector<std::size_t>& live,
                                   const std::vector<std::size_t>& at, std::size_t top,
                                   std::size_t to) {
  Cost c{0, 0};
  std::size_t level = top, next = 0;
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if (next < at.size() && at[next] == i) {
      level = to;
      c.first += live[i];
      ++c.second;
      ++next;
    }
    if (levels[i] > level) return std::nullopt;
    level -= levels[i];
  }
  return c;
}

TEST(PlanRefreshes, FewestRefreshedCiphertextsAgainstEveryPlacement) {
  std::mt19937_64 gen(7);
  for (int trial = 0; trial < 300; ++trial) {
    const std::size_t n = 1 + gen() % 10, top = 1 + gen() % 6, to = 1 + gen() % 6;
    std::vector<std::size_t> levels(n), live(n);
    for (std::size_t i = 0; i < n; ++i) {
      levels[i] = gen() % 3;  // 0 (a pool), 1 or 2 (a rebuilding tile layer)
      live[i] = 1 + gen() % 5;
    }
    std::optional<Cost> best;
    for (std::uint32_t mask = 0; mask < (1u << n); ++mask) {
      std::vector<std::size_t> at;
      for (std::size_t i = 0; i < n; ++i) {
        if (mask >> i & 1) at.push_back(i);
      }
      const auto c = placement_cost(levels, live, at, top, to);
      if (c && (!best || *c < *best)) best = c;
    }
    if (!best) {
      EXPECT_THROW(plan_refreshes(levels, live, top, to), ckks::LevelError);
      continue;
    }
    const std::vector<std::size_t> at = plan_refreshes(levels, live, top, to);
    const auto got = placement_cost(levels, live, at, top, to);
    ASSERT_TRUE(got.has_value()) << "trial " << trial << ": the plan runs out of levels";
    EXPECT_EQ(*got, *best) << "trial " << trial;
  }
}

TEST(PlanRefreshes, RefreshesWhereFewCiphertextsAreLiveNotWhereLevelsRunOut) {
  // Four layers of one level, two levels to start with, three after a refresh: greedy
  // refreshes in front of layer 2 (9 ciphertexts); in front of layer 1 (one) is cheaper.
  const std::vector<std::size_t> at = plan_refreshes({1, 1, 1, 1}, {9, 1, 9, 9}, 2, 3);
  EXPECT_EQ(at, std::vector<std::size_t>{1});
  EXPECT_TRUE(plan_refreshes({1, 1}, {1, 1}, 2, 1).empty());
  EXPECT_THROW(plan_refreshes({1, 3}, {1, 1}, 2, 2), ckks::LevelError);
  EXPECT_THROW(plan_refreshes({1}, {1, 1}, 2, 2), CompileError);
  EXPECT_EQ(plan_refreshes({2, 3}, {1, 1}, 2, 3), std::vector<std::size_t>{1});
}

// A bootstrappable chain at N = 1024 (tests only): q0, six user levels, then the refresh's
// SlotToCoeff, EvalMod and CoeffToSlot primes (as in test_bootstrap.cpp).
ckks::Parameters refresh_params() {
  std::vector<int> chain = {55};
  for (int i = 0; i < 6; ++i) chain.push_back(40);
  for (int i = 0; i < 3; ++i) chain.push_back(40);
  for (int i = 0; i < 11; ++i) chain.push_back(55);  // EvalMod: 5 + 1 + 3, the arcsine 2
  for (int i = 0; i < 3; ++i) chain.push_back(60);
  return small_params(chain, {60}, 1024);
}
const ckks::BootstrapConfig kConfig{.chebyshev_degree = 31};

// x -> (W x + b)^2, `pairs` times, on 8 features: row sums of |W| <= 0.5 and |b| <= 0.5 keep
// every value in [-1, 1] and the map non-expanding, so refresh errors do not grow.
struct Deep {
  std::vector<std::vector<double>> w, b;
};
Deep deep_layers(std::size_t pairs, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  Deep d;
  for (std::size_t k = 0; k < pairs; ++k) {
    std::vector<double> w(64), b(8);
    for (auto& v : w) v = u(gen) * 0.5 / 8.0;
    for (auto& v : b) v = u(gen) * 0.5;
    d.w.push_back(w);
    d.b.push_back(b);
  }
  return d;
}
Program deep_program(const ckks::Parameters& params, const Deep& d) {
  Program p = Program::diagonal(params, 8);
  for (std::size_t k = 0; k < d.w.size(); ++k) {
    p.add_linear("fc" + std::to_string(k + 1), 8, 8, d.w[k], d.b[k]);
    p.add_square("sq" + std::to_string(k + 1));
  }
  return p;
}
std::vector<double> deep_reference(const Deep& d, std::vector<double> x) {
  for (std::size_t k = 0; k < d.w.size(); ++k) {
    std::vector<double> y(8);
    for (std::size_t r = 0; r < 8; ++r) {
      double acc = d.b[k][r];
      for (std::size_t c = 0; c < 8; ++c) acc += d.w[k][r * 8 + c] * x[c];
      y[r] = acc * acc;
    }
    x = y;
  }
  return x;
}

TEST(ProgramRefreshes, PlacedWhereTheScheduleRunsOutAndKeptThroughSaveAndLoad) {
  const ckks::Parameters params = refresh_params();
  Program p = deep_program(params, deep_layers(15, 1));  // 30 levels on a 23-level chain
  EXPECT_EQ(p.depth(), 30u);
  EXPECT_THROW(p.level_schedule(params.chain_bits.size() - 1), ckks::LevelError);

  const std::size_t placed = p.place_refreshes(kConfig);
  const ckks::Bootstrapper boot(ckks::make_context(params), *p.refresh_config());
  const std::size_t to = boot.output_level();
  ASSERT_EQ(to, 6u);
  // 30 levels, `to` per refresh, the inputs at the level a refresh leaves.
  EXPECT_EQ(placed, (30 + to - 1) / to - 1);
  EXPECT_EQ(p.refreshes(), placed);
  EXPECT_EQ(p.input_level(), to);
  EXPECT_EQ(p.depth(), 30u);
  EXPECT_EQ(p.levels(), to);
  EXPECT_TRUE(p.needs_conjugation());
  const std::vector<std::size_t> schedule = p.level_schedule(to);
  ASSERT_EQ(schedule.size(), p.layers().size() + 1);
  for (std::size_t i = 0; i < p.layers().size(); ++i) {
    if (std::holds_alternative<Refresh>(p.layers()[i])) {
      EXPECT_EQ(schedule[i + 1], to);
    }
  }
  const std::vector<long> steps = p.rotation_steps(), boot_steps = boot.rotation_steps();
  for (long s : boot_steps) {
    EXPECT_TRUE(std::binary_search(steps.begin(), steps.end(), s)) << "step " << s;
  }
  // Placing again gives the same program; saving and loading keeps the refreshes.
  EXPECT_EQ(p.place_refreshes(kConfig), placed);
  const Program q = Program::load(p.save());
  EXPECT_EQ(q.save(), p.save());
  EXPECT_EQ(q.level_schedule(to), schedule);
  // The cost model reads the same schedule and counts one refresh per live ciphertext.
  const auto costs = estimate_cost(p, to);
  OpCounts total;
  for (std::size_t i = 0; i < costs.size(); ++i) {
    EXPECT_EQ(costs[i].level, schedule[i]);
    total += costs[i].ops;
  }
  EXPECT_EQ(total.refresh, placed);
  // Diagonal programs refresh their period (the widest layer's), halves packed by default;
  // a config that names its packing keeps it, through a file too.
  EXPECT_EQ(p.refresh_config()->slots, 8u);
  EXPECT_TRUE(p.refresh_config()->pack_halves);
  Program wide = Program::diagonal(params, 64);
  wide.add_square("sq");
  EXPECT_EQ(wide.sparse_refresh(kConfig).slots, 64u);
  for (std::size_t i = 0; i < 6; ++i) {  // deep enough for a refresh
    wide.add_linear("fc" + std::to_string(i), 64, 64, std::vector<double>(64 * 64, 0.001), {});
    wide.add_square("sq" + std::to_string(i));
  }
  ckks::BootstrapConfig unpacked = kConfig;
  unpacked.pack_halves = false;
  ASSERT_GT(wide.place_refreshes(unpacked), 0u);
  EXPECT_EQ(Program::load(wide.save()).refresh_config(), wide.refresh_config());
  EXPECT_FALSE(Program::load(wide.save()).refresh_config()->pack_halves);
  // A program that needs no refresh gets none, but still starts below the refresh's primes.
  Program shallow = deep_program(params, deep_layers(3, 2));
  EXPECT_EQ(shallow.place_refreshes(kConfig), 0u);
  EXPECT_EQ(shallow.input_level(), to);
  EXPECT_EQ(Program::load(shallow.save()).input_level(), to);
}

TEST(ProgramRefreshes, TypedErrors) {
  const ckks::Parameters params = refresh_params();
  Program p = deep_program(params, deep_layers(15, 1));
  // A chain that cannot bootstrap with the configuration.
  Program short_chain = deep_program(small_params({55, 40, 40, 40}, {60}, 1024), deep_layers(3, 1));
  EXPECT_THROW(short_chain.place_refreshes(kConfig), ckks::ParameterError);
  // A layer deeper than what a refresh leaves: a two-level configuration leaves 0 user levels
  // here once it consumes more (degree 255: 8 + 1 levels of EvalMod).
  EXPECT_THROW(p.place_refreshes({.chebyshev_degree = 255, .double_angles = 6}),
               ckks::ParameterError);

  p.place_refreshes(kConfig);
  auto ctx = ckks::make_context(params);
  SlotBackend no_refresh(ctx, p.rotation_steps());
  EXPECT_THROW((Executor<SlotBackend>(p, no_refresh)), ckks::MissingKeyError);
  SlotBackend wrong_level(ctx, p.rotation_steps());
  wrong_level.set_refresh({.to_level = 5});
  EXPECT_THROW((Executor<SlotBackend>(p, wrong_level)), ckks::MismatchError);
  EXPECT_THROW(wrong_level.set_refresh({.to_level = 99}), ckks::ParameterError);

  // A value outside the range the refresh's error is known for is refused, not modelled.
  SlotBackend sim(ctx, p.rotation_steps());
  sim.set_refresh({.to_level = 6, .error = 0.0, .input_bound = 1e-3});
  Executor<SlotBackend> exec(p, sim);
  std::vector<SlotBackend::Ct> in;
  for (auto& v : p.pack_inputs(std::vector<double>(8, 0.5), 1)) {
    in.push_back(sim.encode(v, p.input_level(), sim.default_scale()));
  }
  EXPECT_THROW(exec.run(in), ckks::EncodingError);
}

// The deep program end to end: 30 levels on a chain with 21, refreshes placed by the program,
// run on the engine; the simulator (exact refreshes) gives the same values and the same
// operation counts, the cost model too.
TEST(ProgramRefreshes, ThirtyLevelProgramRunsOnTheEngineAndMatchesTheSimulator) {
  const ckks::Parameters params = refresh_params();
  const Deep layers = deep_layers(15, 3);
  Program p = deep_program(params, layers);
  const std::size_t placed = p.place_refreshes(kConfig);
  ASSERT_GE(placed, 2u);

  auto ctx = ckks::make_context(params);
  ckks::KeyGenerator keygen(ctx, /*hamming_weight=*/64);
  auto keys = std::make_shared<const ckks::EvaluationKeys>(
      keygen.create_evaluation_keys(p.rotation_steps(), /*conjugation=*/true));
  // A diagonal program refreshes sparse slots: period 8, its widest layer.
  ASSERT_EQ(p.refresh_config()->slots, 8u);
  auto boot = std::make_shared<const ckks::Bootstrapper>(ctx, *p.refresh_config());
  EngineBackend engine(ctx, keys, boot);
  Executor<EngineBackend> exec(p, engine);

  const std::vector<double> x = ckks::testing::random_reals(8, 11, 1.0);
  ckks::Encoder encoder(ctx);
  ckks::Encryptor encryptor(ctx, keygen.secret_key());
  ckks::Decryptor decryptor(ctx, keygen.secret_key());
  const auto packed = p.pack_inputs(x, 1);
  std::vector<ckks::Ciphertext> in;
  for (const auto& v : packed) in.push_back(encryptor.encrypt(encoder.encode(v, ctx->default_scale(), p.input_level())));
  RunStats engine_stats;
  const auto out = exec.run(in, &engine_stats);
  ASSERT_TRUE(out[0].has_value());
  const std::vector<double> got =
      p.unpack_outputs({encoder.decode(decryptor.decrypt(*out[0]))}, 1);

  SlotBackend sim(ctx, p.rotation_steps());
  sim.set_refresh({.to_level = boot->output_level(), .period = boot->slots()});
  Executor<SlotBackend> sim_exec(p, sim);
  std::vector<SlotBackend::Ct> sim_in;
  for (const auto& v : packed) sim_in.push_back(sim.encode(v, p.input_level(), sim.default_scale()));
  RunStats sim_stats;
  const auto sim_out = sim_exec.run(sim_in, &sim_stats);
  const std::vector<double> simulated = p.unpack_outputs({sim_out[0]->slots}, 1);

  const std::vector<double> want = deep_reference(layers, x);
  EXPECT_LT(ckks::testing::max_abs_diff(simulated, want), 1e-9);
  EXPECT_LT(ckks::testing::max_abs_diff(got, want), 1e-3);
  EXPECT_EQ(engine_stats.total(), sim_stats.total());
  EXPECT_EQ(engine_stats.total().refresh, placed);
  EXPECT_EQ(out[0]->level(), sim_out[0]->level);
  OpCounts model;
  for (const auto& c : estimate_cost(p, p.input_level())) model += c.ops;
  EXPECT_EQ(model, engine_stats.total());
}

TEST(ProgramRefreshes, ServerNeedsTheConjugationKey) {
  const ckks::Parameters params = refresh_params();
  auto program = std::make_shared<const Program>([&] {
    Program p = deep_program(params, deep_layers(15, 1));
    p.place_refreshes(kConfig);
    return p;
  }());
  auto ctx = ckks::make_context(params);
  ckks::KeyGenerator keygen(ctx, 64);
  auto without = std::make_shared<const ckks::EvaluationKeys>(
      keygen.create_evaluation_keys(program->rotation_steps(), /*conjugation=*/false));
  EXPECT_THROW(Server(program, ctx, without), ckks::MissingKeyError);
  auto with = std::make_shared<const ckks::EvaluationKeys>(
      keygen.create_evaluation_keys(program->rotation_steps(), /*conjugation=*/true));
  const Server server(program, ctx, with);
  EXPECT_EQ(server.program().refreshes(), program->refreshes());
}

}  // namespace
}  // namespace fheprune::runtime
