"""PyTorch front-end: ``torch.fx`` traces the module, :class:`ShapeProp` runs it once on an
example, and every node goes to the :class:`~.graph.ChainBuilder` in graph order.

The example holds two samples, so a reshape that keeps the batch axis ((2, C, H, W) ->
(2, C*H*W)) is told apart from one that would mix samples ((1, -1) -> (1, 2*C*H*W)).
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.utils import _pair

from fheprune.errors import InputError, InputTypeError
from fheprune.models.activations import PolyActivation
from fheprune.models.zoo import HEModel

from .errors import (
    MAX_POOL_HINT,
    NON_POLYNOMIAL_HINT,
    ModelImportError,
    UnsupportedOperationError,
    UntraceableModelError,
)
from .graph import ChainBuilder
from .model import dtype_name
from .polynomial import BinaryOp, Poly, PolyError, PolyValue, binary, negate, power

__all__ = ["import_torch"]

#: Samples in the shape-propagation example (see the module docstring).
EXAMPLE_BATCH = 2

# Element-wise arithmetic: function targets and Tensor method names -> operation.
_ARITH_FUNCTIONS: dict[Callable[..., Any], str] = {
    operator.add: "add",
    torch.add: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    torch.subtract: "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    torch.multiply: "mul",
    operator.truediv: "div",
    torch.div: "div",
    torch.divide: "div",
    torch.true_divide: "div",
    operator.pow: "pow",
    torch.pow: "pow",
    operator.neg: "neg",
    torch.neg: "neg",
    torch.negative: "neg",
    operator.pos: "pos",
    torch.square: "square",
}
_ARITH_METHODS = {
    "add": "add",
    "sub": "sub",
    "subtract": "sub",
    "mul": "mul",
    "multiply": "mul",
    "div": "div",
    "divide": "div",
    "true_divide": "div",
    "pow": "pow",
    "neg": "neg",
    "negative": "neg",
    "square": "square",
}
_RESHAPE_FUNCTIONS: set[Callable[..., Any]] = {torch.flatten, torch.reshape, torch.squeeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze"}
_PASS_FUNCTIONS: set[Callable[..., Any]] = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
}
_PASS_METHODS = {"contiguous", "clone", "detach"}
_SHAPE_METHODS = {"size", "dim"}
# fmt: off
# Names of functions / methods that are not polynomials (refused with a hint).
_NON_POLYNOMIAL_NAMES = frozenset({
    "relu", "relu_", "relu6", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "elu", "selu",
    "celu", "softplus", "softsign", "softmax", "log_softmax", "hardtanh", "hardswish",
    "hardsigmoid", "mish", "logsigmoid", "prelu", "rrelu", "glu", "exp", "log", "abs", "sqrt",
    "rsqrt", "sin", "cos", "clamp", "clip", "maximum", "minimum", "sign", "erf", "reciprocal",
    "threshold",
})
_MAX_POOL_NAMES = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "lp_pool2d",
    "fractional_max_pool2d",
})
# fmt: on
# F.avg_pool2d's parameters (nn.AvgPool2d has the same ones as attributes).
_AVG_POOL_ARGS = [
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
]  # fmt: skip
_AVG_POOL_DEFAULTS: dict[str, Any] = {
    "stride": None,
    "padding": 0,
    "ceil_mode": False,
    "count_include_pad": True,
    "divisor_override": None,
}
_MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass(frozen=True)
class _Const:
    """A non-scalar tensor constant (a buffer or parameter read with get_attr)."""

    array: NDArray[np.float64]


class _ShapeQuery:
    """``x.size()``, ``x.shape``, ``x.dim()`` and items of them: only reshapes may use them."""


Value = PolyValue | float | _Const | _ShapeQuery | None
_T = TypeVar("_T")


class _Tracer(fx.Tracer):
    """Polynomial activations stay single call_module nodes (their coefficients are read
    from the module), whatever their forward looks like."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, PolyActivation) or super().is_leaf_module(m, module_qualified_name)


