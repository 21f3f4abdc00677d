"""ONNX front-end: load, check, infer shapes, then feed the nodes (in their topological order)
to the :class:`~.graph.ChainBuilder`.

Constants come from initializers and Constant nodes. Small shape computations that exporters
emit around a flatten (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` for
``x.view(x.size(0), -1)``) are evaluated on constant arrays, with ``None`` standing for a
symbolic batch size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from fheprune.errors import InputTypeError, MissingFileError
from fheprune.models.zoo import HEModel

from .errors import (
    MAX_POOL_HINT,
    NON_POLYNOMIAL_HINT,
    ModelFileError,
    ModelImportError,
    UnsupportedOperationError,
)
from .graph import ChainBuilder
from .polynomial import BinaryOp, PolyError, PolyValue, binary, negate, power

__all__ = ["import_onnx", "load_onnx"]

Array = NDArray[Any]
Value = PolyValue | Array

# fmt: off
_NON_POLYNOMIAL_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Gelu", "Erf", "Softmax", "LogSoftmax", "Softplus", "Softsign", "Exp", "Log", "Abs",
    "Sqrt", "Reciprocal", "Clip", "Max", "Min", "Sign", "Mish", "ThresholdedRelu", "Sin", "Cos",
})
# fmt: on
_MAX_POOL_OPS = {"MaxPool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "MaxRoiPool"}
_NUMPY_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
}
_FLOAT_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
}


def load_onnx(source: str | os.PathLike[str] | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Load (path, bytes or a ModelProto), check and shape-infer an ONNX model.

    Raises :class:`~fheprune.errors.MissingFileError` for a missing path and
    :class:`ModelFileError` for anything unreadable or invalid.
    """
    where = "the ONNX bytes"
    try:
        if isinstance(source, onnx.ModelProto):
            model, where = source, "the ONNX model"
        elif isinstance(source, bytes | bytearray):
            model = onnx.load_from_string(bytes(source))
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            where = str(path)
            if not path.is_file():
                raise MissingFileError(f"no ONNX model file at {path}")
            model = onnx.load(path)
        else:
            raise InputTypeError(
                f"import_onnx takes a path, bytes or an onnx.ModelProto, got "
                f"{type(source).__name__}"
            )
    except (MissingFileError, InputTypeError):
        raise
    except Exception as exc:  # protobuf's DecodeError, OSError, ...
        raise ModelFileError(f"{where} is not a readable ONNX model ({exc})") from exc
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelFileError(f"{where} is not a valid ONNX model: {exc}") from exc
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{where}: ONNX shape inference failed: {exc}") from exc


def import_onnx(
    source: str | os.PathLike[str] | bytes | onnx.ModelProto, *, name: str | None = None
) -> HEModel:
    """An :class:`HEModel` chain computing what the ONNX graph computes.

    The input shape is the single graph input's, without its batch axis (symbolic or fixed).
    Raises :class:`UnsupportedOperationError` naming the ONNX node (name and op type) for
    anything the chain cannot hold.
    """
    return _Lowering(load_onnx(source), name).run()


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _hint(node: onnx.NodeProto) -> str | None:
    """A layer name from the node name: "/fc1/Gemm" -> "fc1", "gemm1" -> "gemm1"."""
    parts = [p for p in node.name.split("/") if p]
    if len(parts) >= 2:
        return parts[-2]
    if len(parts) == 1 and "/" not in node.name:
        return parts[0]
    return None


def _is_scalar(array: Array) -> bool:
    return array.size == 1 and array.dtype.kind in "fiub"


