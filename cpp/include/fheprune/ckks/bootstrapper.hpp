// CKKS bootstrapping: refresh a ciphertext that reached the bottom of its modulus chain.
//
// A ciphertext at level 0 decrypts to t(X) mod q0, the message's coefficients times the scale.
// Refreshing it has four stages (Cheon, Han, Kim, Kim, Song 2018; Chen, Chillotti, Song 2019):
//
//   ModRaise     read the level-0 polynomials as integers and lift them to every prime of the
//                top level: the result decrypts to t + q0 * I, I a small integer polynomial
//                (|I| <= K, K set by the secret's Hamming weight);
//   CoeffToSlot  the inverse of the encoding map as a homomorphic linear transform, so that
//                slot j holds coefficients j and j + N/2 of t + q0 * I (real and imaginary);
//                split into two real ciphertexts (conjugation, and a free multiplication by
//                the monomial X^(N/2), which is i in every slot);
//   EvalMod      remove q0 * I: (q0 / 2 pi) sin(2 pi y / q0) = t for |t| << q0, evaluated as a
//                Chebyshev approximation of a scaled cosine followed by double-angle steps;
//   SlotToCoeff  the encoding map again, which puts the coefficients back.
//
// The encoding map is a special FFT: log2(N/2) butterfly stages of three diagonals each, after
// a bit reversal (DftStages); with sparse slots (BootstrapConfig::slots = n), the map of the
// subring of degree 2n, log2(n) stages. Each homomorphic DFT merges its stages into a few groups (one
// level each; `cts_levels` / `stc_levels`), and evaluates every group baby-step giant-step
// with hoisted baby rotations. CoeffToSlot leaves the coefficients bit-reversed, which EvalMod
// (slot-wise) does not mind and SlotToCoeff expects. All N/2 slots, or sparse slots (messages
// of a shorter period, BootstrapConfig::slots); the diagonals' plaintexts are encoded on first
// use and kept (a bounded number of sets, the least recently used dropped). Scales are managed
// exactly: every constant is encoded at the scale that lands each term on the scale the next
// step needs, so the output has the input's scale.
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "fheprune/ckks/encoder.hpp"
#include "fheprune/ckks/evaluator.hpp"
#include "fheprune/ckks/keys.hpp"

namespace fheprune::ckks {

// A sparse slot-space matrix by its diagonals: diagonal k holds M[j][(j + k) mod slots].
using Diagonals = std::map<std::size_t, std::vector<std::complex<double>>>;

// The encoding map V (V[j][i] = zeta_j^i, slot j of sum_i w_i X^i for i < N/2) as butterfly
// stages: V = stage[L-1] * ... * stage[0] * (bit reversal), L = log2(slots).
std::vector<Diagonals> encoding_stages(std::size_t poly_degree);
// Their inverses, in the order CoeffToSlot applies them: inverse[0] undoes stage[L-1], and
// the product of all is (bit reversal) * V^-1.
std::vector<Diagonals> decoding_stages(std::size_t poly_degree);
// The product of `stages` applied in order (stages[0] first).
Diagonals compose(const std::vector<Diagonals>& stages, std::size_t slots);

struct BootstrapConfig {
  // Bound on |I| (ModRaise's overflow): about 5 standard deviations of a sum of h uniform
  // values in [-1/2, 1/2], h the secret's Hamming weight; 12 covers h = 64.
  double k_bound = 12.0;
  std::size_t chebyshev_degree = 63;  // of the scaled cosine on [-1, 1]
  std::size_t double_angles = 3;      // cos(2x) = 2 cos(x)^2 - 1, this many times
  // Levels (groups of merged butterfly stages) of each homomorphic DFT: fewer levels, more
  // diagonals and rotations per level. 1 is the dense matrix.
  std::size_t cts_levels = 3;
  std::size_t stc_levels = 3;
  // Sparse slots: 0 refreshes all N/2 slots; a power of two n < N/2 refreshes messages that
  // repeat with period n (the diagonal layout's vectors), whose polynomial lives in the
  // subring of X^(N/2n). The refresh first sums the raised ciphertext's rotations by n, 2n, ...
  // (the trace to that subring: it drops ModRaise's overflow outside it), and its DFTs are
  // those of a ring of degree 2n: log2(n) butterfly stages instead of log2(N/2). A message
  // that does not repeat with period n comes back as its average over the period's copies.
  std::size_t slots = 0;
  // Sparse slots: pack CoeffToSlot's two real halves into one ciphertext, so EvalMod runs once
  // (false: twice, as for full slots).
  bool pack_halves = true;
  // Message ratio: refresh() first multiplies the level-0 ciphertext by the power of two that
  // brings its scale to about q0 / 2^message_ratio_bits (0: the scale stays). A larger message
  // inside the refresh is a larger share of the values CoeffToSlot and EvalMod work on, so
  // their noise costs fewer of its bits; the price is the sine's deviation from the identity,
  // (2 pi c / q0)^2 / 6 relative for a coefficient c, which the arcsine corrects. Coefficients
  // are about sqrt(2 / slots) of the slot values for spread-out messages, so the sine alone
  // is precise enough for them; a message concentrated in a few coefficients (a constant
  // vector) needs the arcsine or a larger ratio. The ratio also bounds the message: its
  // precision is measured for values in [-1, 1]; a value v in a coefficient costs a relative
  // (3/40) (2 pi v / 2^bits)^4 after the arcsine, and one near 2^(bits - 1) wraps around q0.
  // 8 measured best with the arcsine (docs/bootstrapping.md, "Message ratio and arcsine").
  double message_ratio_bits = 8.0;
  // EvalMod ends with arcsin(s) ~ s + s^3 / 6 (two more levels): sin(2 pi c / q0) back to
  // 2 pi c / q0, so the refresh is exact to (3/40) (2 pi c / q0)^4 whatever the message's shape.
  bool arcsine = true;
  // CoeffToSlot first lifts the raised ciphertext's scale (an exact integer product) by this
  // share of the gap to its output scale: more makes its key-switch noise a smaller part of the
  // values, and the rounding of its last diagonals a larger one. 0.4 measured best.
  double cts_lift = 0.4;
  // Sparse-secret encapsulation: the Hamming weight of the ephemeral secret the refresh
  // switches its level-0 ciphertext to before ModRaise, and back from right after it
  // (EvaluationKeys::encapsulation, made with the same weight). k_bound then only has to cover
  // that weight's overflow. 0: none; ModRaise works under the ciphertext's own secret.
  std::size_t ephemeral_weight = 0;

