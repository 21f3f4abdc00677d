"""Tile-tensor units: THE tile definition shared by pruning, the cost model and the runtime.

A weight matrix ``W[R=out, C=in]`` is cut into tiles of ``t1`` rows x ``t2`` columns, zero-padded
at the bottom/right edges. A ``Conv2d`` weight ``[C_out, C_in, kh, kw]`` is seen as ``kh*kw``
matrices ``[C_out, C_in]`` (one per kernel position, row-major over ``(kh, kw)``), each tiled on
its own. A tile is *zero* when all its real (non-padding) entries are zero: the packer then never
encodes it and the runtime skips its plaintext multiply. Tile sparsity = zero tiles / all
tiles, over all prunable layers (and per layer).

Shapes used throughout: ``P`` matrices per weight (1 for ``nn.Linear``), ``nR = ceil(R/t1)`` tile
rows and ``nC = ceil(C/t2)`` tile columns per matrix.

A network is cut layer by layer the way the tile runtime runs it (:class:`TilePlan`): the
orientation alternates, so with ``t1 x t2`` tiles the first, third, ... prunable layers have
``t1 x t2`` weight tiles and the second, fourth, ... ``t2 x t1`` ones. The rule is the C++
program's (``fheprune._core.tile_layer_plan``); for square tiles every layer has the same tile.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fheprune.errors import InputError, InputTypeError

from .layers import layer_weights

__all__ = [
    "LayerTileStats",
    "TilePlan",
    "TileShape",
    "TileSpec",
    "TileStats",
    "as_matrices",
    "expand_tile_mask",
    "from_matrices",
    "grid_shape",
    "layer_tile",
    "tile_entry_counts",
    "tile_grid",
    "tile_nonzero_counts",
    "tile_plan",
    "tile_sparsity",
    "zero_tile_mask",
]

log = logging.getLogger(__name__)

_SHAPE_TEXT = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class TileShape:
    """A tile of ``t1`` rows (output dim) x ``t2`` columns (input dim) of a weight matrix."""

    t1: int
    t2: int

    def __post_init__(self) -> None:
        for name in ("t1", "t2"):
            value = getattr(self, name)
            # bool is an int subclass; TileShape(True, 8) is a bug, not a 1x8 tile.
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputTypeError(f"TileShape.{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise InputError(f"TileShape.{name} must be positive, got {value}")

    @classmethod
    def parse(cls, text: str) -> TileShape:
        """Parse ``"16x16"`` / ``"4x8"`` (the notation used in reports and on the CLI)."""
        match = _SHAPE_TEXT.match(text)
        if match is None:
            raise InputError(f"tile shape must look like '16x16', got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def size(self) -> int:
        """Entries per tile (slots per ciphertext / t3 in a 3-D tile tensor)."""
        return self.t1 * self.t2

    def grid(self, rows: int, cols: int) -> tuple[int, int]:
        """Number of tile rows and tile columns covering a ``rows x cols`` matrix."""
        return math.ceil(rows / self.t1), math.ceil(cols / self.t2)

    def __str__(self) -> str:
        return f"{self.t1}x{self.t2}"


@dataclass(frozen=True)
class TilePlan:
    """The weight tile of every prunable layer of a network, as the tile runtime cuts it.

    ``base`` is the network's tile (the first layer's, what reports call "t1 x t2");
    ``shapes`` maps each layer name, in forward order, to its own weight tile. Build one
    with :func:`tile_plan`.
    """

    base: TileShape
    shapes: Mapping[str, TileShape]

    def of(self, name: str) -> TileShape:
        """The weight tile of layer ``name``."""
        try:
            return self.shapes[name]
        except KeyError:
            raise InputError(
                f"layer {name!r} is not in this tile plan (layers: {', '.join(self.shapes)})"
            ) from None

    def __str__(self) -> str:
        return str(self.base)


TileSpec = TileShape | TilePlan
"""One tile for every layer, or a network's per-layer plan."""


