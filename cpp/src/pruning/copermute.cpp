// HE-PEx co-permutation clustering (paper Section 4.2, Fig. 4; App. A.1).
//
// How we read the paper's definition. For an M x N mask (M rows to cluster) and t1 x t2
// tiles the paper writes: k-means with k = ceil(t1/M) clusters, and a distance that, for two
// mask vectors a and b, "computes the number of non-zero groups of size ceil(t2/N) in (a & b)";
// balancing "reassigns points from centroids with > t1 points to centroids that have the
// minimum distance to the point". Taken literally the two ratios are inverted (ceil(t1/M) = 1
// for every M >= t1, and groups of ceil(t2/N) = 1 columns would ignore the tile width), so:
//
//  * k = ceil(M / t1): one cluster per strip of t1 rows. Cluster capacities are the strip
//    heights: t1 for all strips but the last, M - (k-1)*t1 for the last (a strip that is not
//    full can only sit at the bottom edge, where the padding is).
//  * A group is a tile column: t2 consecutive columns aligned to the tiling (ceil(N/t2) groups;
//    with several blocks, or Conv2d kernel positions, the groups restart at each block's /
//    segment's column 0). A row a is reduced to its group occupancy A (bit g set iff a has a
//    non-zero in group g). The tile (strip s, group g) is non-zero iff some row of strip s has
//    bit g, so the non-zero tiles of a cluster are popcount(OR of its rows' occupancies) and
//    the total over clusters is exactly what the permutation should minimize.
//  * Distance. Literally, "non-zero groups in (a & b)" counts the groups where both vectors
//    are non-zero: that is a similarity (minimizing it would scatter rows that share tiles,
//    making more of them non-zero). What the clustering needs is the number of groups in
//    which a is non-zero and the cluster (the centroid b = occupancy of the cluster's other
//    members) is zero: popcount(A & ~B), the number of tiles that a newly makes non-zero when
//    it joins the cluster. That is our grouped Hamming distance (one-sided). Ties, frequent
//    on sparse masks, are broken by the mean overlap <A, counts>/size, i.e. by ordinary
//    k-means on group-occupancy vectors.
//  * Balancing as in the paper: over-full clusters hand points to the nearest cluster that
//    has room; the points handed over are those that lose least by moving.
//
// Lloyd iterations on this distance are not monotone and stall on plateaus (a tile only
// empties when its last non-zero row leaves), so each start ends with an exact local search:
// two rows in different clusters swap when that lowers the number of non-zero tiles, or keeps
// it and raises sum_c sum_g count_c[g]^2 (the k-means criterion for fixed cluster sizes; it
// gathers rows that share groups, which is what eventually empties tiles). We keep the best of
// the current order (improved by the same local search) and `restarts` k-means++ starts, and
// return the identity unless the exact count of non-zero tiles strictly dropped.
//
// Speed: occupancies are bit-packed (one bit per tile column, 64 per word), each cluster keeps
// its per-group member counts bit-sliced (count bit p of all groups in one word array), so
// union, "groups owned by one member", insertion cost and <A, counts> are a few AND/OR and
// popcounts per word. A 4096 x 4096 mask at 32 x 32 tiles has 128 groups per row: two words.
//
// Blocks whose strips differ (a producer tiled t1 x t2 next to a transposed consumer whose
// strips are t2 high) are handled coarse to fine: strip heights must nest; rows are clustered
// into the largest strips counting every block's groups there, then each strip is clustered
// again into the next smaller strips counting only the blocks tiled that finely, and so on.
#include "fheprune/pruning/copermute.hpp"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <queue>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

namespace fheprune::pruning {
namespace {

using Word = std::uint64_t;
constexpr std::size_t kWordBits = 64;
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
// Lloyd stops after this many iterations without a better assignment (it oscillates after a
// few iterations; measured on 4096 x 4096 masks, later iterations never paid off).
constexpr std::size_t kLloydPatience = 2;

std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

std::int64_t popcount(Word w) { return std::popcount(w); }

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform integer in [0, n) from the raw generator by rejection, so that results do not depend
// on the standard library's (implementation-defined) distributions.
std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  const std::uint64_t rem = (kMax % n + 1) % n;  // 2^64 mod n
  for (;;) {
    const std::uint64_t x = rng();
    if (x <= kMax - rem) return x % n;
  }
}

template <typename T>
void shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) {
    std::swap(v[i - 1], v[uniform_below(rng, i)]);
  }
}

// ------------------------------------------------------------------------------------------
// Group occupancy of every row of a block.

struct BlockInfo {
  std::size_t strip = 0;
  std::size_t group = 0;
  std::size_t segment = 0;
  std::size_t segments = 0;
  std::size_t groups_per_segment = 0;
  std::size_t groups = 0;
};

struct GroupBits {
  std::size_t rows = 0;
  std::size_t words = 0;
  std::vector<Word> bits;

  [[nodiscard]] const Word* row(std::size_t i) const { return bits.data() + i * words; }
  Word* row(std::size_t i) { return bits.data() + i * words; }
};

