// The map layout: diagonal terms between ciphertexts, window sums, squares.
//
// Random programs run on the simulator against a direct slot-by-slot computation written here
// independently of the executor, and on the engine against the simulator; counts must equal
// the cost model's, rotations must follow the split, and files must round-trip.
#include <gtest/gtest.h>

#include <bit>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "ckks/wire.hpp"
#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/executor.hpp"
#include "test_util.hpp"

namespace fheprune::runtime {
namespace {

using ckks::testing::max_abs_diff;
using ckks::testing::small_params;
using Slots = std::vector<std::vector<double>>;  // one slot vector per ciphertext

struct Terms {
  std::size_t outs = 0, period = 1, bias_period = 0;
  std::vector<std::uint32_t> out, in;
  std::vector<std::size_t> shift;
  std::vector<double> values, bias;
};

Terms random_terms(std::size_t ins, std::size_t outs, std::size_t count, std::size_t slots,
                   std::size_t period, std::uint64_t seed, bool bias) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> val(-0.5, 0.5);
  Terms t;
  t.outs = outs;
  t.period = period;
  for (std::size_t k = 0; k < count; ++k) {
    t.out.push_back(static_cast<std::uint32_t>(gen() % outs));
    t.in.push_back(static_cast<std::uint32_t>(gen() % ins));
    t.shift.push_back(gen() % slots);
    for (std::size_t j = 0; j < period; ++j) t.values.push_back(val(gen));
  }
  if (bias) {
    t.bias_period = period;
    for (std::size_t j = 0; j < outs * period; ++j) t.bias.push_back(val(gen));
  }
  return t;
}

void add(Program& p, const std::string& name, const Terms& t) {
  p.add_map_linear(name, t.outs, t.out, t.in, t.shift, t.values, t.period, t.bias, t.bias_period);
}

// y_o[j] = sum_t [out_t = o] v_t[j mod period] x_{in_t}[(j + shift_t) mod slots] + b_o[j]
Slots apply_terms(const Terms& t, const Slots& x) {
  const std::size_t slots = x.at(0).size();
  Slots y(t.outs, std::vector<double>(slots, 0.0));
  for (std::size_t k = 0; k < t.out.size(); ++k) {
    for (std::size_t j = 0; j < slots; ++j) {
      y[t.out[k]][j] += t.values[k * t.period + j % t.period] * x[t.in[k]][(j + t.shift[k]) % slots];
    }
  }
  if (t.bias_period) {
    for (std::size_t o = 0; o < t.outs; ++o) {
      for (std::size_t j = 0; j < slots; ++j) y[o][j] += t.bias[o * t.bias_period + j % t.bias_period];
    }
  }
  return y;
}

Slots window_sum(const Slots& x, const std::vector<std::pair<std::size_t, std::size_t>>& windows) {
  Slots y = x;
  for (const auto& [count, stride] : windows) {
    Slots next(y.size(), std::vector<double>(y[0].size(), 0.0));
    for (std::size_t c = 0; c < y.size(); ++c) {
      for (std::size_t j = 0; j < y[c].size(); ++j) {
        for (std::size_t n = 0; n < count; ++n) next[c][j] += y[c][(j + n * stride) % y[c].size()];
      }
    }
    y = std::move(next);
  }
  return y;
}

ckks::Parameters params(std::size_t n, std::size_t levels) {
  std::vector<int> chain{50};
  for (std::size_t i = 0; i < levels; ++i) chain.push_back(40);
  return small_params(chain, {50}, n);
}

struct SimRun {
  Slots y;
  RunStats stats;
  std::size_t plaintext_bytes = 0;
};

SimRun simulate(const Program& p, const Slots& x, Encoding encoding = Encoding::kAtSetup) {
  auto ctx = ckks::make_context(p.parameters());
  SlotBackend backend(ctx, p.rotation_steps());
  Executor<SlotBackend> exec(p, backend, encoding);
  std::vector<SlotBackend::Ct> in;
  for (const auto& v : x) in.push_back(backend.encode(v, backend.top_level(), backend.default_scale()));
  SimRun r;
  for (const auto& c : exec.run(in, &r.stats)) {
    r.y.push_back(c ? c->slots : std::vector<double>(p.slots(), 0.0));
  }
  r.plaintext_bytes = exec.plaintext_bytes();
  return r;
}

// The same program encrypted: fresh keys, the engine backend, the decrypted outputs (empty
// for a known zero) and the run's counts and plaintext bytes.
SimRun run_encrypted(const Program& p, const Slots& x) {
  ckks::testing::Fixture f(p.parameters());
  const auto keys = std::make_shared<const ckks::EvaluationKeys>(
      f.keygen.create_evaluation_keys(p.rotation_steps()));
  EngineBackend backend(f.ctx, keys);
  Executor<EngineBackend> exec(p, backend);
  std::vector<ckks::Ciphertext> in;
  for (const auto& v : x) in.push_back(f.encrypt(v));
  SimRun r;
  for (const auto& c : exec.run(in, &r.stats)) {
    r.y.push_back(c ? f.decrypt(*c) : std::vector<double>{});
  }
  r.plaintext_bytes = exec.plaintext_bytes();
  return r;
}

OpCounts model_total(const Program& p) {
  OpCounts t;
  for (const auto& c : estimate_cost(p, p.parameters().chain_bits.size() - 1)) t += c.ops;
  return t;
}

Slots random_inputs(std::size_t cts, std::size_t slots, std::uint64_t seed) {
  Slots x;
  for (std::size_t c = 0; c < cts; ++c) x.push_back(ckks::testing::random_reals(slots, seed + c));
  return x;
}

TEST(MapLayout, RandomProgramsMatchDirectComputationAndCostModel) {
  const std::size_t slots = 512;
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    const std::size_t ins = 1 + seed % 3, mid = 1 + (seed + 1) % 3, outs = 1 + seed % 2;
    const std::size_t period = std::size_t{1} << (seed % 9);  // 1 .. 256
    Terms a = random_terms(ins, mid, 6 + seed * 3, slots, period, seed, seed % 2 == 0);
    // Duplicate terms are summed; an all-zero term is dropped.
    a.out.push_back(a.out[0]);
    a.in.push_back(a.in[0]);
    a.shift.push_back(a.shift[0]);
    for (std::size_t j = 0; j < period; ++j) a.values.push_back(0.25);
    const Terms b = random_terms(mid, outs, 5 + seed, slots, slots, seed + 100, true);
    const std::vector<std::pair<std::size_t, std::size_t>> windows{{1 + seed % 5, 3}, {3, 16}};

    Program p = Program::map(params(2 * slots, 3), ins);
    add(p, "map1", a);
    p.add_rotate_sum("pool", windows);
    p.add_square("act");
    add(p, "map2", b);
    EXPECT_EQ(p.levels(), 3u);

    const Slots x = random_inputs(ins, slots, seed * 10);
    Slots want = window_sum(apply_terms(a, x), windows);
    for (auto& v : want) {
      for (double& e : v) e *= e;
    }
    want = apply_terms(b, want);
    const SimRun got = simulate(p, x);
    ASSERT_EQ(got.y.size(), outs);
    for (std::size_t o = 0; o < outs; ++o) {
      EXPECT_LT(max_abs_diff(got.y[o], want[o]), 1e-9) << "seed " << seed << " output " << o;
    }
    EXPECT_EQ(got.stats.total(), model_total(p)) << "seed " << seed;

    // Encoding on demand: the same plaintexts, met one giant-step block at a time.
    const SimRun lazy = simulate(p, x, Encoding::kOnDemand);
    EXPECT_EQ(lazy.y, got.y) << "seed " << seed;
    EXPECT_EQ(lazy.stats.total(), got.stats.total()) << "seed " << seed;
    EXPECT_EQ(got.stats.encoded, 0u);
    EXPECT_EQ(lazy.stats.encoded, got.stats.total().mul_plain) << "seed " << seed;
    EXPECT_LT(lazy.plaintext_bytes, got.plaintext_bytes) << "seed " << seed;
  }
}

