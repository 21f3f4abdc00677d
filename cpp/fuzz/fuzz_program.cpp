// libFuzzer target: runtime::Program::load (program files, docs/runtime.md).
//
// Each input is loaded twice: as given (header, length and checksum checks) and resealed. A
// program's payload starts with a complete serialized Parameters object (its own envelope and
// checksum), so the resealed pass reseals twice: first that inner parameter block, in place
// (its length is kept, so the offsets after it do not move), then the whole program
// (fuzz_util.hpp). Without the inner reseal a mutation of the parameters would almost never
// get past their checksum, and the loader would only ever see the seed's ring and chain.
//
// Oracles for a program the loader accepts:
//  * round trip: save() gives back the input bytes, except for the fields the loader ignores
//    (both fingerprints and checksums, and the tile shape of a diagonal program), and (for
//    programs that are not huge in memory) the saved bytes load again and save to themselves;
//  * what every caller computes next (levels, rotation steps, live inputs, the cost model)
//    fails, if at all, only with an FheError; the cost model's counts by level add up to its
//    totals, at levels no higher than the top;
//  * when the program is small (ring <= 4096, few primes, few units), it runs on the slot
//    simulator (runtime/backends.hpp) with its own rotation keys: the run may be refused only
//    with an FheError, its operation counts must equal the cost model's, and its outputs must
//    match a dense float64 evaluation of the layers' source weights.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/executor.hpp"
#include "fheprune/runtime/program.hpp"
#include "fuzz_util.hpp"

namespace {

namespace ckks = fheprune::ckks;
namespace rt = fheprune::runtime;
namespace fuzz = fheprune::fuzz;
using ckks::ObjectKind;

// Simulation bounds: one input stays well under a millisecond or so.
constexpr std::size_t kMaxSimDegree = 4096;
constexpr std::size_t kMaxSimPrimes = 10;
constexpr std::size_t kMaxSimSlotValues = std::size_t{1} << 20;  // plaintext slot values kept
constexpr std::size_t kMaxSimCiphertexts = 64;
constexpr std::size_t kMaxSimFeatures = 4096;
constexpr std::size_t kMaxReloadSlotValues = std::size_t{1} << 24;
constexpr std::size_t kMaxReferenceWork = std::size_t{1} << 22;  // multiply-adds, all samples

std::uint64_t get_le(const std::uint8_t* p, std::size_t bytes) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < bytes; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

// The payload offset (inside a whole object) of the parameter block, and its length, when the
// input is long enough to hold one; nullopt otherwise.
std::optional<std::size_t> params_block_length(fuzz::ByteSpan object) {
  const fuzz::ByteSpan payload = fuzz::payload_of(object);
  if (payload.size() < 8) return std::nullopt;
  const std::uint64_t len = get_le(payload.data(), 8);
  if (len < fuzz::kHeaderBytes + fuzz::kHashBytes || len > payload.size() - 8) return std::nullopt;
  return static_cast<std::size_t>(len);
}

// reseal() of the whole input, after resealing its inner parameter block in place.
ckks::Bytes reseal_program(fuzz::ByteSpan input) {
  if (const auto len = params_block_length(input)) {
    ckks::Bytes copy(input.begin(), input.end());
    const std::size_t at = fuzz::kHeaderBytes + 8;
    const ckks::Bytes inner = fuzz::reseal({copy.data() + at, *len}, ckks::Fingerprint{},
                                           ObjectKind::kParameters);
    // reseal keeps the length: header + (len - header - hash) + hash.
    std::memcpy(copy.data() + at, inner.data(), inner.size());
    return fuzz::reseal(copy, ckks::Fingerprint{}, ObjectKind::kProgram);
  }
  return fuzz::reseal(input, ckks::Fingerprint{}, ObjectKind::kProgram);
}

// Byte ranges of a program object that the loader ignores (so save() may write them
// differently): the outer fingerprint and checksum, the parameter block's fingerprint and
// checksum, and the tile shape of a diagonal program.
bool same_but_ignored(fuzz::ByteSpan loaded, const ckks::Bytes& saved, const rt::Program& p) {
  if (loaded.size() != saved.size()) return false;
  std::vector<std::uint8_t> mask(loaded.size(), 1);
  const auto ignore = [&](std::size_t from, std::size_t count) {
    std::fill(mask.begin() + static_cast<long>(from),
              mask.begin() + static_cast<long>(std::min(from + count, mask.size())), 0);
  };
  ignore(fuzz::kFingerprintOffset, sizeof(ckks::Fingerprint));
  ignore(loaded.size() - fuzz::kHashBytes, fuzz::kHashBytes);
  const std::size_t block = fuzz::kHeaderBytes + 8;
  const std::size_t len = static_cast<std::size_t>(get_le(saved.data() + fuzz::kHeaderBytes, 8));
  ignore(block + fuzz::kFingerprintOffset, sizeof(ckks::Fingerprint));
  ignore(block + len - fuzz::kHashBytes, fuzz::kHashBytes);
  if (p.layout() == rt::Layout::kDiagonal) ignore(block + len + 2, 3 * 8);
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    if (mask[i] && loaded[i] != saved[i]) return false;
  }
  return true;
}