BlockInfo check_block(const MaskBlock& b, std::size_t index, std::size_t rows) {
  const std::string name = "block " + std::to_string(index);
  const MaskView& m = b.mask;
  if (m.rows != rows) {
    throw std::invalid_argument(name + " has " + std::to_string(m.rows) +
                                " rows, but block 0 has " + std::to_string(rows) +
                                ": all blocks must share the rows being permuted");
  }
  if (m.cols == 0) throw std::invalid_argument(name + " has no columns");
  if (m.rows > 0 && m.data == nullptr) throw std::invalid_argument(name + " has no data");
  const BlockTiling& t = b.tiling;
  if (t.strip_rows == 0 || t.group_cols == 0) {
    throw std::invalid_argument(name + ": tile dimensions must be positive, got strip_rows=" +
                                std::to_string(t.strip_rows) +
                                ", group_cols=" + std::to_string(t.group_cols));
  }
  BlockInfo info;
  info.strip = t.strip_rows;
  info.group = t.group_cols;
  info.segment = t.segment_cols == 0 ? m.cols : t.segment_cols;
  if (m.cols % info.segment != 0) {
    throw std::invalid_argument(name + ": segment_cols=" + std::to_string(info.segment) +
                                " must divide the block's " + std::to_string(m.cols) +
                                " columns");
  }
  info.segments = m.cols / info.segment;
  info.groups_per_segment = ceil_div(info.segment, info.group);
  info.groups = info.segments * info.groups_per_segment;
  if (info.groups >= kNone) throw std::invalid_argument(name + " has too many tile columns");
  return info;
}

bool any_nonzero(const std::uint8_t* p, std::size_t n) {
  Word acc = 0;
  std::size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    Word w;
    std::memcpy(&w, p + k, sizeof w);
    acc |= w;
  }
  for (; k < n; ++k) acc |= p[k];
  return acc != 0;
}

GroupBits build_groups(const MaskView& m, const BlockInfo& info) {
  GroupBits g;
  g.rows = m.rows;
  g.words = ceil_div(info.groups, kWordBits);
  g.bits.assign(g.rows * g.words, 0);
  std::vector<std::uint32_t> col_group(m.cols);
  for (std::size_t j = 0; j < m.cols; ++j) {
    col_group[j] = static_cast<std::uint32_t>((j / info.segment) * info.groups_per_segment +
                                              (j % info.segment) / info.group);
  }
  const auto rs = m.row_stride;
  const auto cs = m.col_stride;
  if (std::llabs(cs) <= std::llabs(rs)) {  // rows are (close to) contiguous: row by row
    for (std::size_t i = 0; i < m.rows; ++i) {
      const std::uint8_t* base = m.data + static_cast<std::ptrdiff_t>(i) * rs;
      Word* out = g.row(i);
      if (cs == 1) {
        for (std::size_t s = 0; s < info.segments; ++s) {
          const std::size_t seg_lo = s * info.segment;
          const std::size_t seg_hi = seg_lo + info.segment;
          for (std::size_t q = 0; q < info.groups_per_segment; ++q) {
            const std::size_t lo = seg_lo + q * info.group;
            const std::size_t hi = std::min(lo + info.group, seg_hi);
            if (any_nonzero(base + lo, hi - lo)) {
              const std::size_t gi = s * info.groups_per_segment + q;
              out[gi / kWordBits] |= Word{1} << (gi % kWordBits);
            }
          }
        }
      } else {
        for (std::size_t j = 0; j < m.cols; ++j) {
          if (base[static_cast<std::ptrdiff_t>(j) * cs] != 0) {
            const std::uint32_t gi = col_group[j];
            out[gi / kWordBits] |= Word{1} << (gi % kWordBits);
          }
        }
      }
    }
  } else {  // columns are contiguous (a transposed view): column by column, branch-free
    for (std::size_t j = 0; j < m.cols; ++j) {
      const std::uint8_t* base = m.data + static_cast<std::ptrdiff_t>(j) * cs;
      const std::uint32_t gi = col_group[j];
      const std::size_t w = gi / kWordBits;
      const Word bit = Word{1} << (gi % kWordBits);
      Word* out = g.bits.data() + w;
      for (std::size_t i = 0; i < m.rows; ++i) {
        const Word nz = base[static_cast<std::ptrdiff_t>(i) * rs] != 0 ? ~Word{0} : Word{0};
        out[i * g.words] |= bit & nz;
      }
    }
  }
  return g;
}

// Non-zero tiles of one block whose rows are taken in the order perm (identity if null).
std::size_t nonzero_tiles(const GroupBits& g, std::size_t strip, const std::int64_t* perm) {
  std::vector<Word> acc(g.words);
  std::size_t total = 0;
  for (std::size_t start = 0; start < g.rows; start += strip) {
    std::fill(acc.begin(), acc.end(), Word{0});
    const std::size_t end = std::min(start + strip, g.rows);
    for (std::size_t i = start; i < end; ++i) {
      const Word* r = g.row(perm ? static_cast<std::size_t>(perm[i]) : i);
      for (std::size_t w = 0; w < g.words; ++w) acc[w] |= r[w];
    }
    for (Word w : acc) total += static_cast<std::size_t>(std::popcount(w));
  }
  return total;
}