TEST(MapLayout, WindowSumsUseTheBinaryMethod) {
  for (std::size_t count = 1; count <= 12; ++count) {
    Program p = Program::map(params(1024, 1), 1);
    p.add_rotate_sum("pool", {{count, 2}});
    const Slots x = random_inputs(1, 512, count);
    const SimRun got = simulate(p, x);
    EXPECT_LT(max_abs_diff(got.y[0], window_sum(x, {{count, 2}})[0]), 1e-12) << count;
    // floor(log2 n) doublings plus one step per further set bit.
    const std::size_t expected =
        static_cast<std::size_t>(std::bit_width(count) - 1 + std::popcount(count) - 1);
    EXPECT_EQ(got.stats.total().rotate, expected) << count;
    const auto cost = estimate_cost(p, 1);
    EXPECT_GE(static_cast<double>(expected), cost[0].rotation_lower_bound);
  }
}

// A multi-channel convolution in the map layout: 8x8 blocks, 4 channel blocks per ciphertext,
// 3x3 kernels, 2 input and 2 output ciphertexts. Kernel positions must become the hoisted
// baby steps and channel offsets the giant steps.
Terms conv_terms(std::size_t slots, std::size_t block, std::size_t grid_w, std::size_t lanes,
                 std::size_t f, std::size_t ins, std::size_t outs) {
  Terms t;
  t.outs = outs;
  t.period = slots;
  std::mt19937_64 gen(7);
  std::uniform_real_distribution<double> val(-0.5, 0.5);
  for (std::uint32_t o = 0; o < outs; ++o) {
    for (std::uint32_t i = 0; i < ins; ++i) {
      for (std::size_t dy = 0; dy < f; ++dy) {
        for (std::size_t dx = 0; dx < f; ++dx) {
          for (std::size_t r = 0; r < lanes; ++r) {
            t.out.push_back(o);
            t.in.push_back(i);
            t.shift.push_back((dy * grid_w + dx + r * block) % slots);
            for (std::size_t j = 0; j < slots; ++j) t.values.push_back(val(gen));
          }
        }
      }
    }
  }
  return t;
}

TEST(MapLayout, ConvolutionSplitsIntoKernelAndChannelRotations) {
  const std::size_t slots = 512, block = 128, grid_w = 16, lanes = 4, f = 3;
  const Terms t = conv_terms(slots, block, grid_w, lanes, f, 2, 2);
  Program p = Program::map(params(2 * slots, 1), 2);
  add(p, "conv", t);
  const auto& m = std::get<MapLinear>(p.layers()[0]);
  const SimRun got = simulate(p, random_inputs(2, slots, 3));
  // Inner: 2 inputs x (9 - 1); outer: 2 outputs x (4 - 1). Nothing cheaper exists here.
  EXPECT_EQ(got.stats.total().rotate, 2u * 8u + 2u * 3u);
  EXPECT_EQ(got.stats.total().mul_plain, 2u * 2u * 9u * 4u);
  for (const MapTerm& term : m.terms) EXPECT_EQ(term.giant % block, 0u);
  const auto cost = estimate_cost(p, 1);
  EXPECT_LE(static_cast<double>(cost[0].ops.rotate), 1.2 * cost[0].rotation_lower_bound);

  // Zero one kernel position for input 1 across every output: its inner rotation goes.
  Terms pruned = t;
  for (std::size_t k = 0; k < pruned.shift.size(); ++k) {
    if (pruned.in[k] == 1 && pruned.shift[k] % block == grid_w + 1) {
      std::fill_n(pruned.values.begin() + static_cast<long>(k * slots), slots, 0.0);
    }
  }
  Program q = Program::map(params(2 * slots, 1), 2);
  add(q, "conv", pruned);
  const SimRun pruned_run = simulate(q, random_inputs(2, slots, 3));
  EXPECT_EQ(pruned_run.stats.total().rotate, 2u * 8u + 2u * 3u - 1u);
  EXPECT_EQ(pruned_run.stats.total().mul_plain, 2u * 2u * 9u * 4u - 2u * 4u);
}