// Contexts for the simulator, by serialized parameters (the fuzzer mostly keeps the seed's).
const ckks::ContextPtr* context_for(const ckks::Parameters& params) {
  static std::map<ckks::Bytes, ckks::ContextPtr> cache;
  const ckks::Bytes key = ckks::Serializer::save(params);
  if (auto it = cache.find(key); it != cache.end()) return &it->second;
  if (cache.size() >= 16) cache.clear();
  const auto ctx = fuzz::try_load("make_context(program parameters)",
                                  [&] { return ckks::make_context(params, 1); });
  if (!ctx) return nullptr;
  return &cache.emplace(key, *ctx).first->second;
}

// Map layout: the layers' definitions applied slot by slot to each sample's ciphertexts.
std::vector<std::vector<double>> map_reference(const rt::Program& p,
                                               std::vector<std::vector<double>> x) {
  const std::size_t slots = p.slots();
  for (const rt::Layer& layer : p.layers()) {
    if (std::holds_alternative<rt::Refresh>(layer)) continue;  // the same values, refreshed
    if (std::holds_alternative<rt::Square>(layer)) {
      for (auto& v : x) {
        for (double& e : v) e *= e;
      }
    } else if (const auto* r = std::get_if<rt::RotateSum>(&layer)) {
      if (r->fold > 1) {
        const std::size_t n_out = x.size() / r->fold;
        std::vector<std::vector<double>> folded(n_out, std::vector<double>(slots, 0.0));
        for (std::size_t k = 0; k < x.size(); ++k) {
          for (std::size_t j = 0; j < slots; ++j) folded[k % n_out][j] += x[k][j];
        }
        x = std::move(folded);
      }
      for (auto& v : x) {
        for (const auto& [count, stride] : r->windows) {
          std::vector<double> y(slots, 0.0);
          for (std::size_t j = 0; j < slots; ++j) {
            for (std::size_t n = 0; n < count; ++n) y[j] += v[(j + n * stride) % slots];
          }
          v = std::move(y);
        }
      }
    } else if (const auto* m = std::get_if<rt::MapLinear>(&layer)) {
      std::vector<std::vector<double>> y(m->out_ciphertexts, std::vector<double>(slots, 0.0));
      std::vector<double> d(slots);
      for (const rt::MapTerm& t : m->terms) {
        t.fill_slots(d, 0);
        for (std::size_t j = 0; j < slots; ++j) y[t.out][j] += d[j] * x[t.in][(j + t.shift) % slots];
      }
      for (std::size_t o = 0; o < m->bias.size(); ++o) {
        const auto& b = m->bias[o];
        for (std::size_t j = 0; j < slots && !b.empty(); ++j) y[o][j] += b[j % b.size()];
      }
      x = std::move(y);
    }
  }
  return x;
}

// Dense float64 evaluation of the layers' source weights, sample by sample.
std::vector<double> reference(const rt::Program& p, std::vector<double> x, std::size_t count) {
  std::size_t width = p.in_features();
  for (const rt::Layer& layer : p.layers()) {
    if (std::holds_alternative<rt::Refresh>(layer)) continue;
    if (std::holds_alternative<rt::Square>(layer)) {
      for (double& v : x) v *= v;
      continue;
    }
    const auto* t = std::get_if<rt::TileLinear>(&layer);
    const auto* d = std::get_if<rt::DiagonalLinear>(&layer);
    const std::size_t out = t ? t->out_features : d->out_features;
    const std::vector<double>& w = t ? t->weight : d->weight;
    const std::vector<double>& b = t ? t->bias_source : d->bias_source;
    std::vector<double> y(count * out, 0.0);
    for (std::size_t s = 0; s < count; ++s) {
      for (std::size_t r = 0; r < out; ++r) {
        double acc = b.empty() ? 0.0 : b[r];
        for (std::size_t c = 0; c < width; ++c) acc += w[r * width + c] * x[s * width + c];
        y[s * out + r] = acc;
      }
    }
    x = std::move(y);
    width = out;
  }
  return x;
}