// ------------------------------------------------------------------------------------------
// Balanced clustering of a set of rows into clusters with fixed capacities.

struct Objective {
  std::int64_t tiles = 0;  // non-zero tiles: minimize
  std::int64_t conc = 0;   // sum_c sum_g count_c[g]^2: maximize (ties only)

  [[nodiscard]] bool better_than(const Objective& o) const {
    return tiles < o.tiles || (tiles == o.tiles && conc > o.conc);
  }
};

class Clusterer {
 public:
  Clusterer(const GroupBits& g, std::span<const std::uint32_t> points,
            std::vector<std::size_t> caps, const CopermuteOptions& options)
      : n_(points.size()),
        k_(caps.size()),
        w_(g.words),
        caps_(std::move(caps)),
        options_(options),
        points_(points.begin(), points.end()) {
    const std::size_t max_cap = *std::max_element(caps_.begin(), caps_.end());
    p_ = static_cast<std::size_t>(std::bit_width(max_cap));
    rows_.resize(n_ * w_);
    ones_.resize(n_);
    for (std::size_t x = 0; x < n_; ++x) {
      std::memcpy(rows_.data() + x * w_, g.row(points_[x]), w_ * sizeof(Word));
      std::int64_t c = 0;
      for (std::size_t w = 0; w < w_; ++w) c += popcount(rows_[x * w_ + w]);
      ones_[x] = c;
    }
    assign_.assign(n_, 0);
    slot_.assign(n_, 0);
    members_.resize(k_);
    planes_.assign(k_ * p_ * w_, 0);
    union_.assign(k_ * w_, 0);
    single_.assign(k_ * w_, 0);
    tiles_.assign(k_, 0);
    version_.assign(k_, 0);
    self_dot_.assign(n_, 0);
    self_version_.assign(n_, std::numeric_limits<std::uint64_t>::max());
    scratch_a_.resize(w_);
  }

  // Clusters of global row indices; cluster c holds exactly caps[c] rows.
  std::vector<std::vector<std::uint32_t>> run(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    // Start 0: the current order, cut into strips, improved by the local search.
    std::vector<std::uint32_t> start(n_);
    for (std::size_t c = 0, x = 0; c < k_; ++c) {
      for (std::size_t i = 0; i < caps_[c]; ++i) start[x++] = static_cast<std::uint32_t>(c);
    }
    set_assignment(start);
    local_search(rng);
    Objective best = objective();
    std::vector<std::uint32_t> best_assign = assign_;
    std::size_t restarts = options_.restarts;
    if (options_.small_budget > 0) {
      restarts = std::max(restarts, std::min(kMaxSmallRestarts, options_.small_budget / (n_ * k_)));
    }
    for (std::size_t r = 0; r < restarts; ++r) {
      lloyd(rng);
      local_search(rng);
      const Objective o = objective();
      if (o.better_than(best)) {
        best = o;
        best_assign = assign_;
      }
    }
    std::vector<std::vector<std::uint32_t>> clusters(k_);
    for (std::size_t x = 0; x < n_; ++x) clusters[best_assign[x]].push_back(points_[x]);
    return clusters;
  }

 private:
  [[nodiscard]] const Word* row(std::size_t x) const { return rows_.data() + x * w_; }
  Word* plane(std::size_t c, std::size_t p) { return planes_.data() + (c * p_ + p) * w_; }
  [[nodiscard]] const Word* plane(std::size_t c, std::size_t p) const {
    return planes_.data() + (c * p_ + p) * w_;
  }
  [[nodiscard]] const Word* uni(std::size_t c) const { return union_.data() + c * w_; }
  [[nodiscard]] const Word* single(std::size_t c) const { return single_.data() + c * w_; }

