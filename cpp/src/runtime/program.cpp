#include "fheprune/runtime/program.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <string>

#include "ckks/wire.hpp"
#include "fheprune/ckks/context.hpp"
#include "fheprune/ckks/serialization.hpp"

namespace fheprune::runtime {

namespace {

using ckks::Bytes;

constexpr std::size_t kMaxMapCiphertexts = 4096;

std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }
std::size_t log2_exact(std::size_t v) { return static_cast<std::size_t>(std::countr_zero(v)); }
bool pow2(std::size_t v) { return v != 0 && std::has_single_bit(v); }

std::size_t slots_of(const ckks::Parameters& params) {
  params.validate();
  return params.poly_degree / 2;
}

void check_values(std::span<const double> v, const std::string& what) {
  for (double x : v) {
    if (!std::isfinite(x)) throw CompileError(what + " holds a NaN or infinite value");
  }
}

std::size_t built_layer_levels(const Layer& layer) {
  if (const auto* t = std::get_if<TileLinear>(&layer)) return t->rebuild_input ? 2 : 1;
  if (std::holds_alternative<RotateSum>(layer) || std::holds_alternative<Refresh>(layer)) return 0;
  return 1;
}

// A refresh under `params` with `config`: where it lands and the rotations its DFTs need,
// read off the bootstrapper itself (its constructor refuses a chain too short for it).
Refresh make_refresh(const ckks::Parameters& params, const ckks::BootstrapConfig& config) {
  const ckks::Bootstrapper boot(ckks::make_context(params), config);
  return Refresh{"", boot.output_level(), config, boot.rotation_steps()};
}

std::size_t tile_linear_count(const std::vector<Layer>& layers) {
  return static_cast<std::size_t>(std::count_if(layers.begin(), layers.end(), [](const Layer& l) {
    return std::holds_alternative<TileLinear>(l);
  }));
}

const TileLinear* last_tile_linear(const std::vector<Layer>& layers) {
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    if (const auto* t = std::get_if<TileLinear>(&*it)) return t;
  }
  return nullptr;
}

}  // namespace

TileLayerPlan tile_layer_plan(const TileShape3& tile, std::size_t index) {
  TileLayerPlan plan;
  // The first layer sums over the outer dimension (the client packs its features along it,
  // replicated along the inner one); each next layer sums over the other dimension.
  plan.sum = index % 2 == 0 ? SumDim::kOuter : SumDim::kInner;
  plan.rebuild_input = index > 0 && index % 2 == 0;  // its input came out of a kInner layer
  const bool outer = plan.sum == SumDim::kOuter;
  plan.tile_rows = outer ? tile.inner : tile.outer;
  plan.tile_cols = outer ? tile.outer : tile.inner;
  return plan;
}

std::vector<std::size_t> layer_levels(Layout layout, const std::vector<LayerKind>& kinds) {
  std::vector<std::size_t> out;
  out.reserve(kinds.size());
  std::size_t linear = 0;
  for (const LayerKind kind : kinds) {
    switch (kind) {
      case LayerKind::kSquare:
        out.push_back(1);
        break;
      case LayerKind::kRotateSum:
        if (layout != Layout::kMap) {
          throw CompileError("a rotate sum (pool) exists in the map layout only");
        }
        out.push_back(0);
        break;
      case LayerKind::kLinear:
        out.push_back(layout == Layout::kTile ? tile_layer_plan({1, 1, 1}, linear).levels() : 1);
        ++linear;
        break;
    }
  }
  return out;
}

Program Program::tile(const ckks::Parameters& params, TileShape3 shape, std::size_t in_features) {
  const std::size_t slots = slots_of(params);
  if (!pow2(shape.outer) || !pow2(shape.inner) || !pow2(shape.batch)) {
    throw CompileError("tile dimensions must be powers of two (rotate-and-add halves them), got [" +
                       std::to_string(shape.outer) + ", " + std::to_string(shape.inner) + ", " +
                       std::to_string(shape.batch) + "]");
  }
  if (shape.slots() != slots) {
    throw CompileError("a tile [" + std::to_string(shape.outer) + ", " +
                       std::to_string(shape.inner) + ", " + std::to_string(shape.batch) +
                       "] holds " + std::to_string(shape.slots()) + " values but a ciphertext has " +
                       std::to_string(slots) + " slots (N/2); choose t_batch = slots / (t1 * t2)");
  }
  if (in_features == 0) throw CompileError("a program needs at least one input feature");
  Program p;
  p.layout_ = Layout::kTile;
  p.params_ = params;
  p.tile_ = shape;
  p.in_features_ = in_features;
  return p;
}

Program Program::diagonal(const ckks::Parameters& params, std::size_t in_features) {
  const std::size_t slots = slots_of(params);
  if (in_features == 0) throw CompileError("a program needs at least one input feature");
  if (std::bit_ceil(in_features) > slots) {
    throw CompileError(std::to_string(in_features) + " input features do not fit " +
                       std::to_string(slots) + " slots (the diagonal layout pads to " +
                       std::to_string(std::bit_ceil(in_features)) +
                       "); use a larger ring degree or the tile layout");
  }
  Program p;
  p.layout_ = Layout::kDiagonal;
  p.params_ = params;
  p.in_features_ = in_features;
  return p;
}

Program Program::map(const ckks::Parameters& params, std::size_t input_ciphertexts) {
  const std::size_t slots = slots_of(params);
  if (input_ciphertexts == 0 || input_ciphertexts > kMaxMapCiphertexts) {
    throw CompileError("a map program takes 1 to " + std::to_string(kMaxMapCiphertexts) +
                       " input ciphertexts per sample, got " + std::to_string(input_ciphertexts));
  }
  Program p;
  p.layout_ = Layout::kMap;
  p.params_ = params;
  p.map_inputs_ = input_ciphertexts;
  p.in_features_ = input_ciphertexts * slots;
  return p;
}

std::size_t Program::current_ciphertexts() const {
  std::size_t n = map_inputs_;
  for (const Layer& layer : layers_) {
    if (const auto* m = std::get_if<MapLinear>(&layer)) n = m->out_ciphertexts;
    if (const auto* r = std::get_if<RotateSum>(&layer)) n /= r->fold;
  }
  return n;
}

std::size_t Program::current_features() const {
  if (layout_ == Layout::kMap) return out_ct_.size();
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
    if (const auto* t = std::get_if<TileLinear>(&*it)) return t->out_features;
    if (const auto* d = std::get_if<DiagonalLinear>(&*it)) return d->out_features;
  }
  return in_features_;
}