// With phase-shifted giants (r * block - phase) no modulus gives the natural split; the
// compiler's hint (kernel positions as babies) is taken when it is not more expensive, and
// files keep it.
// The fewest rotations any baby / giant assignment needs for terms (out, in, shift) on a
// cyclic group of `slots` elements, by trying every baby set per input and giant set per
// output: input i rotates by B_i, output o by G_o, zero is free, and every shift s of a term
// (o, i) must be b + g for some b in B_i + {0}, g in G_o + {0}.
struct TinyTerm {
  std::size_t out, in, shift;
};

std::size_t fewest_rotations(const std::vector<TinyTerm>& terms, std::size_t ins,
                             std::size_t outs, std::size_t slots) {
  const std::size_t sets = ins + outs, choices = std::size_t{1} << (slots - 1);
  std::size_t codes = 1;
  for (std::size_t k = 0; k < sets; ++k) codes *= choices;
  const auto has = [](std::size_t mask, std::size_t k) { return k == 0 || ((mask >> (k - 1)) & 1); };
  std::size_t best = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> pick(sets, 0);  // bit k - 1 set: rotation by k
  for (std::size_t code = 0; code < codes; ++code) {
    std::size_t c = code, cost = 0;
    for (auto& v : pick) {
      v = c % choices;
      c /= choices;
      cost += static_cast<std::size_t>(std::popcount(v));
    }
    if (cost >= best) continue;
    bool ok = true;
    for (std::size_t k = 0; ok && k < terms.size(); ++k) {
      const TinyTerm& t = terms[k];
      bool covered = false;
      for (std::size_t b = 0; !covered && b < slots; ++b) {
        covered = has(pick[t.in], b) && has(pick[ins + t.out], (t.shift + slots - b) % slots);
      }
      ok = covered;
    }
    if (ok) best = cost;
  }
  return best;
}

TEST(MapLayout, RotationBoundNeverExceedsTheFewestRotationsPossible) {
  // Random scattered terms on groups small enough to search every assignment (the argument
  // behind the bound holds in any cyclic group): the bound is a true lower bound.
  std::mt19937_64 gen(11);
  for (int trial = 0; trial < 40; ++trial) {
    const std::size_t slots = trial % 2 ? 8 : 4;
    const std::size_t ins = slots == 8 ? 1 + trial % 3 / 2 : 1 + trial % 3;
    const std::size_t outs = slots == 8 ? 1 + (trial / 2) % 2 * (ins == 1) : 1 + trial % 2;
    std::vector<TinyTerm> terms;
    std::map<std::pair<std::size_t, std::size_t>, std::set<std::size_t>> shifts;
    for (std::size_t k = 0, n = 2 + gen() % 8; k < n; ++k) {
      const TinyTerm t{gen() % outs, gen() % ins, gen() % slots};
      terms.push_back(t);
      auto& pair = shifts[{t.out, t.in}];
      if (t.shift) pair.insert(t.shift);
    }
    std::map<std::pair<std::size_t, std::size_t>, std::size_t> pairs;
    for (const auto& [key, set] : shifts) pairs[key] = set.size();
    const std::size_t fewest = fewest_rotations(terms, ins, outs, slots);
    EXPECT_LE(map_rotation_lower_bound(pairs), static_cast<double>(fewest)) << "trial " << trial;
  }
  // Where the optimum is known (counts are of non-zero shifts): one pair of 16 shifts with
  // zero (4 babies x 4 giants: 3 + 3), two independent pairs, and one non-zero shift alone
  // (one rotation, where counting the shift without asking whether it is zero would say 0).
  EXPECT_EQ(map_rotation_lower_bound({{{0, 0}, 15}}), 6.0);
  EXPECT_EQ(map_rotation_lower_bound({{{0, 0}, 15}, {{1, 1}, 8}}), 10.0);
  EXPECT_EQ(map_rotation_lower_bound({{{0, 0}, 1}}), 1.0);
  EXPECT_EQ(map_rotation_lower_bound({{{0, 0}, 0}}), 0.0);
  // A dense 2 x 2 convolution with 9 shifts per pair: 2 * 2 + 2 * 2 (b = g = 3).
  EXPECT_EQ(map_rotation_lower_bound({{{0, 0}, 8}, {{0, 1}, 8}, {{1, 0}, 8}, {{1, 1}, 8}}), 8.0);
}

TEST(MapLayout, RotationBoundCountsUnevenPairsByTheirLargest) {
  // Four inputs and four outputs; pair (o, i) holds all 16 x 16 baby + giant shifts when
  // o == i and a quarter or half of them otherwise (as a convolution that reads the nearest
  // of two channel copies). The mean shift count per pair (128) would suggest 84 rotations
  // (4 * 10 + 4 * 11), but each full pair alone needs 15 + 15 and the four share no input or
  // output: 120 at least, which the split meets.
  const std::size_t slots = 4096, ins = 4, outs = 4;
  Terms t;
  t.outs = outs;
  t.period = 1;
  for (std::uint32_t o = 0; o < outs; ++o) {
    for (std::uint32_t i = 0; i < ins; ++i) {
      const std::size_t giants = o == i ? 16 : (o + i) % 2 ? 4 : 8;
      for (std::size_t g = 0; g < giants; ++g) {
        for (std::size_t b = 0; b < 16; ++b) {
          t.out.push_back(o);
          t.in.push_back(i);
          t.shift.push_back(b + 256 * g);
          t.values.push_back(0.5);
        }
      }
    }
  }
  Program p = Program::map(params(2 * slots, 1), ins);
  add(p, "conv", t);
  const auto cost = estimate_cost(p, 1);
  EXPECT_EQ(cost[0].rotation_lower_bound, 120.0);
  EXPECT_EQ(cost[0].ops.rotate, 120u);
}