  // Bit-sliced counter updates: count_c[g] += / -= bit g of row x (ripple carry / borrow).
  void add(std::size_t c, std::size_t x) {
    const Word* r = row(x);
    Word* base = plane(c, 0);
    for (std::size_t w = 0; w < w_; ++w) {
      Word carry = r[w];
      for (std::size_t p = 0; p < p_ && carry != 0; ++p) {
        Word& v = base[p * w_ + w];
        const Word t = v & carry;
        v ^= carry;
        carry = t;
      }
    }
  }
  void remove(std::size_t c, std::size_t x) {
    const Word* r = row(x);
    Word* base = plane(c, 0);
    for (std::size_t w = 0; w < w_; ++w) {
      Word borrow = r[w];
      for (std::size_t p = 0; p < p_ && borrow != 0; ++p) {
        Word& v = base[p * w_ + w];
        const Word t = ~v & borrow;
        v ^= borrow;
        borrow = t;
      }
    }
  }
  // Union (groups with count >= 1), groups with count == 1, and the cluster's non-zero tiles.
  void refresh(std::size_t c) {
    version_[c] = ++clock_;  // unique across clusters: a cached value never matches by chance
    Word* u = union_.data() + c * w_;
    Word* s = single_.data() + c * w_;
    std::int64_t t = 0;
    for (std::size_t w = 0; w < w_; ++w) {
      Word high = 0;
      for (std::size_t p = 1; p < p_; ++p) high |= plane(c, p)[w];
      const Word low = plane(c, 0)[w];
      u[w] = low | high;
      s[w] = low & ~high;
      t += popcount(u[w]);
    }
    tiles_[c] = t;
  }
  // <A_x, count_c> for x's own cluster, cached until that cluster changes.
  std::int64_t self_dot(std::size_t x) {
    const std::uint32_t c = assign_[x];
    if (self_version_[x] != version_[c]) {
      self_dot_[x] = dot(c, x);
      self_version_[x] = version_[c];
    }
    return self_dot_[x];
  }
  // <A_x, count_c>
  [[nodiscard]] std::int64_t dot(std::size_t c, std::size_t x) const {
    const Word* r = row(x);
    std::int64_t total = 0;
    for (std::size_t p = 0; p < p_; ++p) {
      const Word* v = plane(c, p);
      std::int64_t s = 0;
      for (std::size_t w = 0; w < w_; ++w) s += popcount(v[w] & r[w]);
      total += s << p;
    }
    return total;
  }
  [[nodiscard]] std::int64_t sum_squares(std::size_t c) const {
    std::int64_t total = 0;
    for (std::size_t p = 0; p < p_; ++p) {
      for (std::size_t q = p; q < p_; ++q) {
        std::int64_t s = 0;
        for (std::size_t w = 0; w < w_; ++w) s += popcount(plane(c, p)[w] & plane(c, q)[w]);
        total += (p == q ? s : 2 * s) << (p + q);
      }
    }
    return total;
  }
  [[nodiscard]] Objective objective() const {
    Objective o;
    for (std::size_t c = 0; c < k_; ++c) {
      o.tiles += tiles_[c];
      o.conc += sum_squares(c);
    }
    return o;
  }

  void set_assignment(const std::vector<std::uint32_t>& a) {
    assign_ = a;
    for (auto& m : members_) m.clear();
    std::fill(planes_.begin(), planes_.end(), Word{0});
    for (std::size_t x = 0; x < n_; ++x) {
      slot_[x] = static_cast<std::uint32_t>(members_[a[x]].size());
      members_[a[x]].push_back(static_cast<std::uint32_t>(x));
      add(a[x], x);
    }
    for (std::size_t c = 0; c < k_; ++c) refresh(c);
  }

  // k-means++ seeding on the Hamming distance between group occupancies.
  std::vector<std::uint32_t> seeds(std::mt19937_64& rng) const {
    std::vector<std::uint32_t> chosen;
    std::vector<char> taken(n_, 0);
    std::vector<std::uint64_t> dist(n_, std::numeric_limits<std::uint64_t>::max());
    auto take = [&](std::size_t s) {
      chosen.push_back(static_cast<std::uint32_t>(s));
      taken[s] = 1;
      const Word* rs = row(s);
      for (std::size_t x = 0; x < n_; ++x) {
        std::uint64_t d = 0;
        const Word* rx = row(x);
        for (std::size_t w = 0; w < w_; ++w) d += static_cast<std::uint64_t>(popcount(rx[w] ^ rs[w]));
        dist[x] = std::min(dist[x], d * d);
      }
    };
    take(uniform_below(rng, n_));
    while (chosen.size() < k_) {
      std::uint64_t total = 0;
      for (std::size_t x = 0; x < n_; ++x) total += taken[x] ? 0 : dist[x];
      std::size_t pick = 0;
      if (total == 0) {  // every remaining point duplicates a seed: pick one uniformly
        std::uint64_t r = uniform_below(rng, n_ - chosen.size());
        for (pick = 0; pick < n_; ++pick) {
          if (!taken[pick] && r-- == 0) break;
        }
      } else {
        std::uint64_t r = uniform_below(rng, total);
        for (pick = 0; pick < n_; ++pick) {
          const std::uint64_t d = taken[pick] ? 0 : dist[pick];
          if (r < d) break;
          r -= d;
        }
      }
      take(pick);
    }
    return chosen;
  }

  // Cost of point x joining cluster c (x itself left out of c when it is a member): new
  // non-zero tiles, minus the mean overlap scaled below 1 (so it only breaks ties).
  // inv_size[c] = 1/|c| and inv_size[k + c] = 1/(|c| - 1) (0 when that is empty);
  // inv_ones = 1/(|A_x| + 1).
  [[nodiscard]] double join_cost(std::size_t c, std::size_t x, bool member,
                                 const std::vector<double>& inv_size, double inv_ones) const {
    const Word* r = row(x);
    const Word* u = uni(c);
    const Word* s = single(c);
    std::int64_t fresh = 0;
    for (std::size_t w = 0; w < w_; ++w) {
      const Word others = member ? (u[w] & ~(r[w] & s[w])) : u[w];
      fresh += popcount(r[w] & ~others);
    }
    const double overlap = static_cast<double>(dot(c, x) - (member ? ones_[x] : 0));
    return static_cast<double>(fresh) - overlap * inv_size[member ? k_ + c : c] * inv_ones;
  }

