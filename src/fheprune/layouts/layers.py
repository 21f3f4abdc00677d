"""Which tensors of a model are laid out (and pruned): the shared model conventions.

A model that follows the project conventions exposes ``prunable_layers() -> list[str]``
(qualified names of its ``nn.Linear`` / ``nn.Conv2d`` modules, input to output),
``neuron_chain() -> list[tuple[str, str]]`` (consecutive producer/consumer pairs that share
neurons or channels), ``flatten_after: str | None`` and ``task``. Pruning, the cost model and the
runtime all read the layer list through :func:`prunable_layer_names`, so they agree on it.
Plain ``nn.Module`` objects work too: every ``nn.Linear`` / ``nn.Conv2d`` in definition order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import Tensor, nn

from fheprune.errors import InputError, InputTypeError, UnknownNameError

__all__ = [
    "PRUNABLE_TYPES",
    "layer_module",
    "layer_weights",
    "output_layer_names",
    "prunable_layer_names",
]

log = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def prunable_layer_names(model: nn.Module) -> list[str]:
    """The model's prunable layers, input to output (``model.prunable_layers()`` if defined)."""
    declared = getattr(model, "prunable_layers", None)
    if callable(declared):
        names = [str(n) for n in declared()]
        for name in names:
            layer_module(model, name)  # fail early on a stale or mistyped name
        if len(set(names)) != len(names):
            raise InputError(f"prunable_layers() lists a layer twice: {names}")
        return names
    return [name for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def layer_module(model: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    """The ``nn.Linear`` / ``nn.Conv2d`` registered under ``name``; a clear error otherwise."""
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise UnknownNameError(f"model has no submodule {name!r}") from exc
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise InputTypeError(
            f"layer {name!r} is a {type(module).__name__}; only nn.Linear and nn.Conv2d are "
            "prunable"
        )
    return module


def layer_weights(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Detached views of the weights of ``names`` (default: all prunable layers), in order."""
    chosen = prunable_layer_names(model) if names is None else list(names)
    return {name: layer_module(model, name).weight.detach() for name in chosen}


def output_layer_names(model: nn.Module) -> list[str]:
    """Prunable layers whose outputs leave the model (class scores, reconstructed pixels).

    A layer is an output layer when it produces for no other layer in ``neuron_chain()``; a
    model without a chain has the last prunable layer as its only output layer.
    """
    names = prunable_layer_names(model)
    chain = getattr(model, "neuron_chain", None)
    if not callable(chain) or not names:
        return names[-1:]
    producers = {str(producer) for producer, _ in chain()}
    outputs = [n for n in names if n not in producers]
    return outputs or names[-1:]