TEST(MapLayout, BabyHintsGiveTheKernelPositionSplit) {
  const std::size_t slots = 512, block = 128, grid_w = 16;
  Terms t;
  t.outs = 1;
  t.period = 1;
  std::vector<std::size_t> hint;
  for (std::uint32_t i = 0; i < 4; ++i) {
    for (std::size_t dy = 0; dy < 3; ++dy) {
      for (std::size_t dx = 0; dx < 3; ++dx) {
        for (std::size_t r = 0; r < 4; ++r) {
          for (std::size_t phase : {0UL, 1UL, grid_w, grid_w + 1}) {
            const std::size_t p = dy * 2 * grid_w + dx * 2;
            t.out.push_back(0);
            t.in.push_back(i);
            t.shift.push_back((p + r * block + slots - phase) % slots);
            t.values.push_back(0.1 + 0.01 * static_cast<double>(t.out.size() % 7));
            hint.push_back(p);
          }
        }
      }
    }
  }
  Program plain = Program::map(params(2 * slots, 1), 4);
  add(plain, "conv", t);
  Program hinted = Program::map(params(2 * slots, 1), 4);
  hinted.add_map_linear("conv", t.outs, t.out, t.in, t.shift, t.values, t.period, {}, 0, hint);
  const auto& m = std::get<MapLinear>(hinted.layers()[0]);
  ASSERT_TRUE(m.hinted);
  // 4 inputs x 8 kernel positions + 1 output x (16 channel-offset/phase giants - 1).
  const auto rotations = [](const Program& p) { return estimate_cost(p, 1)[0].ops.rotate; };
  EXPECT_EQ(rotations(hinted), 4u * 8u + 15u);
  EXPECT_LE(rotations(hinted), rotations(plain));
  for (const MapTerm& term : m.terms) EXPECT_EQ(term.baby % 2, 0u);
  const Slots x = random_inputs(4, slots, 21);
  EXPECT_LT(max_abs_diff(simulate(hinted, x).y[0], simulate(plain, x).y[0]), 1e-9);
  // Files keep the split.
  const Program back = Program::load(hinted.save());
  EXPECT_TRUE(std::get<MapLinear>(back.layers()[0]).hinted);
  EXPECT_EQ(back.save(), hinted.save());
  // A hint that costs more than the best modular split is not taken.
  std::vector<std::size_t> bad(t.shift.size());
  for (std::size_t k = 0; k < bad.size(); ++k) bad[k] = (t.shift[k] * 7 + 3) % slots;
  Program worse = Program::map(params(2 * slots, 1), 4);
  worse.add_map_linear("conv", t.outs, t.out, t.in, t.shift, t.values, t.period, {}, 0, bad);
  EXPECT_FALSE(std::get<MapLinear>(worse.layers()[0]).hinted);
  EXPECT_EQ(rotations(worse), rotations(plain));
  // Malformed hints are refused.
  std::vector<std::size_t> short_hint(hint.begin(), hint.end() - 1);
  Program q = Program::map(params(2 * slots, 1), 4);
  EXPECT_THROW(q.add_map_linear("c", 1, t.out, t.in, t.shift, t.values, 1, {}, 0, short_hint),
               CompileError);
  std::vector<std::size_t> big = hint;
  big[0] = slots;
  EXPECT_THROW(q.add_map_linear("c", 1, t.out, t.in, t.shift, t.values, 1, {}, 0, big),
               CompileError);
}

TEST(MapLayout, DeadOutputsAreConstantsAndZeroInputsCostNothing) {
  const std::size_t slots = 512;
  Terms a;
  a.outs = 3;
  a.period = 1;
  a.out = {0, 1};
  a.in = {0, 0};
  a.shift = {0, 5};
  a.values = {0.5, 0.0};  // output 1's only term is zero: dropped
  a.bias_period = 1;
  a.bias = {0.1, 0.2, 0.0};  // output 2 has neither terms nor bias: a known zero
  Program p = Program::map(params(2 * slots, 2), 1);
  add(p, "map1", a);
  Terms b;
  b.outs = 1;
  b.period = 1;
  b.out = {0, 0, 0};
  b.in = {0, 1, 2};
  b.shift = {0, 1, 2};
  b.values = {1.0, 1.0, 1.0};
  add(p, "map2", b);
  const Slots x = random_inputs(1, slots, 9);
  const SimRun got = simulate(p, x);
  EXPECT_EQ(got.stats.layers[0].ops.constant, 1u);
  EXPECT_EQ(got.stats.layers[0].ops.mul_plain, 1u);
  // Input 2 of map2 is a known zero: its term and rotation are skipped.
  EXPECT_EQ(got.stats.layers[1].ops.mul_plain, 2u);
  EXPECT_EQ(got.stats.total(), model_total(p));
  for (std::size_t j = 0; j < slots; ++j) {
    EXPECT_NEAR(got.y[0][j], 0.5 * x[0][j] + 0.1 + 0.2, 1e-9);
  }
  const auto steps = p.rotation_steps();
  EXPECT_EQ(std::count(steps.begin(), steps.end(), 2L), 0);
  // Liveness in one walk: the input, then map1's outputs 0 (a term) and 1 (its bias alone)
  // but not 2, then map2's one output; layer by layer it is the same.
  using Live = std::vector<std::uint8_t>;
  const std::vector<Live> live = p.live_per_layer();
  EXPECT_EQ(live, (std::vector<Live>{{1}, {1, 1, 0}, {1}}));
  EXPECT_EQ(p.live_inputs(1), live[1]);
  EXPECT_THROW(p.live_inputs(2), CompileError);
}