std::size_t Program::out_features() const { return current_features(); }

void Program::add_linear(const std::string& name, std::size_t out, std::size_t in,
                         std::span<const double> w, std::span<const double> b) {
  if (layout_ == Layout::kMap) {
    throw CompileError("layer '" + name + "': a map-layout program takes its linear layers as "
                       "diagonal terms (add_map_linear), not dense matrices");
  }
  if (in != current_features()) {
    throw CompileError("layer '" + name + "' takes " + std::to_string(in) +
                       " inputs but the previous layer produces " +
                       std::to_string(current_features()));
  }
  if (out == 0) throw CompileError("layer '" + name + "' has no outputs");
  if (w.size() != out * in) {
    throw CompileError("layer '" + name + "': weight has " + std::to_string(w.size()) +
                       " values, expected out*in = " + std::to_string(out * in));
  }
  if (!b.empty() && b.size() != out) {
    throw CompileError("layer '" + name + "': bias has " + std::to_string(b.size()) +
                       " values, expected " + std::to_string(out));
  }
  check_values(w, "layer '" + name + "' weight");
  check_values(b, "layer '" + name + "' bias");
  if (layout_ == Layout::kTile) {
    add_tile_linear(name, out, in, w, b);
  } else {
    add_diagonal_linear(name, out, in, w, b);
  }
}

void Program::add_square(const std::string& name) { layers_.push_back(Square{name}); }

void Program::add_refresh(const std::string& name, const ckks::BootstrapConfig& config) {
  // A refresh with this configuration is already here (a loaded file holds several): its
  // level and steps, instead of building another bootstrapper.
  const auto same = std::find_if(layers_.begin(), layers_.end(), [&](const Layer& l) {
    const auto* other = std::get_if<Refresh>(&l);
    return other && other->config == config;
  });
  Refresh r = same != layers_.end() ? std::get<Refresh>(*same) : make_refresh(params_, config);
  r.name = name;
  layers_.push_back(std::move(r));
}

std::size_t Program::place_refreshes(const ckks::BootstrapConfig& config) {
  std::erase_if(layers_, [](const Layer& l) { return std::holds_alternative<Refresh>(l); });
  std::vector<std::size_t> levels;
  for (const Layer& l : layers_) levels.push_back(built_layer_levels(l));
  const Refresh proto = make_refresh(params_, sparse_refresh(config));
  const std::vector<std::size_t> at =
      plan_refreshes(levels, live_counts(), proto.to_level, proto.to_level);
  input_level_ = proto.to_level;
  std::vector<Layer> placed;
  std::size_t next = 0;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (next < at.size() && at[next] == i) {
      Refresh r = proto;
      r.name = "refresh" + std::to_string(++next);
      placed.emplace_back(std::move(r));
    }
    placed.push_back(std::move(layers_[i]));
  }
  layers_ = std::move(placed);
  return at.size();
}

ckks::BootstrapConfig Program::sparse_refresh(ckks::BootstrapConfig config) const {
  if (layout_ != Layout::kDiagonal || config.slots != 0) return config;
  // Every value of a diagonal program repeats with the padded width of its layer, a power of
  // two: the widest one is a period of them all. The DFTs need a stage per level.
  std::size_t period = std::bit_ceil(in_features_);
  for (const Layer& l : layers_) {
    if (const auto* d = std::get_if<DiagonalLinear>(&l)) period = std::max({period, d->n_in, d->n_out});
  }
  period = std::max(period, std::size_t{1} << std::max(config.cts_levels, config.stc_levels));
  // Measured (docs/bootstrapping.md): a sparse refresh is faster than a full one at every
  // period and more precise (the trace drops the noise outside the subring).
  config.slots = period < slots() ? period : 0;
  return config;
}

std::vector<std::size_t> plan_refreshes(const std::vector<std::size_t>& levels,
                                        const std::vector<std::size_t>& live, std::size_t top,
                                        std::size_t to_level) {
  if (live.size() != levels.size()) {
    throw CompileError("plan_refreshes: one live count per layer is needed");
  }
  // cost[i][l]: (refreshed ciphertexts, refresh points) to run layers i.. from level l.
  using Cost = std::pair<std::uint64_t, std::uint64_t>;
  constexpr Cost kNever{std::numeric_limits<std::uint64_t>::max(), 0};
  const std::size_t n = levels.size(), highest = std::max(top, to_level);
  std::vector<std::vector<Cost>> cost(n + 1, std::vector<Cost>(highest + 1, kNever));
  std::vector<std::vector<std::uint8_t>> refresh(n, std::vector<std::uint8_t>(highest + 1, 0));
  std::fill(cost[n].begin(), cost[n].end(), Cost{0, 0});
  for (std::size_t i = n; i-- > 0;) {
    const auto run = [&](std::size_t l) {  // layer i from level l, no refresh in front
      return levels[i] <= l ? cost[i + 1][l - levels[i]] : kNever;
    };
    const Cost after = run(to_level);
    const Cost with = after == kNever ? kNever : Cost{after.first + live[i], after.second + 1};
    for (std::size_t l = 0; l <= highest; ++l) {
      cost[i][l] = run(l);
      if (with < cost[i][l]) {
        cost[i][l] = with;
        refresh[i][l] = 1;
      }
    }
  }
  if (cost[0][top] == kNever) {
    std::size_t worst = 0;
    for (std::size_t i = 1; i < n; ++i) worst = levels[i] > levels[worst] ? i : worst;
    throw ckks::LevelError("layer " + std::to_string(worst) + " needs " +
                           std::to_string(levels[worst]) + " levels but a refresh leaves " +
                           std::to_string(to_level) + " (and the inputs start at " +
                           std::to_string(top) + "); choose bootstrapping parameters with more "
                           "levels left after a refresh");
  }
  std::vector<std::size_t> at;
  std::size_t l = top;
  for (std::size_t i = 0; i < n; ++i) {
    if (refresh[i][l]) {
      at.push_back(i);
      l = to_level;
    }
    l -= levels[i];
  }
  return at;
}

