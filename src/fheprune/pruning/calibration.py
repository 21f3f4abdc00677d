"""Calibration statistics for data-aware pruning criteria.

The activation-aware criterion (:attr:`Criterion.ACTIVATION`) scores a weight by ``|w|`` times
the root-mean-square of the input it multiplies, measured on a few batches of real inputs. The
product estimates how much the weight actually contributes to the layer's output: a large
weight on an input pixel that is always zero contributes nothing, and a small weight on a
busy input can matter. Plain L1 cannot tell these apart (see :mod:`fheprune.pruning.magnitude`
for what that costs on the MNIST MLP).

:func:`input_rms` records, with forward pre-hooks on the prunable layers, the RMS of every input
feature of a ``Linear`` layer and of every input channel of a ``Conv2d`` layer (over the
batch and all spatial positions). The statistics follow the model's current input order, so
take them before a co-permutation, or on permuted inputs after one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from fheprune.errors import InputError
from fheprune.layouts import layer_module, prunable_layer_names

__all__ = ["input_rms", "observe_inputs"]


def observe_inputs(
    model: nn.Module,
    layers: Sequence[str],
    batches: Iterable[Tensor],
    observe: Callable[[str, Tensor], None],
) -> None:
    """Run ``batches`` through ``model`` and call ``observe(layer, its input)`` on the way.

    The model runs in eval mode without gradients and is put back in its previous mode; the
    hooks are removed whatever happens.
    """
    handles = [
        layer_module(model, name).register_forward_pre_hook(
            lambda _module, args, name=name: observe(name, args[0].detach())
        )
        for name in layers
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def input_rms(
    model: nn.Module,
    batches: Iterable[Tensor],
    layers: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """RMS of each input feature (Linear) or input channel (Conv2d) of ``layers``.

    ``batches`` are model inputs (tensors shaped as the model expects, e.g. ``[n, 1, 28, 28]``).
    Returns ``{layer: float64 tensor [in_features or in_channels]}``. The model runs in eval
    mode without gradients and is put back in its previous mode.
    """
    names = list(prunable_layer_names(model) if layers is None else layers)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)

    def accumulate(name: str, x: Tensor) -> None:
        x = x.to(torch.float64)
        if isinstance(layer_module(model, name), nn.Conv2d):
            per = x.transpose(0, 1).reshape(x.shape[1], -1)  # [C_in, n*H*W]
        else:
            per = x.reshape(-1, x.shape[-1]).t()  # [in_features, n]
        sums[name] = sums.get(name, 0) + per.pow(2).sum(dim=1)
        counts[name] += per.shape[1]

    observe_inputs(model, names, batches, accumulate)
    missing = [name for name in names if counts[name] == 0]
    if missing:
        raise InputError(
            f"no calibration input reached layers {missing}: pass at least one non-empty batch "
            "of model inputs"
        )
    return {name: (sums[name] / counts[name]).sqrt() for name in names}
