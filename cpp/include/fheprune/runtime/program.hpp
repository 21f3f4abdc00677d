// A compiled program: the packed, pruned form of a network that the executor runs.
//
// A program is a chain of layers over one of two layouts. Each linear layer keeps only its
// non-zero *units* (a weight tile, or a generalized diagonal); the executor never touches the
// others, and the cost model counts exactly what the executor will do (runtime/cost.hpp).
//
// Tile layout (HE-PEx / HElayers tile tensors with a batch dimension). A ciphertext holds one
// tile of shape [t_outer, t_inner, t_batch], t_outer * t_inner * t_batch = slots; slot
// (i, j, k) sits at index (i * t_inner + j) * t_batch + k. A linear layer sums over one tile
// dimension by rotate-and-add:
//   * kOuter: input features along i (replicated along j), outputs along j, replicated along i
//     afterwards (the sum over the outermost dimension is a full cyclic sum);
//   * kInner: input features along j (replicated along i), outputs along i, valid at j = 0
//     only (other j hold partial sums).
// Orientations alternate so one layer's output is the next layer's input; after a kInner
// layer the next layer first *rebuilds* its input (mask j = 0, one level, then replicate along
// j by rotate-and-add). Samples of a batch sit along k: every sample costs the same work.
//
// Diagonal layout (single sample; Halevi-Shoup with baby-step giant-step, hybrid rectangular
// method). A vector of n features (n a power of two) is replicated with period n across all
// slots. A layer n_in -> n_out (both powers of two after padding) keeps the non-zero
// generalized diagonals d_k, k < min(n_in, n_out), d_k[r] = W[r mod n_out, (r + k) mod n_in],
// and computes y = sum_k d_k * rot(x, k) in baby steps (hoisted) and giant steps; for
// n_out < n_in a final log2(n_in / n_out) rotate-and-adds fold the result to period n_out.
//
// Map layout (single sample, several ciphertexts: multi-channel convolutions and the layers
// after them). The compiler (fheprune.runtime.conv_lowering) works out where every value
// lives and hands over each linear layer as its non-zero generalized diagonals between
// ciphertexts: y_o = sum over terms (o, i, k) of d * rot(x_i, k) + bias_o. The program picks
// one baby-step / giant-step split per layer, k = baby + giant, searched over all moduli n1
// (baby = k mod n1 or giant = k mod n1; powers of two for very large layers) and the
// compiler's own split (kernel positions as
// babies, channel offsets as giants), so that input i's rotations by its babies are hoisted
// and shared by every output, and output o rotates each giant-step partial sum once. A
// multi-channel convolution is exactly this: kernel positions are the inner (baby) rotations,
// channel offsets the outer (giant) ones, and a term exists only when a non-zero weight needs
// it. Window sums (average pooling, by rotate-and-add) and squares complete the layer set.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "fheprune/ckks/bootstrapper.hpp"
#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/parameters.hpp"
#include "fheprune/ckks/types.hpp"

namespace fheprune::runtime {

// A network the compiler cannot lower (unsupported layer, shapes that do not fit the slots, a
// non-power-of-two tile...). The message names the problem and what would work.
class CompileError : public ckks::FheError {
 public:
  using ckks::FheError::FheError;
};

enum class Layout : std::uint16_t { kTile = 1, kDiagonal = 2, kMap = 3 };
enum class SumDim : std::uint16_t { kOuter = 0, kInner = 1 };

struct TileShape3 {
  std::size_t outer = 0, inner = 0, batch = 0;
  std::size_t slots() const { return outer * inner * batch; }
};

// One non-zero weight tile: `values` is the full slot vector of its plaintext.
struct TileUnit {
  std::uint32_t out_tile = 0;
  std::uint32_t in_tile = 0;
  std::vector<double> values;
};

struct TileLinear {
  std::string name;
  std::size_t in_features = 0, out_features = 0;
  std::size_t in_tiles = 0, out_tiles = 0;
  SumDim sum = SumDim::kOuter;
  bool rebuild_input = false;        // mask + replicate the inputs first (after a kInner layer)
  std::vector<TileUnit> units;       // sorted by (out_tile, in_tile); zero tiles absent
  std::vector<std::vector<double>> bias;  // per out tile, a slot vector; empty: no bias
  std::vector<std::uint8_t> bias_nonzero;  // per out tile
  std::vector<double> weight, bias_source;  // the dense source [out][in] and [out] (files)
};

struct DiagonalUnit {
  std::uint32_t index = 0;       // k
  std::vector<double> values;    // d_k, already rotated right by its giant step
};

struct DiagonalLinear {
  std::string name;
  std::size_t in_features = 0, out_features = 0;  // real sizes
  std::size_t n_in = 0, n_out = 0;                // padded powers of two
  std::size_t baby = 1;                           // n1: k = baby * giant + b
  std::vector<DiagonalUnit> units;                // non-zero diagonals, sorted by k
  std::vector<double> bias;                       // slot vector (period n_out); empty: none
  std::vector<double> weight, bias_source;        // the dense source [out][in] and [out]
};

// Values a program may hold in memory: every tile or diagonal unit and every bias vector is a
// full slot vector, every map term its non-zero entries. The loader refuses files that would
// expand past it, and the map-layer builder refuses to build past it, so every program that
// can be built and saved can be loaded again. (2^28 doubles are 2 GiB.)
inline constexpr std::uint64_t kMaxProgramSlotValues = std::uint64_t{1} << 28;

// One plaintext of a map layer: d * rot(x_in, shift) into output `out`, with shift = baby +
// giant (mod slots): `baby` rotates the input (hoisted), `giant` the partial sum. d repeats
// with `period` and is stored sparse: a convolution's term is non-zero only at the valid
// outputs of its channels, a few percent of the slots once pooling has dilated the map.
struct MapTerm {
  std::uint32_t out = 0;
  std::uint32_t in = 0;
  std::size_t shift = 0;
  std::size_t baby = 0;
  std::size_t giant = 0;
  std::size_t period = 0;
  std::vector<std::uint32_t> at;  // slots of one period holding a non-zero value, increasing
  std::vector<double> values;     // d[at[k]] = values[k]; zero elsewhere