TEST(MapLayout, EngineMatchesSimulatorWithSameCounts) {
  const std::size_t slots = 512;
  const Terms a = conv_terms(slots, 128, 16, 4, 3, 2, 2);
  Terms b = random_terms(2, 1, 12, slots, slots, 4, true);
  Program p = Program::map(params(2 * slots, 3), 2);
  add(p, "conv", a);
  p.add_square("act");
  p.add_rotate_sum("pool", {{2, 1}, {2, 16}});
  add(p, "fc", b);
  std::vector<std::uint32_t> ct{0, 0};
  std::vector<std::size_t> at{0, 7};
  p.set_outputs(ct, at);
  const Slots x = random_inputs(2, slots, 11);
  const SimRun sim = simulate(p, x);
  const SimRun enc = run_encrypted(p, x);
  ASSERT_FALSE(enc.y[0].empty());
  const auto& y = enc.y[0];
  EXPECT_LT(max_abs_diff(y, sim.y[0]), 1e-4 * (1.0 + *std::max_element(sim.y[0].begin(), sim.y[0].end())));
  EXPECT_EQ(enc.stats.total(), sim.stats.total());
  EXPECT_EQ(enc.plaintext_bytes, sim.plaintext_bytes);
  const auto features = p.unpack_outputs({y}, 1);
  EXPECT_NEAR(features[1], y[7], 1e-12);
}

// Output ciphertexts, squares and window sums run on the context's threads, and so do the
// giant-step blocks of a layer with one output (split into shares): the same bits, counts and
// held ciphertexts as on one thread, with plaintexts encoded at set-up and on demand.
// Runs `p` on one engine thread and on two, on the same inputs, and expects the same output
// bytes, counts, held ciphertexts and encodings; returns the one-thread run.
struct EngineRun {
  std::vector<std::optional<ckks::Ciphertext>> y;
  RunStats stats;
};

EngineRun expect_same_on_two_threads(const Program& p, std::uint64_t seed,
                                     Encoding encoding = Encoding::kAtSetup) {
  ckks::testing::Fixture f(p.parameters());
  const auto keys = std::make_shared<const ckks::EvaluationKeys>(
      f.keygen.create_evaluation_keys(p.rotation_steps()));
  std::vector<ckks::Ciphertext> in;
  for (const auto& v : random_inputs(p.input_ciphertexts(), p.slots(), seed)) {
    in.push_back(f.encrypt(v));
  }
  EngineBackend one(f.ctx, keys);
  EngineBackend two(ckks::make_context(p.parameters(), 2), keys);
  EngineRun want, got;
  want.y = Executor<EngineBackend>(p, one, encoding).run(in, &want.stats);
  got.y = Executor<EngineBackend>(p, two, encoding).run(in, &got.stats);
  EXPECT_EQ(got.y.size(), want.y.size());
  for (std::size_t o = 0; o < std::min(got.y.size(), want.y.size()); ++o) {
    EXPECT_EQ(got.y[o].has_value(), want.y[o].has_value()) << "output " << o;
    if (got.y[o] && want.y[o]) {
      EXPECT_EQ(got.y[o]->data(), want.y[o]->data()) << "output " << o;
    }
  }
  EXPECT_EQ(got.stats.total(), want.stats.total());
  EXPECT_EQ(got.stats.peak_ciphertexts, want.stats.peak_ciphertexts);
  EXPECT_EQ(got.stats.encoded, want.stats.encoded);
  return want;
}

TEST(MapLayout, TwoThreadsGiveTheSameBitsAndCounts) {
  const std::size_t slots = 512;
  Program p = Program::map(params(2 * slots, 4), 2);
  add(p, "conv", conv_terms(slots, 128, 16, 4, 3, 2, 2));
  p.add_square("act");
  add(p, "fc", random_terms(2, 3, 12, slots, slots, 4, true));
  p.add_rotate_sum("pool", {{2, 1}, {3, 16}}, 1);
  add(p, "head", random_terms(3, 1, 40, slots, slots, 9, true));
  std::set<std::size_t> giants;
  for (const MapTerm& t : std::get<MapLinear>(p.layers().back()).terms) giants.insert(t.giant);
  ASSERT_GE(giants.size(), 2u);  // a block for each of the two shares
  for (const Encoding encoding : {Encoding::kAtSetup, Encoding::kOnDemand}) {
    expect_same_on_two_threads(p, 5, encoding);
  }
}

// A pruned program. First, outputs 1 and 3 of four have no terms (known zeros): the two
// working outputs go to different threads. Then one working output alone: split into
// shares, and the square and window sum after it work on one present ciphertext (on the
// calling thread, primes split). Same bits, counts and held ciphertexts as one thread.
TEST(MapLayout, TwoThreadsOnAPrunedOutputGiveTheSameBitsAndCounts) {
  const std::size_t slots = 512;
  for (const std::size_t working : {2u, 1u}) {
    Program p = Program::map(params(2 * slots, 4), 2);
    Terms conv = random_terms(2, 4, 40, slots, slots, 61, false);
    for (auto& o : conv.out) o = working == 2 ? (o % 2) * 2 : 0u;  // the others pruned whole
    add(p, "conv", conv);
    p.add_square("act");
    p.add_rotate_sum("pool", {{2, 1}, {3, 16}}, 1);
    add(p, "head", random_terms(4, 1, 30, slots, slots, 63, true));
    const EngineRun one = expect_same_on_two_threads(p, 65);
    ASSERT_EQ(one.y.size(), 1u);
    ASSERT_TRUE(one.y[0]);
    EXPECT_EQ(one.stats.layers[1].ops.multiply, working);  // pruned outputs are known zeros
    const SimRun sim = simulate(p, random_inputs(2, slots, 65));
    EXPECT_EQ(sim.stats.total(), one.stats.total());
  }
}

