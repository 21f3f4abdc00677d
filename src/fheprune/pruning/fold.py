"""Surgery after neuron pruning: fold dead neurons into the next layer's bias.

A neuron whose producing row (or conv output channel) is pruned no longer depends on the input:
it outputs ``act(bias)``, a constant, which its consumer multiplies by a column of weights. That
column is a waste under HE - it keeps tiles (and, in the diagonal layouts, rotations) alive to
add a constant. When the consumer is a ``Linear`` layer the constant folds exactly into its
bias: ``b' = b + W[:, dead] @ value[dead]``, and the column is pruned. The network computes the
same function before and after (tested).

A feature is folded when the previous layer's row (or channel) that produces it is fully
pruned, and when it is bit-for-bit equal across random inputs of ``model.input_shape`` run
through a copy of the model with the masks applied (the constant to fold is read there). Conv
consumers are left alone (with zero padding, a constant channel is not constant at the
borders).

Known interaction with Expand (P3E / P4E): the fold writes its zeros into the model at prune
time, not lazily like the masks. An Expand that later gives back entries inside live tiles
returns a folded neuron's producer row with its trained values, but its consumer column with
zeros (the constant stays in the bias, so the function is still exact). The final Retrain trains
those entries from zero instead of from their old values. Tile sparsity is unaffected.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fheprune.layouts import layer_module, prunable_layer_names

from .base import apply_masks
from .calibration import observe_inputs

__all__ = ["fold_dead_neurons"]

log = logging.getLogger(__name__)

_PROBES = 4  # random inputs; a constant feature is equal across all of them


def fold_dead_neurons(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Fold constant inputs of ``Linear`` layers into their biases; returns the new masks.

    Modifies ``model`` in place (the consumers' biases, and zeros in the folded columns). The
    first prunable layer is skipped (its inputs are the data). ``input_shape`` (one sample,
    no batch axis) defaults to ``model.input_shape``; without either nothing is folded.
    """
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    out = dict(masks)
    if shape is None:
        log.info("fold: the model has no input_shape; dead neurons are not folded")
        return out
    names = prunable_layer_names(model)
    consumers = [n for n in names[1:] if isinstance(layer_module(model, n), nn.Linear)]
    if not consumers:
        return out
    probe = copy.deepcopy(model)
    apply_masks(probe, {n: m for n, m in masks.items() if n in names})
    seen: dict[str, Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    weight = layer_module(model, names[0]).weight
    x = torch.randn(_PROBES, *shape, generator=generator, dtype=weight.dtype).to(weight.device)
    observe_inputs(
        probe, consumers, [x], lambda name, v: seen.__setitem__(name, v.reshape(v.shape[0], -1))
    )
    with torch.no_grad():
        for name in consumers:
            features = seen[name]
            constant = (features == features[0]).all(dim=0)
            layer = layer_module(model, name)
            mask = out[name].to(torch.bool)
            dead = _dead_producers(names, name, out, mask.shape[1])
            fold = constant & dead & mask.any(dim=0)
            if not bool(fold.any()):
                continue
            value = features[0].to(layer.weight.dtype)
            w = layer.weight.masked_fill(~mask, 0)
            shift = w[:, fold] @ value[fold]
            if layer.bias is None:
                if bool(shift.ne(0).any()):
                    continue  # nowhere to put the constant
            else:
                layer.bias.add_(shift)
            layer.weight[:, fold] = 0
            out[name] = mask & ~fold.view(1, -1)
            log.info("fold: %d constant inputs of %r folded into its bias", int(fold.sum()), name)
    return out


def _dead_producers(
    names: Sequence[str], consumer: str, masks: Mapping[str, Tensor], features: int
) -> Tensor:
    """Which of ``consumer``'s input features come from a fully pruned row of the layer before.

    The previous prunable layer's output ``c`` feeds feature ``c`` (same width), or the block
    ``c * k .. (c+1) * k - 1`` (a conv flattened into ``k`` features per channel). A feature
    folds only if it is dead by the masks *and* constant on the probes, so an activation that
    merely happens to be constant on a few random inputs (a ReLU, say) is never folded.
    """
    producer = names[names.index(consumer) - 1]
    mask = masks[producer].to(torch.bool)
    dead_rows = ~mask.reshape(mask.shape[0], -1).any(dim=1)
    if features % dead_rows.numel() != 0:
        return torch.zeros(features, dtype=torch.bool, device=mask.device)
    return dead_rows.repeat_interleave(features // dead_rows.numel())