def tile_plan(model_or_names: nn.Module | Sequence[str], shape: TileShape) -> TilePlan:
    """Weight tiles of a network's prunable layers (forward order) with ``shape`` tiles.

    Layer ``i`` gets the tile the runtime's program gives its ``i``-th linear layer
    (``fheprune._core.tile_layer_plan``): ``t1 x t2`` on even ``i``, ``t2 x t1`` on odd ``i``.
    Convolutions, which the tile runtime does not run, are counted in the same chain (each
    kernel position is a matrix, see :func:`as_matrices`).
    """
    from fheprune import _core

    names = (
        list(layer_weights(model_or_names))
        if isinstance(model_or_names, nn.Module)
        else [str(n) for n in model_or_names]
    )
    shapes: dict[str, TileShape] = {}
    for index, name in enumerate(names):
        # Program.tile's ciphertext tile is [t_outer = t2, t_inner = t1, batch].
        plan = _core.tile_layer_plan(shape.t2, shape.t1, index)
        shapes[name] = TileShape(int(plan["tile_rows"]), int(plan["tile_cols"]))
    return TilePlan(base=shape, shapes=shapes)


def layer_tile(spec: TileSpec, name: str) -> TileShape:
    """The weight tile of layer ``name`` under ``spec``."""
    return spec.of(name) if isinstance(spec, TilePlan) else spec


def _check_weight_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(P, R, C) for a weight shape; rejects shapes that have no matrix view."""
    dims = tuple(int(d) for d in shape)
    if len(dims) < 2:
        raise InputError(
            f"a prunable weight has at least 2 dims ([out, in] or [out, in, kh, kw]), got {dims}"
        )
    if any(d < 0 for d in dims):
        raise InputError(f"negative dimension in weight shape {dims}")
    return math.prod(dims[2:]), dims[0], dims[1]


def as_matrices(weight: Tensor) -> Tensor:
    """View ``weight`` as ``[P, R, C]``: ``[1, out, in]`` for FC, ``[kh*kw, C_out, C_in]`` for conv.

    Matrix ``p`` of a conv weight is kernel position ``(p // kw, p % kw)``. Returns a view (no
    copy) so callers can read it cheaply; use :func:`from_matrices` to go back.
    """
    p, r, c = _check_weight_shape(weight.shape)
    if weight.dim() == 2:
        return weight.unsqueeze(0)
    return weight.reshape(r, c, p).permute(2, 0, 1)


def from_matrices(matrices: Tensor, weight_shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`as_matrices`: ``[P, R, C]`` back to ``weight_shape`` (contiguous)."""
    dims = tuple(int(d) for d in weight_shape)
    p, r, c = _check_weight_shape(dims)
    if tuple(matrices.shape) != (p, r, c):
        raise InputError(
            f"matrices of shape {tuple(matrices.shape)} do not fit weight shape {dims} "
            f"(expected {(p, r, c)})"
        )
    if len(dims) == 2:
        return matrices[0].contiguous()
    return matrices.permute(1, 2, 0).reshape(dims).contiguous()


def grid_shape(weight_shape: Sequence[int], shape: TileShape) -> tuple[int, int, int]:
    """``(P, nR, nC)``: the tile grid of a weight of ``weight_shape``."""
    p, r, c = _check_weight_shape(weight_shape)
    n_r, n_c = shape.grid(r, c)
    return p, n_r, n_c


def tile_grid(weight: Tensor, shape: TileShape) -> Tensor:
    """Tiles of ``weight`` as ``[P, nR, nC, t1, t2]``, zero-padded (``False`` for bool) at edges."""
    mats = as_matrices(weight)
    p, r, c = mats.shape
    n_r, n_c = shape.grid(r, c)
    padded = mats.new_zeros((p, n_r * shape.t1, n_c * shape.t2))
    padded[:, :r, :c] = mats
    return padded.view(p, n_r, shape.t1, n_c, shape.t2).permute(0, 1, 3, 2, 4)


def tile_nonzero_counts(weight_or_mask: Tensor, shape: TileShape) -> Tensor:
    """Non-zero (``True`` for a mask) entries per tile, int64 ``[P, nR, nC]``."""
    return tile_grid(weight_or_mask != 0, shape).sum(dim=(-2, -1), dtype=torch.int64)


def zero_tile_mask(weight_or_mask: Tensor, shape: TileShape) -> Tensor:
    """``True`` where a tile is zero (every real entry zero / ``False``), bool ``[P, nR, nC]``."""
    nonzero = tile_grid(weight_or_mask != 0, shape)
    return ~nonzero.flatten(start_dim=-2).any(dim=-1)