  // Balanced k-means (HE-PEx): assign every point to its nearest centroid, then move points
  // out of over-full clusters into the nearest cluster with room. Leaves the best assignment
  // seen (by the exact objective) in place.
  void lloyd(std::mt19937_64& rng) {
    const std::vector<std::uint32_t> init = seeds(rng);
    // Centroids of the first iteration: the seeds alone.
    for (auto& m : members_) m.clear();
    std::fill(planes_.begin(), planes_.end(), Word{0});
    for (std::size_t c = 0; c < k_; ++c) {
      members_[c].push_back(init[c]);
      add(c, init[c]);
      refresh(c);
    }
    std::vector<std::uint32_t> prev(n_, kNone);
    std::vector<std::uint32_t> next(n_);
    std::vector<double> cost(n_ * k_);
    Objective best;
    std::vector<std::uint32_t> best_assign;
    std::size_t stale = 0;  // iterations since the best assignment last improved
    std::vector<double> inv_size(2 * k_);
    for (std::size_t it = 0; it < std::max<std::size_t>(options_.max_iter, 1); ++it) {
      for (std::size_t c = 0; c < k_; ++c) {
        const auto size = static_cast<double>(members_[c].size());
        inv_size[c] = size > 0 ? 1.0 / size : 0.0;
        inv_size[k_ + c] = size > 1 ? 1.0 / (size - 1) : 0.0;
      }
      for (std::size_t x = 0; x < n_; ++x) {
        double* cx = cost.data() + x * k_;
        const double inv_ones = 1.0 / static_cast<double>(ones_[x] + 1);
        std::uint32_t arg = 0;
        for (std::size_t c = 0; c < k_; ++c) {
          cx[c] = join_cost(c, x, prev[x] == c, inv_size, inv_ones);
          if (cx[c] < cx[arg] || (cx[c] == cx[arg] && c == prev[x])) {
            arg = static_cast<std::uint32_t>(c);
          }
        }
        next[x] = arg;
      }
      balance(cost, next);
      if (next == prev) break;
      set_assignment(next);
      prev = next;
      const Objective o = objective();
      if (best_assign.empty() || o.better_than(best)) {
        best = o;
        best_assign = next;
        stale = 0;
      } else if (++stale >= kLloydPatience) {
        break;  // simultaneous reassignment oscillates once the gains are made
      }
    }
    if (best_assign != assign_) set_assignment(best_assign);
  }

  void balance(const std::vector<double>& cost, std::vector<std::uint32_t>& a) const {
    std::vector<std::size_t> size(k_, 0);
    for (std::uint32_t c : a) ++size[c];
    struct Move {
      double penalty;
      std::uint32_t x;
      std::uint32_t target;
      bool operator>(const Move& o) const {
        return penalty > o.penalty || (penalty == o.penalty && x > o.x);
      }
    };
    auto nearest_with_room = [&](std::uint32_t x) {
      const double* cx = cost.data() + static_cast<std::size_t>(x) * k_;
      std::uint32_t best = kNone;
      for (std::size_t c = 0; c < k_; ++c) {
        if (size[c] < caps_[c] && (best == kNone || cx[c] < cx[best])) {
          best = static_cast<std::uint32_t>(c);
        }
      }
      return Move{cx[best] - cx[a[x]], x, best};
    };
    std::priority_queue<Move, std::vector<Move>, std::greater<>> heap;
    for (std::size_t x = 0; x < n_; ++x) {
      if (size[a[x]] > caps_[a[x]]) heap.push(nearest_with_room(static_cast<std::uint32_t>(x)));
    }
    while (!heap.empty()) {
      const Move m = heap.top();
      heap.pop();
      const std::uint32_t src = a[m.x];
      if (size[src] <= caps_[src]) continue;
      if (size[m.target] >= caps_[m.target]) {
        heap.push(nearest_with_room(m.x));
        continue;
      }
      --size[src];
      ++size[m.target];
      a[m.x] = m.target;
    }
  }

  void apply_swap(std::size_t a, std::size_t b) {
    const std::uint32_t c = assign_[a];
    const std::uint32_t d = assign_[b];
    remove(c, a);
    add(c, b);
    remove(d, b);
    add(d, a);
    refresh(c);
    refresh(d);
    members_[c][slot_[a]] = static_cast<std::uint32_t>(b);
    members_[d][slot_[b]] = static_cast<std::uint32_t>(a);
    std::swap(slot_[a], slot_[b]);
    assign_[a] = d;
    assign_[b] = c;
  }