// The squares of six ciphertexts are held beside them: twelve ciphertexts, counted in bytes at
// the levels and sizes they have. Unit: one polynomial over one prime (N = 1024, 8 bytes a
// coefficient); the inputs are at level 2 (three primes).
TEST(MapLayout, PeakBytesCountThreePartProducts) {
  const std::size_t slots = 512;
  const auto peak = [&](bool fold) {
    Program p = Program::map(params(2 * slots, 2), 6);
    p.add_square("act");
    if (fold) {
      p.add_rotate_sum("pool", {{2, 1}}, 3);  // folds sub-maps: the square is deferred
    } else {
      add(p, "fc", random_terms(6, 1, 6, slots, slots, 71, false));
    }
    EXPECT_EQ(p.defers_relinearization(0), fold);
    return simulate(p, random_inputs(6, slots, 73)).stats;
  };
  const std::size_t unit = (2 * slots) * 8;
  // Deferred: 6 inputs (2 x 3 units each) and 6 three-part squares (3 x 3) make 90 units. The
  // window sum then holds the 6 products, their 2 folded sums (3 x 3 each), the 2
  // relinearized, rescaled sums and 3 working ciphertexts at level 1 (2 x 2 each): 92.
  const RunStats deferred = peak(true);
  EXPECT_EQ(deferred.peak_ciphertexts, 12u);
  EXPECT_EQ(deferred.peak_ciphertext_bytes, 92 * unit);
  // Not deferred: the squares are rescaled to level 1, so 6 x 6 + 6 x 4 = 60 units. fc then
  // holds more ciphertexts, but at level 1 and fewer bytes.
  const RunStats plain = peak(false);
  EXPECT_GT(plain.peak_ciphertexts, 12u);
  EXPECT_EQ(plain.peak_ciphertext_bytes, 60 * unit);
}

// A square right before a folding pool hands on unrelinearized products: the fold adds them
// and relinearizes and rescales each sum once. Against the cleartext on the simulator, the
// engine against the simulator, and the counts (and their levels) against the cost model.
TEST(MapLayout, SquaresBeforeAFoldAreRelinearizedOncePerSum) {
  const std::size_t slots = 512;
  const Terms a = random_terms(2, 6, 30, slots, slots, 41, true);
  const Terms b = random_terms(2, 1, 8, slots, slots, 43, true);
  const std::vector<std::pair<std::size_t, std::size_t>> windows{{2, 1}};
  Program p = Program::map(params(2 * slots, 3), 2);
  add(p, "conv", a);
  p.add_square("act");
  p.add_rotate_sum("pool", windows, 3);
  add(p, "fc", b);
  EXPECT_FALSE(p.defers_relinearization(0));
  EXPECT_TRUE(p.defers_relinearization(1));
  EXPECT_FALSE(p.defers_relinearization(2));
  EXPECT_FALSE(p.defers_relinearization(3));
  EXPECT_EQ(p.levels(), 3u);
  std::vector<std::uint32_t> ct{0, 0};
  std::vector<std::size_t> at{5, 77};
  p.set_outputs(ct, at);

  const Slots x = random_inputs(2, slots, 45);
  Slots conv = apply_terms(a, x);
  Slots folded(2, std::vector<double>(slots, 0.0));
  for (std::size_t k = 0; k < 6; ++k) {
    for (std::size_t j = 0; j < slots; ++j) folded[k % 2][j] += conv[k][j] * conv[k][j];
  }
  const Slots want = apply_terms(b, window_sum(folded, windows));
  const SimRun sim = simulate(p, x);
  ASSERT_EQ(sim.y.size(), 1u);
  EXPECT_LT(max_abs_diff(sim.y[0], want[0]), 1e-9);
  const SimRun enc = run_encrypted(p, x);
  EXPECT_LT(max_abs_diff(enc.y[0], sim.y[0]), 1e-4 * (1.0 + max_abs_diff(sim.y[0], Slots::value_type(slots, 0.0))));
  EXPECT_EQ(enc.stats.total(), sim.stats.total());
  EXPECT_EQ(sim.stats.total(), model_total(p));
  // Six products, two relinearizations and rescales (one per folded sum), not six.
  EXPECT_EQ(sim.stats.layers[1].ops.multiply, 6u);
  EXPECT_EQ(sim.stats.layers[1].ops.relinearize + sim.stats.layers[1].ops.rescale, 0u);
  EXPECT_EQ(sim.stats.layers[2].ops.relinearize, 2u);
  EXPECT_EQ(sim.stats.layers[2].ops.rescale, 2u);
  // At the square's level (2): the products, the fold's additions, relinearizations and
  // rescales; the window one level below.
  const auto cost = estimate_cost(p, 3);
  EXPECT_EQ(cost[2].level, 2u);  // the pool's inputs: the products, not yet rescaled
  EXPECT_EQ(cost[1].ops_by_level.at("multiply").at(2), 6u);
  EXPECT_EQ(cost[2].ops_by_level.at("add").at(2), 4u);
  EXPECT_EQ(cost[2].ops_by_level.at("relinearize").at(2), 2u);
  EXPECT_EQ(cost[2].ops_by_level.at("rescale").at(2), 2u);
  EXPECT_EQ(cost[2].ops_by_level.at("rotate").at(1), 2u);
  EXPECT_EQ(cost[2].ops_by_level.at("add").at(1), 2u);
}