void Program::add_tile_linear(const std::string& name, std::size_t out, std::size_t in,
                              std::span<const double> w, std::span<const double> b) {
  TileLinear l;
  l.name = name;
  l.in_features = in;
  l.out_features = out;
  const TileLayerPlan plan = tile_layer_plan(tile_, tile_linear_count(layers_));
  l.sum = plan.sum;
  l.rebuild_input = plan.rebuild_input;
  const bool outer = l.sum == SumDim::kOuter;
  const std::size_t t_in = plan.tile_cols;
  const std::size_t t_out = plan.tile_rows;
  l.in_tiles = ceil_div(in, t_in);
  l.out_tiles = ceil_div(out, t_out);
  const std::size_t to = tile_.outer, ti = tile_.inner, tb = tile_.batch;
  const std::size_t slots = tile_.slots();

  for (std::size_t ot = 0; ot < l.out_tiles; ++ot) {
    for (std::size_t it = 0; it < l.in_tiles; ++it) {
      bool nonzero = false;
      for (std::size_t r = ot * t_out; r < std::min(out, (ot + 1) * t_out) && !nonzero; ++r) {
        for (std::size_t c = it * t_in; c < std::min(in, (it + 1) * t_in); ++c) {
          if (w[r * in + c] != 0.0) {
            nonzero = true;
            break;
          }
        }
      }
      if (!nonzero) continue;
      TileUnit u;
      u.out_tile = static_cast<std::uint32_t>(ot);
      u.in_tile = static_cast<std::uint32_t>(it);
      u.values.assign(slots, 0.0);
      for (std::size_t i = 0; i < to; ++i) {
        for (std::size_t j = 0; j < ti; ++j) {
          // Output row along the output dimension, input column along the summed one.
          const std::size_t r = ot * t_out + (outer ? j : i);
          const std::size_t c = it * t_in + (outer ? i : j);
          const double v = (r < out && c < in) ? w[r * in + c] : 0.0;
          if (v == 0.0) continue;
          double* dst = u.values.data() + (i * ti + j) * tb;
          std::fill(dst, dst + tb, v);
        }
      }
      l.units.push_back(std::move(u));
    }
  }
  l.bias_nonzero.assign(l.out_tiles, 0);
  if (!b.empty()) {
    l.bias.assign(l.out_tiles, {});
    for (std::size_t ot = 0; ot < l.out_tiles; ++ot) {
      std::vector<double>& v = l.bias[ot];
      v.assign(slots, 0.0);
      for (std::size_t i = 0; i < to; ++i) {
        for (std::size_t j = 0; j < ti; ++j) {
          const std::size_t r = ot * t_out + (outer ? j : i);
          const double x = r < out ? b[r] : 0.0;
          if (x != 0.0) l.bias_nonzero[ot] = 1;
          double* dst = v.data() + (i * ti + j) * tb;
          std::fill(dst, dst + tb, x);
        }
      }
    }
  }
  l.weight.assign(w.begin(), w.end());
  l.bias_source.assign(b.begin(), b.end());
  layers_.push_back(std::move(l));
}

void Program::add_diagonal_linear(const std::string& name, std::size_t out, std::size_t in,
                                  std::span<const double> w, std::span<const double> b) {
  const std::size_t slots = this->slots();
  DiagonalLinear l;
  l.name = name;
  l.in_features = in;
  l.out_features = out;
  l.n_in = std::bit_ceil(in);
  l.n_out = std::bit_ceil(out);
  if (std::max(l.n_in, l.n_out) > slots) {
    throw CompileError("layer '" + name + "' (" + std::to_string(in) + " -> " +
                       std::to_string(out) + ", padded to " + std::to_string(l.n_in) + " -> " +
                       std::to_string(l.n_out) + ") does not fit " + std::to_string(slots) +
                       " slots; use a larger ring degree or the tile layout");
  }
  const std::size_t k_count = std::min(l.n_in, l.n_out);
  // Which generalized diagonals have a non-zero entry.
  std::vector<std::size_t> present;
  const std::size_t span_len = std::max(l.n_in, l.n_out);
  for (std::size_t k = 0; k < k_count; ++k) {
    for (std::size_t r = 0; r < span_len; ++r) {
      const std::size_t row = r % l.n_out, col = (r + k) % l.n_in;
      if (row < out && col < in && w[row * in + col] != 0.0) {
        present.push_back(k);
        break;
      }
    }
  }
  // Baby-step size for this set of diagonals: fewest rotations (ties: the smaller n1).
  std::size_t best = 1, best_cost = std::numeric_limits<std::size_t>::max();
  for (std::size_t n1 = 1; n1 <= std::max<std::size_t>(k_count, 1); ++n1) {
    std::set<std::size_t> baby, giant;
    for (std::size_t k : present) {
      if (k % n1) baby.insert(k % n1);
      if (k / n1) giant.insert(k / n1);
    }
    const std::size_t cost = baby.size() + giant.size();
    if (cost < best_cost) {
      best_cost = cost;
      best = n1;
    }
  }
  l.baby = best;
  for (std::size_t k : present) {
    DiagonalUnit u;
    u.index = static_cast<std::uint32_t>(k);
    u.values.assign(slots, 0.0);
    const std::size_t shift = (k / best) * best;  // rotate right by the giant step
    for (std::size_t r = 0; r < slots; ++r) {
      const std::size_t row = r % l.n_out, col = (r + k) % l.n_in;
      const double v = (row < out && col < in) ? w[row * in + col] : 0.0;
      u.values[(r + shift) % slots] = v;
    }
    l.units.push_back(std::move(u));
  }
  if (!b.empty() && std::any_of(b.begin(), b.end(), [](double x) { return x != 0.0; })) {
    l.bias.assign(slots, 0.0);
    for (std::size_t r = 0; r < slots; ++r) {
      const std::size_t row = r % l.n_out;
      l.bias[r] = row < out ? b[row] : 0.0;
    }
  }
  l.weight.assign(w.begin(), w.end());
  l.bias_source.assign(b.begin(), b.end());
  layers_.push_back(std::move(l));
}

std::size_t Program::samples_per_group() const {
  return layout_ == Layout::kTile ? tile_.batch : 1;
}

std::size_t Program::input_ciphertexts() const {
  if (layout_ == Layout::kMap) return map_inputs_;
  return layout_ == Layout::kTile ? ceil_div(in_features_, tile_.outer) : 1;
}

std::size_t Program::output_ciphertexts() const {
  if (layout_ == Layout::kDiagonal) return 1;
  if (layout_ == Layout::kMap) return current_ciphertexts();
  const TileLinear* last = last_tile_linear(layers_);
  return last ? last->out_tiles : input_ciphertexts();
}