  // Swap local search on (non-zero tiles, concentration); at most max_iter passes.
  void local_search(std::mt19937_64& rng) {
    if (k_ < 2) return;
    std::vector<std::uint32_t> order(n_);
    std::iota(order.begin(), order.end(), 0U);
    struct Candidate {
      std::int64_t fresh;
      std::int64_t overlap;
      std::uint32_t cluster;
    };
    std::vector<Candidate> cands;
    cands.reserve(k_);
    std::vector<Word>& after_a = scratch_a_;  // union of a's cluster without a
    // "Don't look" bits: a point whose last scan found nothing is skipped while its cluster and
    // the candidate clusters it examined are unchanged (their versions are not newer).
    const std::size_t m_max = std::min(k_ - 1, std::max<std::size_t>(options_.candidates, 1));
    std::vector<std::uint64_t> scanned(n_, 0);  // clock_ at the last fruitless scan; 0 = never
    std::vector<std::uint32_t> examined(n_ * m_max);
    auto unchanged = [&](std::uint32_t a) {
      const std::uint64_t t = scanned[a];
      if (t == 0 || version_[assign_[a]] > t) return false;
      for (std::size_t i = 0; i < m_max; ++i) {
        if (version_[examined[a * m_max + i]] > t) return false;
      }
      return true;
    };
    for (std::size_t pass = 0; pass < options_.max_iter; ++pass) {
      shuffle(order, rng);
      std::size_t moves = 0;
      for (const std::uint32_t a : order) {
        if (unchanged(a)) continue;
        const std::uint32_t c = assign_[a];
        const Word* ra = row(a);
        for (std::size_t w = 0; w < w_; ++w) after_a[w] = uni(c)[w] & ~(ra[w] & single(c)[w]);
        const std::int64_t dot_ca = self_dot(a);
        cands.clear();
        for (std::size_t d = 0; d < k_; ++d) {
          if (d == c) continue;
          std::int64_t fresh = 0;
          for (std::size_t w = 0; w < w_; ++w) fresh += popcount(ra[w] & ~uni(d)[w]);
          cands.push_back({fresh, dot(d, a), static_cast<std::uint32_t>(d)});
        }
        const std::size_t m = m_max;
        if (m < cands.size()) {
          // The m closest clusters (a strict total order, so the set is unique), visited in
          // cluster order so that ties resolve identically on every standard library.
          auto closer = [](const Candidate& x, const Candidate& y) {
            return std::tie(x.fresh, y.overlap, x.cluster) < std::tie(y.fresh, x.overlap, y.cluster);
          };
          const auto mid = cands.begin() + static_cast<std::ptrdiff_t>(m);
          std::nth_element(cands.begin(), mid, cands.end(), closer);
          std::sort(cands.begin(), mid,
                    [](const Candidate& x, const Candidate& y) { return x.cluster < y.cluster; });
        }
        std::int64_t best_dt = 0;
        std::int64_t best_dq = 0;
        std::uint32_t best_b = kNone;
        for (std::size_t i = 0; i < m; ++i) {
          const std::uint32_t d = cands[i].cluster;
          const std::int64_t dot_da = cands[i].overlap;
          const Word* ud = uni(d);
          const Word* sd = single(d);
          for (const std::uint32_t b : members_[d]) {
            const Word* rb = row(b);
            std::int64_t in_c = 0;  // tiles of c after a leaves and b joins
            std::int64_t in_d = 0;  // tiles of d after b leaves and a joins
            std::int64_t diff = 0;
            for (std::size_t w = 0; w < w_; ++w) {
              in_c += popcount(after_a[w] | rb[w]);
              in_d += popcount((ud[w] & ~(rb[w] & sd[w])) | ra[w]);
              diff += popcount(ra[w] ^ rb[w]);
            }
            const std::int64_t dt = in_c - tiles_[c] + in_d - tiles_[d];
            if (dt > 0 || dt > best_dt) continue;
            const std::int64_t dq = 2 * (dot(c, b) - dot_ca + dot_da - self_dot(b)) + 2 * diff;
            if (dt < best_dt || (dt == best_dt && dq > best_dq)) {
              best_dt = dt;
              best_dq = dq;
              best_b = b;
            }
          }
        }
        if (best_b != kNone) {
          apply_swap(a, best_b);
          ++moves;
        } else {
          scanned[a] = clock_;
          for (std::size_t i = 0; i < m; ++i) examined[a * m_max + i] = cands[i].cluster;
        }
      }
      if (moves == 0) break;
    }
  }

  std::size_t n_;
  std::size_t k_;
  std::size_t w_;
  std::size_t p_ = 1;
  std::vector<std::size_t> caps_;
  CopermuteOptions options_;
  std::vector<std::uint32_t> points_;  // local index -> global row
  std::vector<Word> rows_;             // local copy of the occupancies
  std::vector<std::int64_t> ones_;     // popcount of each occupancy
  std::vector<std::uint32_t> assign_;
  std::vector<std::uint32_t> slot_;  // position of a point in members_[assign_]
  std::vector<std::vector<std::uint32_t>> members_;
  std::vector<Word> planes_;  // k x p x w: bit p of every group's member count
  std::vector<Word> union_;
  std::vector<Word> single_;
  std::vector<std::int64_t> tiles_;
  std::uint64_t clock_ = 0;
  std::vector<std::uint64_t> version_;       // set from clock_ whenever a cluster's counts change
  std::vector<std::int64_t> self_dot_;       // cached <A_x, count of x's cluster>
  std::vector<std::uint64_t> self_version_;  // version_ of x's cluster when cached
  std::vector<Word> scratch_a_;
};

// ------------------------------------------------------------------------------------------
// Coarse-to-fine driver over nested strip heights.

