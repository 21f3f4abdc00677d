#include "fheprune/ckks/bootstrapper.hpp"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numbers>
#include <set>
#include <string>

#include "ckks/context_tables.hpp"
#include "ckks/modarith.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {
namespace {

using cd = std::complex<double>;

std::size_t ceil_log2(std::size_t v) {
  std::size_t bits = 0;
  while ((std::size_t{1} << bits) < v) ++bits;
  return bits;
}

// Chebyshev coefficients c_0..c_d of f on [-1, 1] (interpolation at the d + 1 Chebyshev nodes).
std::vector<double> chebyshev_coefficients(const auto& f, std::size_t degree) {
  const std::size_t m = degree + 1;
  const double md = static_cast<double>(m);
  std::vector<double> values(m), out(m, 0.0);
  for (std::size_t k = 0; k < m; ++k) {
    values[k] = f(std::cos(std::numbers::pi * (static_cast<double>(k) + 0.5) / md));
  }
  for (std::size_t j = 0; j < m; ++j) {
    const double jd = static_cast<double>(j);
    double sum = 0;
    for (std::size_t k = 0; k < m; ++k) {
      sum += values[k] * std::cos(std::numbers::pi * jd * (static_cast<double>(k) + 0.5) / md);
    }
    out[j] = (j == 0 ? 1.0 : 2.0) * sum / md;
  }
  return out;
}

// Split `stages` (in application order) into `groups` consecutive runs and multiply each out.
std::vector<Diagonals> merge(const std::vector<Diagonals>& stages, std::size_t groups,
                             std::size_t slots) {
  std::vector<Diagonals> out;
  const std::size_t count = stages.size();
  std::size_t begin = 0;
  for (std::size_t g = 0; g < groups; ++g) {
    const std::size_t end = begin + (count - begin) / (groups - g);
    out.push_back(compose({stages.begin() + static_cast<long>(begin),
                           stages.begin() + static_cast<long>(end)},
                          slots));
    begin = end;
  }
  return out;
}

// With double hoisting a baby rotation is an inner product with a key (no NTT), a giant one
// a ModUp, an inner product and two ModDowns: about this many babies' worth.
constexpr std::size_t kGiantCost = 4;

// Baby-step size for a set of diagonals: the power of two with the cheapest rotations
// (distinct non-zero babies k mod n1, plus kGiantCost per distinct non-zero giant k / n1), at
// most the message period (so that sparse slots keep their small key set: babies below the
// period, giants multiples of it).
std::size_t best_baby(const Diagonals& d, std::size_t period) {
  std::size_t best = 1, best_cost = ~std::size_t{0};
  for (std::size_t n1 = 1; n1 <= period; n1 *= 2) {
    std::set<std::size_t> babies, giants;
    for (const auto& [k, _] : d) {
      if (k % n1) babies.insert(k % n1);
      if (k / n1) giants.insert(k / n1);
    }
    const std::size_t cost = babies.size() + kGiantCost * giants.size();
    if (cost < best_cost) {
      best_cost = cost;
      best = n1;
    }
  }
  return best;
}

}  // namespace

namespace {

// The butterfly stage of length `len` of the encoding map (or, `inverse`, the stage undoing
// it): out[i + j] = x[i + j] + w_j x[i + j + half], out[i + j + half] = x[i + j] - w_j x[...],
// w_j = zeta^(5^j) restricted to the stage, exp(2 pi i (5^j mod 4 len) / (4 len)). Its three
// diagonals: 0, +half and -half (one diagonal when half = slots / 2).
Diagonals butterfly_stage(std::size_t poly_degree, std::size_t len, bool inverse) {
  const std::size_t slots = poly_degree / 2, m = 2 * poly_degree;
  const std::size_t half = len / 2, quarter_period = 4 * len;
  std::vector<cd> same(slots), up(slots, cd{0, 0}), down(slots, cd{0, 0});
  std::vector<cd> twiddle(half);
  std::size_t g = 1;  // 5^j mod 2N
  for (std::size_t j = 0; j < half; ++j) {
    twiddle[j] = std::polar(1.0, 2.0 * std::numbers::pi *
                                     static_cast<double>(g % quarter_period) /
                                     static_cast<double>(quarter_period));
    g = (g * 5) % m;
  }
  for (std::size_t i = 0; i < slots; i += len) {
    for (std::size_t j = 0; j < half; ++j) {
      if (!inverse) {
        same[i + j] = 1.0;
        up[i + j] = twiddle[j];
        down[i + j + half] = 1.0;
        same[i + j + half] = -twiddle[j];
      } else {  // u = (a + b) / 2, v = (a - b) / (2 w)
        const cd inv = 1.0 / (2.0 * twiddle[j]);
        same[i + j] = 0.5;
        up[i + j] = 0.5;
        down[i + j + half] = inv;
        same[i + j + half] = -inv;
      }
    }
  }
  Diagonals d;
  d[0] = same;
  d[half % slots] = up;
  auto& back = d[(slots - half) % slots];
  if (back.empty()) back.assign(slots, cd{0, 0});
  for (std::size_t r = 0; r < slots; ++r) back[r] += down[r];
  return d;
}

}  // namespace

