"""Expand (HE-PEx 4.1): un-prune the zeros inside tiles that stay non-zero.

A tile with even one live entry is encrypted and multiplied anyway, so its pruned entries save
nothing under HE; giving them back to retraining recovers accuracy for free. Zero tiles stay
zero, so tile sparsity never changes. This is the only operation that turns a mask entry from
``False`` back to ``True``; it is deliberately not a :class:`PruningMethod`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

from fheprune.errors import InputTypeError
from fheprune.layouts import TileSpec, expand_tile_mask, layer_tile, zero_tile_mask

__all__ = ["expand_masks"]

log = logging.getLogger(__name__)


def expand_masks(masks: Mapping[str, Tensor], tile_shape: TileSpec) -> dict[str, Tensor]:
    """Masks where every entry of a non-zero tile is live and every zero tile stays pruned
    (``tile_shape``: one tile, or each layer's from a :class:`~fheprune.layouts.TilePlan`)."""
    out: dict[str, Tensor] = {}
    revived = 0
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise InputTypeError(f"mask of {name!r} must be torch.bool, got {mask.dtype}")
        shape = layer_tile(tile_shape, name)
        keep_tiles = ~zero_tile_mask(mask, shape)
        out[name] = expand_tile_mask(keep_tiles, mask.shape, shape).to(mask.device)
        revived += int((out[name] & ~mask).sum())
    log.info("expand (%s tiles): %d pruned entries given back to live tiles", tile_shape, revived)
    return out
