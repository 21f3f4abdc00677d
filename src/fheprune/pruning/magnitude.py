"""P2's Prune: scope {local, global} x criterion {L1, random} x target {weight, neuron}.

HE-PEx Table 1 configurations: Lc/L1/Wei, Gl/L1/Wei, -/Rnd/Wei, Lc/L1/Neu (Chan for conv),
-/Rnd/Neu. ``fraction`` is the fraction of the target that is pruned *after* the call, counting
what was already pruned (a cumulative target, as in an iterative schedule): a second call with
the same fraction prunes nothing new. Counts round half up, so each layer (local) or the whole
network (global) is within half an item of the exact fraction.

Scores are taken on ``weight * mask``; already-pruned items score ``-inf`` and are always
selected first, so they stay pruned and count towards the fraction.

Neuron target: a neuron is an output row of ``W`` (for a conv, an output channel = all its
``C_in x kh x kw`` weights), scored by the L1 norm of its weights. Only the producing row is
removed; the consumer's columns are kept because the un-pruned bias still reaches them. The
output layer's neurons (class scores, reconstructed pixels) are never pruned: by default the
last layer of the ``weights`` mapping, which is the output layer in ``prunable_layers()`` order
(pass ``protected`` explicitly, e.g. :func:`fheprune.layouts.output_layer_names`, otherwise).
Global neuron pruning compares the *mean* |w| per neuron (L1 / fan-in) so layers with different
fan-in compete fairly; within a layer this ranks exactly like the L1 norm.

Neuron+input target: the network's input features are neurons too. The first Linear layer's
columns (the pixels an MLP reads) are scored like rows (L1 of the column; mean |w| over its
fan-out for global scope) and pruned as whole columns, in the same ranking (global) or at the
same fraction (local). An input pixel that is always zero keeps its initial weights (no
gradient reaches them), so it ranks low; the co-permutation then gathers the dead pixels into
dead tile columns through the client's input permutation. Measured on the MNIST MLP at 16x16
tiles (P4E global, ``results/hepex-16b``): the pixels dominate the global ranking, and already at
fraction 0.5 (63.5% tile sparsity) the loss is 5.0 points, against 0.5 points for the "neuron"
target at 85.8%: an L1 ranking of pixel columns drops informative pixels. Kept as an option, not
in the default sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import torch
from torch import Tensor

from .base import (
    Criterion,
    PruningMethod,
    Scope,
    Target,
    check_fraction,
    complete_masks,
    select_by_scope,
)

__all__ = ["MagnitudePruning"]

log = logging.getLogger(__name__)


class MagnitudePruning(PruningMethod):
    """Prune ``fraction`` of the weights or neurons by L1 magnitude or at random."""

    def __init__(
        self,
        fraction: float,
        *,
        scope: Scope | str = Scope.LOCAL,
        criterion: Criterion | str = Criterion.L1,
        target: Target | str = Target.WEIGHT,
        seed: int = 0,
        protected: Collection[str] | None = None,
    ) -> None:
        self.fraction = check_fraction(fraction)
        self.scope = Scope(scope)
        self.criterion = Criterion(criterion)
        self.target = Target(target)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self.protected = None if protected is None else frozenset(protected)

    def __repr__(self) -> str:
        return (
            f"MagnitudePruning(fraction={self.fraction}, scope={self.scope.value}, "
            f"criterion={self.criterion.value}, target={self.target.value}, seed={self.seed})"
        )

    @property
    def label(self) -> str:
        return f"{self.scope.label}/{self.criterion.label}/{self.target.label}"

    def compute_mask(
        self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        current = complete_masks(weights, masks)
        # A fresh generator per call: the same seed and inputs always give the same masks.
        generator = torch.Generator().manual_seed(self.seed)
        if self.target is Target.WEIGHT:
            scores = {
                name: self._weight_scores(w, current[name], generator)
                for name, w in weights.items()
            }
        else:
            protected = self._protected(weights)
            scores = {
                name: self._neuron_scores(w, current[name], generator)
                for name, w in weights.items()
                if name not in protected
            }
            first = next(iter(weights), None)
            inputs_key = f"{first}#inputs"
            if self.target is Target.NEURON_INPUT and first is not None:
                w = weights[first]
                if w.dim() == 2:  # a Linear reading the input features (conv inputs: no)
                    t = self._neuron_scores(w.t(), current[first].t(), generator)
                    scores[inputs_key] = t
        chosen = select_by_scope(scores, self.fraction, self.scope)
        out = dict(current)
        for name, sel in chosen.items():
            if self.target.neurons and name.endswith("#inputs"):
                layer = name[: -len("#inputs")]
                out[layer] = out[layer] & ~sel.view(1, -1).expand_as(out[layer])
                continue
            if self.target.neurons:
                sel = sel.view(-1, *([1] * (current[name].dim() - 1))).expand_as(current[name])
            out[name] = out[name] & ~sel
        return out

    # -- scoring --------------------------------------------------------------------------

    def _random(self, shape: torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64).to(like.device)

    def _weight_scores(self, weight: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        if self.criterion is Criterion.L1:
            score = weight.detach().abs().to(torch.float64)
        else:
            score = self._random(weight.shape, generator, weight)
        return score.masked_fill(~mask, float("-inf"))

    def _neuron_scores(self, weight: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        rows = weight.shape[0]
        alive = mask.reshape(rows, -1).any(dim=1)
        if self.criterion is Criterion.L1:
            live = weight.detach().masked_fill(~mask, 0).reshape(rows, -1).to(torch.float64)
            score = live.abs().sum(dim=1)
            if self.scope is Scope.GLOBAL:
                score = score / max(1, live.shape[1])  # mean |w|: fair across fan-ins
        else:
            score = self._random(torch.Size([rows]), generator, weight)
        return score.masked_fill(~alive, float("-inf"))

    def _protected(self, weights: Mapping[str, Tensor]) -> frozenset[str]:
        if self.protected is not None:
            return self.protected
        names = list(weights)
        return frozenset(names[-1:])