std::vector<Diagonals> encoding_stages(std::size_t poly_degree) {
  std::vector<Diagonals> stages;
  for (std::size_t len = 2; len <= poly_degree / 2; len *= 2) {
    stages.push_back(butterfly_stage(poly_degree, len, /*inverse=*/false));
  }
  return stages;
}

std::vector<Diagonals> decoding_stages(std::size_t poly_degree) {
  std::vector<Diagonals> stages;
  for (std::size_t len = poly_degree / 2; len >= 2; len /= 2) {
    stages.push_back(butterfly_stage(poly_degree, len, /*inverse=*/true));
  }
  return stages;
}

Diagonals compose(const std::vector<Diagonals>& stages, std::size_t slots) {
  Diagonals acc;
  acc[0] = std::vector<cd>(slots, cd{1, 0});
  for (const Diagonals& next : stages) {
    // (B A)[j][j + a + b] += B_b[j] * A_a[j + b]: A = acc (applied first), B = next.
    Diagonals out;
    for (const auto& [b, db] : next) {
      for (const auto& [a, da] : acc) {
        auto& dst = out[(a + b) % slots];
        if (dst.empty()) dst.assign(slots, cd{0, 0});
        for (std::size_t j = 0; j < slots; ++j) dst[j] += db[j] * da[(j + b) % slots];
      }
    }
    acc = std::move(out);
  }
  return acc;
}

Bootstrapper::Bootstrapper(ContextPtr ctx, BootstrapConfig config)
    : ctx_(std::move(ctx)), config_(config), encoder_(ctx_), evaluator_(ctx_) {
  const std::size_t full = ctx_->slots();
  slots_ = config_.slots == 0 ? full : config_.slots;
  if (slots_ < 2 || slots_ > full || (slots_ & (slots_ - 1)) != 0) {
    throw ParameterError("bootstrap config: slots must be 0 (all " + std::to_string(full) +
                         ") or a power of two from 2 to " + std::to_string(full) + ", got " +
                         std::to_string(config_.slots));
  }
  const std::size_t stages = ceil_log2(slots_);
  if (!(config_.k_bound >= 1.0) || config_.chebyshev_degree < 2 || config_.double_angles > 8 ||
      config_.cts_levels < 1 || config_.cts_levels > stages || config_.stc_levels < 1 ||
      config_.stc_levels > stages) {
    throw ParameterError("bootstrap config: k_bound >= 1, chebyshev_degree >= 2, "
                         "double_angles <= 8 and 1 <= cts_levels, stc_levels <= log2(slots) = " +
                         std::to_string(stages) + " are required");
  }
  if (config_.ephemeral_weight > ctx_->poly_degree() ||
      (config_.ephemeral_weight > 0 && ctx_->special_size() == 0)) {
    throw ParameterError("bootstrap config: ephemeral_weight must be 0 or a Hamming weight up to "
                         "N = " + std::to_string(ctx_->poly_degree()) +
                         " with a special prime in the chain, got " +
                         std::to_string(config_.ephemeral_weight));
  }
  if (!(config_.cts_lift >= 0.0 && config_.cts_lift <= 1.0)) {
    throw ParameterError("bootstrap config: cts_lift must be from 0 to 1, got " +
                         std::to_string(config_.cts_lift));
  }
  if (!(config_.message_ratio_bits >= 0.0 && config_.message_ratio_bits <= 64.0)) {
    throw ParameterError("bootstrap config: message_ratio_bits must be from 0 (off) to 64, got " +
                         std::to_string(config_.message_ratio_bits));
  }
  if (ctx_->max_level() < levels_consumed() + 1) {
    throw ParameterError("bootstrapping consumes " + std::to_string(levels_consumed()) +
                         " levels and leaves at least one; the chain has " +
                         std::to_string(ctx_->max_level()) + " (add primes or lower "
                         "chebyshev_degree / double_angles)");
  }
  // The DFTs of the ring of degree 2 * slots_ (the whole ring when slots_ = N/2), their
  // diagonals repeated over all N/2 slots: on a vector of period slots_, a rotation by k acts
  // like the small ring's rotation by k.
  const auto repeat = [&](std::vector<Diagonals> groups) {
    if (slots_ == full) return groups;
    for (Diagonals& g : groups) {
      for (auto& [k, d] : g) {
        std::vector<cd> wide(full);
        for (std::size_t j = 0; j < full; ++j) wide[j] = d[j % slots_];
        d = std::move(wide);
      }
    }
    return groups;
  };
  cts_groups_ = repeat(merge(decoding_stages(2 * slots_), config_.cts_levels, slots_));
  stc_groups_ = repeat(merge(encoding_stages(2 * slots_), config_.stc_levels, slots_));
  packed_ = slots_ < full && config_.pack_halves;
  if (packed_) {
    // Packing for one EvalMod. M keeps the first n slots of every 2n: CoeffToSlot ends with
    // it, so its two real halves can share one ciphertext (coeff_to_slot). SlotToCoeff starts
    // by unpacking: from v (lo | hi in every 2n slots) the period-n vector lo + i hi is
    // P v + Q rot(v, n), P = M + i (1 - M), Q = (1 - M) + i M: diagonals 0 and n.
    std::vector<cd> mask(full), p(full), q(full);
    for (std::size_t j = 0; j < full; ++j) {
      const bool first = j % (2 * slots_) < slots_;
      mask[j] = first ? 1.0 : 0.0;
      p[j] = first ? cd{1, 0} : cd{0, 1};
      q[j] = first ? cd{0, 1} : cd{1, 0};
    }
    cts_groups_.back() = compose({cts_groups_.back(), Diagonals{{0, mask}}}, full);
    stc_groups_.front() = compose({Diagonals{{0, p}, {slots_, q}}, stc_groups_.front()}, full);
  }

  // cos(2 pi ((K + 1) u - 1/4) / 2^r) on [-1, 1]; r double angles turn it into sin(2 pi y).
  const double k1 = config_.k_bound + 1.0;
  const double r = std::ldexp(1.0, -static_cast<int>(config_.double_angles));
  chebyshev_ = chebyshev_coefficients(
      [&](double u) { return std::cos(2.0 * std::numbers::pi * (k1 * u - 0.25) * r); },
      config_.chebyshev_degree);
}