std::size_t Program::levels() const {
  std::size_t total = 0;
  for (const Layer& l : layers_) {
    if (std::holds_alternative<Refresh>(l)) break;
    total += built_layer_levels(l);
  }
  return total;
}

std::size_t Program::depth() const {
  std::size_t total = 0;
  for (const Layer& l : layers_) total += built_layer_levels(l);
  return total;
}

std::size_t Program::input_level() const {
  if (input_level_) return *input_level_;
  for (const Layer& l : layers_) {
    if (const auto* r = std::get_if<Refresh>(&l)) return r->to_level;
  }
  return params_.chain_bits.size() - 1;
}

std::optional<ckks::BootstrapConfig> Program::refresh_config() const {
  std::optional<ckks::BootstrapConfig> out;
  for (const Layer& l : layers_) {
    const auto* r = std::get_if<Refresh>(&l);
    if (!r) continue;
    if (out && !(*out == r->config)) {
      throw CompileError("the program's refreshes use different bootstrapping configurations; "
                         "place them with one (Program::place_refreshes)");
    }
    out = r->config;
  }
  return out;
}

std::size_t Program::refreshes() const {
  return static_cast<std::size_t>(std::count_if(layers_.begin(), layers_.end(), [](const Layer& l) {
    return std::holds_alternative<Refresh>(l);
  }));
}

std::vector<std::size_t> Program::level_schedule(std::size_t input_level) const {
  std::vector<std::size_t> at{input_level};
  std::size_t level = input_level;
  for (const Layer& layer : layers_) {
    if (const auto* r = std::get_if<Refresh>(&layer)) {
      if (r->to_level > params_.chain_bits.size() - 1) {
        throw ckks::LevelError(r->name + " leaves level " + std::to_string(r->to_level) +
                               ", above the parameters' top level");
      }
      level = r->to_level;
    } else {
      const std::size_t need = built_layer_levels(layer);
      if (need > level && refreshes() == 0) {
        throw ckks::LevelError("the program needs " + std::to_string(depth()) +
                               " levels but the inputs start at level " +
                               std::to_string(input_level) + " (chain of " +
                               std::to_string(params_.chain_bits.size()) +
                               " primes); add primes, choose a larger ring degree, or place "
                               "refreshes (Program::place_refreshes)");
      }
      if (need > level) {
        const std::string name = std::visit([](const auto& l) { return l.name; }, layer);
        throw ckks::LevelError("layer '" + name + "' needs " + std::to_string(need) +
                               " levels but only " + std::to_string(level) +
                               " are left there; place the refreshes again "
                               "(Program::place_refreshes)");
      }
      level -= need;
    }
    at.push_back(level);
  }
  return at;
}

std::vector<std::size_t> Program::live_counts() const {
  std::vector<std::size_t> out;
  std::vector<std::vector<std::uint8_t>> live = live_per_layer();
  live.pop_back();  // the output's
  for (const auto& l : live) {
    out.push_back(static_cast<std::size_t>(std::count(l.begin(), l.end(), 1)));
  }
  return out;
}

std::vector<long> Program::rotation_steps() const {
  std::set<long> steps;
  const auto add_halvings = [&](std::size_t extent, std::size_t stride, long sign) {
    for (std::size_t m = 0; m < log2_exact(extent); ++m) {
      steps.insert(sign * static_cast<long>(stride << m));
    }
  };
  const std::vector<std::vector<std::uint8_t>> live = live_per_layer();
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (const auto* t = std::get_if<TileLinear>(&layers_[i])) {
      const auto& live_in = live[i];
      if (t->rebuild_input && std::count(live_in.begin(), live_in.end(), 1) > 0) {
        add_halvings(tile_.inner, tile_.batch, -1);
      }
      bool any_out = false;
      for (const TileUnit& u : t->units) any_out = any_out || live_in[u.in_tile];
      if (any_out) {
        if (t->sum == SumDim::kOuter) {
          add_halvings(tile_.outer, tile_.inner * tile_.batch, 1);
        } else {
          add_halvings(tile_.inner, tile_.batch, 1);
        }
      }
    } else if (const auto* m = std::get_if<MapLinear>(&layers_[i])) {
      const auto& live_in = live[i];
      for (const MapTerm& term : m->terms) {
        if (!live_in[term.in]) continue;
        if (term.baby) steps.insert(static_cast<long>(term.baby));
        if (term.giant) steps.insert(static_cast<long>(term.giant));
      }
    } else if (const auto* r = std::get_if<RotateSum>(&layers_[i])) {
      const auto& live_in = live[i];
      if (std::count(live_in.begin(), live_in.end(), 1) > 0) {
        for (long s : window_sum_steps(*r)) steps.insert(s);
      }
    } else if (const auto* rf = std::get_if<Refresh>(&layers_[i])) {
      const auto& live_in = live[i];
      if (std::count(live_in.begin(), live_in.end(), 1) > 0) {
        steps.insert(rf->rotation_steps.begin(), rf->rotation_steps.end());
      }
    } else if (const auto* d = std::get_if<DiagonalLinear>(&layers_[i])) {
      for (const DiagonalUnit& u : d->units) {
        if (u.index % d->baby) steps.insert(static_cast<long>(u.index % d->baby));
        if (u.index / d->baby) steps.insert(static_cast<long>((u.index / d->baby) * d->baby));
      }
      if (!d->units.empty() && d->n_out < d->n_in) add_halvings(d->n_in / d->n_out, d->n_out, 1);
    }
  }
  return {steps.begin(), steps.end()};
}

std::vector<std::uint8_t> Program::live_inputs(std::size_t layer) const {
  if (layer >= layers_.size()) throw CompileError("layer index out of range");
  return live_per_layer()[layer];
}

bool Program::defers_relinearization(std::size_t layer) const {
  if (layer + 1 >= layers_.size() || !std::holds_alternative<Square>(layers_[layer])) return false;
  const auto* r = std::get_if<RotateSum>(&layers_[layer + 1]);
  return r != nullptr && r->fold > 1;
}

