"""Model import: turn a PyTorch module or an ONNX graph into an HE-ready
:class:`~fheprune.models.zoo.HEModel` chain (Linear, Conv2d, AvgPool2d, Flatten and
polynomial activations), or say precisely which node cannot be expressed.

* :func:`import_torch` traces a module with torch.fx (``torch_fx.py``);
* :func:`import_onnx` reads an ONNX model (``onnx_graph.py``; needs the onnx package, imported
  only then);
* :func:`import_model` dispatches on the source (module, ``.onnx`` path, torch file).

Both front-ends share the chain builder (``graph.py``: single-chain check, batch-norm and
bias folding, shapes, names) and the symbolic polynomials (``polynomial.py``). See
docs/importing.md.
"""

from .dispatch import import_model, import_onnx
from .errors import (
    SUPPORTED_OPERATIONS,
    ModelFileError,
    ModelImportError,
    UnsupportedOperationError,
    UntraceableModelError,
)
from .model import ImportedPoly, build_imported
from .torch_fx import import_torch

__all__ = [
    "SUPPORTED_OPERATIONS",
    "ImportedPoly",
    "ModelFileError",
    "ModelImportError",
    "UnsupportedOperationError",
    "UntraceableModelError",
    "build_imported",
    "import_model",
    "import_onnx",
    "import_torch",
]