struct Problem {
  std::vector<std::size_t> levels;   // distinct strip heights, largest first
  std::vector<GroupBits> level_bits;  // per level: occupancies of the blocks tiled that finely
  CopermuteOptions options;
};

void solve(const Problem& pb, std::vector<std::uint32_t> points, std::size_t level,
           std::vector<std::int64_t>& out) {
  if (level == pb.levels.size()) {
    std::sort(points.begin(), points.end());
    for (std::uint32_t p : points) out.push_back(p);
    return;
  }
  const std::size_t strip = pb.levels[level];
  const std::size_t n = points.size();
  const std::size_t k = ceil_div(n, strip);
  if (k <= 1) {
    solve(pb, std::move(points), level + 1, out);
    return;
  }
  std::vector<std::size_t> caps(k, strip);
  caps.back() = n - (k - 1) * strip;
  Clusterer clusterer(pb.level_bits[level], points, caps, pb.options);
  const std::uint64_t seed =
      splitmix64(pb.options.seed ^ splitmix64((level + 1) * 0x100000001B3ULL + points.front()));
  std::vector<std::vector<std::uint32_t>> clusters = clusterer.run(seed);
  for (auto& cl : clusters) std::sort(cl.begin(), cl.end());
  // Full strips in order of their first row (stable, close to the given order); the strip
  // that may be partial (the last cluster) stays last, at the bottom edge.
  std::vector<std::size_t> order(k - 1);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(),
            [&](std::size_t x, std::size_t y) { return clusters[x].front() < clusters[y].front(); });
  order.push_back(k - 1);
  for (std::size_t c : order) solve(pb, std::move(clusters[c]), level + 1, out);
}

std::size_t total_tiles(const MaskBlock& b, const BlockInfo& info) {
  return ceil_div(b.mask.rows, info.strip) * info.groups;
}

}  // namespace

MaskView MaskView::row_major(const std::uint8_t* data, std::size_t rows, std::size_t cols) {
  return MaskView{data, rows, cols, static_cast<std::ptrdiff_t>(cols), 1};
}

MaskView MaskView::transposed() const { return MaskView{data, cols, rows, col_stride, row_stride}; }

std::size_t count_tiles(std::span<const MaskBlock> blocks) {
  std::size_t total = 0;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    total += total_tiles(blocks[i], check_block(blocks[i], i, blocks[0].mask.rows));
  }
  return total;
}

std::size_t count_nonzero_tiles(std::span<const MaskBlock> blocks,
                                std::span<const std::int64_t> row_perm) {
  if (blocks.empty()) return 0;
  const std::size_t rows = blocks[0].mask.rows;
  if (!row_perm.empty() && row_perm.size() != rows) {
    throw std::invalid_argument("row_perm has " + std::to_string(row_perm.size()) +
                                " entries for " + std::to_string(rows) + " rows");
  }
  std::vector<char> seen(rows, 0);
  for (std::int64_t r : row_perm) {
    if (r < 0 || static_cast<std::size_t>(r) >= rows || seen[static_cast<std::size_t>(r)]) {
      throw std::invalid_argument("row_perm is not a permutation of 0.." +
                                  std::to_string(rows) + "-1");
    }
    seen[static_cast<std::size_t>(r)] = 1;
  }
  std::size_t total = 0;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const BlockInfo info = check_block(blocks[i], i, rows);
    const GroupBits g = build_groups(blocks[i].mask, info);
    total += nonzero_tiles(g, info.strip, row_perm.empty() ? nullptr : row_perm.data());
  }
  return total;
}

std::size_t count_nonzero_tiles(const MaskView& mask, std::size_t t1, std::size_t t2) {
  const MaskBlock block{mask, {t1, t2, 0}};
  return count_nonzero_tiles(std::span<const MaskBlock>(&block, 1));
}

