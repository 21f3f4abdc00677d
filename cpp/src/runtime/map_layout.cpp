// The map layout's builders: diagonal terms between ciphertexts, their baby-step / giant-step
// split, window sums and the output map (see program.hpp, "Map layout").
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <tuple>

#include "fheprune/runtime/program.hpp"

namespace fheprune::runtime {

namespace {

struct SplitChoice {
  std::size_t n1 = 1;
  bool giant_is_residue = false;
  std::size_t rotations = std::numeric_limits<std::size_t>::max();
  std::size_t giants = std::numeric_limits<std::size_t>::max();
};

// Distinct non-zero values of f(k) over each set of shifts, summed over the sets.
template <class F>
std::size_t distinct_nonzero(const std::vector<std::vector<std::size_t>>& sets, F f,
                             std::vector<std::uint32_t>& stamp, std::uint32_t& epoch) {
  std::size_t total = 0;
  for (const auto& set : sets) {
    ++epoch;
    for (std::size_t k : set) {
      const std::size_t v = f(k);
      if (v != 0 && stamp[v] != epoch) {
        stamp[v] = epoch;
        ++total;
      }
    }
  }
  return total;
}

// The split k = baby + giant with the fewest rotations: babies are counted once per input
// ciphertext (hoisted, shared by all outputs), giants once per output ciphertext. Searched
// over every modulus n1 (both ways round) when that is cheap (distinct shifts x slots <=
// 2^28), else over powers of two; ties go to fewer giant steps (they are not hoisted), then
// the smaller n1. A layer without terms needs no search.
SplitChoice choose_split(const std::vector<MapTerm>& terms, std::size_t n_in, std::size_t n_out,
                         std::size_t slots) {
  SplitChoice best;
  if (terms.empty()) return {1, false, 0, 0};
  std::vector<std::vector<std::size_t>> per_in(n_in), per_out(n_out);
  for (const MapTerm& t : terms) {
    per_in[t.in].push_back(t.shift);
    per_out[t.out].push_back(t.shift);
  }
  std::size_t work = 0;
  for (auto* sets : {&per_in, &per_out}) {
    for (auto& v : *sets) {
      std::sort(v.begin(), v.end());
      v.erase(std::unique(v.begin(), v.end()), v.end());
      work += v.size() + 1;
    }
    // Ciphertexts without terms cost nothing; keep them out of the search's loops.
    sets->erase(std::remove_if(sets->begin(), sets->end(), [](const auto& v) { return v.empty(); }),
                sets->end());
  }
  std::vector<std::uint32_t> stamp(slots, 0);
  std::uint32_t epoch = 0;
  const bool exhaustive = work * slots <= (std::size_t{1} << 28);
  for (std::size_t n1 = 1; n1 <= slots; n1 = exhaustive ? n1 + 1 : n1 * 2) {
    for (bool residue_giant : {false, true}) {
      const auto residue = [n1](std::size_t k) { return k % n1; };
      const auto rest = [n1](std::size_t k) { return k - k % n1; };
      const std::size_t babies = residue_giant ? distinct_nonzero(per_in, rest, stamp, epoch)
                                               : distinct_nonzero(per_in, residue, stamp, epoch);
      const std::size_t giants = residue_giant ? distinct_nonzero(per_out, residue, stamp, epoch)
                                               : distinct_nonzero(per_out, rest, stamp, epoch);
      const std::size_t rotations = babies + giants;
      if (rotations < best.rotations || (rotations == best.rotations && giants < best.giants)) {
        best = {n1, residue_giant, rotations, giants};
      }
    }
  }
  return best;
}

}  // namespace

// Distinct non-zero babies per input plus distinct non-zero giants per output.
std::size_t split_rotations(const std::vector<MapTerm>& terms, std::size_t n_in,
                            std::size_t n_out) {
  std::vector<std::vector<std::size_t>> babies(n_in), giants(n_out);
  for (const MapTerm& t : terms) {
    if (t.baby) babies[t.in].push_back(t.baby);
    if (t.giant) giants[t.out].push_back(t.giant);
  }
  std::size_t total = 0;
  for (auto* sets : {&babies, &giants}) {
    for (auto& v : *sets) {
      std::sort(v.begin(), v.end());
      total += static_cast<std::size_t>(std::unique(v.begin(), v.end()) - v.begin());
    }
  }
  return total;
}

void MapTerm::fill_slots(std::vector<double>& full, std::size_t offset) const {
  const std::size_t slots = full.size();
  std::fill(full.begin(), full.end(), 0.0);
  for (std::size_t rep = 0; rep < slots; rep += period) {
    for (std::size_t k = 0; k < at.size(); ++k) full[(rep + at[k] + offset) % slots] = values[k];
  }
}

void Program::add_map_linear(const std::string& name, std::size_t out_ciphertexts,
                             std::span<const std::uint32_t> out, std::span<const std::uint32_t> in,
                             std::span<const std::size_t> shift, std::span<const double> values,
                             std::size_t period, std::span<const double> bias,
                             std::size_t bias_period, std::span<const std::size_t> baby_hint) {
  const std::size_t count = out.size();
  if (count > 0 && period == 0) {
    throw CompileError("layer '" + name + "': value period 0 must be a power of two dividing " +
                       "the " + std::to_string(slots()) + " slots");
  }
  if (values.size() != count * (count > 0 ? period : 0)) {
    throw CompileError("layer '" + name + "': values hold " + std::to_string(values.size()) +
                       " numbers, expected terms x period = " + std::to_string(count) + " x " +
                       std::to_string(period));
  }
  // Dense rows -> their non-zero entries (NaNs are kept for the builder to refuse).
  std::vector<std::uint64_t> offsets{0};
  std::vector<std::uint32_t> at;
  std::vector<double> nonzero;
  for (std::size_t t = 0; t < count; ++t) {
    for (std::size_t j = 0; j < period; ++j) {
      const double v = values[t * period + j];
      if (v != 0.0) {
        at.push_back(static_cast<std::uint32_t>(j));
        nonzero.push_back(v);
      }
    }
    offsets.push_back(at.size());
  }
  add_map_linear_sparse(name, out_ciphertexts, out, in, shift, offsets, at, nonzero, period,
                        bias, bias_period, baby_hint);
}

void Program::add_map_linear_sparse(const std::string& name, std::size_t out_ciphertexts,
                                    std::span<const std::uint32_t> out,
                                    std::span<const std::uint32_t> in,
                                    std::span<const std::size_t> shift,
                                    std::span<const std::uint64_t> offsets,
                                    std::span<const std::uint32_t> at,
                                    std::span<const double> values, std::size_t period,
                                    std::span<const double> bias, std::size_t bias_period,
                                    std::span<const std::size_t> baby_hint) {
  if (layout_ != Layout::kMap) {
    throw CompileError("layer '" + name + "': diagonal terms need a map-layout program");
  }
  const std::size_t slots = this->slots();
  const std::size_t n_in = current_ciphertexts();
  const std::string where = "layer '" + name + "': ";
  if (out_ciphertexts == 0 || out_ciphertexts > (std::size_t{1} << 12)) {
    throw CompileError(where + "needs 1 to 4096 output ciphertexts, got " +
                       std::to_string(out_ciphertexts));
  }
  const auto check_period = [&](std::size_t p, const char* what) {
    if (p == 0 || !std::has_single_bit(p) || p > slots) {
      throw CompileError(where + what + " period " + std::to_string(p) +
                         " must be a power of two dividing the " + std::to_string(slots) +
                         " slots");
    }
  };
  const std::size_t count = out.size();
  if (in.size() != count || shift.size() != count) {
    throw CompileError(where + "out, in and shift must have one entry per term");
  }
  if (!baby_hint.empty() && baby_hint.size() != count) {
    throw CompileError(where + "baby_hint must be empty or have one entry per term");
  }
  if (count > 0) check_period(period, "value");
  if (offsets.size() != count + 1 || offsets.front() != 0 || offsets.back() != values.size() ||
      at.size() != values.size() || !std::is_sorted(offsets.begin(), offsets.end())) {
    throw CompileError(where + "sparse values need offsets of terms + 1 = " +
                       std::to_string(count + 1) + " increasing entries from 0 to the " +
                       std::to_string(values.size()) + " values, one slot index per value");
  }
  for (std::size_t k = 0; k < at.size(); ++k) {
    if (at[k] >= period) {
      throw CompileError(where + "value slot " + std::to_string(at[k]) +
                         " is outside its period of " + std::to_string(period));
    }
  }
  if (!bias.empty()) {
    check_period(bias_period, "bias");
    if (bias.size() != out_ciphertexts * bias_period) {
      throw CompileError(where + "bias holds " + std::to_string(bias.size()) +
                         " numbers, expected out_ciphertexts x bias_period = " +
                         std::to_string(out_ciphertexts * bias_period));
    }
  }
  for (double v : values) {
    if (!std::isfinite(v)) throw CompileError(where + "values hold a NaN or infinite number");
  }
  for (double v : bias) {
    if (!std::isfinite(v)) throw CompileError(where + "bias holds a NaN or infinite number");
  }
  // Merge equal (out, in, shift) terms; drop the ones that are zero everywhere.
  using Entries = std::vector<std::pair<std::uint32_t, double>>;
  std::map<std::tuple<std::uint32_t, std::uint32_t, std::size_t>, Entries> merged;
  std::map<std::tuple<std::uint32_t, std::uint32_t, std::size_t>, std::size_t> hint_of;
  for (std::size_t t = 0; t < count; ++t) {
    if (!baby_hint.empty() && baby_hint[t] >= slots) {
      throw CompileError(where + "baby_hint " + std::to_string(baby_hint[t]) + " of term " +
                         std::to_string(t) + " is not below the " + std::to_string(slots) +
                         " slots");
    }
    if (out[t] >= out_ciphertexts || in[t] >= n_in || shift[t] >= slots) {
      throw CompileError(where + "term " + std::to_string(t) + " (out " + std::to_string(out[t]) +
                         ", in " + std::to_string(in[t]) + ", shift " + std::to_string(shift[t]) +
                         ") is outside " + std::to_string(out_ciphertexts) + " outputs, " +
                         std::to_string(n_in) + " inputs and " + std::to_string(slots) +
                         " slots");
    }
    Entries& e = merged[{out[t], in[t], shift[t]}];
    for (std::uint64_t k = offsets[t]; k < offsets[t + 1]; ++k) e.emplace_back(at[k], values[k]);
    if (!baby_hint.empty()) {
      auto [h, first] = hint_of.try_emplace({out[t], in[t], shift[t]}, baby_hint[t]);
      if (!first && h->second != baby_hint[t]) {
        throw CompileError(where + "merged terms (out " + std::to_string(out[t]) + ", in " +
                           std::to_string(in[t]) + ", shift " + std::to_string(shift[t]) +
                           ") carry different baby hints");
      }
    }
  }
  MapLinear l;
  l.name = name;
  l.in_ciphertexts = n_in;
  l.out_ciphertexts = out_ciphertexts;
  std::uint64_t stored = 0;
  for (auto& [key, entries] : merged) {
    // Canonical form: slots increasing, equal slots summed, zeros dropped.
    std::stable_sort(entries.begin(), entries.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    MapTerm term;
    std::tie(term.out, term.in, term.shift) = key;
    term.period = period;
    for (std::size_t k = 0; k < entries.size();) {
      double sum = 0.0;
      const std::uint32_t slot = entries[k].first;
      for (; k < entries.size() && entries[k].first == slot; ++k) sum += entries[k].second;
      if (sum != 0.0) {
        term.at.push_back(slot);
        term.values.push_back(sum);
      }
    }
    if (term.at.empty()) continue;
    stored += term.at.size();
    l.terms.push_back(std::move(term));
  }
  // Count what a loader would hold for this program (term entries, bias slot vectors); refuse
  // here, before the split search, rather than write a file that cannot be read back.
  const auto held = [slots](const MapLinear& m) {
    std::uint64_t n = 0;
    for (const MapTerm& t : m.terms) n += t.at.size();
    const bool has_bias =
        std::any_of(m.bias.begin(), m.bias.end(), [](const auto& b) { return !b.empty(); });
    return n + (has_bias ? m.out_ciphertexts * slots : 0);
  };
  std::uint64_t expanded =
      stored + (std::any_of(bias.begin(), bias.end(), [](double x) { return x != 0.0; })
                    ? out_ciphertexts * slots
                    : 0);
  for (const Layer& other : layers_) {
    if (const auto* m = std::get_if<MapLinear>(&other)) expanded += held(*m);
  }
  if (expanded > kMaxProgramSlotValues) {
    throw CompileError(where + "the program would hold " + std::to_string(expanded) +
                       " values (" + std::to_string(expanded >> 27) +
                       " GiB as doubles), more than the " +
                       std::to_string(kMaxProgramSlotValues) +
                       " a program may hold; prune the model or use fewer channels");
  }
  const SplitChoice split = choose_split(l.terms, n_in, out_ciphertexts, slots);
  l.n1 = split.n1;
  l.giant_is_residue = split.giant_is_residue;
  for (MapTerm& t : l.terms) {
    const std::size_t residue = t.shift % l.n1;
    t.giant = l.giant_is_residue ? residue : t.shift - residue;
    t.baby = t.shift - t.giant;
  }
  if (!baby_hint.empty()) {
    // The compiler's split, when it needs no more rotations (ties go to it: its rotations
    // line up with the layout's units, so pruning a unit removes its rotation).
    std::vector<MapTerm> hinted = l.terms;
    for (MapTerm& t : hinted) {
      t.baby = hint_of.at({t.out, t.in, t.shift});
      t.giant = (t.shift + slots - t.baby) % slots;
    }
    if (split_rotations(hinted, n_in, out_ciphertexts) <= split.rotations) {
      // Reported as the compiler's split only when it differs from the modular one (a
      // loaded file hands every split back as a hint).
      bool differs = false;
      for (std::size_t k = 0; k < hinted.size() && !differs; ++k) {
        differs = hinted[k].baby != l.terms[k].baby;
      }
      l.terms = std::move(hinted);
      l.hinted = differs;
    }
  }
  std::sort(l.terms.begin(), l.terms.end(), [](const MapTerm& a, const MapTerm& b) {
    return std::tie(a.out, a.giant, a.in, a.baby) < std::tie(b.out, b.giant, b.in, b.baby);
  });
  if (!bias.empty()) {
    l.bias.resize(out_ciphertexts);
    for (std::size_t o = 0; o < out_ciphertexts; ++o) {
      std::vector<double> b(bias.begin() + o * bias_period, bias.begin() + (o + 1) * bias_period);
      if (std::any_of(b.begin(), b.end(), [](double x) { return x != 0.0; })) l.bias[o] = std::move(b);
    }
  }
  layers_.push_back(std::move(l));
  out_ct_.clear();  // the output map describes the last layer; set it again after this one
  out_slot_.clear();
}

void Program::add_rotate_sum(const std::string& name,
                             const std::vector<std::pair<std::size_t, std::size_t>>& windows,
                             std::size_t fold) {
  if (layout_ != Layout::kMap) {
    throw CompileError("layer '" + name + "': window sums need a map-layout program");
  }
  const std::size_t cts = current_ciphertexts();
  if (fold == 0 || cts % fold != 0) {
    throw CompileError("layer '" + name + "': fold " + std::to_string(fold) +
                       " must be a positive divisor of the " + std::to_string(cts) +
                       " ciphertexts it reads");
  }
  if (windows.empty() && fold == 1) {
    throw CompileError("layer '" + name + "': no window to sum over and nothing to fold");
  }
  std::size_t area = 1;
  for (const auto& [count, stride] : windows) {
    if (count == 0 || stride == 0 || stride >= slots() || count > slots()) {
      throw CompileError("layer '" + name + "': window (count " + std::to_string(count) +
                         ", stride " + std::to_string(stride) + ") must have 1 <= count <= slots "
                         "and 1 <= stride < slots");
    }
    area *= count;
    if (area > slots()) {
      throw CompileError("layer '" + name + "': the windows cover more than the " +
                         std::to_string(slots()) + " slots");
    }
  }
  layers_.push_back(RotateSum{name, windows, fold});
}

void Program::set_outputs(std::span<const std::uint32_t> ct, std::span<const std::size_t> slot) {
  if (layout_ != Layout::kMap) {
    throw CompileError("output maps belong to map-layout programs");
  }
  if (ct.size() != slot.size() || ct.empty()) {
    throw CompileError("the output map needs one (ciphertext, slot) pair per output feature");
  }
  const std::size_t cts = current_ciphertexts();
  for (std::size_t f = 0; f < ct.size(); ++f) {
    if (ct[f] >= cts || slot[f] >= slots()) {
      throw CompileError("output feature " + std::to_string(f) + " at (ciphertext " +
                         std::to_string(ct[f]) + ", slot " + std::to_string(slot[f]) +
                         ") is outside the " + std::to_string(cts) + " ciphertexts of " +
                         std::to_string(slots()) + " slots the program ends with");
    }
  }
  out_ct_.assign(ct.begin(), ct.end());
  out_slot_.assign(slot.begin(), slot.end());
}

// The rotations of a window sum, in order: for each window, MSB-first doubling steps and the
// single-stride steps of the set bits (window sizes need not be powers of two).
std::vector<long> window_sum_steps(const RotateSum& r) {
  std::vector<long> steps;
  for (const auto& [count, stride] : r.windows) {
    std::size_t m = 1;
    for (int bit = static_cast<int>(std::bit_width(count)) - 2; bit >= 0; --bit) {
      steps.push_back(static_cast<long>(m * stride));
      m *= 2;
      if ((count >> bit) & 1U) {
        steps.push_back(static_cast<long>(stride));
        m += 1;
      }
    }
  }
  return steps;
}

}  // namespace fheprune::runtime