std::size_t Bootstrapper::levels_consumed() const {
  // CoeffToSlot, the Chebyshev basis and its coefficients, the double angles, the arcsine,
  // SlotToCoeff.
  return config_.cts_levels + eval_mod_levels() + config_.stc_levels;
}

std::size_t Bootstrapper::eval_mod_levels() const {
  return ceil_log2(config_.chebyshev_degree) + 1 + config_.double_angles +
         (config_.arcsine ? 2 : 0);
}

std::uint64_t Bootstrapper::message_boost(double scale) const {
  if (config_.message_ratio_bits <= 0.0) return 1;
  const double q0 = static_cast<double>(ctx_->tables().modulus(0).value());
  const double bits = std::round(std::log2(q0 / scale) - config_.message_ratio_bits);
  if (!(bits >= 1.0)) return 1;
  // Below q0 whatever the scale (a scale under 1 would ask for more).
  return std::uint64_t{1} << static_cast<int>(std::min(bits, std::floor(std::log2(q0)) - 1.0));
}

std::size_t Bootstrapper::cached_plaintext_sets() const {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  return plain_cache_.size();
}

std::size_t Bootstrapper::output_level() const { return ctx_->max_level() - levels_consumed(); }

std::vector<long> Bootstrapper::rotation_steps() const {
  const std::size_t slots = ctx_->slots();
  std::set<long> steps;
  for (std::size_t step = slots_; step < slots; step *= 2) steps.insert(static_cast<long>(step));
  if (packed_) steps.insert(static_cast<long>(slots - slots_));  // packing: rot(hi, -n)
  for (const auto* groups : {&cts_groups_, &stc_groups_}) {
    for (const Diagonals& d : *groups) {
      const std::size_t n1 = best_baby(d, slots_);
      for (const auto& [k, _] : d) {
        if (k % n1) steps.insert(static_cast<long>(k % n1));
        if (k / n1) steps.insert(static_cast<long>((k / n1) * n1));
      }
    }
  }
  return {steps.begin(), steps.end()};
}