def tile_entry_counts(weight_shape: Sequence[int], shape: TileShape) -> Tensor:
    """Real (non-padding) entries per tile, int64 ``[P, nR, nC]``; edge tiles hold fewer."""
    p, r, c = _check_weight_shape(weight_shape)
    n_r, n_c = shape.grid(r, c)
    rows = (r - torch.arange(n_r, dtype=torch.int64) * shape.t1).clamp(max=shape.t1)
    cols = (c - torch.arange(n_c, dtype=torch.int64) * shape.t2).clamp(max=shape.t2)
    return torch.outer(rows, cols).expand(p, n_r, n_c).contiguous()


def expand_tile_mask(tile_mask: Tensor, weight_shape: Sequence[int], shape: TileShape) -> Tensor:
    """Element-level bool mask of ``weight_shape`` where each entry takes its tile's value.

    The inverse direction of :func:`zero_tile_mask`: ``tile_mask`` is ``[P, nR, nC]`` (e.g.
    "keep this tile"), padding is cut off. Polarity is preserved.
    """
    expected = grid_shape(weight_shape, shape)
    if tuple(tile_mask.shape) != expected:
        raise InputError(
            f"tile mask of shape {tuple(tile_mask.shape)} does not match the {shape} tile grid "
            f"{expected} of a weight of shape {tuple(int(d) for d in weight_shape)}"
        )
    _, r, c = _check_weight_shape(weight_shape)
    flags = tile_mask.to(torch.bool)
    dense = flags.repeat_interleave(shape.t1, dim=1).repeat_interleave(shape.t2, dim=2)
    return from_matrices(dense[:, :r, :c], weight_shape)


@dataclass(frozen=True)
class LayerTileStats:
    """Zero tiles of one layer; ``grid`` is ``(P, nR, nC)``."""

    zero_tiles: int
    tiles: int
    grid: tuple[int, int, int]

    @property
    def sparsity(self) -> float:
        return self.zero_tiles / self.tiles if self.tiles else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "zero_tiles": self.zero_tiles,
            "tiles": self.tiles,
            "sparsity": self.sparsity,
            "grid": list(self.grid),
        }


@dataclass(frozen=True)
class TileStats:
    """Tile sparsity over all prunable layers (``zero_tiles / tiles``) and per layer."""

    tile_shape: TileShape
    layers: Mapping[str, LayerTileStats] = field(default_factory=dict)

    @property
    def zero_tiles(self) -> int:
        return sum(s.zero_tiles for s in self.layers.values())

    @property
    def tiles(self) -> int:
        return sum(s.tiles for s in self.layers.values())

    @property
    def sparsity(self) -> float:
        total = self.tiles
        return self.zero_tiles / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile_shape": [self.tile_shape.t1, self.tile_shape.t2],
            "zero_tiles": self.zero_tiles,
            "tiles": self.tiles,
            "sparsity": self.sparsity,
            "layers": {name: s.to_dict() for name, s in self.layers.items()},
        }


def tile_sparsity(model_or_masks: nn.Module | Mapping[str, Tensor], shape: TileSpec) -> TileStats:
    """Zero tiles of a model's prunable weights, or of a ``{layer: mask or weight}`` mapping.

    For a model the actual weight values decide (what the packer would see); for a mapping
    every non-zero / ``True`` entry counts as live. ``shape``: one tile for every layer, or a
    :class:`TilePlan` (each layer's own tile, as the runtime cuts it).
    """
    tensors = (
        layer_weights(model_or_masks) if isinstance(model_or_masks, nn.Module) else model_or_masks
    )
    layers: dict[str, LayerTileStats] = {}
    for name, tensor in tensors.items():
        zero = zero_tile_mask(tensor, layer_tile(shape, name))
        layers[name] = LayerTileStats(
            zero_tiles=int(zero.sum().item()),
            tiles=zero.numel(),
            grid=(int(zero.shape[0]), int(zero.shape[1]), int(zero.shape[2])),
        )
    base = shape.base if isinstance(shape, TilePlan) else shape
    stats = TileStats(tile_shape=base, layers=layers)
    log.debug(
        "tile sparsity %s: %d/%d zero tiles (%.4f)",
        shape,
        stats.zero_tiles,
        stats.tiles,
        stats.sparsity,
    )
    return stats
