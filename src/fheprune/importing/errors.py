"""Errors of the model importer.

::

    InputError
    └── ModelImportError                 every refusal of the importer
        ├── UnsupportedOperationError    an operation the HE chain cannot hold (also a
        │                                fheprune._core.CompileError where the engine is built)
        ├── UntraceableModelError        torch.fx could not trace the module
        └── ModelFileError               a model file that is unreadable or of the wrong kind

A path that does not exist raises :class:`fheprune.errors.MissingFileError`.
"""

from __future__ import annotations

from fheprune.errors import InputError

__all__ = [
    "MAX_POOL_HINT",
    "NON_POLYNOMIAL_HINT",
    "RESIDUAL_HINT",
    "SUPPORTED_OPERATIONS",
    "ModelFileError",
    "ModelImportError",
    "UnsupportedOperationError",
    "UntraceableModelError",
]

try:
    from fheprune._core import CompileError as _CompileError
except ImportError:  # the engine is not built: importing must still work (it is pure Python)

    class _CompileError(InputError):  # type: ignore[no-redef]
        """Stand-in for fheprune._core.CompileError when the engine is not built."""


#: What an imported model may contain, named in every UnsupportedOperationError.
SUPPORTED_OPERATIONS: tuple[str, ...] = (
    "nn.Linear / Gemm / MatMul (+ Add of a bias)",
    "nn.Conv2d / Conv (zero padding, symmetric pads, dilation 1, groups allowed)",
    "nn.AvgPool2d / AveragePool (no ceil_mode), global average pooling",
    "flatten to (batch, -1) (nn.Flatten, torch.flatten(x, 1), view, reshape, Flatten, Reshape)",
    "polynomials of degree <= 2 in one tensor with scalar constants (+, -, *, /, **2, neg, "
    "PolyActivation modules)",
    "batch norm directly after a Linear / Conv2d (folded into it)",
    "Dropout and Identity (dropped)",
)

NON_POLYNOMIAL_HINT = (
    "replace it with a polynomial activation such as fheprune.models.activations.TanhPoly2 "
    "(or write it as a*x*x + b*x + c)"
)
MAX_POOL_HINT = "replace it with average pooling (nn.AvgPool2d / AveragePool)"
RESIDUAL_HINT = "residual adds are not supported by the tile or map layouts yet"
PRODUCT_HINT = "only polynomials of a single tensor are supported"
DEGREE_HINT = "split it into activations of degree <= 2 with a layer between them"


class ModelImportError(InputError):
    """The importer cannot turn this model into an HE chain; the message says why."""


class UnsupportedOperationError(ModelImportError, _CompileError):
    """An operation (a layer, a function, an attribute value) the HE chain cannot represent.

    ``node`` names the graph node (an fx node or an ONNX node with its op type) and
    ``operation`` the offending operation; the message lists the supported operations.
    """

    def __init__(self, message: str, *, node: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.node = node
        self.operation = operation

    @classmethod
    def at(
        cls, node: str, operation: str, problem: str, hint: str = ""
    ) -> UnsupportedOperationError:
        """``"<node>: <operation> <problem>[; <hint>]. Supported operations: ..."``."""
        text = f"{node}: {operation} {problem}"
        if hint:
            text += f"; {hint}"
        text += ". Supported operations: " + "; ".join(SUPPORTED_OPERATIONS)
        return cls(text, node=node, operation=operation)


class UntraceableModelError(ModelImportError):
    """torch.fx could not trace the module (data-dependent control flow, unsupported Python)."""


class ModelFileError(ModelImportError):
    """A model file that cannot be read, or holds something other than a model we can import."""
