// Bindings of the pruning kernels: HE-PEx co-permutation clustering, numpy arrays in and out.
//
// Masks are 2-D bool or uint8 arrays (any strides: a transposed view costs no copy; anything
// that speaks DLPack, e.g. a CPU torch tensor, works too); permutations come back as int64
// arrays in numpy's gather convention (new = old[perm]). The clustering runs without the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fheprune/pruning/copermute.hpp"

namespace nb = nanobind;
using namespace nb::literals;
namespace fp = fheprune::pruning;

namespace {

using Mask = nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu>;
using PermIn = nb::ndarray<nb::ro, std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using PermOut = nb::ndarray<nb::numpy, std::int64_t, nb::ndim<1>>;
// (strip_rows, group_cols, segment_cols); segment_cols 0 = the whole block.
using Tiling = std::tuple<std::size_t, std::size_t, std::size_t>;

PermOut to_numpy(std::vector<std::int64_t>&& v) {
  auto* heap = new std::vector<std::int64_t>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<std::int64_t>*>(p); });
  return PermOut(heap->data(), {heap->size()}, owner);
}

std::string dtype_name(const nb::dlpack::dtype& d) {
  std::string kind;
  switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bool: kind = "bool"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    default: kind = "dtype code " + std::to_string(d.code) + ", ";
  }
  return kind + std::to_string(d.bits);
}

fp::MaskView view_of(const Mask& a, const std::string& what) {
  if (a.dtype() != nb::dtype<bool>() && a.dtype() != nb::dtype<std::uint8_t>()) {
    throw nb::type_error((what + " must be a 2-D bool or uint8 array (non-zero = kept weight), got " +
                          dtype_name(a.dtype()) + "; pass mask.astype(bool)")
                             .c_str());
  }
  fp::MaskView v;
  v.data = static_cast<const std::uint8_t*>(a.data());
  v.rows = a.shape(0);
  v.cols = a.shape(1);
  v.row_stride = static_cast<std::ptrdiff_t>(a.stride(0));
  v.col_stride = static_cast<std::ptrdiff_t>(a.stride(1));
  return v;
}

std::vector<fp::MaskBlock> blocks_of(const std::vector<Mask>& masks, const std::vector<Tiling>& tilings) {
  if (masks.size() != tilings.size()) {
    throw nb::value_error(("got " + std::to_string(masks.size()) + " blocks but " +
                           std::to_string(tilings.size()) +
                           " tilings: give one (strip_rows, group_cols, segment_cols) per block")
                              .c_str());
  }
  std::vector<fp::MaskBlock> blocks;
  for (std::size_t i = 0; i < masks.size(); ++i) {
    const auto [strip, group, segment] = tilings[i];
    blocks.push_back({view_of(masks[i], "block " + std::to_string(i)), {strip, group, segment}});
  }
  return blocks;
}

fp::CopermuteOptions options_of(std::size_t max_iter, std::size_t restarts, std::size_t candidates,
                                std::uint64_t seed, std::size_t small_budget) {
  fp::CopermuteOptions o;
  o.max_iter = max_iter;
  o.restarts = restarts;
  o.candidates = candidates;
  o.seed = seed;
  o.small_budget = small_budget;
  return o;
}

// Docstrings must outlive the module: string literals only.
#define FHEPRUNE_OPTIONS_DOC                                                                     \
  "max_iter: k-means iterations and swap-search passes per start (HE-PEx: 20). restarts: "      \
  "k-means++ starts besides the given order (small problems get more automatically, within "   \
  "small_budget point-cluster pairs). candidates: clusters examined per row in the swap "       \
  "search. seed: seeds the std::mt19937_64 (deterministic; not cryptographic)."

// Stub signatures (nanobind's stubgen turns an ndarray of unspecified dtype into a bare
// NDArray, which mypy --strict rejects). The defaults written here must match
// CopermuteOptions: checked below.
#define FHEPRUNE_MASK "numpy.typing.NDArray[numpy.bool_] | numpy.typing.NDArray[numpy.uint8]"
#define FHEPRUNE_PERM "numpy.typing.NDArray[numpy.int64]"
#define FHEPRUNE_OPTIONS_SIG \
  "max_iter: int = 20, restarts: int = 1, candidates: int = 16, seed: int = 0, " \
  "small_budget: int = 65536"
constexpr fp::CopermuteOptions kDefaults{};
static_assert(kDefaults.max_iter == 20 && kDefaults.restarts == 1 && kDefaults.candidates == 16 &&
                  kDefaults.seed == 0 && kDefaults.small_budget == 65536,
              "update FHEPRUNE_OPTIONS_SIG");

}  // namespace

