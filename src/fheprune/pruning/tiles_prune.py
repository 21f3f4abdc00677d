"""P2T's Prune^tile: Hunter's packing-aligned pruning adapted to tile tensors (HE-PEx 4.1).

Every weight matrix is cut into tiles (:mod:`fheprune.layouts.tiles`); each tile is scored by
the average, maximum or minimum |w| of its real entries (T-Avg / T-Max / T-Min; padding is
ignored) and ``fraction`` of the tiles with the lowest score is pruned whole - per layer
(local) or over all layers at once (global). As for :class:`MagnitudePruning`, ``fraction`` is
the fraction of tiles that are zero after the call, counting tiles that were already zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import Enum

import torch
from torch import Tensor

from fheprune.errors import InputTypeError
from fheprune.layouts import (
    TilePlan,
    TileShape,
    TileSpec,
    expand_tile_mask,
    layer_tile,
    tile_entry_counts,
    tile_grid,
    zero_tile_mask,
)

from .base import (
    PruningMethod,
    Scope,
    check_fraction,
    complete_masks,
    select_by_scope,
)

__all__ = ["TilePruning", "TileReduction"]

log = logging.getLogger(__name__)


class TileReduction(str, Enum):
    """How a tile's |w| values are reduced to one score (HE-PEx Table 1, P2T)."""

    AVG = "avg"
    MAX = "max"
    MIN = "min"

    @property
    def label(self) -> str:
        return {"avg": "T-Avg", "max": "T-Max", "min": "T-Min"}[self.value]


class TilePruning(PruningMethod):
    """Prune ``fraction`` of all tiles, lowest T-Avg / T-Max / T-Min score first."""

    def __init__(
        self,
        fraction: float,
        tile_shape: TileSpec,
        *,
        reduction: TileReduction | str = TileReduction.AVG,
        scope: Scope | str = Scope.LOCAL,
    ) -> None:
        if not isinstance(tile_shape, TileShape | TilePlan):
            raise InputTypeError(
                f"tile_shape must be a TileShape or TilePlan, got {type(tile_shape).__name__}"
            )
        self.fraction = check_fraction(fraction)
        self.tile_shape = tile_shape
        self.reduction = TileReduction(reduction)
        self.scope = Scope(scope)

    def __repr__(self) -> str:
        return (
            f"TilePruning(fraction={self.fraction}, tile_shape={self.tile_shape}, "
            f"reduction={self.reduction.value}, scope={self.scope.value})"
        )

    @property
    def label(self) -> str:
        return f"{self.scope.label}/{self.reduction.label}/-"

    def tile_scores(self, weight: Tensor, mask: Tensor, shape: TileShape | None = None) -> Tensor:
        """Score per tile, float64 ``[P, nR, nC]``; zero tiles (by mask) score ``-inf``.

        ``shape``: this layer's tile (default: the method's, which must then be one shape).
        """
        if shape is None:
            if not isinstance(self.tile_shape, TileShape):
                raise InputTypeError("tile_scores needs the layer's shape with a TilePlan")
            shape = self.tile_shape
        live = weight.detach().masked_fill(~mask, 0).abs().to(torch.float64)
        grid = tile_grid(live, shape)
        if self.reduction is TileReduction.AVG:
            counts = tile_entry_counts(weight.shape, shape).to(grid.device)
            score = grid.sum(dim=(-2, -1)) / counts.clamp(min=1)
        elif self.reduction is TileReduction.MAX:
            score = grid.amax(dim=(-2, -1))  # padding is 0 <= |w|: cannot win
        else:
            real = tile_grid(torch.ones_like(mask, dtype=torch.bool), shape)
            score = grid.masked_fill(~real, float("inf")).amin(dim=(-2, -1))
        return score.masked_fill(zero_tile_mask(mask, shape), float("-inf"))

    def compute_mask(
        self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        current = complete_masks(weights, masks)
        shapes = {name: layer_tile(self.tile_shape, name) for name in weights}
        scores = {
            name: self.tile_scores(w, current[name], shapes[name]) for name, w in weights.items()
        }
        chosen = select_by_scope(scores, self.fraction, self.scope)
        out: dict[str, Tensor] = {}
        for name, mask in current.items():
            keep = expand_tile_mask(~chosen[name], mask.shape, shapes[name]).to(mask.device)
            out[name] = mask & keep
        return out
