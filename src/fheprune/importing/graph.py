"""The part both front-ends share: a builder that receives layers and element-wise arithmetic
in graph order, checks that they form one chain, folds what an HE compiler must fold, and
assembles the :class:`~fheprune.models.zoo.HEModel`.

* **One chain.** Every layer reads the *head*: the output of the previous layer, possibly seen
  through a polynomial (:class:`~.polynomial.PolyValue`). Reading anything older means a tensor
  is used twice (a branch, a skip connection), which the packed layouts cannot hold.
* **Polynomials.** Arithmetic between two layers is tracked symbolically; when the next layer
  (or the output) reads the value, its polynomial becomes one activation step.
* **Folding.** Batch norm, and per-channel constants added to or multiplying a layer output,
  are affine per output channel: they go into that Linear / Conv2d's weights and bias.
* **Shapes.** The builder computes the per-sample shape after every step itself, so the chain
  it emits is consistent by construction (the front-ends cross-check it against theirs).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fheprune.models.activations import PolyActivation
from fheprune.models.zoo import HEModel

from .errors import (
    DEGREE_HINT,
    NON_POLYNOMIAL_HINT,
    PRODUCT_HINT,
    RESIDUAL_HINT,
    ModelImportError,
    UnsupportedOperationError,
)
from .model import KEPT_ACTIVATIONS, ImportedPoly, build_imported, poly_spec
from .polynomial import Poly, PolyError, PolyValue

__all__ = [
    "ChainBuilder",
    "ConvStep",
    "FlattenStep",
    "LinearStep",
    "PolyStep",
    "PoolStep",
    "Step",
]

FloatArray = NDArray[np.float64]
Shape = tuple[int, ...]


@dataclass
class LinearStep:
    name: str
    weight: FloatArray  # [out, in]
    bias: FloatArray | None  # [out]


@dataclass
class ConvStep:
    name: str
    weight: FloatArray  # [out, in / groups, kh, kw]
    bias: FloatArray | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int


@dataclass
class PoolStep:
    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    count_include_pad: bool


@dataclass
class FlattenStep:
    name: str


@dataclass
class PolyStep:
    name: str
    poly: Poly
    module: PolyActivation | None  # a kept source module (a private copy), else None


Step = LinearStep | ConvStep | PoolStep | FlattenStep | PolyStep


def sanitize(hint: str | None) -> str:
    """A child name from a graph name: "features.0" -> "features_0", "/fc1/Gemm" -> ..."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", hint or "").strip("_")


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ChainBuilder:
    """Receives one front-end's layers in order and builds the chain (see the module doc).

    ``where`` arguments name the graph node for error messages; ``operation`` names what it
    does ("nn.Linear", "Gemm", "batch norm", ...). ``reserved`` names are kept free for the
    source modules that own them (generated names such as "act1" avoid them).
    """

    def __init__(self, input_shape: Shape, *, reserved: Iterable[str] = ()) -> None:
        self.input_shape = input_shape
        self.steps: list[Step] = []
        self._shape = input_shape
        self._head = 0
        self._next_base = 1
        self._labels: dict[int, str] = {0: "the model input"}
        self._shapes: dict[int, Shape] = {0: input_shape}
        self._producer: LinearStep | ConvStep | None = None  # the step whose output is head
        self._reserved = {sanitize(n) for n in reserved}
        self._used: set[str] = set()
        self._counts: dict[str, int] = {}
        self._last_conv: str | None = None
        self.flatten_after: str | None = None
        self.flatten_shape: tuple[int, int, int] | None = None

    # ---- values -----------------------------------------------------------------------

    def start(self) -> PolyValue:
        """The model input."""
        return PolyValue(0, Poly.identity())

    @property
    def shape(self) -> Shape:
        """Per-sample shape of the head (polynomials do not change it)."""
        return self._shape

    def shape_of(self, value: PolyValue) -> Shape:
        """Per-sample shape of any tensor of the chain, head or not."""
        return self._shapes[value.base]

    def label(self, value: PolyValue) -> str:
        return self._labels.get(value.base, "an earlier tensor")

    def check_head(self, value: PolyValue, where: str, operation: str) -> None:
        """Refuse a read of anything but the chain's current head."""
        if value.base != self._head:
            raise UnsupportedOperationError.at(
                where,
                operation,
                f"reads {self.label(value)}, which another operation already consumed",
                "a tensor used twice (a branch or a skip connection) is not supported: the "
                "model must be one chain of layers",
            )

    def _consume(self, value: PolyValue, where: str, operation: str) -> None:
        """``value`` becomes the input of a new layer: its pending polynomial is emitted."""
        self.check_head(value, where, operation)
        if value.origin is not None and type(value.origin[1]) in KEPT_ACTIVATIONS.values():
            name, module = value.origin
            assert isinstance(module, PolyActivation)
            self.steps.append(PolyStep(self._name(name, "act"), value.poly, module))
        elif not value.poly.is_identity:
            # Identity polynomials (x * 2 / 2, x + 0) vanish; anything else is kept exactly,
            # affine ones too (the compiler folds those away itself).
            self.steps.append(PolyStep(self._name(None, "act"), value.poly, None))

    def _advance(
        self, where: str, shape: Shape, producer: LinearStep | ConvStep | None
    ) -> PolyValue:
        base = self._next_base
        self._next_base += 1
        self._head = base
        self._labels[base] = f"the output of {where}"
        self._shapes[base] = shape
        self._shape = shape
        self._producer = producer
        return PolyValue(base, Poly.identity())

    def _name(self, hint: str | None, kind: str) -> str:
        """A unique child name: the hint when it is free, else ``<kind><n>``."""
        name = sanitize(hint)
        if name and name not in self._used:
            self._used.add(name)
            return name
        stem = name + "_" if name else kind
        n = 0 if name else self._counts.get(kind, 0)
        while True:
            n += 1
            candidate = f"{stem}{n}"
            if candidate not in self._used and candidate not in self._reserved:
                break
        if not name:
            self._counts[kind] = n
        self._used.add(candidate)
        return candidate

    def poly_refusal(self, exc: PolyError, where: str, operation: str) -> ModelImportError:
        """The error naming the node for arithmetic that leaves the degree-2 polynomials."""
        problem = exc.problem
        if exc.kind == "two-tensors":
            labels = " and ".join(self._labels.get(b, "an earlier tensor") for b in exc.bases)
            problem += f" ({labels})"
            hint = RESIDUAL_HINT if operation.lower() in ("add", "sub") else PRODUCT_HINT
        elif exc.kind == "not-polynomial":
            hint = NON_POLYNOMIAL_HINT
        else:
            hint = DEGREE_HINT
        return UnsupportedOperationError.at(where, operation, problem, hint)

    def _refuse(self, where: str, operation: str, problem: str, hint: str = "") -> ModelImportError:
        return UnsupportedOperationError.at(where, operation, problem, hint)

    # ---- layers -----------------------------------------------------------------------

    def linear(
        self,
        value: PolyValue,
        where: str,
        operation: str,
        hint: str | None,
        weight: FloatArray,
        bias: FloatArray | None,
    ) -> PolyValue:
        self.check_head(value, where, operation)  # shape checks below read the head's shape
        out_f, in_f = weight.shape
        if len(self._shape) != 1:
            raise self._refuse(
                where,
                operation,
                f"reads a tensor of per-sample shape {self._shape}",
                "a linear layer needs flat (batch, features) inputs: flatten before it",
            )
        if self._shape[0] != in_f:
            raise self._refuse(where, operation, f"takes {in_f} features but gets {self._shape[0]}")
        self._consume(value, where, operation)
        step = LinearStep(self._name(hint, "fc"), _f64(weight), _f64_or_none(bias))
        self.steps.append(step)
        return self._advance(where, (int(out_f),), step)

    def conv(
        self,
        value: PolyValue,
        where: str,
        operation: str,
        hint: str | None,
        weight: FloatArray,
        bias: FloatArray | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        groups: int,
    ) -> PolyValue:
        if weight.ndim != 4:
            raise self._refuse(where, operation, f"has a {weight.ndim}-D weight", "2-D only")
        self.check_head(value, where, operation)
        out_c, in_per_group, kh, kw = (int(d) for d in weight.shape)
        if len(self._shape) != 3:
            raise self._refuse(
                where,
                operation,
                f"reads a tensor of per-sample shape {self._shape}",
                "a 2-D convolution needs (batch, channels, height, width) inputs",
            )
        c, h, w = self._shape
        if groups < 1 or out_c % groups or in_per_group * groups != c:
            raise self._refuse(
                where, operation, f"with {groups} groups does not fit {c} input channels"
            )
        oh = _out_size(h, kh, stride[0], padding[0])
        ow = _out_size(w, kw, stride[1], padding[1])
        if oh < 1 or ow < 1:
            raise self._refuse(where, operation, f"leaves no output pixel of a {h}x{w} input")
        self._consume(value, where, operation)
        step = ConvStep(
            self._name(hint, "conv"), _f64(weight), _f64_or_none(bias), stride, padding, groups
        )
        self.steps.append(step)
        self._last_conv = step.name
        return self._advance(where, (out_c, oh, ow), step)

    def pool(
        self,
        value: PolyValue,
        where: str,
        operation: str,
        hint: str | None,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int] = (0, 0),
        count_include_pad: bool = True,
    ) -> PolyValue:
        self.check_head(value, where, operation)
        if len(self._shape) != 3:
            raise self._refuse(
                where,
                operation,
                f"reads a tensor of per-sample shape {self._shape}",
                "2-D average pooling needs (batch, channels, height, width) inputs",
            )
        if min(*kernel, *stride) < 1 or padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
            raise self._refuse(
                where,
                operation,
                f"has kernel {kernel}, stride {stride}, padding {padding}",
                "padding must be at most half the kernel",
            )
        c, h, w = self._shape
        oh = _out_size(h, kernel[0], stride[0], padding[0])
        ow = _out_size(w, kernel[1], stride[1], padding[1])
        if oh < 1 or ow < 1:
            raise self._refuse(where, operation, f"leaves no output pixel of a {h}x{w} input")
        if padding == (0, 0):
            count_include_pad = True  # no padded cell: one canonical module
        self._consume(value, where, operation)
        self.steps.append(
            PoolStep(self._name(hint, "pool"), kernel, stride, padding, count_include_pad)
        )
        return self._advance(where, (c, oh, ow), None)

    def global_pool(
        self, value: PolyValue, where: str, operation: str, hint: str | None
    ) -> PolyValue:
        """Mean over height and width, as an AvgPool2d whose kernel is the whole map."""
        self.check_head(value, where, operation)
        if len(self._shape) != 3:
            raise self._refuse(
                where,
                operation,
                f"reads a tensor of per-sample shape {self._shape}",
                "global pooling needs (batch, channels, height, width) inputs",
            )
        _, h, w = self._shape
        return self.pool(value, where, operation, hint, (h, w), (h, w))

    def flatten(self, value: PolyValue, where: str, operation: str, hint: str | None) -> PolyValue:
        """(batch, ...) -> (batch, features); a no-op on an already flat tensor."""
        self.check_head(value, where, operation)
        if len(self._shape) == 1:
            return value
        self._consume(value, where, operation)
        if len(self._shape) == 3 and self._last_conv is not None and self.flatten_after is None:
            c, h, w = self._shape
            self.flatten_after, self.flatten_shape = self._last_conv, (c, h, w)
        self.steps.append(FlattenStep(self._name(hint or "flatten", "flatten")))
        return self._advance(where, (math.prod(self._shape),), None)

    def per_channel(self, const: NDArray[np.float64], where: str, operation: str) -> FloatArray:
        """A constant that broadcasts as one value per channel of the head ((C,), (1, C),
        (C, 1, 1), (1, C, 1, 1), ...) as a [C] vector; a refusal otherwise."""
        arr = np.asarray(const, dtype=np.float64)
        full = (1, *self._shape)
        if arr.ndim > len(full):
            raise self._refuse(where, operation, f"with a constant of shape {arr.shape}")
        dims = (1,) * (len(full) - arr.ndim) + arr.shape
        channels = self._shape[0]
        if dims[0] != 1 or dims[1] not in (1, channels) or any(d != 1 for d in dims[2:]):
            raise self._refuse(
                where,
                operation,
                f"with a constant of shape {tuple(arr.shape)} on a tensor of per-sample shape "
                f"{self._shape}",
                "only scalar constants, or one value per channel right after a Linear / "
                "Conv2d layer, are supported",
            )
        return np.ascontiguousarray(np.broadcast_to(arr.reshape(-1), (channels,)))

    def channel_affine(
        self,
        value: PolyValue,
        where: str,
        operation: str,
        scale: FloatArray | None,
        shift: FloatArray | None,
    ) -> PolyValue:
        """``y[c] = scale[c] * x[c] + shift[c]`` folded into the Linear / Conv2d producing x."""
        self.check_head(value, where, operation)
        producer = self._producer
        if producer is None or not value.poly.is_identity or value.origin is not None:
            after = (
                "a polynomial activation"
                if producer is not None
                else "a layer it cannot be folded into (pooling, flatten or the model input)"
            )
            raise self._refuse(
                where,
                operation,
                f"comes after {after}",
                "batch norm and per-channel constants are folded into the Linear / Conv2d "
                "layer right before them, so they must follow one directly",
            )
        channels = producer.weight.shape[0]
        for vec in (scale, shift):
            if vec is not None and vec.shape != (channels,):
                raise self._refuse(
                    where, operation, f"has {vec.shape[0]} channels, its input has {channels}"
                )
        bias = producer.bias if producer.bias is not None else np.zeros(channels)
        if scale is not None:
            producer.weight = producer.weight * scale.reshape(
                (-1,) + (1,) * (producer.weight.ndim - 1)
            )
            bias = bias * scale
        if shift is not None:
            bias = bias + shift
        producer.bias = np.asarray(bias, dtype=np.float64)
        # A new base: the value before the fold no longer exists in the chain.
        return self._advance(where, self._shape, producer)

    def constant_arith(
        self,
        value: PolyValue,
        where: str,
        operation: str,
        kind: str,
        const: FloatArray,
        const_left: bool,
    ) -> PolyValue:
        """``value <kind> const`` (or ``const <kind> value``) for a non-scalar constant: one
        value per channel, folded into the layer before (an added bias vector, a scale)."""
        self.check_head(value, where, operation)
        vec = self.per_channel(const, where, operation)
        if kind == "add":
            return self.channel_affine(value, where, operation, None, vec)
        if kind == "sub" and const_left:
            return self.channel_affine(value, where, operation, -np.ones_like(vec), vec)
        if kind == "sub":
            return self.channel_affine(value, where, operation, None, -vec)
        if kind == "mul":
            return self.channel_affine(value, where, operation, vec, None)
        if kind == "div" and not const_left:
            if np.any(vec == 0.0):
                raise self._refuse(where, operation, "divides by zero")
            return self.channel_affine(value, where, operation, 1.0 / vec, None)
        raise self._refuse(
            where, operation, "of a constant by a tensor is not a polynomial", NON_POLYNOMIAL_HINT
        )

    def batch_norm(
        self,
        value: PolyValue,
        where: str,
        operation: str,
        *,
        mean: FloatArray,
        var: FloatArray,
        eps: float,
        gamma: FloatArray | None,
        beta: FloatArray | None,
    ) -> PolyValue:
        """Eval-mode batch norm: ``gamma * (x - mean) / sqrt(var + eps) + beta``, folded."""
        scale = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
        if gamma is not None:
            scale = scale * np.asarray(gamma, dtype=np.float64)
        shift = -np.asarray(mean, dtype=np.float64) * scale
        if beta is not None:
            shift = shift + np.asarray(beta, dtype=np.float64)
        return self.channel_affine(value, where, operation, scale, shift)

    # ---- the model --------------------------------------------------------------------

    def finish(self, value: PolyValue, where: str, *, dtype: str, name: str | None) -> HEModel:
        """The HEModel of the chain, with the output's pending polynomial as its last step."""
        self._consume(value, where, "the model output")
        if not any(isinstance(s, LinearStep | ConvStep) for s in self.steps):
            raise ModelImportError(
                "the model has no Linear or Conv2d layer: there is nothing to run under encryption"
            )
        specs = [_spec(step) for step in self.steps]
        model = build_imported(
            name,
            input_shape=self.input_shape,
            layers=specs,
            dtype=dtype,
            flatten_after=self.flatten_after,
            flatten_shape=self.flatten_shape,
        )
        with torch.no_grad():
            for step in self.steps:
                _load(model.get_submodule(step.name), step)
        return model


