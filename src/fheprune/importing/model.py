"""The importer's output: an :class:`~fheprune.models.zoo.HEModel` chain built from plain layer
specs, so the same specs rebuild the architecture later (``model.arch`` ->
:func:`build_imported`, the builder :func:`fheprune.pruning.load_pruned_model` takes).

``model.arch`` of an imported model::

    {"input_shape": [...], "dtype": "float32", "flatten_after": str | None,
     "flatten_shape": [C, H, W] | None, "layers": [spec, ...]}

with one JSON-ready spec per child, in forward order (``kind`` is "linear", "conv",
"avgpool", "flatten" or "poly").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fheprune.errors import InputError
from fheprune.models.activations import PolyActivation, Square, TanhPoly2, TrainablePoly
from fheprune.models.zoo import HEModel

__all__ = ["ImportedPoly", "build_imported", "poly_spec"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ImportedPoly(PolyActivation):
    """A fixed ``a*x^2 + b*x + c`` found in an imported graph (coefficients are a buffer, so
    they travel in ``state_dict`` and follow ``.double()``; they are not trained)."""

    coeffs: torch.Tensor

    def __init__(self, a: float = 0.0, b: float = 1.0, c: float = 0.0) -> None:
        super().__init__()
        # float64, so a float64 model keeps them exactly; model.to(dtype) casts them with it.
        self.register_buffer("coeffs", torch.tensor([a, b, c], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.coeffs[0], self.coeffs[1], self.coeffs[2]
        return a * x * x + b * x + c

    def coefficients(self) -> tuple[float, float, float]:
        a, b, c = (float(v) for v in self.coeffs.tolist())
        return a, b, c

    def extra_repr(self) -> str:
        a, b, c = self.coefficients()
        return f"a={a:.6g}, b={b:.6g}, c={c:.6g}"


#: PolyActivation classes the importer keeps as they are (it can rebuild them from a spec);
#: any other PolyActivation becomes an ImportedPoly with its current coefficients.
KEPT_ACTIVATIONS: dict[str, type[PolyActivation]] = {
    cls.__name__: cls for cls in (ImportedPoly, Square, TanhPoly2, TrainablePoly)
}


def poly_spec(name: str, module: PolyActivation) -> dict[str, Any]:
    """The spec of a kept activation module (its class, coefficients, TanhPoly2's bound)."""
    spec: dict[str, Any] = {
        "kind": "poly",
        "name": name,
        "class": type(module).__name__,
        "coefficients": list(module.coefficients()),
    }
    if isinstance(module, TanhPoly2):
        spec["bound"] = module.bound
    return spec


def _pair(value: Any, what: str) -> tuple[int, int]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise InputError(f"{what} must be two integers, got {value!r}")
    return int(value[0]), int(value[1])


def _module(spec: Mapping[str, Any]) -> nn.Module:
    """A fresh module for one layer spec (default initialisation)."""
    kind = spec.get("kind")
    try:
        if kind == "linear":
            return nn.Linear(
                int(spec["in_features"]), int(spec["out_features"]), bias=bool(spec["bias"])
            )
        if kind == "conv":
            return nn.Conv2d(
                int(spec["in_channels"]),
                int(spec["out_channels"]),
                _pair(spec["kernel_size"], "kernel_size"),
                stride=_pair(spec["stride"], "stride"),
                padding=_pair(spec["padding"], "padding"),
                groups=int(spec["groups"]),
                bias=bool(spec["bias"]),
            )
        if kind == "avgpool":
            return nn.AvgPool2d(
                _pair(spec["kernel_size"], "kernel_size"),
                stride=_pair(spec["stride"], "stride"),
                padding=_pair(spec["padding"], "padding"),
                count_include_pad=bool(spec["count_include_pad"]),
            )
        if kind == "flatten":
            return nn.Flatten()
        if kind == "poly":
            cls = KEPT_ACTIVATIONS.get(str(spec["class"]))
            a, b, c = (float(v) for v in spec["coefficients"])
            if cls is ImportedPoly:
                return ImportedPoly(a, b, c)
            if cls is TrainablePoly:
                return TrainablePoly(a, b, c)
            if cls is TanhPoly2:
                return TanhPoly2(float(spec["bound"]))
            if cls is Square:
                return Square()
            raise InputError(f"unknown activation class {spec['class']!r}")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"invalid layer spec {dict(spec)!r}: {exc}") from exc
    raise InputError(f"unknown layer kind {kind!r} in spec {dict(spec)!r}")


def build_imported(
    name: str | None = None,
    /,
    *,
    input_shape: Sequence[int],
    layers: Sequence[Mapping[str, Any]],
    dtype: str = "float32",
    flatten_after: str | None = None,
    flatten_shape: Sequence[int] | None = None,
) -> HEModel:
    """Rebuild an imported architecture from its ``arch`` (untrained weights).

    Usable as the ``builder`` of :func:`fheprune.pruning.load_pruned_model` for a file saved
    with ``model_kwargs=model.arch``: ``load_pruned_model(path, build_imported)``.
    """
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise InputError(f"input_shape must be positive sizes, got {tuple(input_shape)!r}")
    children: OrderedDict[str, nn.Module] = OrderedDict()
    for spec in layers:
        child = str(spec.get("name", ""))
        if not child or "." in child or child in children:
            raise InputError(f"layer names must be unique, non-empty, without dots: {child!r}")
        children[child] = _module(spec)
    model = HEModel(children, shape)
    model.to(_DTYPES[dtype])
    model.eval()
    if flatten_after is not None and flatten_after not in children:
        raise InputError(f"flatten_after {flatten_after!r} is not a layer of the model")
    model.flatten_after = flatten_after
    if flatten_shape is not None:
        c, h, w = (int(v) for v in flatten_shape)
        model.flatten_shape = (c, h, w)
    model.task = "classification"
    model.model_name = name
    model.arch = {
        "input_shape": list(shape),
        "dtype": dtype,
        "flatten_after": flatten_after,
        "flatten_shape": None if flatten_shape is None else list(model.flatten_shape or ()),
        "layers": [dict(spec) for spec in layers],
    }
    return model


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32" / "float64" for the dtypes an imported model may have; InputError otherwise."""
    for key, value in _DTYPES.items():
        if value == dtype:
            return key
    raise InputError(f"imported models are float32 or float64, not {dtype}")