Ciphertext Bootstrapper::to_sparse(const Ciphertext& ct, const EncapsulationKeys& keys) const {
  if (ct.level() != 0 || ct.size() != 2) {
    throw LevelError("to_sparse takes a size-2 ciphertext at level 0, got level " +
                     std::to_string(ct.level()) + " and size " + std::to_string(ct.size()));
  }
  if (keys.empty()) {
    throw MissingKeyError("this refresh switches to an ephemeral secret of Hamming weight " +
                          std::to_string(config_.ephemeral_weight) +
                          "; the evaluation keys hold no encapsulation keys (create them with "
                          "ephemeral_weight " + std::to_string(config_.ephemeral_weight) + ")");
  }
  if (keys.id() != ct.key_id()) {
    throw MismatchError("encapsulation keys belong to a different secret key than the ciphertext");
  }
  if (keys.hamming_weight() != config_.ephemeral_weight) {
    throw MismatchError("encapsulation keys are for an ephemeral secret of Hamming weight " +
                        std::to_string(keys.hamming_weight()) + "; this refresh's K is set for " +
                        std::to_string(config_.ephemeral_weight) +
                        " (make them with that ephemeral_weight)");
  }
  const KeySwitchKey& key = keys.to_sparse();
  const std::size_t n = ctx_->poly_degree();
  if (key.digits() != 1 || key.key_primes() != 2) {
    throw MismatchError("encapsulation key has the wrong shape for these parameters");
  }
  // One digit (q0) and one special prime p: ModUp is c1's centred lift to p, exact; the key's
  // products at q0 and p; ModDown is (u - [u]_p) / p at q0, [u]_p centred.
  const ContextTables& tables = ctx_->tables();
  const std::size_t pi = ctx_->chain_size();
  const Modulus& q0 = tables.modulus(0);
  const Modulus& p = tables.modulus(pi);
  std::vector<u64> c1p(ct.poly(1, 0), ct.poly(1, 0) + n);
  tables.ntt(0).inverse(c1p.data());
  for (std::size_t c = 0; c < n; ++c) {
    const u64 v = c1p[c];
    c1p[c] = v > q0.value() / 2 ? p.sub(0, p.reduce(q0.value() - v)) : p.reduce(v);
  }
  tables.ntt(pi).forward(c1p.data());
  const u64 p_inv = q0.inv(q0.reduce(p.value()));
  Ciphertext out = ct;
  for (std::size_t k = 0; k < 2; ++k) {
    const u64* kq = k == 0 ? key.b(0, 0) : key.a(0, 0);
    const u64* kp = k == 0 ? key.b(0, 1) : key.a(0, 1);
    std::vector<u64> at_p(n);
    for (std::size_t c = 0; c < n; ++c) at_p[c] = p.mul(c1p[c], kp[c]);
    tables.ntt(pi).inverse(at_p.data());
    for (std::size_t c = 0; c < n; ++c) {
      const u64 v = at_p[c];
      at_p[c] = v > p.value() / 2 ? q0.sub(0, q0.reduce(p.value() - v)) : q0.reduce(v);
    }
    tables.ntt(0).forward(at_p.data());
    const u64* c1 = ct.poly(1, 0);
    u64* o = out.poly(k, 0);
    for (std::size_t c = 0; c < n; ++c) {
      const u64 u = q0.mul(c1[c], kq[c]);
      const u64 v = q0.mul(q0.sub(u, at_p[c]), p_inv);
      o[c] = k == 0 ? q0.add(o[c], v) : v;
    }
  }
  return out;
}

Ciphertext Bootstrapper::raise_to_top(const Ciphertext& ct, const EvaluationKeys& keys) const {
  if (config_.ephemeral_weight == 0) return mod_raise(ct);
  // Encapsulation: ModRaise under the sparse s' (its overflow is small), then back to s.
  return evaluator_.switch_key(mod_raise(to_sparse(ct, keys.encapsulation)),
                               keys.encapsulation.from_sparse());
}

Ciphertext Bootstrapper::mod_raise(const Ciphertext& ct) const {
  if (ct.level() != 0) {
    throw LevelError("mod_raise takes a ciphertext at level 0, got level " +
                     std::to_string(ct.level()) + "; switch it down with mod_switch_to first");
  }
  if (ct.size() != 2) {
    throw FheError("mod_raise takes a size-2 ciphertext; relinearize first");
  }
  if (ct.params() != ctx_->fingerprint()) {
    throw MismatchError("the ciphertext was made under different parameters than the "
                        "bootstrapper's context");
  }
  const std::size_t n = ctx_->poly_degree();
  const std::size_t top = ctx_->max_level();
  const ContextTables& tables = ctx_->tables();
  const u64 q0 = tables.modulus(0).value();
  Ciphertext out(*ctx_, 2, top, ct.scale(), ct.key_id());
  for (std::size_t k = 0; k < 2; ++k) {
    std::vector<u64> coeffs(ct.poly(k, 0), ct.poly(k, 0) + n);
    tables.ntt(0).inverse(coeffs.data());
    tables.pool().parallel_for(top + 1, [&](std::size_t i) {
      const Modulus& q = tables.modulus(i);
      u64* dst = out.poly(k, i);
      for (std::size_t c = 0; c < n; ++c) {
        // The centred representative in (-q0/2, q0/2]: the smallest overflow I.
        const u64 v = coeffs[c];
        dst[c] = v > q0 / 2 ? q.sub(0, q.reduce(q0 - v)) : q.reduce(v);
      }
      tables.ntt(i).forward(dst);
    });
  }
  return out;
}