def _f64(array: FloatArray) -> FloatArray:
    return np.array(array, dtype=np.float64, copy=True)


def _f64_or_none(array: FloatArray | None) -> FloatArray | None:
    return None if array is None else _f64(array).reshape(-1)


def _spec(step: Step) -> dict[str, object]:
    if isinstance(step, LinearStep):
        out_f, in_f = step.weight.shape
        return {
            "kind": "linear",
            "name": step.name,
            "in_features": int(in_f),
            "out_features": int(out_f),
            "bias": step.bias is not None,
        }
    if isinstance(step, ConvStep):
        out_c, in_g, kh, kw = step.weight.shape
        return {
            "kind": "conv",
            "name": step.name,
            "in_channels": int(in_g) * step.groups,
            "out_channels": int(out_c),
            "kernel_size": [int(kh), int(kw)],
            "stride": list(step.stride),
            "padding": list(step.padding),
            "groups": step.groups,
            "bias": step.bias is not None,
        }
    if isinstance(step, PoolStep):
        return {
            "kind": "avgpool",
            "name": step.name,
            "kernel_size": list(step.kernel),
            "stride": list(step.stride),
            "padding": list(step.padding),
            "count_include_pad": step.count_include_pad,
        }
    if isinstance(step, FlattenStep):
        return {"kind": "flatten", "name": step.name}
    if step.module is not None:
        return poly_spec(step.name, step.module)
    return {
        "kind": "poly",
        "name": step.name,
        "class": ImportedPoly.__name__,
        "coefficients": list(step.poly.abc),
    }


def _load(module: nn.Module, step: Step) -> None:
    """Copy the step's values into the freshly built module (casting to its dtype)."""
    if isinstance(step, LinearStep | ConvStep):
        assert isinstance(module, nn.Linear | nn.Conv2d)
        module.weight.copy_(torch.from_numpy(step.weight))
        if step.bias is not None:
            assert module.bias is not None
            module.bias.copy_(torch.from_numpy(step.bias))
    elif isinstance(step, PolyStep):
        if step.module is not None:
            module.load_state_dict(copy.deepcopy(step.module.state_dict()))
        else:
            assert isinstance(module, ImportedPoly)
            module.coeffs.copy_(torch.tensor(step.poly.abc, dtype=torch.float64))
