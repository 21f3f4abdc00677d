"""P2's Prune: scope {local, global} x criterion {L1, random, act} x target {weight, neuron}.

HE-PEx Table 1 configurations: Lc/L1/Wei, Gl/L1/Wei, -/Rnd/Wei, Lc/L1/Neu (Chan for conv),
-/Rnd/Neu. ``fraction`` is the fraction of the target that is pruned *after* the call, counting
what was already pruned (a cumulative target, as in an iterative schedule): a second call with
the same fraction prunes nothing new. Counts round half up, so each layer (local) or the whole
network (global) is within half an item of the exact fraction.

Scores are taken on ``weight * mask``; already-pruned items score ``-inf`` and are always
selected first, so they stay pruned and count towards the fraction.

Neuron target: a neuron is an output row of ``W`` (for a conv, an output channel = all its
``C_in x kh x kw`` weights), scored by the L1 norm of its weights. Only the producing row is
removed here; a pruned neuron still outputs a constant (its activated bias), and
:func:`fheprune.pruning.schemes.run_scheme` then folds it into the next Linear layer's bias and
prunes the column that read it (:mod:`fheprune.pruning.fold`). The
output layer's neurons (class scores, reconstructed pixels) are never pruned: by default the
last layer of the ``weights`` mapping, which is the output layer in ``prunable_layers()`` order
(pass ``protected`` explicitly, e.g. :func:`fheprune.layouts.output_layer_names`, otherwise).
Global neuron pruning compares the *mean* |w| per neuron (L1 / fan-in) so layers with different
fan-in compete fairly; within a layer this ranks exactly like the L1 norm.

Neuron+input target: the network's input features are neurons too. The first Linear layer's
columns (the pixels an MLP reads) are scored like rows (the column's L1; mean over its fan-out
for global scope) and pruned as whole columns; the co-permutation then gathers the dead pixels
into dead tile columns through the client's input permutation. By default they share the
neurons' ranking (global) or fraction (local); ``input_fraction`` prunes exactly that fraction
of the inputs instead, ranked among themselves, while ``fraction`` applies to the neurons.
Hidden neurons and input pixels are different resources (a linear MLP needs only as many
hidden neurons as classes, but many pixels), so one shared ranking rarely splits them well.

Activation-aware criterion (``act``, after Wanda): a weight scores ``|w| * rms(x)``, where
``rms(x)`` is the RMS of the input feature (Linear) or input channel (Conv2d) it multiplies,
measured on calibration data (:func:`fheprune.pruning.calibration.input_rms`). Neurons and
input columns sum (or, globally, average) these products. L1 alone cannot see the input's
scale: on the MNIST MLP with 16 hidden neurons and 304 pixels left (95% of its 16x16 tiles
zero), two epochs of retraining recover 80.2% test accuracy when the pixels are ranked by L1
and 91.4% when they are ranked by the activation-aware score (unpruned: 92.8%).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import torch
from torch import Tensor

from fheprune.errors import InputError, InputTypeError

from .base import (
    Criterion,
    PruningMethod,
    Scope,
    Target,
    check_fraction,
    check_input_fraction,
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
        input_rms: Mapping[str, Tensor] | None = None,
        input_fraction: float | None = None,
    ) -> None:
        self.fraction = check_fraction(fraction)
        self.scope = Scope(scope)
        self.criterion = Criterion(criterion)
        self.target = Target(target)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputTypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self.protected = None if protected is None else frozenset(protected)
        self.input_fraction = check_input_fraction(input_fraction, self.target)
        if self.criterion is Criterion.ACTIVATION and input_rms is None:
            raise InputError(
                "criterion 'act' scores |w| by the RMS of its input: pass input_rms (from "
                "fheprune.pruning.calibration.input_rms on a few batches of training inputs)"
            )
        self.input_rms = None if input_rms is None else dict(input_rms)

    def __repr__(self) -> str:
        return (
            f"MagnitudePruning(fraction={self.fraction}, scope={self.scope.value}, "
            f"criterion={self.criterion.value}, target={self.target.value}, seed={self.seed}, "
            f"input_fraction={self.input_fraction})"
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
        magnitudes = {name: self._magnitude(name, w) for name, w in weights.items()}
        if self.target is Target.WEIGHT:
            scores = {
                name: self._weight_scores(magnitudes[name], current[name], generator)
                for name in weights
            }
            chosen = select_by_scope(scores, self.fraction, self.scope)
        else:
            protected = self._protected(weights)
            scores = {
                name: self._neuron_scores(magnitudes[name], current[name], generator)
                for name in weights
                if name not in protected
            }
            inputs: dict[str, Tensor] = {}
            first = next(iter(weights), None)
            # The first layer's columns, if it is a Linear reading the input features (a conv's
            # inputs are not pruned).
            if (
                self.target is Target.NEURON_INPUT
                and first is not None
                and weights[first].dim() == 2
            ):
                inputs[f"{first}#inputs"] = self._neuron_scores(
                    magnitudes[first].t(), current[first].t(), generator
                )
            elif self.input_fraction is not None:
                raise InputError(
                    "input_fraction prunes the input features of a first Linear layer; this "
                    "model's first layer is not one (a conv's input channels are not pruned)"
                )
            if self.input_fraction is None:
                chosen = select_by_scope({**scores, **inputs}, self.fraction, self.scope)
            else:
                chosen = select_by_scope(scores, self.fraction, self.scope)
                chosen.update(select_by_scope(inputs, self.input_fraction, Scope.LOCAL))
        out = dict(current)
        for name, sel in chosen.items():
            if name.endswith("#inputs"):
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

    def _magnitude(self, name: str, weight: Tensor) -> Tensor:
        """``|w|``, times the RMS of each weight's input for the activation-aware criterion."""
        magnitude = weight.detach().abs().to(torch.float64)
        if self.criterion is not Criterion.ACTIVATION:
            return magnitude
        assert self.input_rms is not None  # checked in __init__
        rms = self.input_rms.get(name)
        if rms is None:
            raise InputError(
                f"criterion 'act' needs the input RMS of layer {name!r}; input_rms has "
                f"{sorted(self.input_rms)}"
            )
        rms = rms.detach().to(device=magnitude.device, dtype=torch.float64).reshape(-1)
        per_group = weight.shape[1]  # a grouped conv's weight holds C_in / groups inputs
        groups = rms.numel() // per_group if rms.numel() % per_group == 0 else 0
        if groups < 1 or weight.shape[0] % groups != 0 or (groups > 1 and weight.dim() != 4):
            raise InputError(
                f"input_rms[{name!r}] has {rms.numel()} entries, but the layer has "
                f"{weight.shape[1]} inputs (features or channels); were the statistics taken "
                "on another model?"
            )
        # Output channel o of a grouped conv reads the inputs of group o // (C_out / groups).
        scale = (
            rms.view(groups, 1, per_group)
            .expand(groups, weight.shape[0] // groups, per_group)
            .reshape(weight.shape[0], per_group)
        )
        return magnitude * scale.view(*scale.shape, *([1] * (weight.dim() - 2)))

    def _weight_scores(self, magnitude: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        if self.criterion is Criterion.RANDOM:
            score = self._random(magnitude.shape, generator, magnitude)
        else:
            score = magnitude
        return score.masked_fill(~mask, float("-inf"))

    def _neuron_scores(self, magnitude: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        rows = magnitude.shape[0]
        alive = mask.reshape(rows, -1).any(dim=1)
        if self.criterion is Criterion.RANDOM:
            score = self._random(torch.Size([rows]), generator, magnitude)
        else:
            live = magnitude.masked_fill(~mask, 0).reshape(rows, -1)
            score = live.sum(dim=1)
            if self.scope is Scope.GLOBAL:
                score = score / max(1, live.shape[1])  # mean: fair across fan-ins
        return score.masked_fill(~alive, float("-inf"))

    def _protected(self, weights: Mapping[str, Tensor]) -> frozenset[str]:
        if self.protected is not None:
            return self.protected
        names = list(weights)
        return frozenset(names[-1:])