  bool operator==(const BootstrapConfig&) const = default;
};

class Bootstrapper {
 public:
  // Throws ParameterError when the chain is too short for the refresh.
  Bootstrapper(ContextPtr ctx, BootstrapConfig config = {});

  const BootstrapConfig& config() const { return config_; }
  // The period of the messages it refreshes: N/2, or the sparse slot count.
  std::size_t slots() const { return slots_; }
  const ContextPtr& context() const { return ctx_; }
  // Left rotation steps the evaluation keys must hold (conjugation is needed as well).
  std::vector<long> rotation_steps() const;
  // Levels the refresh consumes from the top; the output is at max_level - levels_consumed().
  std::size_t levels_consumed() const;
  // Of those, EvalMod's: ceil(log2 d) + 1 + double angles (+ 2 with the arcsine).
  std::size_t eval_mod_levels() const;
  std::size_t output_level() const;

  // The stages, public for tests and for callers that fuse them.
  // A level-0 ciphertext under s switched to the ephemeral sparse secret s' (modulo q0 * p).
  Ciphertext to_sparse(const Ciphertext& ct, const EncapsulationKeys& keys) const;
  Ciphertext mod_raise(const Ciphertext& ct) const;
  // ModRaise as refresh() does it: through the ephemeral secret (to_sparse, mod_raise, back
  // to s) when the configuration asks for encapsulation, else mod_raise alone.
  Ciphertext raise_to_top(const Ciphertext& ct, const EvaluationKeys& keys) const;
  // CoeffToSlot: the coefficients of t + q0 * I, each divided by q0 * (K + 1) (so in
  // [-1, 1]), in real slots, one level down per DFT group, at a scale near that level's prime.
  // Full slots: two ciphertexts, coefficients [0, N/2) and [N/2, N). Sparse slots n: one
  // ciphertext of period 2n, after the trace to the subring of Y = X^(N/2n): the subring's
  // coefficients [0, n) in the first n slots of every 2n, [n, 2n) in the next n, so EvalMod
  // runs once (the masks that pack them are folded into the DFTs' diagonals).
  std::vector<Ciphertext> coeff_to_slot(const Ciphertext& raised, const GaloisKeys& gk) const;
  // sin(2 pi (K + 1) x) for x in [-1, 1], at a scale near x's; ceil(log2 d) + 1 + double
  // angles levels down. With `arcsine`, 2 pi y for y = (K + 1) x minus its nearest integer
  // (to the arcsine's third order), two levels further.
  Ciphertext eval_mod(const Ciphertext& x, const RelinKey& rk) const;
  // The message back in the slots: `parts` (coeff_to_slot's layout) hold sin(2 pi t / q0) for
  // the coefficients of t, the message times `message_scale`. The result has scale
  // `out_scale` (0: message_scale).
  Ciphertext slot_to_coeff(const std::vector<Ciphertext>& parts, double message_scale,
                           const GaloisKeys& gk, double out_scale = 0.0) const;
  // The power of two refresh() multiplies a level-0 ciphertext of this scale by
  // (message_ratio_bits; 1 when it is 0 or the scale is already that large).
  std::uint64_t message_boost(double scale) const;

