// Co-permutation clustering: permutations are permutations, strips balanced, never worse than
// the given order, optimal on small cases (against exhaustive search), blocks tiled on their own.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "fheprune/pruning/copermute.hpp"

namespace fheprune::pruning {
namespace {

using Matrix = std::vector<std::uint8_t>;  // row-major 0/1

Matrix random_mask(std::size_t rows, std::size_t cols, double density, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Matrix m(rows * cols);
  for (auto& v : m) v = (static_cast<double>(rng() >> 11) * 0x1.0p-53) < density ? 1 : 0;
  return m;
}

// Independent reference: non-zero tiles of m[row_perm][:, col_perm], straight from the
// definition (no bit tricks, no shared code with the implementation).
std::size_t naive_nonzero(const Matrix& m, std::size_t rows, std::size_t cols, std::size_t t1,
                          std::size_t t2, const std::vector<std::int64_t>& rp,
                          const std::vector<std::int64_t>& cp) {
  std::size_t count = 0;
  for (std::size_t ti = 0; ti < rows; ti += t1) {
    for (std::size_t tj = 0; tj < cols; tj += t2) {
      bool nz = false;
      for (std::size_t i = ti; i < std::min(ti + t1, rows) && !nz; ++i) {
        for (std::size_t j = tj; j < std::min(tj + t2, cols) && !nz; ++j) {
          const std::size_t r = rp.empty() ? i : static_cast<std::size_t>(rp[i]);
          const std::size_t c = cp.empty() ? j : static_cast<std::size_t>(cp[j]);
          nz = m[r * cols + c] != 0;
        }
      }
      count += nz ? 1 : 0;
    }
  }
  return count;
}

std::vector<std::int64_t> iota_perm(std::size_t n) {
  std::vector<std::int64_t> p(n);
  std::iota(p.begin(), p.end(), std::int64_t{0});
  return p;
}

bool is_permutation(const std::vector<std::int64_t>& p, std::size_t n) {
  if (p.size() != n) return false;
  std::vector<std::int64_t> s = p;
  std::sort(s.begin(), s.end());
  return s == iota_perm(n);
}

// Fewest non-zero tiles over all row permutations (columns fixed).
std::size_t exhaustive_rows(const Matrix& m, std::size_t rows, std::size_t cols, std::size_t t1,
                            std::size_t t2) {
  std::vector<std::int64_t> p = iota_perm(rows);
  std::size_t best = naive_nonzero(m, rows, cols, t1, t2, p, {});
  while (std::next_permutation(p.begin(), p.end())) {
    best = std::min(best, naive_nonzero(m, rows, cols, t1, t2, p, {}));
  }
  return best;
}

TEST(Copermute, ResultIsAPermutationAndCountsAreExact) {
  for (std::size_t rows : {1u, 5u, 31u, 64u, 100u}) {
    for (std::size_t t : {1u, 2u, 4u, 8u}) {
      const std::size_t cols = 37;
      const Matrix m = random_mask(rows, cols, 0.08, rows * 131 + t);
      const MaskView v = MaskView::row_major(m.data(), rows, cols);
      const RowPermutation r = copermute_rows(v, t, t + 1);
      ASSERT_TRUE(is_permutation(r.perm, rows)) << rows << " rows, t=" << t;
      EXPECT_EQ(r.nonzero_before, naive_nonzero(m, rows, cols, t, t + 1, {}, {}));
      EXPECT_EQ(r.nonzero_after, naive_nonzero(m, rows, cols, t, t + 1, r.perm, {}));
      EXPECT_LE(r.nonzero_after, r.nonzero_before);
      EXPECT_EQ(r.tiles_total, ((rows + t - 1) / t) * ((cols + t) / (t + 1)));
      if (r.improved) {
        EXPECT_LT(r.nonzero_after, r.nonzero_before);
      } else {
        EXPECT_EQ(r.perm, iota_perm(rows));
      }
    }
  }
}

TEST(Copermute, NeverWorseThanIdentityAndIdentityWhenNothingToGain) {
  // Dense and empty masks: nothing can improve, the identity comes back.
  const std::size_t rows = 48, cols = 40;
  for (double density : {0.0, 1.0, 0.9}) {
    const Matrix m = random_mask(rows, cols, density, 7);
    const RowPermutation r = copermute_rows(MaskView::row_major(m.data(), rows, cols), 8, 8);
    EXPECT_FALSE(r.improved) << density;
    EXPECT_EQ(r.perm, iota_perm(rows));
    EXPECT_EQ(r.nonzero_after, r.nonzero_before);
  }
  // Random sparse masks at many seeds and tile shapes: never worse.
  for (std::uint64_t seed = 0; seed < 40; ++seed) {
    const std::size_t t1 = 1 + seed % 5, t2 = 1 + (seed / 5) % 4;
    const Matrix m = random_mask(rows, cols, 0.03 + 0.01 * static_cast<double>(seed % 7), seed);
    CopermuteOptions opt;
    opt.seed = seed;
    const RowPermutation r = copermute_rows(MaskView::row_major(m.data(), rows, cols), t1, t2, opt);
    ASSERT_TRUE(is_permutation(r.perm, rows));
    EXPECT_LE(naive_nonzero(m, rows, cols, t1, t2, r.perm, {}),
              naive_nonzero(m, rows, cols, t1, t2, {}, {}));
  }
}

// Rows of three kinds with disjoint supports, 4 of each, shuffled: at strips of 4 the only
// optimum puts each kind in a strip of its own (balanced clusters of exactly t1 rows).
TEST(Copermute, RecoversPlantedBalancedClusters) {
  const std::size_t rows = 12, cols = 12, t1 = 4, t2 = 4;
  std::vector<int> kind(rows);
  for (std::size_t i = 0; i < rows; ++i) kind[i] = static_cast<int>(i % 3);
  std::mt19937_64 rng(3);
  std::shuffle(kind.begin(), kind.end(), rng);
  Matrix m(rows * cols, 0);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j = 0; j < 4; ++j) {
      if ((i + j) % 2 == 0 || j == 0) m[i * cols + 4 * static_cast<std::size_t>(kind[i]) + j] = 1;
    }
  }
  const RowPermutation r = copermute_rows(MaskView::row_major(m.data(), rows, cols), t1, t2);
  ASSERT_TRUE(r.improved);
  EXPECT_EQ(r.nonzero_after, 3u);  // one non-zero tile per strip
  for (std::size_t s = 0; s < rows; s += t1) {
    for (std::size_t i = s; i < s + t1; ++i) {
      EXPECT_EQ(kind[static_cast<std::size_t>(r.perm[i])], kind[static_cast<std::size_t>(r.perm[s])]);
    }
  }
}