// A folded pool adds its sub-maps (ciphertexts o + m * n/fold) before the window sums: on the
// simulator against the direct sum, on the engine against the simulator with the cost
// model's counts; known-zero members add nothing, the range bound covers it, files
// round-trip, and a fold that does not divide the ciphertexts is refused.
TEST(MapLayout, FoldedPoolsAddTheirSubMaps) {
  const std::size_t slots = 512;
  // 4 inputs -> 6 ciphertexts (3 sub-maps of 2), folded to 2, then a window sum.
  Terms a = random_terms(4, 6, 30, slots, slots, 21, true);
  // No term and no bias into ciphertext 5: a known zero that the fold must skip.
  for (std::size_t k = 0; k < a.out.size(); ++k) {
    if (a.out[k] == 5) a.out[k] = 4;
  }
  for (std::size_t j = 0; j < a.bias_period; ++j) a.bias[5 * a.bias_period + j] = 0.0;
  const std::vector<std::pair<std::size_t, std::size_t>> windows{{2, 1}, {2, 16}};
  Program p = Program::map(params(2 * slots, 2), 4);
  add(p, "conv", a);
  EXPECT_THROW(p.add_rotate_sum("pool", windows, 4), CompileError);  // 4 does not divide 6
  EXPECT_THROW(p.add_rotate_sum("pool", windows, 0), CompileError);
  p.add_rotate_sum("pool", windows, 3);
  p.add_square("act");
  EXPECT_EQ(p.levels(), 2u);
  EXPECT_EQ(p.output_ciphertexts(), 2u);
  std::vector<std::uint32_t> ct{0, 1};
  std::vector<std::size_t> at{3, 40};
  p.set_outputs(ct, at);

  const Slots x = random_inputs(4, slots, 31);
  const Slots conv = apply_terms(a, x);
  Slots folded(2, std::vector<double>(slots, 0.0));
  for (std::size_t k = 0; k < 6; ++k) {
    for (std::size_t j = 0; j < slots; ++j) folded[k % 2][j] += conv[k][j];
  }
  Slots want = window_sum(folded, windows);
  for (auto& v : want) {
    for (double& e : v) e *= e;
  }
  const SimRun sim = simulate(p, x);
  ASSERT_EQ(sim.y.size(), 2u);
  for (std::size_t o = 0; o < 2; ++o) EXPECT_LT(max_abs_diff(sim.y[o], want[o]), 1e-9) << o;
  EXPECT_EQ(sim.stats.total(), model_total(p));
  // Output 1 folds ciphertexts 1, 3 and 5 (5 a known zero): one addition; output 0 two.
  EXPECT_EQ(sim.stats.layers[1].ops.add, 3u + 2u * window_sum_steps(std::get<RotateSum>(p.layers()[1])).size());

  const SimRun enc = run_encrypted(p, x);
  for (std::size_t o = 0; o < 2; ++o) {
    ASSERT_FALSE(enc.y[o].empty());
    double peak = 0.0;
    for (double v : sim.y[o]) peak = std::max(peak, std::abs(v));
    EXPECT_LT(max_abs_diff(enc.y[o], sim.y[o]), 1e-4 * (1.0 + peak)) << o;
  }
  EXPECT_EQ(enc.stats.total(), sim.stats.total());
  // The fold is in the range bound: three sub-maps summed allow less input than one.
  Program unfolded = Program::map(params(2 * slots, 2), 4);
  add(unfolded, "conv", a);
  unfolded.add_rotate_sum("pool", windows);
  unfolded.add_square("act");
  EXPECT_LT(input_range(p, 2).max_input, input_range(unfolded, 2).max_input);

  const ckks::Bytes bytes = p.save();
  const Program q = Program::load(bytes);
  EXPECT_EQ(q.save(), bytes);
  EXPECT_EQ(simulate(q, x).y, sim.y);
  // A fold alone (no window) is a valid pool too.
  Program only = Program::map(params(2 * slots, 1), 4);
  only.add_rotate_sum("sum", {}, 2);
  EXPECT_EQ(only.output_ciphertexts(), 2u);
  EXPECT_EQ(Program::load(only.save()).save(), only.save());
  EXPECT_THROW(only.add_rotate_sum("none", {}, 1), CompileError);
}

TEST(MapLayout, FilesRoundTrip) {
  const std::size_t slots = 512;
  Program p = Program::map(params(2 * slots, 2), 2);
  add(p, "map1", random_terms(2, 3, 20, slots, 16, 5, true));
  p.add_rotate_sum("pool", {{3, 4}});
  p.add_square("act");
  std::vector<std::uint32_t> ct{2, 1};
  std::vector<std::size_t> at{5, 6};
  p.set_outputs(ct, at);
  const ckks::Bytes bytes = p.save();
  const Program q = Program::load(bytes);
  EXPECT_EQ(q.save(), bytes);
  EXPECT_EQ(q.rotation_steps(), p.rotation_steps());
  EXPECT_EQ(q.levels(), p.levels());
  EXPECT_EQ(q.out_features(), 2u);
  const Slots x = random_inputs(2, slots, 1);
  EXPECT_EQ(simulate(q, x).y, simulate(p, x).y);
  ckks::Bytes truncated(bytes.begin(), bytes.end() - 24);
  EXPECT_THROW(Program::load(truncated), ckks::SerializationError);
  // A layer without terms between many ciphertexts needs no split search, and its file
  // round-trips.
  Program wide = Program::map(params(2 * slots, 1), 4096);
  wide.add_map_linear("empty", 4096, {}, {}, {}, {}, 0, {}, 0);
  EXPECT_EQ(Program::load(wide.save()).save(), wide.save());
}

TEST(MapLayout, RejectsBadTermsWithClearErrors) {
  const std::size_t slots = 512;
  Program p = Program::map(params(2 * slots, 2), 2);
  std::vector<std::uint32_t> o{0}, i{2};
  std::vector<std::size_t> s{0};
  std::vector<double> v{1.0};
  EXPECT_THROW(p.add_map_linear("m", 1, o, i, s, v, 1, {}, 0), CompileError);  // input 2 of 2
  i = {0};
  s = {slots};
  EXPECT_THROW(p.add_map_linear("m", 1, o, i, s, v, 1, {}, 0), CompileError);  // shift too big
  s = {0};
  std::vector<double> three{1.0, 2.0, 3.0};
  EXPECT_THROW(p.add_map_linear("m", 1, o, i, s, three, 3, {}, 0), CompileError);  // period 3
  std::vector<double> nan{std::nan("")};
  EXPECT_THROW(p.add_map_linear("m", 1, o, i, s, nan, 1, {}, 0), CompileError);
  std::vector<double> w(4, 1.0);
  EXPECT_THROW(p.add_linear("fc", 2, 2, w, {}), CompileError);  // dense layers are for other layouts
  EXPECT_THROW(p.add_rotate_sum("pool", {{0, 1}}), CompileError);
  p.add_map_linear("m", 1, o, i, s, v, 1, {}, 0);
  std::vector<std::uint32_t> ct{1};
  std::vector<std::size_t> at{0};
  EXPECT_THROW(p.set_outputs(ct, at), CompileError);  // only one output ciphertext
  EXPECT_THROW(p.unpack_outputs({std::vector<double>(slots)}, 1), CompileError);  // no map yet
  EXPECT_THROW(Program::map(params(2 * slots, 1), 0), CompileError);
}