Ciphertext Bootstrapper::linear_transform(const Ciphertext& in, const Diagonals& matrix,
                                          cd factor, double out_scale, const GaloisKeys& gk,
                                          bool rescale) const {
  const std::size_t n = ctx_->slots();
  const std::size_t level = in.level();
  const double q = static_cast<double>(ctx_->tables().modulus(level).value());
  const double plain_scale = out_scale * q / in.scale();
  // sum_k diag_k * rot(in, k) with k = g n1 + b, as sum_g rot(sum_b rot(diag_k, -g n1) *
  // rot(in, b), g n1): baby rotations hoisted, one rotation per giant step.
  const std::size_t n1 = best_baby(matrix, slots_);
  std::map<std::size_t, std::vector<std::size_t>> by_giant;  // giant -> diagonals k
  std::set<std::size_t> baby_set;
  for (const auto& [k, _] : matrix) {
    by_giant[k / n1].push_back(k);
    baby_set.insert(k % n1);
  }
  // Double hoisting: the baby rotations stay multiplied by P over the extended primes (no
  // ModDown each), their products with the diagonals are summed there, and each giant step
  // divides by P once before its rotation; the giant rotations accumulate extended again, so
  // the whole transform ends with one more ModDown.
  const std::vector<long> steps(baby_set.begin(), baby_set.end());
  std::vector<ExtendedCiphertext> rotated = evaluator_.rotate_hoisted_extended(in, steps, gk);
  std::map<std::size_t, ExtendedCiphertext> babies;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    babies.emplace(static_cast<std::size_t>(steps[i]), std::move(rotated[i]));
  }
  // The diagonals' plaintexts, encoded once per (matrix, level, factor, scale): a refresh of
  // ciphertexts at one scale encodes them on its first call only.
  const PlainKey key{&matrix, level, factor.real(), factor.imag(), plain_scale};
  std::shared_ptr<const std::vector<ExtendedPlaintext>> plaintexts;
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = plain_cache_.find(key);
    if (it == plain_cache_.end()) {
      if (plain_cache_.size() >= kMaxPlaintextSets) {
        auto oldest = plain_cache_.begin();
        for (auto e = plain_cache_.begin(); e != plain_cache_.end(); ++e) {
          if (e->second.last_used < oldest->second.last_used) oldest = e;
        }
        plain_cache_.erase(oldest);
      }
      auto pts = std::make_shared<std::vector<ExtendedPlaintext>>();
      std::vector<cd> diag(n);
      for (const auto& [g, ks] : by_giant) {
        const std::size_t shift = (g * n1) % n;
        for (std::size_t k : ks) {
          const std::vector<cd>& src = matrix.at(k);
          for (std::size_t j = 0; j < n; ++j) diag[j] = factor * src[(j + n - shift) % n];
          pts->push_back(encoder_.encode_extended(diag, plain_scale, level));
        }
      }
      it = plain_cache_.emplace(key, PlainSet{std::move(pts), 0}).first;
    }
    it->second.last_used = ++cache_clock_;
    plaintexts = it->second.plaintexts;
  }
  // Giant steps are independent (a fused sum of products and one key switch each): with
  // enough of them, each thread takes whole giant steps, which scales better than splitting
  // every operation. Extended sums are exact, so the bits do not depend on threads.
  struct Giant {
    std::size_t shift = 0;
    std::vector<const ExtendedCiphertext*> cts;
    std::vector<const ExtendedPlaintext*> pts;
  };
  std::vector<Giant> giants;
  std::size_t next = 0;
  for (const auto& [g, ks] : by_giant) {
    Giant& gi = giants.emplace_back();
    gi.shift = (g * n1) % n;
    for (std::size_t k : ks) {
      gi.cts.push_back(&babies.at(k % n1));
      gi.pts.push_back(&(*plaintexts)[next++]);
    }
  }
  // acc += P * rot(sum_b diag * baby, shift); an empty acc starts at zero.
  const auto giant_step = [&](std::size_t i, ExtendedCiphertext& acc) {
    ExtendedCiphertext inner = evaluator_.multiply_plain_sum_extended(giants[i].cts, giants[i].pts);
    if (giants[i].shift == 0) {
      if (acc.data.empty()) {
        acc = std::move(inner);
      } else {
        evaluator_.add_extended_inplace(acc, inner);
      }
      return;
    }
    evaluator_.rotate_accumulate(evaluator_.mod_down(inner), static_cast<long>(giants[i].shift),
                                 gk, acc);
  };
  // Only giant steps that rotate carry a key switch; with fewer of them than threads (the
  // first CoeffToSlot group has one), each operation is better split over the threads.
  const auto rotating = static_cast<std::size_t>(std::count_if(
      giants.begin(), giants.end(), [](const Giant& gi) { return gi.shift != 0; }));
  ExtendedCiphertext sum;
  if (ctx_->threads() > 1 && rotating >= ctx_->threads()) {
    std::vector<ExtendedCiphertext> parts(giants.size());
    ctx_->parallel_for(giants.size(), [&](std::size_t i) { giant_step(i, parts[i]); });
    sum = std::move(parts.front());
    for (std::size_t i = 1; i < parts.size(); ++i) evaluator_.add_extended_inplace(sum, parts[i]);
  } else {  // one accumulator: no more ciphertexts alive than needed
    for (std::size_t i = 0; i < giants.size(); ++i) giant_step(i, sum);
  }
  babies.clear();
  Ciphertext acc = evaluator_.mod_down(sum);
  if (!rescale) {
    acc.set_scale(out_scale * q);  // equal up to rounding of the double product
    return acc;
  }
  Ciphertext out = evaluator_.rescale(acc);
  out.set_scale(out_scale);  // equal up to rounding of the double product
  return out;
}

