"""Tile-tensor units (fheprune.layouts.tiles) against naive loop implementations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from fheprune.layouts import (
    TileShape,
    as_matrices,
    expand_tile_mask,
    from_matrices,
    grid_shape,
    output_layer_names,
    prunable_layer_names,
    tile_entry_counts,
    tile_grid,
    tile_nonzero_counts,
    tile_sparsity,
    zero_tile_mask,
)

# ---------------------------------------------------------------------------------------------
# naive references: plain loops over the definition in the module docstring
# ---------------------------------------------------------------------------------------------


def naive_matrices(weight: Tensor) -> list[list[list[float]]]:
    """Matrix p of a conv weight is kernel position (p // kw, p % kw)."""
    if weight.dim() == 2:
        return [weight.tolist()]
    c_out, c_in, kh, kw = weight.shape
    return [
        [[float(weight[o, i, p // kw, p % kw]) for i in range(c_in)] for o in range(c_out)]
        for p in range(kh * kw)
    ]


def naive_tiles(weight: Tensor, shape: TileShape) -> list[list[list[list[list[float]]]]]:
    out = []
    for mat in naive_matrices(weight):
        rows, cols = len(mat), len(mat[0])
        n_r, n_c = math.ceil(rows / shape.t1), math.ceil(cols / shape.t2)
        grid = []
        for tr in range(n_r):
            row_tiles = []
            for tc in range(n_c):
                tile = [[0.0] * shape.t2 for _ in range(shape.t1)]
                for a in range(shape.t1):
                    for b in range(shape.t2):
                        r, c = tr * shape.t1 + a, tc * shape.t2 + b
                        if r < rows and c < cols:
                            tile[a][b] = mat[r][c]
                row_tiles.append(tile)
            grid.append(row_tiles)
        out.append(grid)
    return out


def naive_zero_tiles(weight: Tensor, shape: TileShape) -> list[list[list[bool]]]:
    return [
        [[all(v == 0 for row in tile for v in row) for tile in tile_row] for tile_row in grid]
        for grid in naive_tiles(weight, shape)
    ]


def naive_real_counts(weight: Tensor, shape: TileShape) -> list[list[list[int]]]:
    ones = torch.ones_like(weight)
    return [
        [[int(sum(v for row in tile for v in row)) for tile in tile_row] for tile_row in grid]
        for grid in naive_tiles(ones, shape)
    ]


def naive_expand(tile_mask: Tensor, weight_shape: tuple[int, ...], shape: TileShape) -> Tensor:
    out = torch.zeros(weight_shape, dtype=torch.bool)
    if len(weight_shape) == 2:
        for r in range(weight_shape[0]):
            for c in range(weight_shape[1]):
                out[r, c] = bool(tile_mask[0, r // shape.t1, c // shape.t2])
        return out
    c_out, c_in, kh, kw = weight_shape
    for o in range(c_out):
        for i in range(c_in):
            for y in range(kh):
                for x in range(kw):
                    p = y * kw + x
                    out[o, i, y, x] = bool(tile_mask[p, o // shape.t1, i // shape.t2])
    return out


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

weight_shapes = st.one_of(
    st.tuples(st.integers(1, 19), st.integers(1, 19)),
    st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 3), st.integers(1, 3)),
)
tile_shapes = st.builds(TileShape, st.integers(1, 9), st.integers(1, 9))


@st.composite
def sparse_weights(draw: st.DrawFn) -> Tensor:
    """Small-integer weights with a drawn zero density (so zero tiles actually occur)."""
    dims = draw(weight_shapes)
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.8, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(1, 4, dims, generator=gen).to(torch.float32)
    signs = torch.where(torch.rand(dims, generator=gen) < 0.5, -1.0, 1.0)
    keep = torch.rand(dims, generator=gen) < density
    return values * signs * keep


# ---------------------------------------------------------------------------------------------
# TileShape
# ---------------------------------------------------------------------------------------------


def test_tile_shape_validation() -> None:
    assert TileShape(8, 8).size == 64
    assert TileShape(4, 8).grid(10, 17) == (3, 3)
    assert str(TileShape(16, 32)) == "16x32"
    assert TileShape.parse(" 64X64 ") == TileShape(64, 64)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            TileShape(bad, 8)
        with pytest.raises(ValueError, match="positive"):
            TileShape(8, bad)
    for wrong in (True, 2.0, "8"):
        with pytest.raises(TypeError):
            TileShape(wrong, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16x16"):
        TileShape.parse("16*16")


def test_issue_tile_shapes_square_and_rectangular() -> None:
    weight = torch.randn(128, 784)
    for t1, t2 in [(8, 8), (16, 16), (32, 32), (64, 64), (4, 8), (8, 32), (64, 16)]:
        shape = TileShape(t1, t2)
        zero = zero_tile_mask(weight, shape)
        assert zero.shape == (1, math.ceil(128 / t1), math.ceil(784 / t2))
        assert not bool(zero.any())


# ---------------------------------------------------------------------------------------------
# properties against the naive loops
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(weight=sparse_weights())
def test_as_matrices_matches_naive_and_inverts(weight: Tensor) -> None:
    mats = as_matrices(weight)
    assert mats.tolist() == naive_matrices(weight)
    assert torch.equal(from_matrices(mats, weight.shape), weight)


@settings(max_examples=60, deadline=None)
@given(weight=sparse_weights(), shape=tile_shapes)
def test_tile_grid_matches_naive(weight: Tensor, shape: TileShape) -> None:
    grid = tile_grid(weight, shape)
    assert tuple(grid.shape) == (*grid_shape(weight.shape, shape), shape.t1, shape.t2)
    assert grid.tolist() == naive_tiles(weight, shape)
    # bool input pads with False
    assert tile_grid(weight != 0, shape).tolist() == (grid != 0).tolist()


@settings(max_examples=60, deadline=None)
@given(weight=sparse_weights(), shape=tile_shapes)
def test_zero_tile_mask_and_counts_match_naive(weight: Tensor, shape: TileShape) -> None:
    zero = zero_tile_mask(weight, shape)
    assert zero.dtype == torch.bool
    assert zero.tolist() == naive_zero_tiles(weight, shape)
    # weights and their masks give the same zero tiles
    assert torch.equal(zero_tile_mask(weight != 0, shape), zero)
    assert tile_entry_counts(weight.shape, shape).tolist() == naive_real_counts(weight, shape)
    nonzero = tile_nonzero_counts(weight, shape)
    assert torch.equal(nonzero == 0, zero)
    assert int(nonzero.sum()) == int((weight != 0).sum())


@settings(max_examples=60, deadline=None)
@given(weight=sparse_weights(), shape=tile_shapes, seed=st.integers(0, 2**31 - 1))
def test_expand_tile_mask_matches_naive_and_inverts(
    weight: Tensor, shape: TileShape, seed: int
) -> None:
    grid = grid_shape(weight.shape, shape)
    tile_mask = torch.rand(grid, generator=torch.Generator().manual_seed(seed)) < 0.5
    dense = expand_tile_mask(tile_mask, weight.shape, shape)
    assert dense.shape == weight.shape and dense.dtype == torch.bool
    assert torch.equal(dense, naive_expand(tile_mask, tuple(weight.shape), shape))
    # every tile has at least one real entry, so the round trip is exact
    assert torch.equal(zero_tile_mask(dense, shape), ~tile_mask)
    # and "keep the non-zero tiles" covers every non-zero weight
    keep = expand_tile_mask(~zero_tile_mask(weight, shape), weight.shape, shape)
    assert bool((keep | (weight == 0)).all())


@settings(max_examples=30, deadline=None)
@given(a=sparse_weights(), b=sparse_weights(), shape=tile_shapes)
def test_tile_sparsity_counts_over_layers(a: Tensor, b: Tensor, shape: TileShape) -> None:
    stats = tile_sparsity({"a": a, "b": b != 0}, shape)
    expected = {}
    for name, w in (("a", a), ("b", b)):
        flags = [v for grid in naive_zero_tiles(w, shape) for row in grid for v in row]
        expected[name] = (sum(flags), len(flags))
        assert (stats.layers[name].zero_tiles, stats.layers[name].tiles) == expected[name]
    assert stats.zero_tiles == expected["a"][0] + expected["b"][0]
    assert stats.tiles == expected["a"][1] + expected["b"][1]
    assert stats.sparsity == pytest.approx(stats.zero_tiles / stats.tiles)
    as_dict = stats.to_dict()
    assert as_dict["zero_tiles"] == stats.zero_tiles and set(as_dict["layers"]) == {"a", "b"}


# ---------------------------------------------------------------------------------------------
# models and errors
# ---------------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(12, 5)
        self.flatten_after: str | None = "conv"
        self.task = "classification"

    def prunable_layers(self) -> list[str]:
        return ["conv", "fc"]

    def neuron_chain(self) -> list[tuple[str, str]]:
        return [("conv", "fc")]


def test_tile_sparsity_of_a_model_uses_its_weights() -> None:
    net = _Net()
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.weight[0, 0, 0, 0] = 1.0  # one non-zero tile in kernel position 0
    stats = tile_sparsity(net, TileShape(2, 2))
    assert list(stats.layers) == ["conv", "fc"]
    # conv: 9 kernel positions x grid 2x1 = 18 tiles, 17 zero; fc: 3x6 = 18 tiles, none zero
    assert (stats.layers["conv"].zero_tiles, stats.layers["conv"].tiles) == (17, 18)
    assert (stats.layers["fc"].zero_tiles, stats.layers["fc"].tiles) == (0, 18)
    assert stats.layers["conv"].grid == (9, 2, 1)
    assert stats.sparsity == pytest.approx(17 / 36)


def test_layer_conventions() -> None:
    net = _Net()
    assert prunable_layer_names(net) == ["conv", "fc"]
    assert output_layer_names(net) == ["fc"]
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert prunable_layer_names(plain) == ["0", "2"]
    assert output_layer_names(plain) == ["2"]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="at least 2 dims"):
        as_matrices(torch.ones(5))
    with pytest.raises(ValueError, match="tile grid"):
        expand_tile_mask(torch.ones(1, 2, 2, dtype=torch.bool), (5, 5), TileShape(2, 2))
    with pytest.raises(ValueError, match="do not fit"):
        from_matrices(torch.ones(2, 3, 3), (3, 3))