TEST(MapLayout, RefusesProgramsTooLargeToLoad) {
  // 16384 slots: the 2^28-value bound is 2^14 bias slot vectors, four layers of 4096 biased
  // outputs (a bias counts as a whole slot vector, it is encoded as one). The fourth fits
  // exactly; a fifth does not, and the builder says so (a loader would refuse the file).
  const std::size_t slots = 16384, outs = 4096;
  const std::vector<double> bias(outs, 0.5);  // period 1
  Program p = Program::map(params(2 * slots, 6), 1);
  for (int k = 0; k < 4; ++k) p.add_map_linear("b" + std::to_string(k), outs, {}, {}, {}, {}, 0, bias, 1);
  EXPECT_THROW(p.add_map_linear("b4", outs, {}, {}, {}, {}, 0, bias, 1), CompileError);
  EXPECT_NO_THROW(Program::load(p.save()));
}

TEST(MapLayout, SparseTermsHoldOnlyTheirNonZeroValues) {
  // Two terms of period 512, one value each after merging; the dense form of the same terms
  // gives the same program, bit for bit.
  const std::size_t slots = 512;
  Program sparse = Program::map(params(2 * slots, 1), 1);
  const std::vector<std::uint32_t> out{0, 0, 0}, in{0, 0, 0};
  const std::vector<std::size_t> shift{3, 3, 5};
  const std::vector<std::uint64_t> offsets{0, 2, 3, 4};
  const std::vector<std::uint32_t> at{7, 9, 9, 100};  // term 0 and 1 merge; 9 sums to zero
  const std::vector<double> values{0.5, 0.25, -0.25, 2.0};
  sparse.add_map_linear_sparse("m", 1, out, in, shift, offsets, at, values, slots, {}, 0);
  const auto& m = std::get<MapLinear>(sparse.layers()[0]);
  ASSERT_EQ(m.terms.size(), 2u);
  EXPECT_EQ(m.terms[0].at, std::vector<std::uint32_t>{7});
  EXPECT_EQ(m.terms[0].values, std::vector<double>{0.5});
  EXPECT_EQ(m.terms[1].at, std::vector<std::uint32_t>{100});

  std::vector<double> dense(3 * slots, 0.0);
  dense[7] = 0.5, dense[9] = 0.25, dense[slots + 9] = -0.25, dense[2 * slots + 100] = 2.0;
  Program same = Program::map(params(2 * slots, 1), 1);
  same.add_map_linear("m", 1, out, in, shift, dense, slots, {}, 0);
  EXPECT_EQ(same.save(), sparse.save());
  EXPECT_EQ(Program::load(sparse.save()).save(), sparse.save());

  std::vector<double> full(slots);
  m.terms[1].fill_slots(full, 10);
  EXPECT_EQ(full[110], 2.0);
  EXPECT_EQ(std::count(full.begin(), full.end(), 0.0), static_cast<long>(slots - 1));

  Program bad = Program::map(params(2 * slots, 1), 1);
  const std::vector<std::uint32_t> outside{7, 9, 9, 512};
  EXPECT_THROW(bad.add_map_linear_sparse("m", 1, out, in, shift, offsets, outside, values, slots,
                                         {}, 0),
               CompileError);
  const std::vector<std::uint64_t> short_offsets{0, 2, 3};
  EXPECT_THROW(bad.add_map_linear_sparse("m", 1, out, in, shift, short_offsets, at, values,
                                         slots, {}, 0),
               CompileError);
}

TEST(MapLayout, LoadsDenseTermFilesOfEarlierVersions) {
  // Layer kind 4 stored each term as one dense period; such files still load, into the same
  // program the sparse builder makes (which saves as kind 6).
  const std::size_t slots = 512;
  const ckks::Parameters prm = params(2 * slots, 1);
  Program want = Program::map(prm, 1);
  const std::vector<std::uint32_t> out{0, 0}, in{0, 0};
  const std::vector<std::size_t> shift{3, 40};
  std::vector<double> dense(2 * 4, 0.0);  // period 4
  dense[1] = 0.5, dense[4 + 3] = -1.5;
  const std::vector<double> bias{0.25, 0.0, 0.0, 0.0};
  want.add_map_linear("m", 1, out, in, shift, dense, 4, bias, 4);

  ckks::detail::Writer w;
  const ckks::Bytes pb = ckks::Serializer::save(prm);
  w.u64(pb.size());
  w.bytes(pb.data(), pb.size());
  w.u16(static_cast<std::uint16_t>(Layout::kMap));
  w.u64(0), w.u64(0), w.u64(0), w.u64(slots);  // tile shape (unused), input features
  w.u64(1);                                    // layers
  w.u16(4);
  w.u64(1), w.bytes("m", 1);
  w.u64(1), w.u64(2), w.u64(4);  // outputs, terms, period
  for (std::size_t t = 0; t < 2; ++t) {
    w.u64(out[t]), w.u64(in[t]), w.u64(shift[t]), w.u64(std::get<MapLinear>(want.layers()[0]).terms[t].baby);
    w.f64s(std::vector<double>(dense.begin() + 4 * t, dense.begin() + 4 * (t + 1)));
  }
  w.u64(4);
  w.f64s(bias);
  w.u64(0);  // no output map
  const ckks::Bytes old = ckks::Serializer::seal_envelope(ckks::ObjectKind::kProgram,
                                                    ckks::Fingerprint{}, w.buffer());
  EXPECT_EQ(Program::load(old).save(), want.save());
}

}  // namespace
}  // namespace fheprune::runtime
