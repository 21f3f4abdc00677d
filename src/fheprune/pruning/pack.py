"""Prune^pack (HE-PEx P4/P4E second prune): drop tiles that are almost all zeros.

A tile is pruned when its zero fraction - pruned entries over its *real* entries, padding
excluded - strictly exceeds ``threshold`` (the issue: "whose zero fraction exceeds a
threshold"). The default 0.938 is the paper's 93.8% (App. A.1, Fig. 12): in 16x16 tiles a tile
with at most 15 live entries of 256 is pruned, one with 16 (240/256 = 93.75% zeros) is kept. A
tile whose zero fraction equals the threshold is kept. ``threshold=1.0`` disables the step.

Scope. The test is per tile, so one threshold applied to every tile gives the same masks
whether it is evaluated layer by layer or over the whole network; scope therefore decides
*which threshold a tile is held to*:

- ``Scope.GLOBAL`` (default; the paper's Fig. 14 "global scope for prune^pack", and the public
  demo's "P4E-Gl-0.0625" where 0.0625 = 1 - 0.9375 is (about) that cut written as a density):
  one threshold, identical for every tile of every layer. How many tiles each layer loses
  falls out of its own sparsity - a very sparse layer can lose most of its tiles (the
  layer-collapse risk the paper notes for global scope).
- ``Scope.LOCAL``: per-layer thresholds, ``threshold`` may be a ``{layer: threshold}`` mapping
  (layers not listed use ``default_threshold``). This is how HE-PEx's best overall configuration
  is expressed - P4E for FC layers, P3E for conv layers (which are sensitive to the second
  prune) - by giving conv layers ``1.0``.

A global fraction-of-tiles rule was rejected: it would prune tiles far below the threshold in
dense layers, which is not what the paper's threshold sweep (Fig. 12) measures.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from fractions import Fraction

import torch
from torch import Tensor

from fheprune.errors import InputError, InputTypeError, UnknownNameError
from fheprune.layouts import (
    TilePlan,
    TileShape,
    TileSpec,
    expand_tile_mask,
    layer_tile,
    tile_entry_counts,
    tile_nonzero_counts,
)

from .base import PruningMethod, Scope, complete_masks

__all__ = ["DEFAULT_PACK_THRESHOLD", "PackPruning", "tile_zero_fractions"]

log = logging.getLogger(__name__)

DEFAULT_PACK_THRESHOLD = 0.938


def _check_threshold(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{what} must be a number, got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{what} must be in [0, 1], got {value}")
    return float(value)


def tile_zero_fractions(mask: Tensor, tile_shape: TileShape) -> Tensor:
    """Zero fraction of each tile over its real entries, float64 ``[P, nR, nC]``."""
    real = tile_entry_counts(mask.shape, tile_shape).to(mask.device)
    live = tile_nonzero_counts(mask, tile_shape)
    return (real - live).to(torch.float64) / real.clamp(min=1).to(torch.float64)


class PackPruning(PruningMethod):
    """Prune every tile whose zero fraction exceeds its threshold (strict ``>``)."""

    def __init__(
        self,
        tile_shape: TileSpec,
        threshold: float | Mapping[str, float] = DEFAULT_PACK_THRESHOLD,
        *,
        scope: Scope | str = Scope.GLOBAL,
        default_threshold: float = DEFAULT_PACK_THRESHOLD,
    ) -> None:
        if not isinstance(tile_shape, TileShape | TilePlan):
            raise InputTypeError(
                f"tile_shape must be a TileShape or TilePlan, got {type(tile_shape).__name__}"
            )
        self.tile_shape = tile_shape
        self.scope = Scope(scope)
        self.default_threshold = _check_threshold(default_threshold, "default_threshold")
        if isinstance(threshold, Mapping):
            if self.scope is Scope.GLOBAL:
                raise InputError(
                    "per-layer thresholds need scope='local'; global scope means one threshold "
                    "for every tile"
                )
            self.threshold: float | dict[str, float] = {
                str(k): _check_threshold(v, f"threshold[{k!r}]") for k, v in threshold.items()
            }
        else:
            self.threshold = _check_threshold(threshold, "threshold")

    def __repr__(self) -> str:
        return (
            f"PackPruning(tile_shape={self.tile_shape}, threshold={self.threshold}, "
            f"scope={self.scope.value})"
        )

    @property
    def label(self) -> str:
        value = "per-layer" if isinstance(self.threshold, dict) else self.threshold
        return f"{self.scope.label}/pack>{value}"

    def threshold_for(self, layer: str) -> float:
        if isinstance(self.threshold, dict):
            return self.threshold.get(layer, self.default_threshold)
        return self.threshold

    def compute_mask(
        self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        current = complete_masks(weights, masks)
        if isinstance(self.threshold, dict):
            unknown = sorted(set(self.threshold) - set(weights))
            if unknown:
                raise UnknownNameError(f"pack thresholds for unknown layers {unknown}")
        out: dict[str, Tensor] = {}
        for name, mask in current.items():
            threshold = self.threshold_for(name)
            shape = layer_tile(self.tile_shape, name)
            real = tile_entry_counts(mask.shape, shape).to(mask.device)
            zeros = real - tile_nonzero_counts(mask, shape)
            # Exact integer test of zeros/real > t: the threshold is read as the decimal the
            # user wrote (0.57 means 57/100), so a boundary tile is never flipped by float
            # rounding; for integer zeros, zeros > t*real  <=>  zeros > floor(t*real).
            exact = Fraction(repr(threshold))
            cut = (real * exact.numerator) // exact.denominator
            drop = (zeros > cut) & (real > 0)
            out[name] = mask & expand_tile_mask(~drop, mask.shape, shape).to(mask.device)
            log.debug(
                "pack %s: %d of %d tiles exceed %.4f zeros",
                name,
                int(drop.sum()),
                drop.numel(),
                threshold,
            )
        return out