Ciphertext Bootstrapper::apply_groups(const Ciphertext& in, const std::vector<Diagonals>& groups,
                                      cd factor, double out_scale, const GaloisKeys& gk,
                                      bool rescale_last) const {
  Ciphertext x = in;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const bool last = i + 1 == groups.size();
    x = linear_transform(x, groups[i], last ? factor : cd{1, 0}, last ? out_scale : x.scale(),
                         gk, !last || rescale_last);
  }
  return x;
}

std::vector<Ciphertext> Bootstrapper::coeff_to_slot(const Ciphertext& raised,
                                                    const GaloisKeys& gk) const {
  const double q0 = static_cast<double>(ctx_->tables().modulus(0).value());
  const double k1 = config_.k_bound + 1.0;
  // The output level's prime as the scale: the Chebyshev products then keep it (S^2 / q ~ S).
  const double scale = static_cast<double>(
      ctx_->tables().modulus(raised.level() - config_.cts_levels).value());
  // First lift the raised ciphertext's scale toward the output's (2^60) by an exact integer
  // product (no level; the top modulus holds (t + q0 I) times it with room to spare). Two
  // errors pull against each other. Every key switch adds noise of about sqrt(digits) N sigma
  // whatever the scale, so a higher scale makes it a smaller share of the values; but the last
  // group's diagonals carry the factor 1 / (2 q0 (K + 1)) and are encoded at a plaintext scale
  // that falls by the lift, so their rounding grows with it. config_.cts_lift is the share of
  // the gap lifted: 0 kept the key-switch noise the refresh's largest error (2^-24 at
  // N = 2^16), 1 made the rounding so; about 0.4 balances them (docs/bootstrapping.md).
  Ciphertext x = raised;
  const double lift = std::round(std::log2(scale / raised.scale()) * config_.cts_lift);
  if (lift >= 1.0) x = scaled_up(x, std::uint64_t{1} << static_cast<int>(lift));
  // Sparse slots: the trace to the subring, sum of the rotations by slots_, 2 slots_, ...:
  // it multiplies the subring's coefficients by N / (2 slots_) and zeroes the others (ModRaise's
  // overflow there, and the noise); the factor below divides it out.
  for (std::size_t step = slots_; step < ctx_->slots(); step *= 2) {
    x = evaluator_.add(x, evaluator_.rotate(x, static_cast<long>(step), gk));
  }
  const double trace = static_cast<double>(ctx_->slots() / slots_);
  // u = (t_j + i t_{j+n}) / (2 q0 (K + 1)) at bit-reversed j (n = slots_); u + conj(u) and
  // i (conj(u) - u) split it.
  // The key switches that split (conjugation) and pack (a rotation) run before the last
  // rescale: their noise is then divided by that level's prime. After it they would add noise
  // at the values' scale, of which the message is only about 2^-19 (a measured 4 bits).
  const Ciphertext u = apply_groups(
      x, cts_groups_, cd{raised.scale() / (2.0 * q0 * k1 * trace), 0.0}, scale, gk,
      /*rescale_last=*/false);
  const Ciphertext conj = evaluator_.conjugate(u, gk);
  const auto done = [&](const Ciphertext& c) {
    Ciphertext out = evaluator_.rescale(c);
    out.set_scale(scale);  // equal up to rounding of the double product
    return out;
  };
  const Ciphertext lo = evaluator_.add(u, conj), hi = times_i(evaluator_.sub(conj, u));
  if (!packed_) return {done(lo), done(hi)};
  // Sparse: u was masked to the first n of every 2n slots; hi moves right by n beside lo.
  const long right_n = static_cast<long>(ctx_->slots() - slots_);
  return {done(evaluator_.add(lo, evaluator_.rotate(hi, right_n, gk)))};
}

Ciphertext Bootstrapper::add_matched(const Ciphertext& a, const Ciphertext& b) const {
  // Bring the shallower operand to the deeper one's level and scale; at one level with
  // different scales, both go one level down.
  if (a.level() > b.level()) return evaluator_.add(match(a, b.level(), b.scale()), b);
  if (b.level() > a.level()) return evaluator_.add(a, match(b, a.level(), a.scale()));
  if (std::fabs(a.scale() - b.scale()) <= 1e-9 * a.scale()) return evaluator_.add(a, b);
  return evaluator_.add(match(a, a.level() - 1, b.scale()),
                        evaluator_.mod_switch_to(b, b.level() - 1));
}

Ciphertext Bootstrapper::product(const Ciphertext& a, const Ciphertext& b,
                                 const RelinKey& rk) const {
  const std::size_t level = std::min(a.level(), b.level());
  const Ciphertext a2 = a.level() == level ? a : evaluator_.mod_switch_to(a, level);
  const Ciphertext b2 = b.level() == level ? b : evaluator_.mod_switch_to(b, level);
  return evaluator_.rescale(evaluator_.multiply_relin(a2, b2, rk));
}

