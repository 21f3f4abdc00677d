#include "fheprune/runtime/cost.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <vector>

namespace fheprune::runtime {

namespace {

std::size_t log2_floor(std::size_t v) { return v ? std::bit_width(v) - 1 : 0; }
std::size_t log2_ceil(std::size_t v) { return v > 1 ? std::bit_width(v - 1) : 0; }

// The baby-step giant-step counting bound: n_in inputs (one hoisted set of b babies each) and
// n_out outputs (one set of giants each) meeting in d shifts need b * g >= d, so at least
// min over b of n_in * (b - 1) + n_out * (ceil(d / b) - 1) rotations. For one ciphertext in and
// out this is the familiar 2 * sqrt(d) - 2 (rounded up to what integer sets allow).
std::size_t bsgs_bound(std::size_t n_in, std::size_t n_out, std::size_t d) {
  if (d <= 1 || n_in == 0 || n_out == 0) return 0;
  std::size_t best = std::numeric_limits<std::size_t>::max();
  for (std::size_t b = 1; b <= d; ++b) {
    best = std::min(best, n_in * (b - 1) + n_out * ((d + b - 1) / b - 1));
  }
  return best;
}

}  // namespace

// The map layout's rotation bound. Input i rotates by its babies B_i, output o by its giants
// G_o, and every shift of the pair (o, i) is b + g with b in B_i + {0}, g in G_o + {0}: at most
// (|B_i| + 1)(|G_o| + 1) sums, one of them 0 + 0, so with n(o, i) distinct non-zero shifts
// (|B_i| + 1)(|G_o| + 1) >= n(o, i) + 1 =: d(o, i). Pairs that share no input and no output
// constrain disjoint sets; so do the connected components of the pair graph, whose bounds
// therefore add up. Per component, the larger of two valid bounds:
// - a matching (pairs with no input or output in common, taken largest first): their
//   one-pair bounds add up;
// - when every input meets every output (a dense or grouped convolution), the input with the
//   fewest babies and the output with the fewest giants form a pair, so with the component's
//   smallest d: bsgs_bound(inputs, outputs, d_min). Pairs with even shift sets meet it.
double map_rotation_lower_bound(
    const std::map<std::pair<std::size_t, std::size_t>, std::size_t>& nonzero_shifts) {
  std::map<std::pair<std::size_t, std::size_t>, std::size_t> pairs;  // (out, in) -> d
  for (const auto& [key, n] : nonzero_shifts) pairs[key] = n + 1;
  // Components by union-find over inputs and outputs (outputs offset past the inputs).
  std::size_t n_in = 0, n_out = 0;
  for (const auto& [key, d] : pairs) {
    n_out = std::max(n_out, key.first + 1);
    n_in = std::max(n_in, key.second + 1);
  }
  std::vector<std::size_t> parent(n_in + n_out);
  for (std::size_t v = 0; v < parent.size(); ++v) parent[v] = v;
  const auto find = [&](std::size_t v) {
    while (parent[v] != v) v = parent[v] = parent[parent[v]];
    return v;
  };
  for (const auto& [key, d] : pairs) parent[find(n_in + key.first)] = find(key.second);
  struct Component {
    std::vector<std::pair<std::size_t, std::pair<std::size_t, std::size_t>>> pairs;  // (d, (o, i))
    std::set<std::size_t> ins, outs;
  };
  std::map<std::size_t, Component> components;
  for (const auto& [key, d] : pairs) {
    Component& c = components[find(key.second)];
    c.pairs.push_back({d, key});
    c.ins.insert(key.second);
    c.outs.insert(key.first);
  }
  double total = 0;
  for (auto& [root, c] : components) {
    std::sort(c.pairs.rbegin(), c.pairs.rend());
    std::set<std::size_t> used_in, used_out;
    std::size_t matching = 0;
    for (const auto& [d, key] : c.pairs) {
      if (used_out.count(key.first) || used_in.count(key.second)) continue;
      used_out.insert(key.first);
      used_in.insert(key.second);
      matching += bsgs_bound(1, 1, d);
    }
    std::size_t complete = 0;
    if (c.pairs.size() == c.ins.size() * c.outs.size()) {
      complete = bsgs_bound(c.ins.size(), c.outs.size(), c.pairs.back().first);
    }
    total += static_cast<double>(std::max(matching, complete));
  }
  return total;
}

OpCounts ops_total(const OpsByLevel& by_level) {
  OpCounts t;
  for (const auto& [op, levels] : by_level) {
    std::uint64_t n = 0;
    for (const auto& [level, count] : levels) n += count;
    if (op == "mul_plain") {
      t.mul_plain += n;
    } else if (op == "add" || op == "add_fused") {
      t.add += n;
    } else if (op == "add_plain") {
      t.add_plain += n;
    } else if (op == "rotate" || op == "rotate_hoisted") {
      t.rotate += n;
    } else if (op == "rescale") {
      t.rescale += n;
    } else if (op == "multiply") {
      t.multiply += n;
    } else if (op == "relinearize") {
      t.relinearize += n;
    } else if (op == "constant") {
      t.constant += n;
    } else if (op == "refresh") {
      t.refresh += n;
    } else {
      throw std::invalid_argument("ops_total: unknown operation '" + op + "'");
    }
  }
  return t;
}

std::string layer_name(const Layer& layer) {
  return std::visit([](const auto& l) { return l.name; }, layer);
}

std::vector<LayerCost> estimate_cost(const Program& program, std::size_t input_level) {
  std::vector<LayerCost> out;
  const std::size_t n = program.parameters().poly_degree;
  const TileShape3& s = program.tile_shape();
  const std::vector<std::size_t> schedule = program.level_schedule(input_level);
  const std::vector<std::vector<std::uint8_t>> live_by_layer = program.live_per_layer();
  for (std::size_t i = 0; i < program.layers().size(); ++i) {
    const Layer& layer = program.layers()[i];
    std::size_t level = schedule[i];  // the kernels below step it down as they consume levels
    LayerCost c;
    c.name = layer_name(layer);
    c.level = level;
    // Records `count` operations `op` on ciphertexts at level `lv` (where the executor runs
    // them; ops_by_level in cost.hpp).
    const auto at = [&c](const char* op, std::size_t lv, std::size_t count) {
      if (count > 0) c.ops_by_level[op][lv] += count;
    };
    const std::vector<std::uint8_t>& live_in = live_by_layer[i];
    if (const auto* t = std::get_if<TileLinear>(&layer)) {
      c.kind = "tile";
      std::size_t live = 0;
      for (auto v : live_in) live += v;
      c.rebuild = t->rebuild_input;
      if (t->rebuild_input) {
        // Mask (one plaintext, one level) then replicate along j.
        at("mul_plain", level, live);
        at("rescale", level, live);
        at("rotate", level - 1, live * log2_floor(s.inner));  // replicated after the rescale
        at("add", level - 1, live * log2_floor(s.inner));
        c.rotation_lower_bound += static_cast<double>(live * log2_floor(s.inner));
        c.plaintexts += 1;
        c.plaintext_bytes += (level + 1) * n * 8;
        --level;
      }
      const std::size_t extent = t->sum == SumDim::kOuter ? s.outer : s.inner;
      std::vector<std::size_t> per_out(t->out_tiles, 0);
      for (const TileUnit& u : t->units) per_out[u.out_tile] += live_in[u.in_tile];
      for (std::size_t ot = 0; ot < t->out_tiles; ++ot) {
        const std::size_t k = per_out[ot];
        if (k > 0) {
          // Fused products and rescale at `level`, the rotate-and-add and bias one below.
          at("mul_plain", level, k);
          at("add_fused", level, k - 1);
          at("rescale", level, 1);
          at("rotate", level - 1, log2_floor(extent));
          at("add", level - 1, log2_floor(extent));
          at("add_plain", level - 1, t->bias_nonzero[ot]);
          // Summing `extent` slots needs at least log2(extent) rotations.
          c.rotation_lower_bound += static_cast<double>(log2_floor(extent));
          c.mul_plain_lower_bound += k;
        } else if (t->bias_nonzero[ot]) {
          at("constant", level - 1, 1);  // the bias alone, at the layer's output level
        }
      }
      c.units = t->units.size();
      c.total_units = t->in_tiles * t->out_tiles;
      std::size_t bias_count = 0;
      for (auto b : t->bias_nonzero) bias_count += b;
      c.plaintexts += t->units.size() + bias_count;
      c.plaintext_bytes += t->units.size() * (level + 1) * n * 8 + bias_count * level * n * 8;
      --level;
    } else if (const auto* d = std::get_if<DiagonalLinear>(&layer)) {
      c.kind = "diagonal";
      c.units = d->units.size();
      c.total_units = std::min(d->n_in, d->n_out);
      const std::size_t nd = d->units.size();
      if (live_in[0] && nd > 0) {
        std::set<std::size_t> baby, giant;
        for (const DiagonalUnit& u : d->units) {
          if (u.index % d->baby) baby.insert(u.index % d->baby);
          giant.insert(u.index / d->baby);
        }
        const std::size_t giant_rot = giant.size() - giant.count(0);
        const std::size_t hybrid = d->n_out < d->n_in ? log2_floor(d->n_in / d->n_out) : 0;
        // Baby steps: one hoisted batch of the input at `level`; each giant block's fused
        // products and rescale there too; its giant rotation, the sum over blocks, the hybrid
        // fold and the bias one level below.
        at("rotate_hoisted", level, baby.size());
        at("mul_plain", level, nd);
        at("add_fused", level, nd - giant.size());
        at("rescale", level, giant.size());
        at("rotate", level - 1, giant_rot + hybrid);
        at("add", level - 1, giant.size() - 1 + hybrid);
        at("add_plain", level - 1, d->bias.empty() ? 0 : 1);
        c.rotation_lower_bound =
            std::max(0.0, 2.0 * std::sqrt(static_cast<double>(nd)) - 2.0) + static_cast<double>(hybrid);
        c.mul_plain_lower_bound = nd;
      } else if (!d->bias.empty()) {
        at("constant", level - 1, 1);
      }
      const std::size_t bias_count = d->bias.empty() ? 0 : 1;
      c.plaintexts = nd + bias_count;
      c.plaintext_bytes = nd * (level + 1) * n * 8 + bias_count * level * n * 8;
      --level;
    } else if (const auto* m = std::get_if<MapLinear>(&layer)) {
      c.kind = "map";
      std::vector<std::set<std::size_t>> babies(m->in_ciphertexts);
      std::map<std::pair<std::size_t, std::size_t>, std::size_t> groups;  // (out, giant) -> terms
      // (out, in) -> the pair's distinct non-zero shifts
      std::map<std::pair<std::size_t, std::size_t>, std::set<std::size_t>> shifts;
      std::size_t products = 0;
      for (const MapTerm& term : m->terms) {
        if (!live_in[term.in]) continue;
        ++products;
        if (term.baby) babies[term.in].insert(term.baby);
        ++groups[{term.out, term.giant}];
        auto& pair = shifts[{term.out, term.in}];
        if (term.shift) pair.insert(term.shift);
      }
      std::vector<std::size_t> per_out(m->out_ciphertexts, 0);
      for (const auto& [key, terms] : groups) {
        ++per_out[key.first];
        // A giant-step block: fused products and rescale at `level`, its rotation below.
        at("add_fused", level, terms - 1);
        at("rescale", level, 1);
        at("rotate", level - 1, key.second != 0);
      }
      at("mul_plain", level, products);
      for (const auto& b : babies) at("rotate_hoisted", level, b.size());  // a batch per input
      for (std::size_t o = 0; o < m->out_ciphertexts; ++o) {
        const bool biased = o < m->bias.size() && !m->bias[o].empty();
        if (per_out[o]) {
          at("add", level - 1, per_out[o] - 1);  // the blocks, rescaled, added up
          at("add_plain", level - 1, biased);
        } else if (biased) {
          at("constant", level - 1, 1);
        }
      }
      std::map<std::pair<std::size_t, std::size_t>, std::size_t> pairs;
      for (const auto& [key, set] : shifts) pairs[key] = set.size();
      c.rotation_lower_bound = map_rotation_lower_bound(pairs);
      c.mul_plain_lower_bound = products;
      c.units = m->terms.size();
      c.total_units = m->terms.size();
      std::size_t bias_count = 0;
      for (const auto& b : m->bias) bias_count += !b.empty();
      c.plaintexts = m->terms.size() + bias_count;
      c.plaintext_bytes = m->terms.size() * (level + 1) * n * 8 + bias_count * level * n * 8;
      --level;
    } else if (const auto* r = std::get_if<RotateSum>(&layer)) {
      c.kind = "window_sum";
      // Folding adds the live members of each group; the windows then run per live output.
      const std::size_t n_out = live_in.size() / r->fold;
      std::vector<std::size_t> members(n_out, 0);
      for (std::size_t k = 0; k < live_in.size(); ++k) members[k % n_out] += live_in[k];
      std::size_t live = 0;
      std::size_t folds = 0;
      for (std::size_t count : members) {
        live += count > 0;
        folds += count > 0 ? count - 1 : 0;
      }
      if (i > 0 && program.defers_relinearization(i - 1)) {
        // The squares before arrive unrescaled, one level up: the fold adds them there, then
        // each folded sum is relinearized and rescaled once; the windows run at `level`.
        c.level = level + 1;
        at("add", level + 1, folds);
        at("relinearize", level + 1, live);
        at("rescale", level + 1, live);
      } else {
        // No level: the fold, the rotations and their adds all run at the input level.
        at("add", level, folds);
      }
      const std::size_t per_ct = window_sum_steps(*r).size();
      std::size_t area = 1;
      for (const auto& w : r->windows) area *= w.first;
      at("rotate", level, live * per_ct);
      at("add", level, live * per_ct);
      // Summing `area` slots needs at least log2(area) rotations per ciphertext.
      c.rotation_lower_bound = static_cast<double>(live * log2_ceil(area));
    } else if (std::holds_alternative<Refresh>(layer)) {
      c.kind = "refresh";
      std::size_t live = 0;
      for (auto v : live_in) live += v;
      at("refresh", level, live);  // on the input (the output is at its to_level)
    } else {
      c.kind = "square";
      std::size_t live = 0;
      for (auto v : live_in) live += v;
      at("multiply", level, live);  // the product, then relinearize and rescale, at `level`
      if (!program.defers_relinearization(i)) {  // else the window sum after does both
        at("relinearize", level, live);
        at("rescale", level, live);
      }
      --level;
    }
    // Every count is recorded once, with its level; the totals follow from it.
    c.ops = ops_total(c.ops_by_level);
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace fheprune::runtime
