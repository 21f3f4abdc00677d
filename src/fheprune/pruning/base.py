"""The pruning contract and the mask helpers every method shares.

Like ``torch.nn.utils.prune``, every method implements one small contract,
:meth:`PruningMethod.compute_mask`: given the current weights and the current masks of the
prunable layers, return new masks. Masks are ``{layer name: bool tensor shaped like the
weight}``, ``True`` = live. Already-pruned entries stay pruned: a method may only turn ``True``
into ``False`` (only :func:`fheprune.pruning.expand.expand_masks` un-prunes, and it is not a
pruning method). As in Torch-Pruning, scoring, grouping (which entries fall together: a weight,
a neuron, a tile), the selection policy (local / global fraction, threshold) and the surgery on
the model (:func:`apply_masks`) are kept apart.

Masks are kept separate from the weights (like torch's ``weight_orig`` + ``weight_mask``):
methods score ``weight * mask``, and :func:`apply_masks` writes the zeros into the model when the
caller decides (before retraining, at the end of a scheme).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fheprune.errors import InputError, InputTypeError
from fheprune.layouts import layer_module, layer_weights

__all__ = [
    "Criterion",
    "LayerSparsity",
    "MaskError",
    "Masks",
    "PrunableModel",
    "PruningMethod",
    "Scope",
    "SparsityStats",
    "Target",
    "apply_masks",
    "check_fraction",
    "check_input_fraction",
    "check_no_unprune",
    "complete_masks",
    "full_masks",
    "masked_weights",
    "masks_from_weights",
    "prune_count",
    "select_by_scope",
    "select_lowest",
    "weight_sparsity",
]

log = logging.getLogger(__name__)

Masks = dict[str, Tensor]


class Scope(str, Enum):
    """Where a pruning fraction (or threshold) is applied."""

    LOCAL = "local"  # the same fraction in every layer ("Lc")
    GLOBAL = "global"  # one ranking over all layers together ("Gl")

    @property
    def label(self) -> str:
        return "Lc" if self is Scope.LOCAL else "Gl"


class Criterion(str, Enum):
    """How entries are scored for magnitude pruning (HE-PEx Table 1)."""

    L1 = "l1"  # |w| for a weight, sum |w| for a neuron / channel
    RANDOM = "random"  # uniform random scores from an explicitly seeded generator
    # |w| times the RMS of the input it multiplies, measured on calibration data
    # (:func:`fheprune.pruning.calibration.input_rms`); neurons sum the weighted entries.
    ACTIVATION = "act"

    @property
    def label(self) -> str:
        return {"l1": "L1", "random": "Rnd", "act": "Act"}[self.value]


class Target(str, Enum):
    """What one pruning decision removes."""

    WEIGHT = "weight"  # single entries ("Wei")
    NEURON = "neuron"  # an output neuron = a row of W; for a conv, an output channel ("Neu/Chan")
    # Neurons, and the network's input features too (the first Linear layer's columns: the
    # pixels an MLP reads). The client's input permutation gathers dead inputs into dead tiles.
    NEURON_INPUT = "neuron+input"

    @property
    def label(self) -> str:
        return {"weight": "Wei", "neuron": "Neu", "neuron+input": "Neu+In"}[self.value]

    @property
    def neurons(self) -> bool:
        """Whether a decision removes whole neurons (rows), not single weights."""
        return self is not Target.WEIGHT


class MaskError(InputError):
    """Masks that do not fit the weights (names, shapes, dtype) or that un-prune entries."""


@runtime_checkable
class PrunableModel(Protocol):
    """The model conventions shared by the model zoo, pruning, the compiler and the runtime.

    Models are also ``nn.Module``; functions here take ``nn.Module`` and read these members via
    :func:`fheprune.layouts.prunable_layer_names` and friends, so plain modules work too.
    """

    flatten_after: str | None
    task: str

    def prunable_layers(self) -> list[str]: ...

    def neuron_chain(self) -> list[tuple[str, str]]: ...


class PruningMethod(ABC):
    """One pruning method: scores + grouping + selection policy, nothing model-specific.

    Subclasses implement :meth:`compute_mask`. Call the instance (``method(weights, masks)``)
    for the checked entry point: it fills in missing masks, validates the result and refuses a
    method that un-prunes.
    """

    @abstractmethod
    def compute_mask(
        self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """New masks for every layer in ``weights``; entries ``False`` in ``masks`` stay False."""

    @property
    def label(self) -> str:
        """Short name in HE-PEx's {scope/criterion/target} notation."""
        return type(self).__name__

    def __call__(
        self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        current = complete_masks(weights, masks)
        new = self.compute_mask(weights, current)
        new = complete_masks(weights, new, require_all=True)
        check_no_unprune(current, new)
        before = weight_sparsity(current)
        after = weight_sparsity(new)
        log.info(
            "%s: weight sparsity %.4f -> %.4f (%d -> %d of %d entries pruned)",
            self.label,
            before.sparsity,
            after.sparsity,
            before.pruned,
            after.pruned,
            after.total,
        )
        return new


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


def full_masks(weights: Mapping[str, Tensor]) -> Masks:
    """All-``True`` masks (nothing pruned) for ``weights``."""
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


def masks_from_weights(weights: Mapping[str, Tensor] | nn.Module) -> Masks:
    """Masks that are ``True`` exactly where a weight is non-zero (e.g. for a loaded model)."""
    tensors = layer_weights(weights) if isinstance(weights, nn.Module) else weights
    return {name: w != 0 for name, w in tensors.items()}


def complete_masks(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None,
    *,
    require_all: bool = False,
) -> Masks:
    """Validate ``masks`` against ``weights``; a missing layer means "nothing pruned yet".

    Raises :class:`MaskError` for an unknown layer, a wrong shape or a non-bool dtype (and for a
    missing layer when ``require_all``).
    """
    given = {} if masks is None else dict(masks)
    extra = sorted(set(given) - set(weights))
    if extra:
        raise MaskError(f"masks for unknown layers {extra}; known layers: {list(weights)}")
    out: Masks = {}
    for name, weight in weights.items():
        mask = given.get(name)
        if mask is None:
            if require_all:
                raise MaskError(f"no mask returned for layer {name!r}")
            out[name] = torch.ones_like(weight, dtype=torch.bool)
            continue
        if mask.dtype != torch.bool:
            raise MaskError(f"mask of {name!r} must be torch.bool, got {mask.dtype}")
        if mask.shape != weight.shape:
            raise MaskError(
                f"mask of {name!r} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}"
            )
        out[name] = mask
    return out


def check_no_unprune(old: Mapping[str, Tensor], new: Mapping[str, Tensor]) -> None:
    """Raise :class:`MaskError` if ``new`` revives an entry that ``old`` had pruned."""
    for name, old_mask in old.items():
        revived = new[name] & ~old_mask
        if bool(revived.any()):
            raise MaskError(
                f"layer {name!r}: {int(revived.sum())} pruned entries were un-pruned; only "
                "expand may do that"
            )


def masked_weights(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``weight * mask`` per layer (detached), i.e. what the model holds once masks apply."""
    return {name: w.detach().masked_fill(~masks[name], 0) for name, w in weights.items()}


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Surgery: zero every masked-out weight of the model in place (biases untouched)."""
    with torch.no_grad():
        for name, mask in masks.items():
            weight = layer_module(model, name).weight
            if mask.shape != weight.shape:
                raise MaskError(
                    f"mask of {name!r} has shape {tuple(mask.shape)}, weight has "
                    f"{tuple(weight.shape)}"
                )
            # masked_fill rather than multiply: NaN * 0 would stay NaN.
            weight.masked_fill_(~mask.to(device=weight.device, dtype=torch.bool), 0)


# ---------------------------------------------------------------------------------------------
# counting and selection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSparsity:
    pruned: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total if self.total else 0.0


@dataclass(frozen=True)
class SparsityStats:
    """Weight (element) sparsity: pruned entries / all entries, total and per layer."""

    layers: Mapping[str, LayerSparsity] = field(default_factory=dict)

    @property
    def pruned(self) -> int:
        return sum(s.pruned for s in self.layers.values())

    @property
    def total(self) -> int:
        return sum(s.total for s in self.layers.values())

    @property
    def sparsity(self) -> float:
        total = self.total
        return self.pruned / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pruned": self.pruned,
            "total": self.total,
            "sparsity": self.sparsity,
            "layers": {
                n: {"pruned": s.pruned, "total": s.total, "sparsity": s.sparsity}
                for n, s in self.layers.items()
            },
        }


def weight_sparsity(masks_or_model: Mapping[str, Tensor] | nn.Module) -> SparsityStats:
    """Count pruned entries of masks (``False``) or zero weights of a model's prunable layers."""
    masks = (
        masks_from_weights(masks_or_model)
        if isinstance(masks_or_model, nn.Module)
        else masks_or_model
    )
    return SparsityStats(
        layers={
            name: LayerSparsity(pruned=int((~m.to(torch.bool)).sum()), total=m.numel())
            for name, m in masks.items()
        }
    )


def check_fraction(fraction: float) -> float:
    """A pruning fraction in [0, 1] (bools and NaN rejected)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise InputTypeError(f"fraction must be a number, got {type(fraction).__name__}")
    if not 0.0 <= float(fraction) <= 1.0:  # NaN fails this too
        raise InputError(f"fraction must be in [0, 1], got {fraction}")
    return float(fraction)


def check_input_fraction(input_fraction: float | None, target: Target) -> float | None:
    """A fraction of input features to prune, which only the "neuron+input" target takes."""
    if input_fraction is None:
        return None
    if target is not Target.NEURON_INPUT:
        raise InputError(
            f"input_fraction applies to the 'neuron+input' target, not {target.value!r}"
        )
    return check_fraction(input_fraction)


def prune_count(fraction: float, n: int) -> int:
    """How many of ``n`` items a fraction prunes: round half up, so within 1/2 of exact."""
    return min(n, max(0, math.floor(fraction * n + 0.5)))


def select_lowest(scores: Tensor, k: int) -> Tensor:
    """Bool mask (shape of ``scores``) marking the ``k`` lowest scores.

    Ties are broken by position (stable sort), so the choice is deterministic. Already-pruned
    items should carry ``-inf`` so they are always among the selected.
    """
    flat = scores.reshape(-1)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.sort(flat, stable=True).indices
        chosen[order[:k]] = True
    return chosen.view(scores.shape)


def select_by_scope(
    scores: Mapping[str, Tensor], fraction: float, scope: Scope
) -> dict[str, Tensor]:
    """The policy step: mark the lowest-scored ``fraction`` of items, per layer or overall.

    Local: ``fraction`` of each layer's items. Global: ``fraction`` of all items of all layers
    ranked together (scores must be comparable across layers).
    """
    if scope is Scope.LOCAL:
        return {
            name: select_lowest(s, prune_count(fraction, s.numel())) for name, s in scores.items()
        }
    if not scores:
        return {}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    picked = select_lowest(flat, prune_count(fraction, flat.numel()))
    chosen: dict[str, Tensor] = {}
    start = 0
    for name, s in scores.items():
        chosen[name] = picked[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return chosen