Ciphertext Bootstrapper::chebyshev_sum(const std::vector<double>& c,
                                       const std::vector<Ciphertext>& basis,
                                       const std::map<std::size_t, Ciphertext>& giants,
                                       double scale, const RelinKey& rk) const {
  const std::size_t degree = c.size() - 1;
  if (degree < basis.size()) {
    // A leaf: sum_i c_i T_i with scalar products only, every term landed on `scale`.
    Ciphertext acc;
    bool have = false;
    std::size_t level = ~std::size_t{0};
    for (std::size_t i = 1; i <= degree; ++i) level = std::min(level, basis[i].level() - 1);
    for (std::size_t i = 1; i <= degree; ++i) {
      if (c[i] == 0.0) continue;
      Ciphertext term = multiply_const_to_scale(basis[i], c[i], scale);
      if (term.level() != level) term = evaluator_.mod_switch_to(term, level);
      if (have) {
        evaluator_.add_inplace(acc, term);
      } else {
        acc = std::move(term);
        have = true;
      }
    }
    if (!have) acc = multiply_const_to_scale(basis[1], 0.0, scale);
    evaluator_.add_plain_inplace(acc, encoder_.encode_constant(c[0], acc.scale(), acc.level()));
    return acc;
  }
  // p = q T_g + r with g the largest giant <= degree: T_{g+k} = 2 T_g T_k - T_{g-k}.
  auto it = giants.upper_bound(degree);
  --it;
  const std::size_t g = it->first;
  std::vector<double> q(degree - g + 1, 0.0), r(c.begin(), c.begin() + static_cast<long>(g));
  q[0] = c[g];
  for (std::size_t k = 1; k <= degree - g; ++k) {
    q[k] = 2.0 * c[g + k];
    r[g - k] -= c[g + k];
  }
  const Ciphertext high = product(chebyshev_sum(q, basis, giants, scale, rk), it->second, rk);
  return add_matched(high, chebyshev_sum(r, basis, giants, scale, rk));
}

Ciphertext Bootstrapper::eval_mod(const Ciphertext& x, const RelinKey& rk) const {
  const std::size_t d = config_.chebyshev_degree;
  const auto next = [&](const Ciphertext& a, const Ciphertext& b, const Ciphertext* minus) {
    // 2 a b - (minus or 1)
    Ciphertext p = product(a, b, rk);
    evaluator_.add_inplace(p, Ciphertext(p));
    if (minus == nullptr) {
      evaluator_.add_plain_inplace(p, encoder_.encode_constant(-1.0, p.scale(), p.level()));
      return p;
    }
    return evaluator_.sub(p, match(*minus, p.level(), p.scale()));
  };
  // Baby steps T_1 .. T_{b-1} and giant steps T_b, T_2b, T_4b, ... (Paterson-Stockmeyer in the
  // Chebyshev basis): about 2 sqrt(d) + log2(d) products instead of d.
  const std::size_t b = std::size_t{1} << ((ceil_log2(d + 1) + 1) / 2);
  std::vector<Ciphertext> basis(std::min(b, d + 1));
  basis[1] = x;
  for (std::size_t k = 2; k < basis.size(); ++k) {
    basis[k] = k % 2 == 0 ? next(basis[k / 2], basis[k / 2], nullptr)
                          : next(basis[k / 2 + 1], basis[k / 2], &basis[1]);
  }
  std::map<std::size_t, Ciphertext> giants;
  if (b <= d) {
    Ciphertext t = next(basis[b / 2], basis[b / 2], nullptr);
    for (std::size_t g = b; g <= d; g *= 2) {
      giants.emplace(g, t);
      if (2 * g <= d) t = next(t, t, nullptr);
    }
  }
  Ciphertext acc = chebyshev_sum(chebyshev_, basis, giants, x.scale(), rk);
  for (std::size_t j = 0; j < config_.double_angles; ++j) acc = next(acc, acc, nullptr);
  if (config_.arcsine) {
    // s = sin(2 pi y) back to 2 pi y = arcsin(s) ~ s (1 + s^2 / 6): s / 6 is s with six times
    // the scale (free), times s, plus 1, times s.
    Ciphertext sixth = acc;
    sixth.set_scale(acc.scale() * 6.0);
    Ciphertext poly = product(sixth, acc, rk);
    evaluator_.add_plain_inplace(poly, encoder_.encode_constant(1.0, poly.scale(), poly.level()));
    acc = product(poly, acc, rk);
  }
  // Some degrees need a level less than ceil(log2 d) + 1; end where levels_consumed() says.
  const std::size_t planned = x.level() - eval_mod_levels();
  if (acc.level() > planned) acc = evaluator_.mod_switch_to(acc, planned);
  return acc;
}