// Kinds of unequal sizes (6 and 2 rows, strips of 4): the balancing must split the large kind
// and the partial strip (rows - (k-1)*t1 rows) sits at the bottom.
TEST(Copermute, BalancesUnequalClustersIntoStrips) {
  const std::size_t rows = 10, cols = 8, t1 = 4, t2 = 4;
  // kinds: 6 rows on columns 0..3, 4 rows on columns 4..7; 10 rows = strips 4, 4, 2.
  std::vector<int> kind = {0, 1, 0, 1, 0, 0, 1, 0, 1, 0};
  Matrix m(rows * cols, 0);
  for (std::size_t i = 0; i < rows; ++i) m[i * cols + 4 * static_cast<std::size_t>(kind[i]) + i % 4] = 1;
  const RowPermutation r = copermute_rows(MaskView::row_major(m.data(), rows, cols), t1, t2);
  ASSERT_TRUE(is_permutation(r.perm, rows));
  // Optimum: strips {0000}, {1111}, {00} -> 3 non-zero tiles.
  EXPECT_EQ(r.nonzero_after, 3u);
  EXPECT_EQ(r.nonzero_after, exhaustive_rows(m, rows, cols, t1, t2));
}

// On matrices as small as the paper's Fig. 3/4 examples the heuristic finds the optimum of an
// exhaustive search over all row permutations.
TEST(Copermute, MatchesExhaustiveSearchOnSmallMatrices) {
  struct Case {
    std::size_t rows, cols, t1, t2;
    double density;
  };
  const Case cases[] = {{8, 12, 2, 3, 0.25}, {8, 12, 4, 3, 0.15}, {8, 10, 3, 2, 0.2},
                        {7, 9, 2, 3, 0.2},   {6, 8, 2, 2, 0.3},   {8, 16, 4, 4, 0.12}};
  int checked = 0;
  for (const Case& c : cases) {
    for (std::uint64_t seed = 0; seed < 12; ++seed) {
      const Matrix m = random_mask(c.rows, c.cols, c.density, 1000 * c.rows + 10 * c.t1 + seed);
      CopermuteOptions opt;
      opt.seed = seed;
      const RowPermutation r =
          copermute_rows(MaskView::row_major(m.data(), c.rows, c.cols), c.t1, c.t2, opt);
      const std::size_t best = exhaustive_rows(m, c.rows, c.cols, c.t1, c.t2);
      EXPECT_EQ(r.nonzero_after, best) << c.rows << "x" << c.cols << " tiles " << c.t1 << "x"
                                       << c.t2 << " seed " << seed;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 72);
}

// Fig. 4 of the paper: a 4x8 matrix, 2x2 tiles; alternating rows and columns reaches the
// optimum of an exhaustive search over all row and column permutations (4! * 8!).
TEST(Copermute, Fig4MatrixReachesJointOptimum) {
  // A 4x8 pattern (rows = output neurons) whose zeros are scattered in the given order:
  // 2 zero tiles out of 8. The best arrangement has 4.
  const Matrix m = {
      1, 0, 1, 0, 0, 1, 0, 0,  //
      0, 1, 0, 0, 1, 0, 1, 1,  //
      1, 0, 1, 0, 0, 0, 0, 0,  //
      0, 0, 0, 0, 1, 0, 1, 1,  //
  };
  const std::size_t rows = 4, cols = 8;
  std::size_t best = naive_nonzero(m, rows, cols, 2, 2, {}, {});
  const std::size_t before = best;
  std::vector<std::int64_t> rp = iota_perm(rows);
  do {
    std::vector<std::int64_t> cp = iota_perm(cols);
    do {
      best = std::min(best, naive_nonzero(m, rows, cols, 2, 2, rp, cp));
    } while (std::next_permutation(cp.begin(), cp.end()));
  } while (std::next_permutation(rp.begin(), rp.end()));
  ASSERT_LT(best, before);
  const MatrixPermutation r = copermute_matrix(MaskView::row_major(m.data(), rows, cols), 2, 2);
  ASSERT_TRUE(is_permutation(r.row_perm, rows));
  ASSERT_TRUE(is_permutation(r.col_perm, cols));
  EXPECT_EQ(r.nonzero_before, before);
  EXPECT_EQ(r.nonzero_after, naive_nonzero(m, rows, cols, 2, 2, r.row_perm, r.col_perm));
  EXPECT_EQ(r.nonzero_after, best);
  EXPECT_EQ(r.tiles_total, 8u);
  EXPECT_LE(r.rounds, 5u);
}

TEST(Copermute, MatrixAlternationNeverWorseAndConsistent) {
  for (std::uint64_t seed = 0; seed < 6; ++seed) {
    const std::size_t rows = 40 + seed * 7, cols = 56 - seed * 3;
    const Matrix m = random_mask(rows, cols, 0.05, seed);
    CopermuteOptions opt;
    opt.seed = seed;
    const MatrixPermutation r =
        copermute_matrix(MaskView::row_major(m.data(), rows, cols), 4, 8, 5, opt);
    ASSERT_TRUE(is_permutation(r.row_perm, rows));
    ASSERT_TRUE(is_permutation(r.col_perm, cols));
    EXPECT_EQ(r.nonzero_before, naive_nonzero(m, rows, cols, 4, 8, {}, {}));
    EXPECT_EQ(r.nonzero_after, naive_nonzero(m, rows, cols, 4, 8, r.row_perm, r.col_perm));
    EXPECT_LE(r.nonzero_after, r.nonzero_before);
  }
}

TEST(Copermute, DeterministicGivenSeed) {
  const std::size_t rows = 96, cols = 64;
  const Matrix m = random_mask(rows, cols, 0.04, 11);
  const MaskView v = MaskView::row_major(m.data(), rows, cols);
  CopermuteOptions opt;
  opt.seed = 42;
  const RowPermutation a = copermute_rows(v, 8, 8, opt);
  const RowPermutation b = copermute_rows(v, 8, 8, opt);
  EXPECT_EQ(a.perm, b.perm);
  EXPECT_TRUE(a.improved);
}

// Tandem blocks: [producer | consumer^T]. Each block keeps its own tiling: groups restart at
// each block's column 0 and at every segment (Conv2d kernel positions).
TEST(Copermute, BlocksKeepTheirOwnTiling) {
  const std::size_t rows = 16;
  const Matrix prod = random_mask(rows, 6, 0.15, 1);     // producer rows: 16 x 6
  const Matrix cons = random_mask(10, rows, 0.15, 2);    // consumer: 10 x 16 (columns = rows)
  const MaskView pv = MaskView::row_major(prod.data(), rows, 6);
  const MaskView cv = MaskView::row_major(cons.data(), 10, rows).transposed();  // 16 x 10
  const MaskBlock blocks[] = {{pv, {4, 4, 0}}, {cv, {4, 4, 0}}};
  // Counting: the concatenation counts exactly what the two matrices count on their own.
  EXPECT_EQ(count_nonzero_tiles(blocks), naive_nonzero(prod, rows, 6, 4, 4, {}, {}) +
                                             naive_nonzero(cons, 10, rows, 4, 4, {}, {}));
  EXPECT_EQ(count_tiles(blocks), 4u * 2u + 3u * 4u);
  const RowPermutation r = copermute_rows(blocks);
  ASSERT_TRUE(is_permutation(r.perm, rows));
  EXPECT_EQ(r.nonzero_after, naive_nonzero(prod, rows, 6, 4, 4, r.perm, {}) +
                                 naive_nonzero(cons, 10, rows, 4, 4, {}, r.perm));
  EXPECT_LE(r.nonzero_after, r.nonzero_before);

  // Segments: a 2-segment block counts as two matrices side by side.
  const Matrix two = random_mask(rows, 10, 0.2, 3);
  const MaskBlock seg[] = {{MaskView::row_major(two.data(), rows, 10), {4, 3, 5}}};
  Matrix left(rows * 5), right(rows * 5);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j = 0; j < 5; ++j) {
      left[i * 5 + j] = two[i * 10 + j];
      right[i * 5 + j] = two[i * 10 + 5 + j];
    }
  }
  EXPECT_EQ(count_nonzero_tiles(seg),
            naive_nonzero(left, rows, 5, 4, 3, {}, {}) + naive_nonzero(right, rows, 5, 4, 3, {}, {}));
  EXPECT_EQ(count_tiles(seg), 4u * 2u * 2u);
}