  // Plaintext sets the refresh keeps encoded (at most kMaxPlaintextSets): six for inputs of
  // one scale (a set per DFT group), two more for each further scale still in use.
  static constexpr std::size_t kMaxPlaintextSets = 16;
  std::size_t cached_plaintext_sets() const;

  // The whole refresh: the same message, at output_level() and the input's scale. A
  // ciphertext above level 0 is first switched down to it.
  Ciphertext refresh(const Ciphertext& ct, const EvaluationKeys& keys) const;

 private:
  // factor * matrix * in (slot vectors; matrix row-major [slots][slots]), one level down at
  // scale `out_scale`: the diagonals are encoded at the scale that lands the rescale there.
  // `rescale` false: the product before its rescale (scale out_scale times the level's prime).
  Ciphertext linear_transform(const Ciphertext& in, const Diagonals& matrix,
                              std::complex<double> factor, double out_scale,
                              const GaloisKeys& gk, bool rescale = true) const;
  // Stages applied in order, one group (level) each; `factor` and `out_scale` on the last,
  // which is left unrescaled when `rescale_last` is false.
  Ciphertext apply_groups(const Ciphertext& in, const std::vector<Diagonals>& groups,
                          std::complex<double> factor, double out_scale,
                          const GaloisKeys& gk, bool rescale_last = true) const;
  // `ct` multiplied by `value`, rescaled to scale `scale` one level down.
  Ciphertext multiply_const_to_scale(const Ciphertext& ct, double value, double scale) const;
  // `ct` brought to `level` and `scale` (one multiplication by a constant, then mod switches).
  Ciphertext match(const Ciphertext& ct, std::size_t level, double scale) const;
  Ciphertext times_i(const Ciphertext& ct) const;  // i * ct: the monomial X^(N/2), exact
  // ct * m with the scale times m: the same message, exact (each residue times m; no level).
  Ciphertext scaled_up(const Ciphertext& ct, std::uint64_t m) const;
  Ciphertext add_matched(const Ciphertext& a, const Ciphertext& b) const;
  Ciphertext product(const Ciphertext& a, const Ciphertext& b, const RelinKey& rk) const;
  // sum_i c_i T_i(x) from the baby basis T_1 .. T_{b-1} and the giants T_g, recursively.
  Ciphertext chebyshev_sum(const std::vector<double>& c, const std::vector<Ciphertext>& basis,
                           const std::map<std::size_t, Ciphertext>& giants, double scale,
                           const RelinKey& rk) const;

  ContextPtr ctx_;
  BootstrapConfig config_;
  std::size_t slots_ = 0;  // the message period: N/2, or the sparse slot count
  bool packed_ = false;    // sparse, with the two halves in one ciphertext
  Encoder encoder_;
  Evaluator evaluator_;
  std::vector<double> chebyshev_;      // coefficients of the scaled cosine
  std::vector<Diagonals> cts_groups_;  // (bit reversal) * V^-1, one matrix per level
  std::vector<Diagonals> stc_groups_;  // V * (bit reversal)
  // Encoded diagonals by (matrix, level, factor re / im, plaintext scale). The last group of
  // each DFT depends on the input's scale, so ciphertexts of ever new scales would grow the
  // cache without bound (about 0.8 GB a scale at N = 2^16): beyond kMaxPlaintextSets the
  // least recently used set goes. Sets are shared, so one in use outlives its eviction.
  using PlainKey = std::tuple<const Diagonals*, std::size_t, double, double, double>;
  struct PlainSet {
    std::shared_ptr<const std::vector<ExtendedPlaintext>> plaintexts;
    std::uint64_t last_used = 0;
  };
  mutable std::mutex cache_mutex_;
  mutable std::uint64_t cache_clock_ = 0;
  mutable std::map<PlainKey, PlainSet> plain_cache_;
};

}  // namespace fheprune::ckks