RowPermutation copermute_rows(std::span<const MaskBlock> blocks,
                              const CopermuteOptions& options) {
  if (blocks.empty()) throw std::invalid_argument("copermute_rows needs at least one block");
  const std::size_t rows = blocks[0].mask.rows;
  if (rows >= kNone) throw std::invalid_argument("too many rows");
  std::vector<BlockInfo> infos;
  std::vector<GroupBits> bits;
  RowPermutation result;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    infos.push_back(check_block(blocks[i], i, rows));
    result.tiles_total += total_tiles(blocks[i], infos.back());
  }
  // Strip heights must nest: every one divides the next larger one.
  std::vector<std::size_t> levels;
  for (const BlockInfo& info : infos) levels.push_back(info.strip);
  std::sort(levels.begin(), levels.end(), std::greater<>());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  for (std::size_t l = 1; l < levels.size(); ++l) {
    if (levels[l - 1] % levels[l] != 0) {
      throw std::invalid_argument("strip heights " + std::to_string(levels[l - 1]) + " and " +
                                  std::to_string(levels[l]) +
                                  " do not nest: each must divide the next larger one");
    }
  }
  for (std::size_t i = 0; i < blocks.size(); ++i) bits.push_back(build_groups(blocks[i].mask, infos[i]));

  auto exact = [&](const std::int64_t* perm) {
    std::size_t t = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) t += nonzero_tiles(bits[i], infos[i].strip, perm);
    return t;
  };
  result.nonzero_before = exact(nullptr);
  result.nonzero_after = result.nonzero_before;
  result.perm.resize(rows);
  std::iota(result.perm.begin(), result.perm.end(), std::int64_t{0});
  if (rows == 0 || result.nonzero_before == 0) return result;

  Problem pb;
  pb.levels = levels;
  pb.options = options;
  for (std::size_t strip : levels) {
    // Occupancies of the blocks tiled at this strip height or finer, side by side.
    std::size_t words = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (infos[i].strip <= strip) words += bits[i].words;
    }
    GroupBits g;
    g.rows = rows;
    g.words = words;
    g.bits.assign(rows * words, 0);
    std::size_t offset = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (infos[i].strip > strip) continue;
      for (std::size_t r = 0; r < rows; ++r) {
        std::memcpy(g.row(r) + offset, bits[i].row(r), bits[i].words * sizeof(Word));
      }
      offset += bits[i].words;
    }
    pb.level_bits.push_back(std::move(g));
  }
  std::vector<std::uint32_t> all(rows);
  std::iota(all.begin(), all.end(), 0U);
  std::vector<std::int64_t> perm;
  perm.reserve(rows);
  solve(pb, std::move(all), 0, perm);
  const std::size_t after = exact(perm.data());
  if (after < result.nonzero_before) {
    result.perm = std::move(perm);
    result.nonzero_after = after;
    result.improved = true;
  }
  return result;
}

RowPermutation copermute_rows(const MaskView& mask, std::size_t t1, std::size_t t2,
                              const CopermuteOptions& options) {
  const MaskBlock block{mask, {t1, t2, 0}};
  return copermute_rows(std::span<const MaskBlock>(&block, 1), options);
}

MatrixPermutation copermute_matrix(const MaskView& mask, std::size_t t1, std::size_t t2,
                                   std::size_t rounds, const CopermuteOptions& options) {
  const std::size_t rows = mask.rows;
  const std::size_t cols = mask.cols;
  if (rows > 0 && cols > 0 && mask.data == nullptr) throw std::invalid_argument("mask has no data");
  if (t1 == 0 || t2 == 0) throw std::invalid_argument("tile dimensions must be positive");
  // A dense 0/1 copy that follows the permutations.
  std::vector<std::uint8_t> cur(rows * cols);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j = 0; j < cols; ++j) cur[i * cols + j] = mask.at(i, j) ? 1 : 0;
  }
  MatrixPermutation result;
  result.row_perm.resize(rows);
  result.col_perm.resize(cols);
  std::iota(result.row_perm.begin(), result.row_perm.end(), std::int64_t{0});
  std::iota(result.col_perm.begin(), result.col_perm.end(), std::int64_t{0});
  if (rows == 0 || cols == 0) return result;
  result.tiles_total = ceil_div(rows, t1) * ceil_div(cols, t2);
  result.nonzero_before = count_nonzero_tiles(MaskView::row_major(cur.data(), rows, cols), t1, t2);
  result.nonzero_after = result.nonzero_before;
  std::vector<std::uint8_t> next(rows * cols);
  for (std::size_t r = 0; r < rounds; ++r) {
    result.rounds = r + 1;
    bool changed = false;
    CopermuteOptions opt = options;
    opt.seed = splitmix64(options.seed + 2 * r);
    // `cur` changes buffers on every swap: take fresh views of it.
    const RowPermutation rp = copermute_rows(MaskView::row_major(cur.data(), rows, cols), t1, t2, opt);
    if (rp.improved) {
      for (std::size_t i = 0; i < rows; ++i) {
        std::memcpy(next.data() + i * cols, cur.data() + static_cast<std::size_t>(rp.perm[i]) * cols, cols);
      }
      cur.swap(next);
      std::vector<std::int64_t> composed(rows);
      for (std::size_t i = 0; i < rows; ++i) composed[i] = result.row_perm[static_cast<std::size_t>(rp.perm[i])];
      result.row_perm = std::move(composed);
      result.nonzero_after = rp.nonzero_after;
      changed = true;
    }
    opt.seed = splitmix64(options.seed + 2 * r + 1);
    const MaskView tv = MaskView::row_major(cur.data(), rows, cols).transposed();
    const RowPermutation cp = copermute_rows(tv, t2, t1, opt);
    if (cp.improved) {
      for (std::size_t i = 0; i < rows; ++i) {
        const std::uint8_t* src = cur.data() + i * cols;
        std::uint8_t* dst = next.data() + i * cols;
        for (std::size_t j = 0; j < cols; ++j) dst[j] = src[cp.perm[j]];
      }
      cur.swap(next);
      std::vector<std::int64_t> composed(cols);
      for (std::size_t j = 0; j < cols; ++j) composed[j] = result.col_perm[static_cast<std::size_t>(cp.perm[j])];
      result.col_perm = std::move(composed);
      result.nonzero_after = cp.nonzero_after;
      changed = true;
    }
    if (!changed) break;
  }
  return result;
}

}  // namespace fheprune::pruning