// A producer tiled 4 rows high next to a consumer^T tiled 2 rows high (t1=4, t2=2): nested
// strips. Checked against exhaustive search on 8 rows.
TEST(Copermute, NestedStripHeights) {
  const std::size_t rows = 8;
  int optimal = 0;
  for (std::uint64_t seed = 0; seed < 8; ++seed) {
    const Matrix prod = random_mask(rows, 8, 0.12, 10 + seed);  // tiles 4 x 2
    const Matrix cons = random_mask(8, rows, 0.12, 20 + seed);  // consumer 8 x 8, tiles 4 x 2
    const MaskBlock blocks[] = {{MaskView::row_major(prod.data(), rows, 8), {4, 2, 0}},
                                {MaskView::row_major(cons.data(), 8, rows).transposed(), {2, 4, 0}}};
    auto total = [&](const std::vector<std::int64_t>& p) {
      return naive_nonzero(prod, rows, 8, 4, 2, p, {}) + naive_nonzero(cons, 8, rows, 4, 2, {}, p);
    };
    std::vector<std::int64_t> p = iota_perm(rows);
    std::size_t best = total(p);
    while (std::next_permutation(p.begin(), p.end())) best = std::min(best, total(p));
    CopermuteOptions opt;
    opt.seed = seed;
    const RowPermutation r = copermute_rows(blocks, opt);
    ASSERT_TRUE(is_permutation(r.perm, rows));
    EXPECT_EQ(r.nonzero_before, total(iota_perm(rows)));
    EXPECT_EQ(r.nonzero_after, total(r.perm));
    EXPECT_LE(r.nonzero_after, r.nonzero_before);
    EXPECT_GE(r.nonzero_after, best);
    optimal += r.nonzero_after == best ? 1 : 0;
  }
  EXPECT_GE(optimal, 6);  // coarse-to-fine is a heuristic, but nearly always optimal here
}

