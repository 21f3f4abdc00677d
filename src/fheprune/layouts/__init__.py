"""Layouts: how weights are cut into HE units (one definition per layout, see DESIGN.md).

Pruning, the cost model and the runtime import the unit definitions from here so the three
never disagree on what a unit is. Only tile tensors (HE-PEx / HElayers) so far.
"""

from __future__ import annotations

from .layers import (
    PRUNABLE_TYPES,
    layer_module,
    layer_weights,
    output_layer_names,
    prunable_layer_names,
)
from .tiles import (
    LayerTileStats,
    TilePlan,
    TileShape,
    TileSpec,
    TileStats,
    as_matrices,
    expand_tile_mask,
    from_matrices,
    grid_shape,
    layer_tile,
    tile_entry_counts,
    tile_grid,
    tile_nonzero_counts,
    tile_plan,
    tile_sparsity,
    zero_tile_mask,
)

__all__ = [
    "PRUNABLE_TYPES",
    "LayerTileStats",
    "TilePlan",
    "TileShape",
    "TileSpec",
    "TileStats",
    "as_matrices",
    "expand_tile_mask",
    "from_matrices",
    "grid_shape",
    "layer_module",
    "layer_tile",
    "layer_weights",
    "output_layer_names",
    "prunable_layer_names",
    "tile_entry_counts",
    "tile_grid",
    "tile_nonzero_counts",
    "tile_plan",
    "tile_sparsity",
    "zero_tile_mask",
]