std::vector<std::vector<std::uint8_t>> Program::live_per_layer() const {
  // One walk forward. Map and tile layouts: an output ciphertext is live when a term or unit
  // reads a live input, or its bias is non-zero (then the executor encrypts the constant); a
  // folded window sum's output is live when any ciphertext folded into it is. Diagonal
  // layout: one ciphertext, zero after a layer with no diagonal and no bias.
  std::vector<std::vector<std::uint8_t>> out;
  out.reserve(layers_.size() + 1);
  const std::size_t inputs = layout_ == Layout::kDiagonal ? 1
                             : layout_ == Layout::kMap    ? map_inputs_
                                                          : input_ciphertexts();
  std::vector<std::uint8_t> live(inputs, 1);
  for (const Layer& layer : layers_) {
    out.push_back(live);
    if (const auto* d = std::get_if<DiagonalLinear>(&layer)) {
      live[0] = static_cast<std::uint8_t>((live[0] && !d->units.empty()) || !d->bias.empty());
    } else if (const auto* r = std::get_if<RotateSum>(&layer); r && r->fold > 1) {
      const std::size_t n_out = live.size() / r->fold;
      std::vector<std::uint8_t> next(n_out, 0);
      for (std::size_t c = 0; c < live.size(); ++c) next[c % n_out] |= live[c];
      live = std::move(next);
    } else if (const auto* m = std::get_if<MapLinear>(&layer)) {
      std::vector<std::uint8_t> next(m->out_ciphertexts, 0);
      for (const MapTerm& t : m->terms) {
        if (live[t.in]) next[t.out] = 1;
      }
      for (std::size_t o = 0; o < m->bias.size(); ++o) {
        if (!m->bias[o].empty()) next[o] = 1;
      }
      live = std::move(next);
    } else if (const auto* t = std::get_if<TileLinear>(&layer)) {
      std::vector<std::uint8_t> next(t->out_tiles, 0);
      for (const TileUnit& u : t->units) {
        if (live[u.in_tile]) next[u.out_tile] = 1;
      }
      for (std::size_t ot = 0; ot < t->out_tiles; ++ot) {
        if (t->bias_nonzero[ot]) next[ot] = 1;
      }
      live = std::move(next);
    }
  }
  out.push_back(std::move(live));
  return out;
}

std::vector<std::vector<double>> Program::pack_inputs(std::span<const double> samples,
                                                      std::size_t count) const {
  if (samples.size() != count * in_features_) {
    throw CompileError("inputs hold " + std::to_string(samples.size()) + " values, expected " +
                       std::to_string(count) + " samples x " + std::to_string(in_features_) +
                       " features");
  }
  check_values(samples, "the inputs");
  const std::size_t slots = this->slots();
  std::vector<std::vector<double>> out;
  if (layout_ == Layout::kMap) {  // the samples already are slot vectors, ciphertext by ciphertext
    for (std::size_t c = 0; c < count * map_inputs_; ++c) {
      out.emplace_back(samples.begin() + c * slots, samples.begin() + (c + 1) * slots);
    }
    return out;
  }
  if (layout_ == Layout::kDiagonal) {
    const std::size_t period = std::bit_ceil(in_features_);
    for (std::size_t s = 0; s < count; ++s) {
      std::vector<double> v(slots, 0.0);
      for (std::size_t r = 0; r < slots; ++r) {
        const std::size_t f = r % period;
        if (f < in_features_) v[r] = samples[s * in_features_ + f];
      }
      out.push_back(std::move(v));
    }
    return out;
  }
  const std::size_t to = tile_.outer, ti = tile_.inner, tb = tile_.batch;
  const std::size_t groups = ceil_div(count, tb);
  for (std::size_t g = 0; g < groups; ++g) {
    for (std::size_t it = 0; it < input_ciphertexts(); ++it) {
      std::vector<double> v(slots, 0.0);
      for (std::size_t i = 0; i < to; ++i) {
        const std::size_t f = it * to + i;
        if (f >= in_features_) break;
        for (std::size_t k = 0; k < tb && g * tb + k < count; ++k) {
          const double x = samples[(g * tb + k) * in_features_ + f];
          for (std::size_t j = 0; j < ti; ++j) v[(i * ti + j) * tb + k] = x;
        }
      }
      out.push_back(std::move(v));
    }
  }
  return out;
}

std::vector<double> Program::unpack_outputs(const std::vector<std::vector<double>>& slots,
                                            std::size_t count) const {
  const std::size_t nout = out_features();
  if (layout_ == Layout::kMap && nout == 0) {
    throw CompileError("the program has no output map; call set_outputs after the last layer");
  }
  const std::size_t per_group = output_ciphertexts();
  const std::size_t groups = ceil_div(count, samples_per_group());
  if (slots.size() != groups * per_group) {
    throw CompileError("got " + std::to_string(slots.size()) + " output slot vectors, expected " +
                       std::to_string(groups * per_group) + " for " + std::to_string(count) +
                       " samples");
  }
  for (const auto& v : slots) {
    if (v.size() != this->slots()) {
      throw CompileError("an output slot vector has " + std::to_string(v.size()) +
                         " values, expected " + std::to_string(this->slots()));
    }
  }
  std::vector<double> y(count * nout, 0.0);
  if (layout_ == Layout::kMap) {
    for (std::size_t s = 0; s < count; ++s) {
      for (std::size_t f = 0; f < nout; ++f) {
        y[s * nout + f] = slots[s * per_group + out_ct_[f]][out_slot_[f]];
      }
    }
    return y;
  }
  if (layout_ == Layout::kDiagonal) {
    for (std::size_t s = 0; s < count; ++s) {
      for (std::size_t o = 0; o < nout; ++o) y[s * nout + o] = slots[s][o];
    }
    return y;
  }
  const std::size_t ti = tile_.inner, tb = tile_.batch;
  const TileLinear* last = last_tile_linear(layers_);
  const bool on_outer = last == nullptr || outputs_on_outer(*last);
  const std::size_t t_out = on_outer ? tile_.outer : tile_.inner;
  for (std::size_t g = 0; g < groups; ++g) {
    for (std::size_t ot = 0; ot < per_group; ++ot) {
      const std::vector<double>& v = slots[g * per_group + ot];
      for (std::size_t e = 0; e < t_out; ++e) {
        const std::size_t o = ot * t_out + e;
        if (o >= nout) break;
        // Outputs along i sit at j = 0; outputs along j are replicated over i (read i = 0).
        const std::size_t base = on_outer ? e * ti * tb : e * tb;
        for (std::size_t k = 0; k < tb && g * tb + k < count; ++k) {
          y[(g * tb + k) * nout + o] = v[base + k];
        }
      }
    }
  }
  return y;
}

// ---- Files: the layout and every layer's dense source; loading recompiles them, so a loaded
// program satisfies every invariant the builder enforces. ----