  // d as a slot vector of `slots` (a multiple of the period), rotated right by `offset`:
  // full[(j + offset) mod slots] = d[j]. Overwrites all of `full`.
  void fill_slots(std::vector<double>& full, std::size_t offset) const;
};

struct MapLinear {
  std::string name;
  std::size_t in_ciphertexts = 0, out_ciphertexts = 0;
  std::size_t n1 = 1;              // the split modulus
  bool giant_is_residue = false;   // false: baby = shift mod n1; true: giant = shift mod n1
  bool hinted = false;             // the compiler's split (baby_hint) was taken instead
  std::vector<MapTerm> terms;      // non-zero, sorted by (out, giant, in, baby)
  std::vector<std::vector<double>> bias;  // per output: one period; empty: no bias
};

// Average pooling (no level; its 1/area is folded into the next layer). First the `fold`
// sub-maps are added: with n input ciphertexts, output o is the sum of inputs o + m * n/fold,
// m < fold (a map split into sub-maps by pixel phase pools by adding them). Then, per
// ciphertext, y[j] = sum of x[j + sum_d n_d * stride_d] over n_d < count_d (a window sum by
// rotate-and-add).
struct RotateSum {
  std::string name;
  std::vector<std::pair<std::size_t, std::size_t>> windows;  // (count, stride)
  std::size_t fold = 1;
};

// x -> x^2 on every live ciphertext (the compiler folds a*x^2 + b*x + c's constants into the
// neighbouring linear layers).
struct Square {
  std::string name;
};

// A bootstrapping refresh of every live ciphertext (ckks::Bootstrapper with `config`): no
// plaintext, no level of the program's own; the ciphertexts come back at `to_level` with the
// scale they had. Program::place_refreshes puts them where the level schedule runs out.
struct Refresh {
  std::string name;
  std::size_t to_level = 0;
  ckks::BootstrapConfig config;
  std::vector<long> rotation_steps;  // the refresh's own (its DFTs'), sorted; conjugation too
};

using Layer = std::variant<TileLinear, DiagonalLinear, Square, MapLinear, RotateSum, Refresh>;

// Where refreshes go in a chain of layers, fewest first. Layer i consumes levels[i] and enters
// with live[i] live ciphertexts (what a refresh in front of it would cost); the inputs start at
// level `top`, a refresh leaves `to_level` (either may be the higher). Returns the layer indices a refresh goes in front of,
// increasing: among the placements that never let a layer run out of levels, one with the
// fewest refreshed ciphertexts, then the fewest refresh points (a dynamic program over
// (layer, level); greedy "refresh when out" is not optimal once counts differ). LevelError
// when a layer needs more levels than a refresh leaves (and than the top gives, if it is the
// first).
std::vector<std::size_t> plan_refreshes(const std::vector<std::size_t>& levels,
                                        const std::vector<std::size_t>& live, std::size_t top,
                                        std::size_t to_level);

// How the tile layout runs linear layer `index` (0 = the first linear layer) of a chain: THE
// rule, read by the program builder, the compiler's dry run and pruning (through Python), so
// the three agree on every layer's unit. Orientations alternate, so a weight tile is
// t_inner x t_outer (rows x columns) on even layers and t_outer x t_inner on odd ones, and
// every even layer after the first rebuilds its input (mask and replicate: one more level).
struct TileLayerPlan {
  SumDim sum = SumDim::kOuter;
  bool rebuild_input = false;
  std::size_t tile_rows = 0, tile_cols = 0;  // weight tile: output rows x input columns
  std::size_t levels() const { return rebuild_input ? 2 : 1; }
};
TileLayerPlan tile_layer_plan(const TileShape3& tile, std::size_t index);

// The levels each layer of a chain consumes in `layout`, known before the chain is built (the
// dry run chooses parameters with their sum; cost-aware pruning prices each layer at its
// level). Their sum equals Program::levels() of the program built from the same chain. Rotate
// sums (pools) exist in the map layout only.
enum class LayerKind { kLinear, kSquare, kRotateSum };
std::vector<std::size_t> layer_levels(Layout layout, const std::vector<LayerKind>& kinds);

class Program {
 public:
  Program() = default;
  // A tile-layout program; t_outer * t_inner * t_batch must equal the slots of `params`.
  static Program tile(const ckks::Parameters& params, TileShape3 shape, std::size_t in_features);
  // A diagonal-layout program for one sample per ciphertext.
  static Program diagonal(const ckks::Parameters& params, std::size_t in_features);
  // A map-layout program taking `input_ciphertexts` slot vectors per sample.
  static Program map(const ckks::Parameters& params, std::size_t input_ciphertexts);