class _Lowering:
    def __init__(self, model: onnx.ModelProto, name: str | None) -> None:
        self.graph = model.graph
        self.name = name
        self.env: dict[str, Value] = {
            init.name: numpy_helper.to_array(init) for init in self.graph.initializer
        }
        self.used: set[str] = {i for n in self.graph.node for i in n.input if i}
        self.used.update(o.name for o in self.graph.output)
        inputs = [i for i in self.graph.input if i.name not in self.env]
        where = f"ONNX graph '{self.graph.name}'"
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise UnsupportedOperationError.at(
                where,
                "the graph",
                f"has {len(inputs)} input(s) and {len(self.graph.output)} output(s)",
                "exactly one input and one output are supported",
            )
        self.input = inputs[0]
        self.batch, shape, self.dtype = self._input_type(self.input, where)
        self.builder = ChainBuilder(shape)

    def _input_type(
        self, value: onnx.ValueInfoProto, where: str
    ) -> tuple[int | None, tuple[int, ...], str]:
        tensor = value.type.tensor_type
        dtype = _FLOAT_TYPES.get(tensor.elem_type)
        if dtype is None:
            raise UnsupportedOperationError.at(
                where,
                f"input '{value.name}'",
                f"has element type {onnx.TensorProto.DataType.Name(tensor.elem_type)}",
                "float or double inputs only",
            )
        dims = list(tensor.shape.dim)
        if len(dims) < 2:
            raise UnsupportedOperationError.at(
                where,
                f"input '{value.name}'",
                f"has rank {len(dims)}",
                "inputs are (batch, features) or (batch, channels, height, width)",
            )
        batch = dims[0].dim_value if dims[0].HasField("dim_value") else None
        if batch is not None and batch < 1:
            batch = None
        shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:])
        if min(shape) < 1:
            raise UnsupportedOperationError.at(
                where,
                f"input '{value.name}'",
                "has symbolic sizes besides the batch",
                "export with a fixed sample shape",
            )
        return batch, shape, dtype

    # ---- driver ---------------------------------------------------------------------

    def run(self) -> HEModel:
        self.env[self.input.name] = self.builder.start()
        for index, node in enumerate(self.graph.node):
            label = node.name or f"#{index}"
            where = f"ONNX node '{label}' ({node.op_type})"
            handler = getattr(self, f"_op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx") or handler is None:
                raise self._refusal(node, where)
            outputs = handler(node, where, _attrs(node))
            if not isinstance(outputs, list):
                outputs = [outputs]
            for out_name, value in zip(node.output, outputs, strict=False):
                if out_name:
                    self.env[out_name] = value
            extra = [o for o in node.output[len(outputs) :] if o and o in self.used]
            if extra:
                raise UnsupportedOperationError.at(
                    where,
                    node.op_type,
                    f"has its extra output '{extra[0]}' used",
                    "only the main output of Dropout / BatchNormalization may be used",
                )
        out = self.graph.output[0].name
        result = self.env.get(out)
        where = f"ONNX graph output '{out}'"
        if not isinstance(result, PolyValue):
            raise UnsupportedOperationError.at(
                where, "the output", "does not depend on the input", "return the chain's output"
            )
        return self.builder.finish(result, where, dtype=self.dtype, name=self.name)

    def _refusal(self, node: onnx.NodeProto, where: str) -> UnsupportedOperationError:
        op = node.op_type
        if op in _NON_POLYNOMIAL_OPS:
            return UnsupportedOperationError.at(
                where, op, "is not a polynomial", NON_POLYNOMIAL_HINT
            )
        if op in _MAX_POOL_OPS:
            return UnsupportedOperationError.at(where, op, "is not a polynomial", MAX_POOL_HINT)
        if op == "Split":
            return UnsupportedOperationError.at(
                where, op, "splits the tensor", "the model must be one chain of layers"
            )
        domain = f" (domain '{node.domain}')" if node.domain else ""
        return UnsupportedOperationError.at(where, op + domain, "is not supported")

    # ---- operands -------------------------------------------------------------------

    def _value(self, node: onnx.NodeProto, i: int, where: str) -> Value | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.env:
            raise ModelImportError(f"{where}: input '{name}' is not produced by any node")
        return self.env[name]

    def _present(self, node: onnx.NodeProto, i: int, where: str) -> Value:
        value = self._value(node, i, where)
        if value is None:
            raise ModelImportError(f"{where}: input {i} is missing")
        return value

    def _tensor(self, node: onnx.NodeProto, i: int, where: str) -> PolyValue:
        value = self._value(node, i, where)
        if not isinstance(value, PolyValue):
            raise UnsupportedOperationError.at(
                where,
                node.op_type,
                f"reads a constant as input {i}, not the tensor computed from the model input",
            )
        return value

    def _const(self, node: onnx.NodeProto, i: int, where: str, what: str) -> Array | None:
        value = self._value(node, i, where)
        if isinstance(value, PolyValue):
            raise UnsupportedOperationError.at(
                where,
                node.op_type,
                f"takes its {what} from a computed tensor",
                "weights and attributes must be constants (initializers or Constant nodes)",
            )
        return value

    def _weights(self, node: onnx.NodeProto, i: int, where: str, what: str) -> NDArray[np.float64]:
        value = self._const(node, i, where, what)
        if value is None:
            raise ModelImportError(f"{where}: the {what} is missing")
        return np.asarray(value, dtype=np.float64)

    def _optional_weights(
        self, node: onnx.NodeProto, i: int, where: str, what: str
    ) -> NDArray[np.float64] | None:
        value = self._const(node, i, where, what)
        return None if value is None else np.asarray(value, dtype=np.float64)

    def _poly(self, where: str, op: str, compute: Callable[[], PolyValue | float]) -> Value:
        """Run polynomial arithmetic, turning a PolyError into an error naming the node."""
        try:
            result = compute()
        except PolyError as exc:
            raise self.builder.poly_refusal(exc, where, op) from None
        return result if isinstance(result, PolyValue) else np.asarray(result)

    # ---- layers ---------------------------------------------------------------------

    def _op_Gemm(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        x = self._tensor(node, 0, where)
        b = self._weights(node, 1, where, "weight B")
        if attrs.get("transA", 0):
            raise UnsupportedOperationError.at(
                where, "Gemm(transA=1)", "transposes the activations", "transA=0 only"
            )
        if b.ndim != 2:
            raise UnsupportedOperationError.at(where, "Gemm", f"has a weight of shape {b.shape}")
        weight = (b if attrs.get("transB", 0) else b.T) * float(attrs.get("alpha", 1.0))
        c = self._optional_weights(node, 2, where, "bias C")
        bias = None
        if c is not None:
            out = weight.shape[0]
            if c.size not in (1, out) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
                raise UnsupportedOperationError.at(
                    where,
                    "Gemm",
                    f"has a bias C of shape {c.shape}",
                    f"C must broadcast as ({out},)",
                )
            bias = np.broadcast_to(c.reshape(-1), (out,)) * float(attrs.get("beta", 1.0))
        return self.builder.linear(x, where, "Gemm", _hint(node), weight, bias)

    def _op_MatMul(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        left, right = self._value(node, 0, where), self._value(node, 1, where)
        if not isinstance(left, PolyValue) or isinstance(right, PolyValue) or right is None:
            raise UnsupportedOperationError.at(
                where,
                "MatMul",
                "is not (tensor) x (constant matrix)",
                "only a matrix product of the activations by a constant weight is supported",
            )
        weight = np.asarray(right, dtype=np.float64)
        if weight.ndim != 2:
            raise UnsupportedOperationError.at(
                where, "MatMul", f"has a weight of shape {weight.shape}"
            )
        return self.builder.linear(left, where, "MatMul", _hint(node), weight.T, None)

    def _op_Conv(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        x = self._tensor(node, 0, where)
        weight = self._weights(node, 1, where, "weight")
        bias = self._optional_weights(node, 2, where, "bias")
        if weight.ndim != 4:
            raise UnsupportedOperationError.at(
                where, "Conv", f"has a {weight.ndim - 2}-D kernel", "2-D convolutions only"
            )
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        if list(attrs.get("kernel_shape", kernel)) != list(kernel):
            raise ModelImportError(f"{where}: kernel_shape does not match the weight")
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise UnsupportedOperationError.at(
                where,
                f"Conv(dilations={list(attrs['dilations'])})",
                "is not supported",
                "dilation 1 only",
            )
        strides = _two(attrs.get("strides", [1, 1]), where, "Conv strides")
        padding = self._padding(x, node, where, attrs, kernel, strides)
        return self.builder.conv(
            x,
            where,
            "Conv",
            _hint(node),
            weight,
            bias,
            strides,
            padding,
            int(attrs.get("group", 1)),
        )

    def _padding(
        self,
        x: PolyValue,
        node: onnx.NodeProto,
        where: str,
        attrs: dict[str, Any],
        kernel: tuple[int, int],
        strides: tuple[int, int],
    ) -> tuple[int, int]:
        """Symmetric (height, width) padding from ``pads`` or ``auto_pad``."""
        auto = attrs.get("auto_pad", "NOTSET")
        if auto == "VALID":
            return (0, 0)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            shape = self.builder.shape_of(x)
            if len(shape) != 3:
                raise UnsupportedOperationError.at(where, node.op_type, f"reads shape {shape}")
            pads = []
            for size, k, s in zip(shape[1:], kernel, strides, strict=True):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                if total % 2:
                    raise UnsupportedOperationError.at(
                        where,
                        f"{node.op_type}(auto_pad={auto})",
                        "pads unevenly",
                        "only symmetric padding is supported",
                    )
                pads.append(total // 2)
            return pads[0], pads[1]
        if auto != "NOTSET":
            raise UnsupportedOperationError.at(
                where, f"{node.op_type}(auto_pad={auto})", "is unknown"
            )
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise UnsupportedOperationError.at(
                where,
                f"{node.op_type}(pads={pads})",
                "pads asymmetrically",
                "only symmetric padding (top = bottom, left = right) is supported",
            )
        return pads[0], pads[1]

    def _op_AveragePool(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        x = self._tensor(node, 0, where)
        if attrs.get("ceil_mode", 0):
            raise UnsupportedOperationError.at(
                where, "AveragePool(ceil_mode=1)", "is not supported", "ceil_mode=0 only"
            )
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise UnsupportedOperationError.at(where, "AveragePool dilations", "are not supported")
        kernel = _two(attrs.get("kernel_shape"), where, "AveragePool kernel_shape")
        strides = _two(attrs.get("strides", [1, 1]), where, "AveragePool strides")
        padding = self._padding(x, node, where, attrs, kernel, strides)
        # ONNX counts padded cells only with count_include_pad=1 (nn.AvgPool2d's default).
        include = bool(attrs.get("count_include_pad", 0))
        return self.builder.pool(
            x, where, "AveragePool", _hint(node), kernel, strides, padding, include
        )

    def _op_GlobalAveragePool(
        self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]
    ) -> Value:
        return self.builder.global_pool(
            self._tensor(node, 0, where), where, "GlobalAveragePool", _hint(node)
        )

    def _op_ReduceMean(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        x = self._tensor(node, 0, where)
        axes = attrs.get("axes")
        if axes is None:
            given = self._const(node, 1, where, "axes")
            axes = [] if given is None else [int(a) for a in np.asarray(given).reshape(-1)]
        rank = len(self.builder.shape_of(x)) + 1
        if rank != 4 or sorted(int(a) % rank for a in axes) != [2, 3]:
            raise UnsupportedOperationError.at(
                where,
                f"ReduceMean(axes={list(axes)})",
                "is not supported",
                "only the mean over height and width (global average pooling) is",
            )
        y = self.builder.global_pool(x, where, "ReduceMean", _hint(node))
        if not attrs.get("keepdims", 1):
            y = self.builder.flatten(y, where, "ReduceMean", None)
        return y

    def _op_BatchNormalization(
        self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]
    ) -> Value:
        x = self._tensor(node, 0, where)
        if attrs.get("training_mode", 0):
            raise UnsupportedOperationError.at(
                where,
                "BatchNormalization(training_mode=1)",
                "uses batch statistics",
                "export the model in eval mode",
            )
        return self.builder.batch_norm(
            x,
            where,
            "BatchNormalization",
            gamma=self._weights(node, 1, where, "scale"),
            beta=self._weights(node, 2, where, "bias"),
            mean=self._weights(node, 3, where, "mean"),
            var=self._weights(node, 4, where, "variance"),
            eps=float(attrs.get("epsilon", 1e-5)),
        )

    # ---- shape changes --------------------------------------------------------------

    def _flatten_or_keep(
        self, x: PolyValue, where: str, op: str, node: onnx.NodeProto, target: tuple[int, ...]
    ) -> Value:
        """Per-sample ``target`` equal to the current shape: no-op; flat: a flatten."""
        shape = self.builder.shape_of(x)
        if target == shape:
            return x
        if target == (math.prod(shape),):
            return self.builder.flatten(x, where, op, _hint(node))
        raise UnsupportedOperationError.at(
            where,
            op,
            f"reshapes per-sample shape {shape} to {target}",
            "only flattening to (batch, -1) is supported",
        )

    def _op_Flatten(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        x = self._tensor(node, 0, where)
        rank = len(self.builder.shape_of(x)) + 1
        if int(attrs.get("axis", 1)) % rank != 1:
            raise UnsupportedOperationError.at(
                where,
                f"Flatten(axis={attrs.get('axis')})",
                "mixes the batch axis in",
                "axis=1 only",
            )
        return self._flatten_or_keep(
            x, where, "Flatten", node, (math.prod(self.builder.shape_of(x)),)
        )

    def _op_Reshape(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        x = self._tensor(node, 0, where)
        target = self._const(node, 1, where, "target shape")
        if target is None:
            raise ModelImportError(f"{where}: the target shape is missing")
        dims = [None if d is None else int(d) for d in np.asarray(target).reshape(-1).tolist()]
        shape = self.builder.shape_of(x)
        full = [self.batch, *shape]
        if not attrs.get("allowzero", 0):  # 0 copies the input's size at that axis
            dims = [full[i] if d == 0 and i < len(full) else d for i, d in enumerate(dims)]
        first, rest = (dims[0], dims[1:]) if dims else (-2, [])
        keeps_batch = first is None or (self.batch is not None and first == self.batch)
        if first == -1 and all(isinstance(d, int) and d > 0 for d in rest):
            keeps_batch = math.prod(d for d in rest if d is not None) == math.prod(shape)
        if not keeps_batch or any(d is None for d in rest):
            raise UnsupportedOperationError.at(
                where,
                "Reshape",
                f"to {dims} does not keep the batch axis",
                "only flattening to (batch, -1) is supported",
            )
        if rest.count(-1) == 1:
            known = math.prod(d for d in rest if d is not None and d != -1)
            rest = [math.prod(shape) // max(known, 1) if d == -1 else d for d in rest]
        return self._flatten_or_keep(x, where, "Reshape", node, tuple(int(d or 0) for d in rest))

    def _op_Squeeze(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        value = self._present(node, 0, where)
        axes = attrs.get("axes")
        if axes is None:
            given = self._const(node, 1, where, "axes")
            axes = None if given is None else [int(a) for a in np.asarray(given).reshape(-1)]
        if not isinstance(value, PolyValue):
            return np.asarray(np.squeeze(value, axis=None if axes is None else tuple(axes)))
        shape = self.builder.shape_of(value)
        rank = len(shape) + 1
        drop = (
            {a % rank for a in axes}
            if axes is not None
            else {i + 1 for i, d in enumerate(shape) if d == 1}
        )
        if 0 in drop or any(shape[a - 1] != 1 for a in drop):
            raise UnsupportedOperationError.at(where, f"Squeeze(axes={axes})", "is not supported")
        target = tuple(d for i, d in enumerate(shape) if i + 1 not in drop)
        return self._flatten_or_keep(value, where, "Squeeze", node, target)

    # ---- element-wise ---------------------------------------------------------------

    def _arith(self, node: onnx.NodeProto, where: str, kind: BinaryOp) -> Value:
        left, right = self._value(node, 0, where), self._value(node, 1, where)
        if left is None or right is None:
            raise ModelImportError(f"{where}: an operand is missing")
        if not isinstance(left, PolyValue) and not isinstance(right, PolyValue):
            op = _NUMPY_OPS[kind]
            if kind == "div" and left.dtype.kind in "iu" and right.dtype.kind in "iu":
                op = np.floor_divide  # integer shape arithmetic (sizes are positive)
            try:
                return np.asarray(op(left, right))
            except TypeError as exc:  # a symbolic batch size in shape arithmetic
                raise UnsupportedOperationError.at(
                    where, node.op_type, f"on constants cannot be evaluated ({exc})"
                ) from exc
        lhs: PolyValue | float | Array = left
        rhs: PolyValue | float | Array = right
        if not isinstance(left, PolyValue) and _is_scalar(left):
            lhs = float(np.asarray(left).reshape(-1)[0])
        if not isinstance(right, PolyValue) and _is_scalar(right):
            rhs = float(np.asarray(right).reshape(-1)[0])
        if isinstance(lhs, PolyValue | float) and isinstance(rhs, PolyValue | float):
            return self._poly(where, node.op_type, lambda: binary(kind, lhs, rhs))
        if isinstance(lhs, PolyValue):
            assert not isinstance(rhs, PolyValue | float)
            return self.builder.constant_arith(
                lhs, where, node.op_type, kind, np.asarray(rhs, dtype=np.float64), False
            )
        assert isinstance(rhs, PolyValue)
        return self.builder.constant_arith(
            rhs, where, node.op_type, kind, np.asarray(lhs, dtype=np.float64), True
        )

    def _op_Add(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        return self._arith(node, where, "add")

    def _op_Sub(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        return self._arith(node, where, "sub")

    def _op_Mul(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        return self._arith(node, where, "mul")

    def _op_Div(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        return self._arith(node, where, "div")

    def _op_Neg(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        value = self._present(node, 0, where)
        if isinstance(value, PolyValue):
            x = value
            return self._poly(where, "Neg", lambda: negate(x))
        return np.asarray(np.negative(value))

    def _op_Pow(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        x = self._tensor(node, 0, where)
        exponent = self._const(node, 1, where, "exponent")
        if exponent is None or not _is_scalar(exponent):
            raise UnsupportedOperationError.at(
                where, "Pow", "has a non-scalar exponent", NON_POLYNOMIAL_HINT
            )
        e = float(np.asarray(exponent).reshape(-1)[0])
        return self._poly(where, f"Pow (exponent {e:g})", lambda: power(x, e))

    # ---- pass-through and constants -------------------------------------------------

    def _op_Identity(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        return self._present(node, 0, where)

    def _op_Dropout(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        return self._op_Identity(node, where, attrs)  # inference: dropout is the identity

    def _op_Constant(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        if "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        for key in ("value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                return np.asarray(attrs[key])
        raise UnsupportedOperationError.at(
            where, f"Constant({', '.join(attrs)})", "is not a numeric tensor"
        )

    def _op_Shape(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        value = self._present(node, 0, where)
        if isinstance(value, PolyValue):
            dims: list[int | None] = [self.batch, *self.builder.shape_of(value)]
            shape = np.array(dims, dtype=object)
        else:
            shape = np.array(np.shape(value), dtype=np.int64)
        start, end = attrs.get("start", 0), attrs.get("end")
        return shape[start:end]

    def _shape_const(self, node: onnx.NodeProto, where: str, i: int = 0) -> Array:
        value = self._const(node, i, where, "input")
        if value is None:
            raise ModelImportError(f"{where}: input {i} is missing")
        return value

    def _op_Gather(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        data = self._shape_const(node, where)
        indices = self._shape_const(node, where, 1)
        taken = np.take(data, indices.astype(np.int64), axis=int(attrs.get("axis", 0)))
        return np.asarray(taken, dtype=data.dtype)  # a 0-d array, not a bare scalar

    def _op_Unsqueeze(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        data = self._shape_const(node, where)
        axes = attrs.get("axes")
        if axes is None:
            axes = [int(a) for a in self._shape_const(node, where, 1).reshape(-1)]
        out = np.asarray(data)
        rank = out.ndim + len(axes)
        for axis in sorted(a % rank for a in axes):
            out = np.expand_dims(out, axis)
        return out

    def _op_Concat(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        if any(isinstance(self._value(node, i, where), PolyValue) for i in range(len(node.input))):
            raise UnsupportedOperationError.at(
                where, "Concat", "joins several tensors", "the model must be one chain of layers"
            )
        parts = [self._shape_const(node, where, i) for i in range(len(node.input))]
        return np.concatenate([np.asarray(p) for p in parts], axis=int(attrs.get("axis", 0)))

    def _op_Cast(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        value = self._present(node, 0, where)
        if isinstance(value, PolyValue):
            raise UnsupportedOperationError.at(where, "Cast", "of the activations is not supported")
        if value.dtype == object:
            return value
        return value.astype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"])))

    def _op_Slice(self, node: onnx.NodeProto, where: str, attrs: dict[str, Any]) -> Value:
        data = self._shape_const(node, where)
        if data.ndim != 1:
            raise UnsupportedOperationError.at(where, "Slice", "of a multi-dimensional constant")
        starts = int(self._shape_const(node, where, 1).reshape(-1)[0])
        ends = int(self._shape_const(node, where, 2).reshape(-1)[0])
        step = 1
        if len(node.input) > 4 and node.input[4]:
            step = int(self._shape_const(node, where, 4).reshape(-1)[0])
        return data[starts:ends:step]


def _two(value: Any, where: str, what: str) -> tuple[int, int]:
    if value is None or len(value) != 2:
        raise UnsupportedOperationError.at(where, what, f"= {value!r} is not two sizes", "2-D only")
    return int(value[0]), int(value[1])