// Slot values the program's layers hold in memory (units and bias vectors).
std::size_t slot_values(const rt::Program& p) {
  std::size_t vectors = 0;
  for (const rt::Layer& layer : p.layers()) {
    if (const auto* t = std::get_if<rt::TileLinear>(&layer)) {
      vectors += t->units.size() + t->bias.size();
    } else if (const auto* d = std::get_if<rt::DiagonalLinear>(&layer)) {
      vectors += d->units.size() + (d->bias.empty() ? 0 : 1);
    } else if (const auto* m = std::get_if<rt::MapLinear>(&layer)) {
      vectors += m->terms.size() + m->bias.size();
    }
  }
  return vectors * p.slots();
}

bool small_enough(const rt::Program& p) {
  const ckks::Parameters& prm = p.parameters();
  if (prm.poly_degree > kMaxSimDegree) return false;
  if (prm.chain_bits.size() + prm.special_bits.size() > kMaxSimPrimes) return false;
  if (p.levels() > prm.chain_bits.size() - 1) return false;  // refused before any work
  if (p.in_features() > kMaxSimFeatures) return false;
  if (p.input_ciphertexts() > kMaxSimCiphertexts) return false;
  std::size_t values = 0, work = 0;
  for (const rt::Layer& layer : p.layers()) {
    if (const auto* t = std::get_if<rt::TileLinear>(&layer)) {
      if (t->out_tiles > kMaxSimCiphertexts || t->out_features > kMaxSimFeatures) return false;
      values += (t->units.size() + t->bias.size() + 1) * p.slots();
      work += t->weight.size();
    } else if (const auto* d = std::get_if<rt::DiagonalLinear>(&layer)) {
      values += (d->units.size() + 1) * p.slots();
      work += d->weight.size();
    } else if (const auto* m = std::get_if<rt::MapLinear>(&layer)) {
      if (m->out_ciphertexts > kMaxSimCiphertexts) return false;
      values += (m->terms.size() + m->bias.size() + 1) * p.slots();
      work += (m->terms.size() + m->bias.size()) * p.slots();
    } else if (const auto* r = std::get_if<rt::RotateSum>(&layer)) {
      std::size_t area = 0;
      for (const auto& w : r->windows) area += w.first;
      work += area * p.slots() * kMaxSimCiphertexts;
    }
  }
  return values <= kMaxSimSlotValues && work * (p.samples_per_group() + 1) <= kMaxReferenceWork;
}

void simulate(const rt::Program& p) {
  if (!small_enough(p)) return;
  const ckks::ContextPtr* ctx = context_for(p.parameters());
  if (!ctx) return;
  // Two groups of samples (tile: one full group and one partial), values in [-1, 1].
  const std::size_t count = p.layout() == rt::Layout::kTile ? p.samples_per_group() + 1 : 2;
  std::vector<double> x(count * p.in_features());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.7 * static_cast<double>(i) + 0.3);

  rt::SlotBackend backend(*ctx, p.rotation_steps());
  for (const rt::Layer& layer : p.layers()) {
    if (const auto* r = std::get_if<rt::Refresh>(&layer)) {  // an exact refresh, any range
      backend.set_refresh({.to_level = r->to_level, .error = 0.0, .input_bound = 1e300,
                           .period = r->config.slots});
      break;
    }
  }
  rt::RunStats stats;
  const auto slots = fuzz::try_load("Executor<SlotBackend>::run", [&] {
    rt::Executor<rt::SlotBackend> exec(p, backend);
    std::vector<rt::SlotBackend::Ct> in;
    for (auto& v : p.pack_inputs(x, count)) {
      in.push_back(backend.encode(v, p.input_level(), backend.default_scale()));
    }
    std::vector<std::vector<double>> out;
    for (auto& c : exec.run(in, &stats)) {
      out.push_back(c ? c->slots : std::vector<double>(p.slots(), 0.0));
    }
    return out;
  });
  if (!slots) return;

  rt::OpCounts model;
  for (const auto& c : rt::estimate_cost(p, p.input_level())) model += c.ops;
  const std::size_t groups = p.layout() == rt::Layout::kTile ? 2 : count;
  if (!(stats.total() == model.scaled(groups))) {
    fuzz::detail::finding("estimate_cost", "the cost model's operation counts differ from the "
                                           "simulated run's");
  }

  std::vector<double> y, want;
  if (p.layout() == rt::Layout::kMap) {
    // Compare whole output ciphertexts, sample by sample (the output map may be absent).
    const std::size_t ins = p.input_ciphertexts(), outs = p.output_ciphertexts();
    for (std::size_t s = 0; s < count; ++s) {
      std::vector<std::vector<double>> in;
      for (std::size_t c = 0; c < ins; ++c) {
        const auto from = x.begin() + static_cast<long>((s * ins + c) * p.slots());
        in.emplace_back(from, from + static_cast<long>(p.slots()));
      }
      for (auto& v : map_reference(p, std::move(in))) want.insert(want.end(), v.begin(), v.end());
      for (std::size_t c = 0; c < outs; ++c) {
        const auto& v = (*slots)[s * outs + c];
        y.insert(y.end(), v.begin(), v.end());
      }
    }
  } else {
    y = p.unpack_outputs(*slots, count);
    want = reference(p, x, count);
  }
  double magnitude = 1.0;
  for (double v : want) {
    if (!std::isfinite(v)) return;  // overflowing weights: nothing to compare
    magnitude = std::max(magnitude, std::abs(v));
  }
  if (magnitude > 1e12) return;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (!(std::abs(y[i] - want[i]) <= 1e-6 * magnitude)) {
      fuzz::detail::finding("Executor<SlotBackend>::run",
                            "output " + std::to_string(i) + " is " + std::to_string(y[i]) +
                                ", the dense evaluation gives " + std::to_string(want[i]));
    }
  }
}

