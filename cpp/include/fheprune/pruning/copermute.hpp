// HE-PEx co-permutation (the "Permute" step of P3 / P3E): reorder the rows of one or more
// binary mask matrices so that as many tiles as possible become all-zero.
//
// A weight matrix W[R, C] is cut into tiles of t1 rows x t2 columns (zero padding at the
// edges); a tile is "zero" when all its real entries are zero, and a zero tile is a plaintext
// the HE runtime never multiplies. Permuting the rows of W (its output neurons) together with
// the columns of the next layer's weight (the same neurons as inputs) leaves the network's
// function unchanged, so the rows to cluster may be the concatenation, along columns, of
// several matrices' masks: [mask_producer | mask_consumer^T]. Every block keeps its own tiling.
//
// The clustering is HE-PEx's balanced k-means on "grouped" row masks (Section 4.2), run on
// bit-packed group occupancy with popcounts, followed by an exact swap local search on the
// number of non-zero tiles. See copermute.cpp for the definitions and how they relate to the
// paper's text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace fheprune::pruning {

// A read-only strided view of a binary mask: entry (i, j) is
// data[i * row_stride + j * col_stride]; any non-zero byte is a non-zero (kept) weight.
// Strides are in elements (= bytes), may be negative, and the view never owns its data.
struct MaskView {
  const std::uint8_t* data = nullptr;
  std::size_t rows = 0;
  std::size_t cols = 0;
  std::ptrdiff_t row_stride = 0;
  std::ptrdiff_t col_stride = 1;

  // A dense row-major rows x cols matrix.
  static MaskView row_major(const std::uint8_t* data, std::size_t rows, std::size_t cols);
  // The same data seen as its transpose (no copy).
  [[nodiscard]] MaskView transposed() const;
  [[nodiscard]] bool at(std::size_t i, std::size_t j) const {
    return data[static_cast<std::ptrdiff_t>(i) * row_stride +
                static_cast<std::ptrdiff_t>(j) * col_stride] != 0;
  }
};

// How one block is tiled, seen from the rows being permuted.
//   strip_rows:   tile extent along the permuted rows (t1 for a producer's output rows; t2 for
//                 a transposed consumer, whose permuted neurons are its input columns).
//   group_cols:   tile extent along the block's columns (t2 for a producer, t1 for a
//                 transposed consumer).
//   segment_cols: the column tiling restarts every segment_cols columns (0 = never): a Conv2d
//                 weight [C_out, C_in, kh, kw] laid out as [C_out, kh*kw*C_in] is kh*kw
//                 matrices [C_out, C_in], each tiled on its own, so segment_cols = C_in.
//                 Must divide the block's column count.
struct BlockTiling {
  std::size_t strip_rows = 0;
  std::size_t group_cols = 0;
  std::size_t segment_cols = 0;
};

struct MaskBlock {
  MaskView mask;
  BlockTiling tiling;
};

inline constexpr std::size_t kMaxSmallRestarts = 15;

struct CopermuteOptions {
  // At most this many k-means (Lloyd) iterations, and at most this many passes of the swap
  // local search, per start (HE-PEx demo: 20 k-means iterations per round).
  std::size_t max_iter = 20;
  // Number of k-means starts (seeded k-means++) in addition to the start from the current
  // order. 0 = only improve the current order (much weaker when most tiles start non-zero).
  std::size_t restarts = 1;
  // Small problems get more starts for free: while (points x clusters) x starts stays within
  // this budget, up to kMaxSmallRestarts starts are made (8 rows in 3 strips: 15 starts, a
  // few microseconds). 0 disables this.
  std::size_t small_budget = std::size_t{1} << 16;
  // Swap search: clusters examined per point (the most promising ones); all when k-1 <= this.
  std::size_t candidates = 16;
  // Seed of the std::mt19937_64 driving seeding and visiting orders: equal inputs, options and
  // seed give equal permutations on every platform. Not cryptographic (nothing here is secret).
  std::uint64_t seed = 0;
};

struct RowPermutation {
  // perm[i] = the original row placed at position i (new = old[perm], numpy's gather order).
  std::vector<std::int64_t> perm;
  std::size_t tiles_total = 0;     // tiles over all blocks (independent of the order)
  std::size_t nonzero_before = 0;  // non-zero tiles in the given order
  std::size_t nonzero_after = 0;   // ... after permuting (never more than before)
  bool improved = false;           // false: perm is the identity
};

// Clusters the rows shared by all blocks (every block must have the same row count) into row
// strips. Strip heights of the blocks must nest (each divides the next larger one); the
// clustering is exact for the largest strips and refines each strip for the smaller ones.
// Returns the identity when no permutation with strictly fewer non-zero tiles was found.
// Throws std::invalid_argument on malformed input (the message says what is wrong).
RowPermutation copermute_rows(std::span<const MaskBlock> blocks,
                              const CopermuteOptions& options = {});
// One matrix, tiles of t1 rows x t2 columns.
RowPermutation copermute_rows(const MaskView& mask, std::size_t t1, std::size_t t2,
                              const CopermuteOptions& options = {});

// Number of tiles of the blocks, and how many of them are non-zero when row i of every block
// is taken from row_perm[i] (identity when row_perm is empty).
std::size_t count_tiles(std::span<const MaskBlock> blocks);
std::size_t count_nonzero_tiles(std::span<const MaskBlock> blocks,
                                std::span<const std::int64_t> row_perm = {});
std::size_t count_nonzero_tiles(const MaskView& mask, std::size_t t1, std::size_t t2);

struct MatrixPermutation {
  std::vector<std::int64_t> row_perm;  // permuted = mask[row_perm][:, col_perm]
  std::vector<std::int64_t> col_perm;
  std::size_t tiles_total = 0;
  std::size_t nonzero_before = 0;
  std::size_t nonzero_after = 0;
  std::size_t rounds = 0;  // rounds run (one round = rows, then columns)
};

// One matrix on its own: alternate row and column clustering, at most `rounds` rounds, stopping
// when a round changes nothing (HE-PEx: at most 5 rounds, rows then columns).
MatrixPermutation copermute_matrix(const MaskView& mask, std::size_t t1, std::size_t t2,
                                   std::size_t rounds = 5, const CopermuteOptions& options = {});

}  // namespace fheprune::pruning