void bind_pruning(nb::module_& m) {
  const fp::CopermuteOptions defaults;

  m.def(
      "copermute_rows",
      [](const Mask& mask, std::size_t t1, std::size_t t2, std::size_t max_iter, std::size_t restarts,
         std::size_t candidates, std::uint64_t seed, std::size_t small_budget) {
        const fp::MaskView v = view_of(mask, "mask");
        const fp::CopermuteOptions o = options_of(max_iter, restarts, candidates, seed, small_budget);
        fp::RowPermutation r;
        {
          nb::gil_scoped_release release;
          r = fp::copermute_rows(v, t1, t2, o);
        }
        return to_numpy(std::move(r.perm));
      },
      nb::sig("def copermute_rows(mask: " FHEPRUNE_MASK ", t1: int, t2: int, *, "
              FHEPRUNE_OPTIONS_SIG ") -> " FHEPRUNE_PERM),
      "mask"_a, "t1"_a, "t2"_a, nb::kw_only(), "max_iter"_a = defaults.max_iter,
      "restarts"_a = defaults.restarts, "candidates"_a = defaults.candidates, "seed"_a = defaults.seed,
      "small_budget"_a = defaults.small_budget,
      "Row permutation of a 2-D bool/uint8 mask that minimizes its non-zero tiles of t1 "
                   "rows x t2 columns (HE-PEx balanced k-means on grouped row masks, then an exact "
                   "swap search). Returns perm (int64) with permuted = mask[perm]; the identity when "
                   "nothing strictly better was found. " FHEPRUNE_OPTIONS_DOC);

  m.def(
      "copermute_rows_blocks",
      [](const std::vector<Mask>& masks, const std::vector<Tiling>& tilings, std::size_t max_iter,
         std::size_t restarts, std::size_t candidates, std::uint64_t seed, std::size_t small_budget) {
        const std::vector<fp::MaskBlock> blocks = blocks_of(masks, tilings);
        const fp::CopermuteOptions o = options_of(max_iter, restarts, candidates, seed, small_budget);
        fp::RowPermutation r;
        {
          nb::gil_scoped_release release;
          r = fp::copermute_rows(blocks, o);
        }
        return to_numpy(std::move(r.perm));
      },
      nb::sig("def copermute_rows_blocks(blocks: collections.abc.Sequence[" FHEPRUNE_MASK "], "
              "tilings: collections.abc.Sequence[tuple[int, int, int]], *, " FHEPRUNE_OPTIONS_SIG
              ") -> " FHEPRUNE_PERM),
      "blocks"_a, "tilings"_a, nb::kw_only(), "max_iter"_a = defaults.max_iter,
      "restarts"_a = defaults.restarts, "candidates"_a = defaults.candidates, "seed"_a = defaults.seed,
      "small_budget"_a = defaults.small_budget,
      "Co-permutation in tandem: one permutation of the rows shared by several 2-D "
                   "masks (e.g. [producer, consumer.T]), each tiled on its own. tilings[i] = "
                   "(strip_rows, group_cols, segment_cols): tile extent along the shared rows, along "
                   "the block's columns, and the column period at which tiling restarts (0 = none; "
                   "Conv2d kernel positions). Strip heights must nest. Returns perm (int64): "
                   "row i of every block becomes old row perm[i]. " FHEPRUNE_OPTIONS_DOC);

  m.def(
      "count_nonzero_tiles",
      [](const Mask& mask, std::size_t t1, std::size_t t2) {
        const fp::MaskView v = view_of(mask, "mask");
        nb::gil_scoped_release release;
        return fp::count_nonzero_tiles(v, t1, t2);
      },
      nb::sig("def count_nonzero_tiles(mask: " FHEPRUNE_MASK ", t1: int, t2: int) -> int"),
      "mask"_a, "t1"_a, "t2"_a, "Number of non-zero tiles of t1 rows x t2 columns of a 2-D mask.");

  m.def(
      "count_nonzero_tiles_blocks",
      [](const std::vector<Mask>& masks, const std::vector<Tiling>& tilings,
         std::optional<PermIn> row_perm) {
        const std::vector<fp::MaskBlock> blocks = blocks_of(masks, tilings);
        std::span<const std::int64_t> perm;
        if (row_perm) perm = {row_perm->data(), row_perm->shape(0)};
        nb::gil_scoped_release release;
        return std::make_tuple(fp::count_nonzero_tiles(blocks, perm), fp::count_tiles(blocks));
      },
      nb::sig("def count_nonzero_tiles_blocks(blocks: collections.abc.Sequence[" FHEPRUNE_MASK
              "], tilings: collections.abc.Sequence[tuple[int, int, int]], row_perm: "
              FHEPRUNE_PERM " | None = None) -> tuple[int, int]"),
      "blocks"_a, "tilings"_a, "row_perm"_a = nb::none(),
      "(non-zero tiles, all tiles) of the blocks (tilings as in copermute_rows_blocks), with the "
      "shared rows taken in the order row_perm when given.");

  m.def(
      "copermute_matrix",
      [](const Mask& mask, std::size_t t1, std::size_t t2, std::size_t rounds, std::size_t max_iter,
         std::size_t restarts, std::size_t candidates, std::uint64_t seed, std::size_t small_budget) {
        const fp::MaskView v = view_of(mask, "mask");
        const fp::CopermuteOptions o = options_of(max_iter, restarts, candidates, seed, small_budget);
        fp::MatrixPermutation r;
        {
          nb::gil_scoped_release release;
          r = fp::copermute_matrix(v, t1, t2, rounds, o);
        }
        return std::make_tuple(to_numpy(std::move(r.row_perm)), to_numpy(std::move(r.col_perm)),
                               r.tiles_total, r.nonzero_before, r.nonzero_after, r.rounds);
      },
      nb::sig("def copermute_matrix(mask: " FHEPRUNE_MASK ", t1: int, t2: int, *, rounds: int = 5, "
              FHEPRUNE_OPTIONS_SIG ") -> tuple[" FHEPRUNE_PERM ", " FHEPRUNE_PERM
              ", int, int, int, int]"),
      "mask"_a, "t1"_a, "t2"_a, nb::kw_only(), "rounds"_a = 5, "max_iter"_a = defaults.max_iter,
      "restarts"_a = defaults.restarts, "candidates"_a = defaults.candidates, "seed"_a = defaults.seed,
      "small_budget"_a = defaults.small_budget,
      "One matrix on its own: alternate row and column co-permutation for at most "
                   "`rounds` rounds (rows, then columns), stopping when a round changes nothing. "
                   "Returns (row_perm, col_perm, tiles_total, nonzero_before, nonzero_after, "
                   "rounds_run) with permuted = mask[row_perm][:, col_perm]. " FHEPRUNE_OPTIONS_DOC);
}
