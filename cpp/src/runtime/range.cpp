// input_range (cost.hpp): the largest input magnitude a program holds at its parameters.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "ckks/primes.hpp"
#include "fheprune/runtime/cost.hpp"

namespace fheprune::runtime {

namespace {

// How far (in bits) a bound of `bound` at `level` goes past its limit: bound * scale must stay
// `margin` bits below half the level's modulus.
struct Limits {
  std::vector<double> log2_half_q;  // per level, from the primes the engine will generate
  double log2_scale = 0.0;
  double margin_bits = 0.0;

  double over(double bound, std::size_t level) const {
    return (bound > 0.0 ? std::log2(bound) : -1e9) + log2_scale + margin_bits -
           log2_half_q[level];
  }
};

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Largest row sum of |W| for a dense [out][in] source.
double row_sum_max(const std::vector<double>& w, std::size_t out, std::size_t in) {
  double m = 0.0;
  for (std::size_t r = 0; r < out; ++r) {
    double s = 0.0;
    for (std::size_t c = 0; c < in; ++c) s += std::abs(w[r * in + c]);
    m = std::max(m, s);
  }
  return m;
}

CompileError not_in_layout(const Layer& layer) {
  return CompileError("layer '" + layer_name(layer) + "' does not belong to its program's layout");
}

// Tile and diagonal programs: one bound per layer, y <= gain * x + offset (or x^2), tested on
// the largest slot.
struct Transfer {
  bool square = false;
  double gain = 0.0;
  double offset = 0.0;
};

Transfer transfer(const Layer& layer) {
  if (const auto* l = std::get_if<TileLinear>(&layer)) {
    return {false, row_sum_max(l->weight, l->out_features, l->in_features), max_abs(l->bias_source)};
  }
  if (const auto* d = std::get_if<DiagonalLinear>(&layer)) {
    return {false, row_sum_max(d->weight, d->out_features, d->in_features), max_abs(d->bias_source)};
  }
  if (std::holds_alternative<Square>(layer)) return {true, 0.0, 0.0};
  if (std::holds_alternative<Refresh>(layer)) return {false, 1.0, 0.0};  // same values, new level
  throw not_in_layout(layer);
}

// Map programs: a bound per ciphertext and slot, after `layer`. A convolution writes only its
// valid outputs, so bounds stay zero in the slots a map leaves empty, and a window sum adds
// only the slots that hold data.
using SlotBounds = std::vector<std::vector<double>>;

void apply(const Layer& layer, std::size_t slots, SlotBounds& cur) {
  if (const auto* m = std::get_if<MapLinear>(&layer)) {
    SlotBounds out(m->out_ciphertexts, std::vector<double>(slots, 0.0));
    for (const MapTerm& t : m->terms) {
      const std::vector<double>& in = cur[t.in];
      std::vector<double>& o = out[t.out];
      for (std::size_t k = 0; k < t.at.size(); ++k) {
        const double w = std::abs(t.values[k]);
        for (std::size_t j = t.at[k]; j < slots; j += t.period) o[j] += w * in[(j + t.shift) % slots];
      }
    }
    for (std::size_t c = 0; c < m->bias.size() && c < out.size(); ++c) {
      const std::vector<double>& b = m->bias[c];
      for (std::size_t j = 0; !b.empty() && j < slots; ++j) out[c][j] += std::abs(b[j % b.size()]);
    }
    cur = std::move(out);
  } else if (const auto* r = std::get_if<RotateSum>(&layer)) {
    if (r->fold > 1) {
      const std::size_t n_out = cur.size() / r->fold;
      SlotBounds folded(n_out, std::vector<double>(slots, 0.0));
      for (std::size_t k = 0; k < cur.size(); ++k) {
        for (std::size_t j = 0; j < slots; ++j) folded[k % n_out][j] += cur[k][j];
      }
      cur = std::move(folded);
    }
    for (auto& x : cur) {
      for (const auto& [count, stride] : r->windows) {
        std::vector<double> y(slots, 0.0);
        for (std::size_t n = 0; n < count; ++n) {
          const std::size_t offset = (n * stride) % slots;
          for (std::size_t j = 0; j < slots; ++j) y[j] += x[(j + offset) % slots];
        }
        x = std::move(y);
      }
    }
  } else if (std::holds_alternative<Refresh>(layer)) {
    // The values stay; only their level changes.
  } else if (std::holds_alternative<Square>(layer)) {
    for (auto& x : cur) {
      for (double& v : x) v *= v;
    }
  } else {
    throw not_in_layout(layer);
  }
}

// A ciphertext wraps when a coefficient of its polynomial passes half the modulus, and a
// coefficient is an average over the N evaluation points (the slots and their conjugates):
// |coefficient| <= the mean of |slot| over the slots.
double coefficient_bound(const SlotBounds& cur, std::size_t slots) {
  double peak = 0.0;
  for (const auto& x : cur) {
    double sum = 0.0;
    for (double v : x) sum += v;
    peak = std::max(peak, sum / static_cast<double>(slots));
  }
  return peak;
}

}  // namespace

InputRange input_range(const Program& program, std::size_t input_level, double margin_bits) {
  const ckks::Parameters& params = program.parameters();
  if (input_level >= params.chain_bits.size()) {
    throw ckks::LevelError("input level " + std::to_string(input_level) + " is above the top level " +
                           std::to_string(params.chain_bits.size() - 1) + " of the parameters");
  }
  if (!std::isfinite(margin_bits) || margin_bits < 0.0) {
    throw ckks::ParameterError("the margin must be a finite number of bits >= 0, got " +
                               std::to_string(margin_bits));
  }
  Limits limits{{}, static_cast<double>(params.scale_bits), margin_bits};
  double acc = 0.0;
  for (ckks::u64 q : ckks::generate_ntt_primes(params.poly_degree, params.chain_bits)) {
    acc += std::log2(static_cast<double>(q));
    limits.log2_half_q.push_back(acc - 1.0);
  }

  // The level each layer's output sits at: the next layer's input level (the cost model's), or
  // what the program leaves at the end.
  const std::vector<Layer>& layers = program.layers();
  const std::vector<std::size_t> schedule = program.level_schedule(input_level);
  const std::vector<std::size_t> out_level(schedule.begin() + 1, schedule.end());
  const bool map = program.layout() == Layout::kMap;
  std::vector<Transfer> transfers;
  if (!map) {
    for (const Layer& layer : layers) transfers.push_back(transfer(layer));
  }

  // How far past its limit the worst point goes (in bits) for inputs up to 2^log2_x, and where.
  auto excess = [&](double log2_x, std::string* where) {
    double worst = limits.over(std::exp2(log2_x), input_level);
    if (where) *where = "input";
    const std::size_t slots = program.slots();
    SlotBounds per_slot;
    if (map) per_slot.assign(program.input_ciphertexts(), std::vector<double>(slots, std::exp2(log2_x)));
    double bound = std::exp2(log2_x);
    for (std::size_t i = 0; i < layers.size(); ++i) {
      if (map) {
        apply(layers[i], slots, per_slot);
        bound = coefficient_bound(per_slot, slots);
      } else {
        const Transfer& t = transfers[i];
        bound = t.square ? bound * bound : t.gain * bound + t.offset;
      }
      const double over = limits.over(bound, out_level[i]);
      if (over > worst) {
        worst = over;
        if (where) *where = layer_name(layers[i]);
      }
    }
    return worst;
  };

  // Bisection on log2 |x|: the bounds grow with |x|, so the excess does too.
  double lo = -64.0, hi = 256.0;
  if (excess(lo, nullptr) > 0.0) {
    std::string where;
    excess(lo, &where);
    throw CompileError("no input range can be proven for this program: even inputs of 2^-64 "
                       "overflow layer '" + where + "', because its biases and activation "
                       "constants, bounded for the worst signs through every layer before it, "
                       "exceed its level's modulus (a larger first prime gives room)");
  }
  for (int i = 0; i < 80; ++i) {
    const double mid = 0.5 * (lo + hi);
    (excess(mid, nullptr) > 0.0 ? hi : lo) = mid;
  }
  InputRange out;
  out.max_input = std::exp2(lo);
  excess(hi, &out.limiting_layer);
  return out;
}

}  // namespace fheprune::runtime
