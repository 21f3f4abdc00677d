"""HE-aware pruning: the HE-PEx suite (prune, permute, expand, pack) on tile tensors.

- :mod:`.base`: the one contract (:class:`PruningMethod.compute_mask`), mask helpers, enums;
- :mod:`.magnitude`: P2's prune (L1 / random, weights / neurons, local / global);
- :mod:`.tiles_prune`: P2T's prune^tile (Hunter adapted: T-Avg / T-Max / T-Min);
- :mod:`.expand`: expand (un-prune inside non-zero tiles);
- :mod:`.pack`: prune^pack (tiles whose zero fraction exceeds a threshold);
- :mod:`.schemes`: P2, P2T, P3, P3E, P4, P4E as step pipelines, :func:`run_scheme`;
- :mod:`.serialize`: versioned, code-free save/load of pruned models.

- :mod:`.permute`: P3's Permute (co-permutation of neuron sets, C++ clustering kernel),
  injected into the schemes as :class:`PermuteFn` (:func:`permute_fn`).
"""

from __future__ import annotations

from .base import (
    Criterion,
    LayerSparsity,
    MaskError,
    Masks,
    PrunableModel,
    PruningMethod,
    Scope,
    SparsityStats,
    Target,
    apply_masks,
    check_no_unprune,
    complete_masks,
    full_masks,
    masked_weights,
    masks_from_weights,
    weight_sparsity,
)
from .expand import expand_masks
from .magnitude import MagnitudePruning
from .pack import DEFAULT_PACK_THRESHOLD, PackPruning, tile_zero_fractions
from .permute import PermutationResult, copermute_network, permute_fn
from .schemes import (
    SCHEME_NAMES,
    Expand,
    Permute,
    PermuteFn,
    Prune,
    PruneConfig,
    PrunePack,
    Retrain,
    RetrainFn,
    Scheme,
    SchemeName,
    SchemeResult,
    Step,
    StepRecord,
    build_scheme,
    run_scheme,
)
from .serialize import (
    FORMAT_VERSION,
    LoadedPrunedModel,
    ModelBuilder,
    PrunedModelFormatError,
    PrunedModelMetadata,
    load_pruned_model,
    read_metadata,
    save_pruned_model,
)
from .tiles_prune import TilePruning, TileReduction

__all__ = [
    "DEFAULT_PACK_THRESHOLD",
    "FORMAT_VERSION",
    "SCHEME_NAMES",
    "Criterion",
    "Expand",
    "LayerSparsity",
    "LoadedPrunedModel",
    "MagnitudePruning",
    "MaskError",
    "Masks",
    "ModelBuilder",
    "PackPruning",
    "PermutationResult",
    "Permute",
    "PermuteFn",
    "PrunableModel",
    "Prune",
    "PruneConfig",
    "PrunePack",
    "PrunedModelFormatError",
    "PrunedModelMetadata",
    "PruningMethod",
    "Retrain",
    "RetrainFn",
    "Scheme",
    "SchemeName",
    "SchemeResult",
    "Scope",
    "SparsityStats",
    "Step",
    "StepRecord",
    "Target",
    "TilePruning",
    "TileReduction",
    "apply_masks",
    "build_scheme",
    "check_no_unprune",
    "complete_masks",
    "copermute_network",
    "expand_masks",
    "full_masks",
    "load_pruned_model",
    "masked_weights",
    "masks_from_weights",
    "permute_fn",
    "read_metadata",
    "run_scheme",
    "save_pruned_model",
    "tile_zero_fractions",
    "weight_sparsity",
]