void exercise(fuzz::ByteSpan bytes) {
  auto program = fuzz::try_load("Program::load", [&] { return rt::Program::load(bytes); });
  if (!program) return;
  const rt::Program& p = *program;

  fuzz::try_load("Program queries", [&] {
    std::size_t sink = p.levels() + p.out_features() + p.input_ciphertexts() +
                       p.output_ciphertexts() + p.samples_per_group() + p.rotation_steps().size();
    for (std::size_t i = 0; i < p.layers().size(); ++i) sink += p.live_inputs(i).size();
    const std::size_t top = std::max(p.levels(), p.parameters().chain_bits.size() - 1);
    for (const auto& c : rt::estimate_cost(p, top)) sink += c.units;
    return sink;
  });
  // The cost model's counts by level add up to its totals, at levels the program can reach.
  if (const auto costs = fuzz::try_load("estimate_cost", [&] {
        return rt::estimate_cost(p, std::max(p.levels(), p.parameters().chain_bits.size() - 1));
      })) {
    const std::size_t top = std::max(p.levels(), p.parameters().chain_bits.size() - 1);
    for (const auto& c : *costs) {
      if (!(rt::ops_total(c.ops_by_level) == c.ops)) {
        fuzz::detail::finding("estimate_cost", "layer " + c.name +
                                                   ": the counts by level do not add up to its "
                                                   "operation counts");
      }
      for (const auto& [op, by_level] : c.ops_by_level) {
        for (const auto& entry : by_level) {
          const std::size_t level = entry.first;
          if (level > top) {
            fuzz::detail::finding("estimate_cost", "layer " + c.name + " runs " + op +
                                                       " at level " + std::to_string(level) +
                                                       ", above the top level " +
                                                       std::to_string(top));
          }
        }
      }
    }
  }
  simulate(p);

  const ckks::Bytes saved = p.save();
  // A map program is saved in canonical form (terms merged and sorted, zero ones dropped), so
  // only the reload below can hold it to its bytes.
  if (p.layout() != rt::Layout::kMap && !same_but_ignored(bytes, saved, p)) {
    fuzz::detail::finding("Program::load",
                          "accepted input does not round-trip: saving the loaded program gives " +
                              std::to_string(saved.size()) + " different bytes for " +
                              std::to_string(bytes.size()) + " input bytes");
  }
  // Reloading a program near the loader's memory bound (2^28 slot values) takes seconds under
  // ASan; the byte comparison above already covers those.
  if (slot_values(p) > kMaxReloadSlotValues) return;
  program.reset();  // not held twice
  const auto again =
      fuzz::try_load("Program::load(saved)", [&] { return rt::Program::load(saved); });
  if (!again || again->save() != saved) {
    fuzz::detail::finding("Program::load", "a saved program does not load back to itself");
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
  exercise(reseal_program(input));
  return 0;
}