TEST(Copermute, TransposedViewsCountLikeCopies) {
  const std::size_t rows = 23, cols = 37;
  const Matrix m = random_mask(rows, cols, 0.1, 5);
  Matrix t(rows * cols);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j = 0; j < cols; ++j) t[j * rows + i] = m[i * cols + j];
  }
  const MaskView tv = MaskView::row_major(m.data(), rows, cols).transposed();
  EXPECT_EQ(count_nonzero_tiles(tv, 4, 8), naive_nonzero(t, cols, rows, 4, 8, {}, {}));
  CopermuteOptions opt;
  opt.seed = 9;
  const RowPermutation a = copermute_rows(tv, 4, 8, opt);
  const RowPermutation b = copermute_rows(MaskView::row_major(t.data(), cols, rows), 4, 8, opt);
  EXPECT_EQ(a.perm, b.perm);
}

TEST(Copermute, RejectsMalformedInput) {
  const Matrix a = random_mask(8, 8, 0.5, 1), b = random_mask(6, 8, 0.5, 2);
  const MaskView av = MaskView::row_major(a.data(), 8, 8);
  const MaskBlock mismatched[] = {{av, {4, 4, 0}}, {MaskView::row_major(b.data(), 6, 8), {4, 4, 0}}};
  EXPECT_THROW(copermute_rows(mismatched), std::invalid_argument);
  const MaskBlock bad_segment[] = {{av, {4, 4, 3}}};
  EXPECT_THROW(copermute_rows(bad_segment), std::invalid_argument);
  const MaskBlock zero_tile[] = {{av, {0, 4, 0}}};
  EXPECT_THROW(copermute_rows(zero_tile), std::invalid_argument);
  const MaskBlock not_nested[] = {{av, {4, 4, 0}}, {av, {3, 4, 0}}};
  EXPECT_THROW(copermute_rows(not_nested), std::invalid_argument);
  EXPECT_THROW(copermute_rows(std::span<const MaskBlock>{}), std::invalid_argument);
  const MaskBlock ok[] = {{av, {4, 4, 0}}};
  const std::vector<std::int64_t> dup = {0, 0, 1, 2, 3, 4, 5, 6};
  EXPECT_THROW(count_nonzero_tiles(ok, dup), std::invalid_argument);
}

}  // namespace
}  // namespace fheprune::pruning