  // Append layers in forward order. `weight` is row-major [out][in], `bias` has `out` entries
  // (empty: none). Zero tiles / diagonals are dropped here.
  void add_linear(const std::string& name, std::size_t out_features, std::size_t in_features,
                  std::span<const double> weight, std::span<const double> bias);
  void add_square(const std::string& name);
  // A refresh at this point of the chain (place_refreshes does this for the whole program).
  // ParameterError when the parameters cannot bootstrap with `config`; `to_level` must be the
  // level the refresh leaves under them (Bootstrapper::output_level()).
  void add_refresh(const std::string& name, const ckks::BootstrapConfig& config);
  // Removes every refresh, then places the fewest (plan_refreshes) so that the program runs
  // to the end from the level a refresh leaves, which becomes input_level() (also when no
  // refresh is needed: the primes above it are the refresh's). Returns how many it placed;
  // they are named "refresh<k>". A diagonal program refreshes sparse slots (sparse_refresh)
  // unless `config` names its slots.
  std::size_t place_refreshes(const ckks::BootstrapConfig& config);
  // `config` with the sparse slots this program's values repeat with (diagonal layout: the
  // widest padded layer, at least one butterfly stage per DFT level; other layouts, or a
  // config that names its slots: unchanged).
  ckks::BootstrapConfig sparse_refresh(ckks::BootstrapConfig config) const;
  // Map layout. Term t reads input ciphertext in[t] rotated by shift[t] and adds
  // values[t * period .. (t + 1) * period) (repeated over the slots) times it into output
  // out[t]. Terms with equal (out, in, shift) are summed; all-zero terms are dropped. `bias`
  // holds out_ciphertexts * bias_period values (empty: none).
  // `baby_hint` (empty, or one entry per term): a split the compiler knows, e.g. kernel
  // positions as babies and channel offsets as giants (giant = shift - baby mod slots). The
  // program takes it when it needs no more rotations than the best modular split.
  void add_map_linear(const std::string& name, std::size_t out_ciphertexts,
                      std::span<const std::uint32_t> out, std::span<const std::uint32_t> in,
                      std::span<const std::size_t> shift, std::span<const double> values,
                      std::size_t period, std::span<const double> bias, std::size_t bias_period,
                      std::span<const std::size_t> baby_hint = {});
  // The same with sparse values: term t's non-zero values are values[offsets[t] ..
  // offsets[t + 1]), at slots at[...] of its period (any order; repeated slots are summed).
  void add_map_linear_sparse(const std::string& name, std::size_t out_ciphertexts,
                             std::span<const std::uint32_t> out,
                             std::span<const std::uint32_t> in, std::span<const std::size_t> shift,
                             std::span<const std::uint64_t> offsets,
                             std::span<const std::uint32_t> at, std::span<const double> values,
                             std::size_t period, std::span<const double> bias,
                             std::size_t bias_period,
                             std::span<const std::size_t> baby_hint = {});
  // `fold` > 1: add the input ciphertexts in `fold` equal groups first (see RotateSum); it
  // must divide the ciphertexts the program holds at this point. `windows` may then be empty.
  void add_rotate_sum(const std::string& name,
                      const std::vector<std::pair<std::size_t, std::size_t>>& windows,
                      std::size_t fold = 1);
  // Map layout: output feature f is slot slot[f] of output ciphertext ct[f].
  void set_outputs(std::span<const std::uint32_t> ct, std::span<const std::size_t> slot);

