// The cost model: what the executor will do, counted from the program alone (no backend), and
// the lower bounds it is measured against (docs/runtime.md, "Cost model and lower bounds"). Tests hold these counts
// equal to the ones the executor records; latency and memory predictions multiply them by
// per-operation timings measured on the machine (fheprune.runtime.cost in Python).
#pragma once

#include <cstddef>
#include <map>
#include <utility>
#include <string>
#include <vector>

#include "fheprune/runtime/executor.hpp"
#include "fheprune/runtime/program.hpp"

namespace fheprune::runtime {

// Operation counts by the level of the ciphertext they act on (op name -> level -> count): the
// level an operation's input sits at, before any rescale it performs. The names are OpCounts'
// fields, with two of them split where the executor runs them differently:
//   "rotate_hoisted": rotations of one ciphertext sharing one decomposition (the baby steps
//                     of diagonal and map layers); OpCounts::rotate counts them with "rotate";
//   "add_fused":      the additions inside a fused sum of products (multiply_plain_sum), part
//                     of its per-term time; OpCounts::add counts them with "add".
// Absent entries are zero.
using OpsByLevel = std::map<std::string, std::map<std::size_t, std::size_t>>;

// The counts of `by_level` summed over the levels, folded back into OpCounts' fields.
OpCounts ops_total(const OpsByLevel& by_level);

struct LayerCost {
  std::string name;
  std::string kind;             // "tile", "diagonal", "map", "window_sum", "square"
  std::size_t level = 0;        // level of the layer's input ciphertexts
  bool rebuild = false;         // tile layer that masks + replicates its inputs first (1 level)
  OpCounts ops;                 // per group of samples: ops_total(ops_by_level)
  OpsByLevel ops_by_level;      // the same, by the level each runs at (ops_total gives ops)
  std::size_t units = 0;        // non-zero units kept (tiles or diagonals)
  std::size_t total_units = 0;  // all units of the dense layer
  double rotation_lower_bound = 0.0;
  std::size_t mul_plain_lower_bound = 0;
  std::size_t plaintexts = 0;   // plaintexts the server stores for this layer
  std::size_t plaintext_bytes = 0;
};

// Counts per group of samples (tile: t_batch samples; diagonal: one sample), for inputs at
// `input_level` (the top level of the parameters the program runs under).
std::vector<LayerCost> estimate_cost(const Program& program, std::size_t input_level);

// At most the fewest rotations a map layer's baby-step giant-step split can need, from the
// number of distinct non-zero shifts of each (output, input) ciphertext pair that has terms
// (a true lower bound; see cost.cpp).
double map_rotation_lower_bound(
    const std::map<std::pair<std::size_t, std::size_t>, std::size_t>& nonzero_shifts);

// The largest input magnitude a program holds: CKKS wraps a value around its modulus, without
// any error, once value * scale reaches half the modulus of its level; decryption then returns
// garbage. Bounds |x| <= B through every layer (linear: max row sum of |W| times B plus the
// largest |bias|; map layers: the sum of each term's largest |value|; square: B^2; window sum:
// B times the window size) and returns the largest B for which every layer's output, times the
// default scale, stays `margin_bits` below half the modulus of the level it sits at (one bit
// covers the scale drift of squares and the noise). Map programs are bounded per ciphertext and
// slot (empty slots stay at zero), and their overflow test bounds the polynomial's coefficients,
// each at most the mean of |slot| over the slots; tile and diagonal programs use the largest
// slot. The bound is sufficient, not tight: it assumes the worst signs everywhere.
// CompileError when not even the biases fit.
struct InputRange {
  double max_input = 0.0;      // the largest |x| the client may encrypt
  std::string limiting_layer;  // the layer whose level runs out first ("input": the input)
};
InputRange input_range(const Program& program, std::size_t input_level, double margin_bits = 1.0);

}  // namespace fheprune::runtime