namespace {

constexpr std::uint64_t kMaxLayers = 4096;
constexpr std::uint64_t kMaxName = 256;
constexpr std::uint64_t kMaxValues = std::uint64_t{1} << 28;
// Slot values a loaded program may hold in memory. Every kept unit and every bias vector is a
// full slot vector, so 8 bytes of weight in a file can become up to `slots` doubles (a tile
// [1, 1, slots]); without this bound a 1 MB file could ask for tens of gigabytes.
constexpr std::uint64_t kMaxExpandedValues = kMaxProgramSlotValues;

void write_string(ckks::detail::Writer& w, const std::string& s) {
  w.u64(s.size());
  w.bytes(s.data(), s.size());
}

std::string read_string(ckks::detail::Reader& r) {
  const std::uint64_t n = r.u64();
  if (n > kMaxName) throw ckks::SerializationError("corrupted program: layer name too long");
  std::string s(n, '\0');
  r.bytes(s.data(), n);
  return s;
}

std::vector<double> read_values(ckks::detail::Reader& r, std::uint64_t expected, const char* what) {
  const std::uint64_t n = r.u64();
  if (n > kMaxValues || (n != expected && !(n == 0 && std::string(what) == "bias"))) {
    throw ckks::SerializationError(std::string("corrupted program: ") + what + " holds " +
                                   std::to_string(n) + " values, expected " +
                                   std::to_string(expected));
  }
  if (r.remaining() < n * 8) throw ckks::SerializationError("truncated program data");
  std::vector<double> v(n);
  if (n != 0) r.f64s(v.data(), n);  // an empty vector's data() may be null: no memcpy then
  return v;
}

std::uint64_t read_bounded(ckks::detail::Reader& r, std::uint64_t lo, std::uint64_t hi, const char* what) {
  const std::uint64_t v = r.u64();
  if (v < lo || v > hi) {
    throw ckks::SerializationError(std::string("corrupted program: ") + what + " = " +
                                   std::to_string(v) + " is outside [" + std::to_string(lo) +
                                   ", " + std::to_string(hi) + "]");
  }
  return v;
}

// Refuses a file whose layers up to `name` would hold more than the bound in memory.
void check_expanded(std::uint64_t expanded, const std::string& name) {
  if (expanded > kMaxExpandedValues) {
    throw ckks::SerializationError(
        "program too large: its layers up to '" + name + "' would hold " +
        std::to_string(expanded) + " values in memory, more than the " +
        std::to_string(kMaxExpandedValues) + " a program file may expand to");
  }
}

// A map layer's bias: `bias_period` values per output ciphertext (period 0: no bias). Each
// biased output is a whole slot vector once encoded, which `expanded` counts.
std::vector<double> read_map_bias(ckks::detail::Reader& r, std::uint64_t outs, std::size_t slots,
                                  const std::string& name, std::uint64_t& expanded,
                                  std::size_t& bias_period) {
  bias_period = read_bounded(r, 0, slots, "bias period");
  if (r.remaining() / 8 < outs * bias_period) {
    throw ckks::SerializationError("truncated program data");
  }
  std::vector<double> bias(outs * bias_period);
  if (!bias.empty()) r.f64s(bias.data(), bias.size());
  expanded += (bias_period ? outs : 0) * slots;
  check_expanded(expanded, name);
  return bias;
}

}  // namespace

Bytes Program::save() const {
  ckks::detail::Writer w;
  const Bytes params = ckks::Serializer::save(params_);
  w.u64(params.size());
  w.bytes(params.data(), params.size());
  w.u16(static_cast<std::uint16_t>(layout_));
  w.u64(tile_.outer);
  w.u64(tile_.inner);
  w.u64(tile_.batch);
  w.u64(in_features_);
  w.u64(layers_.size());
  for (const Layer& layer : layers_) {
    if (const auto* sq = std::get_if<Square>(&layer)) {
      w.u16(3);
      write_string(w, sq->name);
      continue;
    }
    if (const auto* m = std::get_if<MapLinear>(&layer)) {
      // Kind 6: sparse terms (kind 4, dense terms of one period, is still read).
      w.u16(6);
      write_string(w, m->name);
      w.u64(m->out_ciphertexts);
      w.u64(m->terms.size());
      w.u64(m->terms.empty() ? 0 : m->terms.front().period);
      for (const MapTerm& t : m->terms) {
        w.u64(t.out);
        w.u64(t.in);
        w.u64(t.shift);
        w.u64(t.baby);  // the split, handed back as a hint when loading
        w.u64(t.at.size());
        for (std::uint32_t a : t.at) w.u64(a);
        w.f64s(t.values);
      }
      std::size_t bias_period = 0;
      for (const auto& b : m->bias) bias_period = std::max(bias_period, b.size());
      w.u64(bias_period);
      if (bias_period) {
        for (std::size_t o = 0; o < m->out_ciphertexts; ++o) {
          const bool has = o < m->bias.size() && !m->bias[o].empty();
          w.f64s(has ? m->bias[o] : std::vector<double>(bias_period, 0.0));
        }
      }
      continue;
    }
    if (const auto* rf = std::get_if<Refresh>(&layer)) {
      // Kind 10 (kind 9 and the ephemeral weight; kind 9 is kind 8 and the message ratio,
      // arcsine and lift): the bootstrapping configuration; the level and the steps follow
      // from it.
      w.u16(10);
      write_string(w, rf->name);
      w.f64s(std::vector<double>{rf->config.k_bound});
      w.u64(rf->config.chebyshev_degree);
      w.u64(rf->config.double_angles);
      w.u64(rf->config.cts_levels);
      w.u64(rf->config.stc_levels);
      w.u64(rf->config.slots);
      w.u64(rf->config.pack_halves ? 1 : 0);
      w.f64s(std::vector<double>{rf->config.message_ratio_bits, rf->config.cts_lift});
      w.u64(rf->config.arcsine ? 1 : 0);
      w.u64(rf->config.ephemeral_weight);
      continue;
    }
    if (const auto* rs = std::get_if<RotateSum>(&layer)) {
      // Kind 7: a window sum that folds sub-maps first (kind 5, fold 1, keeps its format).
      w.u16(rs->fold == 1 ? 5 : 7);
      write_string(w, rs->name);
      if (rs->fold != 1) w.u64(rs->fold);
      w.u64(rs->windows.size());
      for (const auto& [count, stride] : rs->windows) {
        w.u64(count);
        w.u64(stride);
      }
      continue;
    }
    const bool tile = std::holds_alternative<TileLinear>(layer);
    const auto& name = tile ? std::get<TileLinear>(layer).name : std::get<DiagonalLinear>(layer).name;
    const auto& weight =
        tile ? std::get<TileLinear>(layer).weight : std::get<DiagonalLinear>(layer).weight;
    const auto& bias = tile ? std::get<TileLinear>(layer).bias_source
                            : std::get<DiagonalLinear>(layer).bias_source;
    const std::size_t out =
        tile ? std::get<TileLinear>(layer).out_features : std::get<DiagonalLinear>(layer).out_features;
    w.u16(1);
    write_string(w, name);
    w.u64(out);
    w.u64(weight.size());
    w.f64s(weight);
    w.u64(bias.size());
    w.f64s(bias);
  }
  if (layout_ == Layout::kMap) {
    w.u64(out_ct_.size());
    for (std::size_t f = 0; f < out_ct_.size(); ++f) {
      w.u64(out_ct_[f]);
      w.u64(out_slot_[f]);
    }
  }
  if (input_level_) w.u64(*input_level_);  // optional trailer: files without it still load
  return ckks::Serializer::seal_envelope(ckks::ObjectKind::kProgram, ckks::Fingerprint{},
                                         w.buffer());
}