Ciphertext Bootstrapper::slot_to_coeff(const std::vector<Ciphertext>& parts,
                                       double message_scale, const GaloisKeys& gk,
                                       double out_scale) const {
  const double q0 = static_cast<double>(ctx_->tables().modulus(0).value());
  const std::size_t want = packed_ ? 1 : 2;
  if (parts.size() != want) {
    throw FheError("slot_to_coeff takes " + std::to_string(want) + " ciphertext(s) (what "
                   "coeff_to_slot gives for these slots), got " + std::to_string(parts.size()));
  }
  // Sparse: the packed ciphertext goes in as it is; the first group unpacks it.
  const Ciphertext w = want == 1 ? parts[0] : evaluator_.add(parts[0], times_i(parts[1]));
  return apply_groups(w, stc_groups_, cd{q0 / (2.0 * std::numbers::pi * message_scale), 0.0},
                      out_scale > 0.0 ? out_scale : message_scale, gk);
}

Ciphertext Bootstrapper::scaled_up(const Ciphertext& ct, std::uint64_t m) const {
  // A constant is the same in coefficient and NTT form, so each residue is multiplied as is.
  Ciphertext out = ct;
  const std::size_t n = ctx_->poly_degree();
  for (std::size_t i = 0; i <= ct.level(); ++i) {
    const Modulus& q = ctx_->tables().modulus(i);
    const u64 mi = q.reduce(m);
    for (std::size_t k = 0; k < out.size(); ++k) {
      u64* poly = out.poly(k, i);
      for (std::size_t c = 0; c < n; ++c) poly[c] = q.mul(poly[c], mi);
    }
  }
  out.set_scale(ct.scale() * static_cast<double>(m));
  return out;
}

Ciphertext Bootstrapper::refresh(const Ciphertext& ct, const EvaluationKeys& keys) const {
  Ciphertext bottom = ct.level() == 0 ? ct : evaluator_.mod_switch_to(ct, 0);
  // The message ratio: an exact multiplication by a power of two at level 0 (no rounding,
  // no level), which SlotToCoeff's constants divide out again.
  const std::uint64_t boost = message_boost(ct.scale());
  if (boost > 1) bottom = scaled_up(bottom, boost);
  const Ciphertext raised = raise_to_top(bottom, keys);
  const std::vector<Ciphertext> parts = coeff_to_slot(raised, keys.galois_keys);
  // EvalMod ends at the scale it works at (near its primes): its output's last bits are the
  // message's, so the scale only comes down to the input's in SlotToCoeff.
  // The two halves are independent chains of products: on two or three threads each takes
  // one whole half (its operations then run on that thread), which scales better than
  // splitting every product; more threads are better used inside each product.
  std::vector<Ciphertext> mod(parts.size());
  const auto half = [&](std::size_t i) { mod[i] = eval_mod(parts[i], keys.relin_key); };
  if (parts.size() == 2 && (ctx_->threads() == 2 || ctx_->threads() == 3)) {
    ctx_->parallel_for(2, half);
  } else {
    for (std::size_t i = 0; i < parts.size(); ++i) half(i);
  }
  Ciphertext out = slot_to_coeff(mod, bottom.scale(), keys.galois_keys, ct.scale());
  if (out.level() != output_level()) {  // levels_consumed() is the promise callers plan with
    throw FheError("bootstrapping ended at level " + std::to_string(out.level()) +
                   " instead of " + std::to_string(output_level()) + "; please report this "
                   "configuration");
  }
  return out;
}

Ciphertext Bootstrapper::multiply_const_to_scale(const Ciphertext& ct, double value,
                                                 double scale) const {
  const double q = static_cast<double>(ctx_->tables().modulus(ct.level()).value());
  const Plaintext pt = encoder_.encode_constant(value, scale * q / ct.scale(), ct.level());
  Ciphertext out = evaluator_.rescale(evaluator_.multiply_plain(ct, pt));
  out.set_scale(scale);  // equal up to rounding of the double product
  return out;
}

Ciphertext Bootstrapper::match(const Ciphertext& ct, std::size_t level, double scale) const {
  if (ct.level() == level && std::fabs(ct.scale() - scale) <= 1e-9 * scale) return ct;
  if (ct.level() <= level) {
    throw LevelError("cannot bring a ciphertext at level " + std::to_string(ct.level()) +
                     " to level " + std::to_string(level) + " with another scale");
  }
  Ciphertext out = multiply_const_to_scale(ct, 1.0, scale);
  return out.level() == level ? out : evaluator_.mod_switch_to(out, level);
}

Ciphertext Bootstrapper::times_i(const Ciphertext& ct) const {
  // i in every slot is the polynomial X^(N/2) exactly: scale 1, no level used.
  const std::vector<cd> i_vec(ctx_->slots(), cd{0.0, 1.0});
  return evaluator_.multiply_plain(ct, encoder_.encode(i_vec, 1.0, ct.level()));
}

}  // namespace fheprune::ckks