  Layout layout() const { return layout_; }
  const ckks::Parameters& parameters() const { return params_; }
  std::size_t slots() const { return params_.poly_degree / 2; }
  const TileShape3& tile_shape() const { return tile_; }
  const std::vector<Layer>& layers() const { return layers_; }
  std::size_t in_features() const { return in_features_; }
  std::size_t out_features() const;
  // Samples per group of input ciphertexts: t_batch (tile) or 1 (diagonal).
  std::size_t samples_per_group() const;
  // Input / output ciphertexts per group of samples.
  std::size_t input_ciphertexts() const;
  std::size_t output_ciphertexts() const;

  // Levels the inputs must hold: the multiplicative depth up to the first refresh (the whole
  // depth of a program without refreshes).
  std::size_t levels() const;
  // Levels the layers consume in all, refreshes not counted (what a chain without
  // bootstrapping would need).
  std::size_t depth() const;
  // THE level schedule: the level each layer's input ciphertexts are at, for inputs at
  // `input_level`, and at the end the level of the outputs (layers().size() + 1 entries).
  // LevelError when a layer runs out of levels or a refresh cannot run there.
  std::vector<std::size_t> level_schedule(std::size_t input_level) const;
  // The level inputs are encrypted at: the top of the chain, or, once refreshes are placed,
  // the level a refresh leaves (the primes above it are the refresh's own: a program layer
  // there would meet primes far from the scale).
  std::size_t input_level() const;
  std::size_t refreshes() const;  // refresh layers
  // The bootstrapping configuration of the refreshes (none without refreshes); CompileError
  // when they differ (one bootstrapper runs them all).
  std::optional<ckks::BootstrapConfig> refresh_config() const;
  bool needs_conjugation() const { return refreshes() > 0; }
  // Every rotation step the executor performs, sorted: the exact Galois key set (with
  // refreshes, theirs too, and the conjugation key: needs_conjugation()).
  std::vector<long> rotation_steps() const;
  // Which input ciphertexts of layer `i` can be non-zero (all true for the first).
  std::vector<std::uint8_t> live_inputs(std::size_t layer) const;
  // The same for every layer at once, in one walk, and last the output's.
  std::vector<std::vector<std::uint8_t>> live_per_layer() const;
  // Whether square layer `layer` hands its products on unrelinearized and unrescaled: when
  // the next layer is a window sum that folds sub-maps (fold > 1), the fold adds the squares
  // first (additions are exact on three-part ciphertexts) and then relinearizes and rescales
  // each sum once, instead of every square (lazy relinearization). The pair consumes one
  // level either way.
  bool defers_relinearization(std::size_t layer) const;

  // Client side: samples [count][in_features] (row-major) -> slot vectors, group by group
  // (input_ciphertexts() per group); and back: slot vectors -> [count][out_features].
  std::vector<std::vector<double>> pack_inputs(std::span<const double> samples,
                                               std::size_t count) const;
  std::vector<double> unpack_outputs(const std::vector<std::vector<double>>& slots,
                                     std::size_t count) const;

  ckks::Bytes save() const;
  static Program load(std::span<const std::uint8_t> bytes);

 private:
  void add_tile_linear(const std::string& name, std::size_t out, std::size_t in,
                       std::span<const double> w, std::span<const double> b);
  void add_diagonal_linear(const std::string& name, std::size_t out, std::size_t in,
                           std::span<const double> w, std::span<const double> b);
  std::size_t current_features() const;
  std::size_t current_ciphertexts() const;
  // Ciphertexts live at the input of each layer (a refresh there would refresh them all).
  std::vector<std::size_t> live_counts() const;

  Layout layout_ = Layout::kTile;
  ckks::Parameters params_;
  TileShape3 tile_;
  std::size_t in_features_ = 0;
  std::size_t map_inputs_ = 0;  // map layout: input ciphertexts per sample
  std::optional<std::size_t> input_level_;  // set by place_refreshes; none: the top
  std::vector<std::uint32_t> out_ct_;  // map layout: where the output features are
  std::vector<std::size_t> out_slot_;
  std::vector<Layer> layers_;
};

// Rotations a map layer's split costs: distinct non-zero babies per input ciphertext plus
// distinct non-zero giants per output ciphertext.
std::size_t split_rotations(const std::vector<MapTerm>& terms, std::size_t n_in,
                            std::size_t n_out);

// The rotation steps of a window sum, in the order the executor performs them.
std::vector<long> window_sum_steps(const RotateSum& r);

// The output orientation of tile layer `index` (which tile dim holds its outputs).
inline bool outputs_on_outer(const TileLinear& l) { return l.sum == SumDim::kInner; }

}  // namespace fheprune::runtime