def import_torch(
    module: nn.Module, input_shape: Sequence[int], *, name: str | None = None
) -> HEModel:
    """An :class:`HEModel` chain computing what ``module`` computes in eval mode.

    ``input_shape`` is one sample's shape without the batch axis, e.g. ``(784,)`` or
    ``(1, 28, 28)``. The result holds fresh copies of the weights; batch norm is folded into
    the layer before it and element-wise arithmetic into polynomial activations. Raises
    :class:`UnsupportedOperationError` naming the node for anything else,
    :class:`UntraceableModelError` when torch.fx cannot trace ``module``.
    """
    if not isinstance(module, nn.Module):
        raise InputTypeError(f"import_torch takes an nn.Module, got {type(module).__name__}")
    shape = _check_shape(input_shape)
    try:
        work = copy.deepcopy(module)  # eval() and tracing must not touch the caller's module
    except Exception as exc:
        raise ModelImportError(f"cannot copy {type(module).__name__}: {exc}") from exc
    work.cpu().eval()  # the example and the weight copies live on the CPU
    dtype = _float_dtype(work)
    try:
        tracer = _Tracer()
        graph = tracer.trace(work)
    except Exception as exc:  # TraceError, or whatever the forward does with a Proxy
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(module).__name__}: {exc}. The importer needs a "
            "forward without data-dependent control flow (no `if` / loops on tensor values)"
        ) from exc
    gm = fx.GraphModule(tracer.root, graph, type(work).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:  # before running it: the example is a single tensor
        raise UnsupportedOperationError.at(
            f"fx graph of {type(module).__name__}",
            "the model's forward",
            f"takes {len(placeholders)} inputs ({', '.join(n.name for n in placeholders)})",
            "exactly one input tensor is supported",
        )
    example = torch.zeros((EXAMPLE_BATCH, *shape), dtype=dtype)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:
        raise ModelImportError(
            f"running {type(module).__name__} on an example of shape "
            f"{tuple(example.shape)} failed ({exc}); is input_shape={shape} right?"
        ) from exc
    return _Lowering(gm, shape, dtype_name(dtype), name).run()


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(
            f"input_shape must be a sequence of sizes, got {input_shape!r}"
        ) from exc
    if not shape or min(shape) < 1:
        raise InputError(f"input_shape must be positive sizes without the batch, got {shape}")
    return shape


def _float_dtype(module: nn.Module) -> torch.dtype:
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _fn_name(target: Any) -> str:
    return str(getattr(target, "__name__", target))


class _Lowering:
    """Walks the traced graph once, in order, feeding the builder."""

    def __init__(self, gm: fx.GraphModule, shape: tuple[int, ...], dtype: str, name: str | None):
        self.gm = gm
        self.dtype = dtype
        self.name = name
        self.modules = dict(gm.named_modules())
        self.builder = ChainBuilder(shape, reserved=[n for n in self.modules if n])
        self.env: dict[fx.Node, Value] = {}

    # ---- driver ---------------------------------------------------------------------

    def run(self) -> HEModel:
        for node in self.gm.graph.nodes:
            where = self._where(node)
            if node.op == "placeholder":
                self.env[node] = self.builder.start()
            elif node.op == "get_attr":
                self.env[node] = self._constant(node)
            elif node.op == "call_module":
                self.env[node] = self._call_module(node, where)
            elif node.op in ("call_function", "call_method"):
                self.env[node] = self._call(node, where)
            elif node.op == "output":
                return self._output(node, where)
        raise ModelImportError("the traced graph has no output node")  # fx always adds one

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            kind = type(self.modules[str(node.target)]).__name__
            return f"fx node '{node.name}' (call_module {kind} '{node.target}')"
        if node.op == "call_method":
            return f"fx node '{node.name}' (call_method .{node.target}())"
        if node.op == "call_function":
            return f"fx node '{node.name}' (call_function {_fn_name(node.target)})"
        return f"fx node '{node.name}' ({node.op})"

    def _output(self, node: fx.Node, where: str) -> HEModel:
        result = node.args[0]
        if not isinstance(result, fx.Node):
            raise UnsupportedOperationError.at(
                where,
                "returning " + type(result).__name__,
                "gives several outputs (or a non-tensor)",
                "exactly one output tensor is supported",
            )
        value = self.env[result]
        if not isinstance(value, PolyValue):
            raise UnsupportedOperationError.at(
                where, "the output", "does not depend on the input", "return the chain's output"
            )
        return self.builder.finish(value, where, dtype=self.dtype, name=self.name)

    # ---- values ---------------------------------------------------------------------

    def _constant(self, node: fx.Node) -> Value:
        obj: Any = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor):
            if obj.numel() == 1:
                return float(obj.item())
            return _Const(obj.detach().to(torch.float64).cpu().numpy())
        return None  # a non-tensor attribute: refused wherever it is used

    def _arg(self, arg: Any) -> Value:
        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, bool):
            return float(arg)
        if isinstance(arg, int | float):
            return float(arg)
        return None

    def _tensor(self, arg: Any, where: str, operation: str) -> PolyValue:
        value = self._arg(arg)
        if not isinstance(value, PolyValue):
            raise UnsupportedOperationError.at(
                where,
                operation,
                "applies to a constant, not to the tensor computed from the input",
            )
        return value

    def _meta_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(int(d) for d in meta.shape) if isinstance(meta, TensorMetadata) else None

    def _checked(self, node: fx.Node, where: str, value: PolyValue) -> PolyValue:
        """Cross-check the builder's per-sample shape with the traced one."""
        traced = self._meta_shape(node)
        if traced is not None and traced != (EXAMPLE_BATCH, *self.builder.shape):
            raise ModelImportError(
                f"{where}: traced shape {traced[1:]} differs from the imported chain's "
                f"{self.builder.shape}; please report this model"
            )
        return value

    # ---- modules --------------------------------------------------------------------

    def _call_module(self, node: fx.Node, where: str) -> Value:
        target = str(node.target)
        mod = self.modules[target]
        op = f"nn.{type(mod).__name__}"
        b = self.builder
        if isinstance(mod, PolyActivation):
            x = self._tensor(node.args[0], where, op)
            poly = Poly.from_abc(*mod.coefficients())
            if x.poly.is_identity and x.origin is None:
                return PolyValue(x.base, poly, origin=(target, mod))
            return self._poly(where, op, lambda: x.with_poly(poly.compose(x.poly)))
        if isinstance(mod, (nn.Identity, *_DROPOUT_MODULES)):
            return self._arg(node.args[0])
        if isinstance(mod, nn.Linear):
            x = self._tensor(node.args[0], where, op)
            y = b.linear(x, where, op, target, _np(mod.weight), _np_or_none(mod.bias))
            return self._checked(node, where, y)
        if isinstance(mod, nn.Conv2d):
            x = self._tensor(node.args[0], where, op)
            stride, padding = self._conv_geometry(mod, where, op)
            y = b.conv(
                x,
                where,
                op,
                target,
                _np(mod.weight),
                _np_or_none(mod.bias),
                stride,
                padding,
                int(mod.groups),
            )
            return self._checked(node, where, y)
        if isinstance(mod, nn.AvgPool2d):
            x = self._tensor(node.args[0], where, op)
            pool = {name: getattr(mod, name) for name in _AVG_POOL_ARGS[1:]}
            return self._checked(node, where, self._avg_pool(x, where, op, target, pool))
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            x = self._tensor(node.args[0], where, op)
            return self._checked(node, where, self._adaptive(x, where, op, target, mod.output_size))
        if isinstance(mod, nn.Flatten):
            return self._reshape(node, where, op, node.args[0], target)
        if isinstance(mod, _BatchNorm):
            x = self._tensor(node.args[0], where, op)
            return self._batch_norm(mod, x, where, op)
        if isinstance(mod, _MAX_POOL_MODULES):
            raise UnsupportedOperationError.at(where, op, "is not a polynomial", MAX_POOL_HINT)
        if type(mod).__module__ == "torch.nn.modules.activation":
            raise UnsupportedOperationError.at(
                where, op, "is not a polynomial", NON_POLYNOMIAL_HINT
            )
        raise UnsupportedOperationError.at(where, op, "is not supported")

    def _conv_geometry(
        self, mod: nn.Conv2d, where: str, op: str
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        if mod.padding_mode != "zeros":
            raise UnsupportedOperationError.at(
                where,
                f"{op}(padding_mode={mod.padding_mode!r})",
                "is not supported",
                "zero padding only",
            )
        if tuple(mod.dilation) != (1, 1):
            raise UnsupportedOperationError.at(
                where,
                f"{op}(dilation={tuple(mod.dilation)})",
                "is not supported",
                "dilation 1 only",
            )
        kernel = (int(mod.kernel_size[0]), int(mod.kernel_size[1]))
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                padding = (0, 0)
            else:  # "same" (stride 1): total k - 1 per axis, split evenly only for odd k
                if any(k % 2 == 0 for k in kernel):
                    raise UnsupportedOperationError.at(
                        where,
                        f"{op}(padding='same')",
                        f"with kernel {kernel} pads unevenly",
                        "use odd kernels or explicit symmetric padding",
                    )
                padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
        else:
            padding = (int(mod.padding[0]), int(mod.padding[1]))
        return (int(mod.stride[0]), int(mod.stride[1])), padding

    def _avg_pool(
        self, x: PolyValue, where: str, op: str, hint: str | None, args: dict[str, Any]
    ) -> PolyValue:
        """nn.AvgPool2d / F.avg_pool2d with their arguments by name."""
        if args["ceil_mode"]:
            raise UnsupportedOperationError.at(
                where, f"{op}(ceil_mode=True)", "is not supported", "ceil_mode=False only"
            )
        if args["divisor_override"] is not None:
            raise UnsupportedOperationError.at(
                where, f"{op}(divisor_override={args['divisor_override']})", "is not supported"
            )
        k = _ints2(args["kernel_size"], where, op)
        stride = args["stride"]
        s = k if stride is None or stride == [] or stride == () else _ints2(stride, where, op)
        p = _ints2(args["padding"], where, op)
        return self.builder.pool(x, where, op, hint, k, s, p, bool(args["count_include_pad"]))

    def _adaptive(
        self, x: PolyValue, where: str, op: str, hint: str | None, output_size: Any
    ) -> PolyValue:
        shape = self.builder.shape_of(x)
        if len(shape) != 3:
            raise UnsupportedOperationError.at(where, op, f"reads per-sample shape {shape}")
        sizes = (output_size, output_size) if isinstance(output_size, int) else output_size
        out = tuple(
            int(o) if o is not None else int(i) for o, i in zip(sizes, shape[1:], strict=True)
        )
        if shape[1] % out[0] or shape[2] % out[1]:
            raise UnsupportedOperationError.at(
                where,
                op,
                f"to {out} from {shape[1:]} has uneven windows",
                "the output size must divide the input size (then it is an AvgPool2d)",
            )
        k = (shape[1] // out[0], shape[2] // out[1])
        return self.builder.pool(x, where, op, hint, k, k)

    def _batch_norm(self, mod: _BatchNorm, x: PolyValue, where: str, op: str) -> PolyValue:
        if not isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            raise UnsupportedOperationError.at(where, op, "is not supported")
        if mod.running_mean is None or mod.running_var is None:
            raise UnsupportedOperationError.at(
                where,
                op,
                "has no running statistics (track_running_stats=False)",
                "it normalises with batch statistics, which cannot be folded into a layer",
            )
        return self.builder.batch_norm(
            x,
            where,
            op,
            mean=_np(mod.running_mean),
            var=_np(mod.running_var),
            eps=float(mod.eps),
            gamma=_np_or_none(mod.weight),
            beta=_np_or_none(mod.bias),
        )

    # ---- functions and methods ------------------------------------------------------

    def _call(self, node: fx.Node, where: str) -> Value:
        target = node.target
        method = node.op == "call_method"
        name = str(target) if method else _fn_name(target)
        op = f".{name}()" if method else f"{name}()"
        if method:
            kind = _ARITH_METHODS.get(name)
        else:
            kind = _ARITH_FUNCTIONS.get(target) if callable(target) else None
        if kind is not None:
            return self._arith(node, where, kind)
        if (method and name in _PASS_METHODS) or (not method and target in _PASS_FUNCTIONS):
            return self._arg(node.args[0])
        if (method and name in _SHAPE_METHODS) or (
            not method and target is getattr and node.args[1:2] == ("shape",)
        ):
            return _ShapeQuery()
        if not method and target is operator.getitem:
            if isinstance(self._arg(node.args[0]), _ShapeQuery):
                return _ShapeQuery()
            raise UnsupportedOperationError.at(where, "indexing / slicing", "is not supported")
        if (method and name in _RESHAPE_METHODS) or (not method and target in _RESHAPE_FUNCTIONS):
            return self._reshape(node, where, op, node.args[0], None)
        if not method and target is F.avg_pool2d:
            a = _bind(node, _AVG_POOL_ARGS, _AVG_POOL_DEFAULTS)
            x = self._tensor(a.pop("input"), where, op)
            return self._checked(node, where, self._avg_pool(x, where, op, None, a))
        if not method and target is F.adaptive_avg_pool2d:
            a = _bind(node, ["input", "output_size"], {})
            x = self._tensor(a["input"], where, op)
            return self._checked(node, where, self._adaptive(x, where, op, None, a["output_size"]))
        if name == "mean" and (method or target is torch.mean):
            return self._mean(node, where, op)
        if not method and target is F.linear:
            return self._functional_linear(node, where, op)
        if not method and target is F.conv2d:
            return self._functional_conv(node, where, op)
        if name in _MAX_POOL_NAMES:
            raise UnsupportedOperationError.at(where, op, "is not a polynomial", MAX_POOL_HINT)
        if name in _NON_POLYNOMIAL_NAMES:
            raise UnsupportedOperationError.at(
                where, op, "is not a polynomial", NON_POLYNOMIAL_HINT
            )
        if name in ("cat", "concat", "stack"):
            raise UnsupportedOperationError.at(
                where, op, "joins several tensors", "the model must be one chain of layers"
            )
        if method and name.endswith("_"):
            raise UnsupportedOperationError.at(
                where, op, "is an in-place operation", "write it out of place (x = x * 2)"
            )
        raise UnsupportedOperationError.at(where, op, "is not supported")

    def _reshape(self, node: fx.Node, where: str, op: str, arg: Any, hint: str | None) -> PolyValue:
        """A reshape is a flatten when it maps (B, *S) to (B, prod(S)); no-op when it keeps the
        shape; anything else is refused."""
        x = self._tensor(arg, where, op)
        before = (EXAMPLE_BATCH, *self.builder.shape_of(x))
        after = self._meta_shape(node)
        if after == before:
            return x
        if after == (EXAMPLE_BATCH, math.prod(before[1:])):
            return self._checked(node, where, self.builder.flatten(x, where, op, hint))
        raise UnsupportedOperationError.at(
            where,
            op,
            f"reshapes {before} to {after} (with a batch of {EXAMPLE_BATCH})",
            "only flattening to (batch, -1) is supported",
        )

    def _mean(self, node: fx.Node, where: str, op: str) -> PolyValue:
        a = _bind(node, ["input", "dim", "keepdim"], {"dim": None, "keepdim": False})
        x = self._tensor(a["input"], where, op)
        rank = len(self.builder.shape_of(x)) + 1
        dims = a["dim"]
        dims = [dims] if isinstance(dims, int) else list(dims) if dims is not None else []
        if rank != 4 or sorted(int(d) % rank for d in dims) != [2, 3]:
            raise UnsupportedOperationError.at(
                where,
                op,
                f"over dims {a['dim']} is not supported",
                "only the mean over height and width (global average pooling) is",
            )
        y = self.builder.global_pool(x, where, op, None)
        if not a["keepdim"]:
            y = self.builder.flatten(y, where, op, None)
        return self._checked(node, where, y)

    def _weight_hint(self, arg: Any) -> str | None:
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            return str(arg.target).rpartition(".")[0] or None
        return None

    def _const_arg(self, arg: Any, where: str, op: str, what: str) -> NDArray[np.float64]:
        value = self._arg(arg)
        if isinstance(value, _Const):
            return value.array
        if isinstance(value, float):
            return np.array([value])
        raise UnsupportedOperationError.at(
            where, op, f"takes its {what} from a computed tensor", "weights must be constants"
        )

    def _functional_linear(self, node: fx.Node, where: str, op: str) -> PolyValue:
        a = _bind(node, ["input", "weight", "bias"], {"bias": None})
        x = self._tensor(a["input"], where, op)
        weight = self._const_arg(a["weight"], where, op, "weight")
        bias = None if a["bias"] is None else self._const_arg(a["bias"], where, op, "bias")
        if weight.ndim != 2:
            raise UnsupportedOperationError.at(where, op, f"has a weight of shape {weight.shape}")
        hint = self._weight_hint(a["weight"])
        return self._checked(node, where, self.builder.linear(x, where, op, hint, weight, bias))

    def _functional_conv(self, node: fx.Node, where: str, op: str) -> PolyValue:
        a = _bind(
            node,
            ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
            {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
        )
        x = self._tensor(a["input"], where, op)
        weight = self._const_arg(a["weight"], where, op, "weight")
        bias = None if a["bias"] is None else self._const_arg(a["bias"], where, op, "bias")
        if _ints2(a["dilation"], where, op) != (1, 1):
            raise UnsupportedOperationError.at(where, f"{op} dilation", "is not supported")
        if isinstance(a["padding"], str):
            raise UnsupportedOperationError.at(
                where,
                f"{op}(padding={a['padding']!r})",
                "is not supported",
                "give the padding as numbers",
            )
        y = self.builder.conv(
            x,
            where,
            op,
            self._weight_hint(a["weight"]),
            weight,
            bias,
            _ints2(a["stride"], where, op),
            _ints2(a["padding"], where, op),
            int(a["groups"]),
        )
        return self._checked(node, where, y)

    # ---- arithmetic -----------------------------------------------------------------

    def _arith(self, node: fx.Node, where: str, kind: str) -> Value:
        values = [self._arg(a) for a in node.args]
        if any(isinstance(v, _ShapeQuery) for v in values):
            raise UnsupportedOperationError.at(
                where, kind, "computes with a tensor's size", "sizes may only feed reshapes"
            )
        if kind in ("neg", "pos", "square"):
            x = values[0]
            if isinstance(x, _Const):  # constant arithmetic: evaluate it
                a = x.array
                return _Const(-a if kind == "neg" else a * a if kind == "square" else a)
            operand = self._operand(x, where, kind)
            if kind == "neg":
                return self._poly(where, kind, lambda: negate(operand))
            if kind == "square":
                return self._poly(where, kind, lambda: power(operand, 2.0))
            return operand
        if len(values) != 2:
            raise UnsupportedOperationError.at(where, kind, f"with {len(values)} operands")
        left, right = values
        if node.kwargs.get("rounding_mode") is not None:
            raise UnsupportedOperationError.at(
                where,
                f"{kind}(rounding_mode={node.kwargs['rounding_mode']!r})",
                "is not a polynomial",
                NON_POLYNOMIAL_HINT,
            )
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1 and kind in ("add", "sub"):  # torch.add(x, y, alpha=k) is x + k*y
            if not isinstance(alpha, int | float) or isinstance(right, _Const):
                raise UnsupportedOperationError.at(
                    where, f"{kind}(alpha={alpha!r})", "is not supported"
                )
            scaled = self._operand(right, where, kind)
            right = self._poly(where, kind, lambda: binary("mul", scaled, float(alpha)))
        if kind == "pow":
            if not isinstance(right, float):
                raise UnsupportedOperationError.at(
                    where, "pow", "has a tensor exponent, which is not a polynomial"
                )
            base = self._operand(left, where, kind)
            exponent = right
            return self._poly(where, f"pow (exponent {right:g})", lambda: power(base, exponent))
        if isinstance(left, _Const) or isinstance(right, _Const):
            return self._tensor_constant(where, kind, left, right)
        op = _BINARY_KINDS[kind]
        lhs, rhs = self._operand(left, where, kind), self._operand(right, where, kind)
        return self._poly(where, kind, lambda: binary(op, lhs, rhs))

    def _operand(self, value: Value, where: str, op: str) -> PolyValue | float:
        if isinstance(value, PolyValue | float):
            return value
        raise UnsupportedOperationError.at(
            where, op, f"has an operand it cannot use ({type(value).__name__})"
        )

    def _tensor_constant(self, where: str, kind: str, left: Value, right: Value) -> Value:
        """Arithmetic with a non-scalar constant: evaluated between constants, folded into the
        layer before when it meets the tensor (see ChainBuilder.constant_arith)."""
        if isinstance(left, _Const | float) and isinstance(right, _Const | float):
            lhs = left.array if isinstance(left, _Const) else left
            rhs = right.array if isinstance(right, _Const) else right
            return _Const(np.asarray(_NUMPY_OPS[kind](lhs, rhs), dtype=np.float64))
        if isinstance(left, PolyValue) and isinstance(right, _Const):
            return self.builder.constant_arith(left, where, kind, kind, right.array, False)
        if isinstance(right, PolyValue) and isinstance(left, _Const):
            return self.builder.constant_arith(right, where, kind, kind, left.array, True)
        raise UnsupportedOperationError.at(where, kind, "has operands it cannot use")

    def _poly(self, where: str, op: str, compute: Callable[[], _T]) -> _T:
        """Run polynomial arithmetic, turning a PolyError into an error naming the node."""
        try:
            return compute()
        except PolyError as exc:
            raise self.builder.poly_refusal(exc, where, op) from None


_BINARY_KINDS: dict[str, BinaryOp] = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
_NUMPY_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
}


def _ints2(value: Any, where: str, op: str) -> tuple[int, int]:
    try:
        a, b = _pair(value)
        return int(a), int(b)
    except (TypeError, ValueError):
        raise UnsupportedOperationError.at(where, op, f"has a size argument {value!r}") from None


def _bind(node: fx.Node, names: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments of a call node by parameter name."""
    bound = dict(defaults)
    bound.update(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    return bound


def _np(tensor: torch.Tensor) -> NDArray[np.float64]:
    return tensor.detach().to(torch.float64).cpu().numpy().copy()


def _np_or_none(tensor: torch.Tensor | None) -> NDArray[np.float64] | None:
    return None if tensor is None else _np(tensor)
