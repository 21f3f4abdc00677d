// input_range (cost.hpp): the largest input magnitude a program holds at its parameters.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "ckks/primes.hpp"
#include "fheprune/runtime/cost.hpp"

namespace fheprune::runtime {

namespace {

// y <= gain * x + offset for |x| <= x_max (or y = x^2 for a square).
struct Transfer {
  std::string name;
  bool square = false;
  double gain = 1.0;
  double offset = 0.0;
  std::size_t out_level = 0;
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

Transfer transfer(const Layer& layer) {
  Transfer t;
  t.name = layer_name(layer);
  t.gain = 0.0;
  if (const auto* l = std::get_if<TileLinear>(&layer)) {
    t.gain = row_sum_max(l->weight, l->out_features, l->in_features);
    t.offset = max_abs(l->bias_source);
  } else if (const auto* d = std::get_if<DiagonalLinear>(&layer)) {
    t.gain = row_sum_max(d->weight, d->out_features, d->in_features);
    t.offset = max_abs(d->bias_source);
  } else if (const auto* m = std::get_if<MapLinear>(&layer)) {
    // Per output ciphertext and slot, the sum of |d_t| over the terms that reach it: terms of
    // different channels sit in different slots and must not be added up.
    std::size_t period = 1;
    for (const MapTerm& term : m->terms) period = std::max(period, term.period);
    std::vector<std::vector<double>> reach(m->out_ciphertexts);
    for (const MapTerm& term : m->terms) {
      auto& acc = reach[term.out];
      if (acc.empty()) acc.assign(period, 0.0);
      // Periods are powers of two, so `period` is a multiple of every term's.
      for (std::size_t k = 0; k < term.at.size(); ++k) {
        for (std::size_t s = term.at[k]; s < period; s += term.period) {
          acc[s] += std::abs(term.values[k]);
        }
      }
    }
    for (const auto& acc : reach) {
      for (double v : acc) t.gain = std::max(t.gain, v);
    }
    for (const auto& b : m->bias) t.offset = std::max(t.offset, max_abs(b));
  } else if (const auto* r = std::get_if<RotateSum>(&layer)) {
    t.gain = 1.0;
    for (const auto& [count, stride] : r->windows) t.gain *= static_cast<double>(count);
  } else {
    t.square = true;  // Square
  }
  return t;
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
  // log2 of half the modulus at each level, from the primes the engine will generate.
  const std::vector<ckks::u64> primes = ckks::generate_ntt_primes(params.poly_degree, params.chain_bits);
  std::vector<double> log2_half_q(primes.size());
  double acc = 0.0;
  for (std::size_t l = 0; l < primes.size(); ++l) {
    acc += std::log2(static_cast<double>(primes[l]));
    log2_half_q[l] = acc - 1.0;
  }
  const double log2_scale = params.scale_bits;

  const std::vector<LayerCost> costs = estimate_cost(program, input_level);
  std::vector<Transfer> layers;
  for (std::size_t i = 0; i < program.layers().size(); ++i) {
    Transfer t = transfer(program.layers()[i]);
    t.out_level = i + 1 < costs.size() ? costs[i + 1].level : input_level - program.levels();
    layers.push_back(std::move(t));
  }

  // How far past its limit the worst point goes (in bits) for inputs up to 2^log2_x, and where.
  std::function<double(double, std::string*)> excess = [&](double log2_x, std::string* where) {
    double worst = log2_x + log2_scale + margin_bits - log2_half_q[input_level];
    if (where) *where = "input";
    double bound = std::exp2(log2_x);
    for (const Transfer& t : layers) {
      bound = t.square ? bound * bound : t.gain * bound + t.offset;
      const double over = (bound > 0.0 ? std::log2(bound) : -1e9) + log2_scale + margin_bits -
                          log2_half_q[t.out_level];
      if (over > worst) {
        worst = over;
        if (where) *where = t.name;
      }
    }
    return worst;
  };

  // Map programs: per ciphertext and slot. A convolution writes only its valid outputs, so
  // bounds stay zero in the slots a map leaves empty, and a window sum adds only the slots
  // that hold data; the overflow test then bounds the polynomial's coefficients (means over
  // the slots) rather than the slots: much tighter than one number per layer.
  if (program.layout() == Layout::kMap) {
    const std::size_t slots = program.slots();
    excess = [&, slots](double log2_x, std::string* where) {
      double worst = log2_x + log2_scale + margin_bits - log2_half_q[input_level];
      if (where) *where = "input";
      std::vector<std::vector<double>> cur(program.input_ciphertexts(),
                                           std::vector<double>(slots, std::exp2(log2_x)));
      for (std::size_t i = 0; i < program.layers().size(); ++i) {
        const Layer& layer = program.layers()[i];
        if (const auto* m = std::get_if<MapLinear>(&layer)) {
          std::vector<std::vector<double>> out(m->out_ciphertexts, std::vector<double>(slots, 0.0));
          for (const MapTerm& t : m->terms) {
            const std::vector<double>& in = cur[t.in];
            std::vector<double>& o = out[t.out];
            for (std::size_t k = 0; k < t.at.size(); ++k) {
              const double w = std::abs(t.values[k]);
              for (std::size_t j = t.at[k]; j < slots; j += t.period) {
                o[j] += w * in[(j + t.shift) % slots];
              }
            }
          }
          for (std::size_t c = 0; c < m->bias.size() && c < out.size(); ++c) {
            const std::vector<double>& b = m->bias[c];
            for (std::size_t j = 0; !b.empty() && j < slots; ++j) out[c][j] += std::abs(b[j % b.size()]);
          }
          cur = std::move(out);
        } else if (const auto* r = std::get_if<RotateSum>(&layer)) {
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
        } else if (std::holds_alternative<Square>(layer)) {
          for (auto& x : cur) {
            for (double& v : x) v *= v;
          }
        } else {
          throw CompileError("layer '" + layer_name(layer) + "' is not a map-layout layer");
        }
        // A ciphertext wraps when a coefficient of its polynomial passes half the modulus, and
        // a coefficient is an average over the N evaluation points (the slots and their
        // conjugates): |coefficient| <= the mean of |slot| over the slots.
        double peak = 0.0;
        for (const auto& x : cur) {
          double sum = 0.0;
          for (double v : x) sum += v;
          peak = std::max(peak, sum / static_cast<double>(slots));
        }
        const double over = (peak > 0.0 ? std::log2(peak) : -1e9) + log2_scale + margin_bits -
                            log2_half_q[layers[i].out_level];
        if (over > worst) {
          worst = over;
          if (where) *where = layers[i].name;
        }
      }
      return worst;
    };
  }

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