Program Program::load(std::span<const std::uint8_t> bytes) {
  const auto payload =
      ckks::Serializer::open_envelope(bytes, ckks::ObjectKind::kProgram, nullptr);
  ckks::detail::Reader r(payload);
  const std::uint64_t params_len = read_bounded(r, 1, 1 << 16, "parameter block length");
  if (r.remaining() < params_len) throw ckks::SerializationError("truncated program data");
  Bytes params_bytes(params_len);
  r.bytes(params_bytes.data(), params_len);
  const ckks::Parameters params = ckks::Serializer::load_parameters(params_bytes);
  const std::uint16_t layout = r.u16();
  const std::size_t slots = params.poly_degree / 2;
  TileShape3 shape;
  shape.outer = read_bounded(r, 0, slots, "tile outer");
  shape.inner = read_bounded(r, 0, slots, "tile inner");
  shape.batch = read_bounded(r, 0, slots, "tile batch");
  const std::uint64_t in_features = read_bounded(r, 1, kMaxValues, "input features");
  try {
    Program p;
    if (layout == static_cast<std::uint16_t>(Layout::kTile)) {
      p = Program::tile(params, shape, in_features);
    } else if (layout == static_cast<std::uint16_t>(Layout::kDiagonal)) {
      p = Program::diagonal(params, in_features);
    } else if (layout == static_cast<std::uint16_t>(Layout::kMap)) {
      if (in_features % slots != 0) {
        throw ckks::SerializationError("corrupted program: a map program's inputs are whole "
                                       "ciphertexts");
      }
      p = Program::map(params, in_features / slots);
    } else {
      throw ckks::SerializationError("corrupted program: unknown layout " +
                                     std::to_string(layout));
    }
    const std::uint64_t layers = read_bounded(r, 0, kMaxLayers, "layer count");
    std::uint64_t expanded = 0;  // slot values held by the layers built so far (bound above)
    for (std::uint64_t i = 0; i < layers; ++i) {
      const std::uint16_t kind = r.u16();
      const std::string name = read_string(r);
      if (kind == 3) {
        p.add_square(name);
        continue;
      }
      if (kind == 8 || kind == 9 || kind == 10) {
        ckks::BootstrapConfig config;
        if (r.remaining() < 8) throw ckks::SerializationError("truncated program data");
        r.f64s(&config.k_bound, 1);
        if (!std::isfinite(config.k_bound) || config.k_bound > 1e6) {
          throw ckks::SerializationError("corrupted program: refresh bound K is not a finite "
                                         "number up to 1e6");
        }
        config.chebyshev_degree = read_bounded(r, 2, 1024, "refresh Chebyshev degree");
        config.double_angles = read_bounded(r, 0, 8, "refresh double angles");
        config.cts_levels = read_bounded(r, 1, 64, "refresh CoeffToSlot levels");
        config.stc_levels = read_bounded(r, 1, 64, "refresh SlotToCoeff levels");
        config.slots = read_bounded(r, 0, slots, "refresh slots");
        config.pack_halves = read_bounded(r, 0, 1, "refresh packing") == 1;
        // Kind 8 predates the message ratio and the arcsine: its refreshes ran without them.
        config.message_ratio_bits = 0.0;
        config.arcsine = false;
        config.cts_lift = 0.0;
        if (kind >= 9) {
          if (r.remaining() < 16) throw ckks::SerializationError("truncated program data");
          double values[2];
          r.f64s(values, 2);
          config.message_ratio_bits = values[0];
          config.cts_lift = values[1];
          if (!(config.message_ratio_bits >= 0.0 && config.message_ratio_bits <= 64.0)) {
            throw ckks::SerializationError("corrupted program: refresh message ratio is not a "
                                           "number from 0 to 64 bits");
          }
          if (!(config.cts_lift >= 0.0 && config.cts_lift <= 1.0)) {
            throw ckks::SerializationError("corrupted program: refresh CoeffToSlot lift is not "
                                           "a number from 0 to 1");
          }
          config.arcsine = read_bounded(r, 0, 1, "refresh arcsine") == 1;
        }
        if (kind == 10) {
          config.ephemeral_weight = read_bounded(r, 0, 2 * slots, "refresh ephemeral weight");
        }
        p.add_refresh(name, config);
        continue;
      }
      if (kind == 6 && p.layout() == Layout::kMap) {
        const std::uint64_t outs = read_bounded(r, 1, kMaxMapCiphertexts, "output ciphertexts");
        // Every term takes at least 6 words of the file: nothing is allocated before the
        // file is known to hold it.
        const std::uint64_t terms = read_bounded(r, 0, r.remaining() / 48, "term count");
        const std::uint64_t period = read_bounded(r, terms ? 1 : 0, slots, "term period");
        std::vector<std::uint32_t> out_idx(terms), in_idx(terms), at;
        std::vector<std::size_t> shift(terms), baby(terms);
        std::vector<std::uint64_t> offsets{0};
        std::vector<double> values;
        for (std::uint64_t t = 0; t < terms; ++t) {
          out_idx[t] = static_cast<std::uint32_t>(read_bounded(r, 0, outs - 1, "term output"));
          in_idx[t] = static_cast<std::uint32_t>(
              read_bounded(r, 0, kMaxMapCiphertexts, "term input"));
          shift[t] = read_bounded(r, 0, slots - 1, "term shift");
          baby[t] = read_bounded(r, 0, slots - 1, "term baby step");
          const std::uint64_t nonzero = read_bounded(r, 1, period, "term entries");
          if (r.remaining() / 16 < nonzero) throw ckks::SerializationError("truncated program data");
          expanded += nonzero;
          check_expanded(expanded, name);
          for (std::uint64_t k = 0; k < nonzero; ++k) {
            at.push_back(static_cast<std::uint32_t>(read_bounded(r, 0, period - 1, "entry slot")));
          }
          values.resize(values.size() + nonzero);
          r.f64s(values.data() + offsets.back(), nonzero);
          offsets.push_back(values.size());
        }
        std::size_t bias_period = 0;
        const std::vector<double> bias = read_map_bias(r, outs, slots, name, expanded, bias_period);
        p.add_map_linear_sparse(name, outs, out_idx, in_idx, shift, offsets, at, values, period,
                                bias, bias_period, baby);
        continue;
      }
      if (kind == 4 && p.layout() == Layout::kMap) {
        const std::uint64_t outs = read_bounded(r, 1, kMaxMapCiphertexts, "output ciphertexts");
        const std::uint64_t terms = read_bounded(r, 0, kMaxExpandedValues / slots, "term count");
        const std::uint64_t period = read_bounded(r, terms ? 1 : 0, slots, "term period");
        // Nothing is allocated before the file is known to hold it (4 words + values a term).
        if (r.remaining() / (32 + period * 8) < terms) {
          throw ckks::SerializationError("truncated program data");
        }
        expanded += terms * slots;
        check_expanded(expanded, name);
        std::vector<std::uint32_t> out_idx(terms), in_idx(terms);
        std::vector<std::size_t> shift(terms), baby(terms);
        std::vector<double> values;
        values.reserve(terms * period);
        for (std::uint64_t t = 0; t < terms; ++t) {
          out_idx[t] = static_cast<std::uint32_t>(read_bounded(r, 0, outs - 1, "term output"));
          in_idx[t] = static_cast<std::uint32_t>(
              read_bounded(r, 0, kMaxMapCiphertexts, "term input"));
          shift[t] = read_bounded(r, 0, slots - 1, "term shift");
          baby[t] = read_bounded(r, 0, slots - 1, "term baby step");
          if (r.remaining() < period * 8) throw ckks::SerializationError("truncated program data");
          values.resize(values.size() + period);
          if (period) r.f64s(values.data() + t * period, period);
        }
        std::size_t bias_period = 0;
        const std::vector<double> bias = read_map_bias(r, outs, slots, name, expanded, bias_period);
        p.add_map_linear(name, outs, out_idx, in_idx, shift, values, period, bias, bias_period,
                         baby);
        continue;
      }
      if ((kind == 5 || kind == 7) && p.layout() == Layout::kMap) {
        const std::size_t fold =
            kind == 7 ? read_bounded(r, 2, kMaxMapCiphertexts, "fold") : std::size_t{1};
        const std::uint64_t n = read_bounded(r, kind == 7 ? 0 : 1, 64, "window count");
        std::vector<std::pair<std::size_t, std::size_t>> windows;
        for (std::uint64_t k = 0; k < n; ++k) {
          const std::size_t count = read_bounded(r, 1, slots, "window size");
          const std::size_t stride = read_bounded(r, 1, slots, "window stride");
          windows.emplace_back(count, stride);
        }
        p.add_rotate_sum(name, windows, fold);
        continue;
      }
      if (kind != 1) {
        throw ckks::SerializationError("corrupted program: unknown layer kind " +
                                       std::to_string(kind));
      }
      const std::size_t in = p.current_features();
      const std::uint64_t out = read_bounded(r, 1, kMaxValues / std::max<std::size_t>(in, 1),
                                             "output features");
      const std::vector<double> weight = read_values(r, out * in, "weight");
      const std::vector<double> bias = read_values(r, out, "bias");
      // An upper bound on the slot vectors the layer will hold, checked before it is built:
      // a unit needs a non-zero weight, and there are at most as many units as tiles
      // (diagonals), at most one bias vector per output tile (one in all, diagonal).
      const std::uint64_t nonzero = static_cast<std::uint64_t>(
          std::count_if(weight.begin(), weight.end(), [](double v) { return v != 0.0; }));
      std::uint64_t vectors = 0;
      if (p.layout() == Layout::kTile) {
        const std::uint64_t t = std::min(shape.outer, shape.inner);
        const std::uint64_t out_tiles = ceil_div(out, t);
        vectors = std::min<std::uint64_t>(ceil_div(in, t) * out_tiles, nonzero) +
                  (bias.empty() ? 0 : out_tiles);
      } else {
        const std::uint64_t k_count =
            std::min<std::uint64_t>(std::bit_ceil(in), std::bit_ceil(out));
        vectors = std::min(k_count, nonzero) + (bias.empty() ? 0 : 1);
      }
      expanded += vectors * slots;
      check_expanded(expanded, name);
      p.add_linear(name, out, in, weight, bias);
    }
    if (p.layout() == Layout::kMap) {
      const std::uint64_t n = read_bounded(r, 0, slots * kMaxMapCiphertexts, "output features");
      if (r.remaining() < n * 16) throw ckks::SerializationError("truncated program data");
      std::vector<std::uint32_t> ct(n);
      std::vector<std::size_t> slot(n);
      for (std::uint64_t f = 0; f < n; ++f) {
        ct[f] = static_cast<std::uint32_t>(read_bounded(r, 0, kMaxMapCiphertexts, "output ciphertext"));
        slot[f] = read_bounded(r, 0, slots - 1, "output slot");
      }
      if (n) p.set_outputs(ct, slot);
    }
    if (r.remaining() != 0) {
      p.input_level_ = read_bounded(r, 0, params.chain_bits.size() - 1, "input level");
      p.level_schedule(*p.input_level_);  // a file whose layers do not fit is refused here
    }
    r.expect_end();
    return p;
  } catch (const CompileError& e) {
    throw ckks::SerializationError(std::string("corrupted program: ") + e.what());
  } catch (const ckks::LevelError& e) {
    throw ckks::SerializationError(std::string("corrupted program: ") + e.what());
  } catch (const ckks::ParameterError& e) {
    throw ckks::SerializationError(std::string("corrupted program: ") + e.what());
  }
}

}  // namespace fheprune::runtime
