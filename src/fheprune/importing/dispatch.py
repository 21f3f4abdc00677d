""":func:`import_model`: one entry point for modules, ONNX files and torch files."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fheprune.errors import InputError, InputTypeError, MissingFileError
from fheprune.models.zoo import HEModel

from .errors import ModelFileError
from .torch_fx import import_torch

if TYPE_CHECKING:
    import onnx

__all__ = ["import_model", "import_onnx"]


def import_onnx(
    source: str | os.PathLike[str] | bytes | onnx.ModelProto, *, name: str | None = None
) -> HEModel:
    """An :class:`HEModel` chain computing what an ONNX graph computes (a path, the
    serialized bytes or an ``onnx.ModelProto``); see :mod:`fheprune.importing.onnx_graph`.

    The input shape is the single graph input's, without its batch axis (symbolic or fixed).
    Raises :class:`UnsupportedOperationError` naming the ONNX node (name and op type) for
    anything the chain cannot hold, :class:`ModelFileError` for an unreadable or invalid file.
    """
    try:
        from . import onnx_graph  # onnx is needed for ONNX sources only
    except ImportError as exc:
        raise ImportError(
            f"importing ONNX models needs the onnx package ({exc}); install it with "
            "`pip install onnx`"
        ) from exc
    return onnx_graph.import_onnx(source, name=name)


def _is_onnx_proto(source: object) -> bool:
    return type(source).__name__ == "ModelProto" and type(source).__module__.startswith("onnx")


def import_model(
    source: nn.Module | onnx.ModelProto | str | os.PathLike[str],
    input_shape: Sequence[int] | None = None,
    *,
    name: str | None = None,
    allow_pickle: bool = False,
) -> HEModel:
    """Import ``source`` as an :class:`HEModel` chain.

    ``source`` is an ``nn.Module`` (``input_shape`` is needed unless it has an
    ``input_shape`` attribute), an ``onnx.ModelProto``, or a path: ``*.onnx`` is read as ONNX,
    anything else as a torch file, either :func:`fheprune.training.save_model`'s format (the
    zoo model comes back as it is) or a whole module saved with ``torch.save(model)``.

    Unpickling a whole module runs code from the file, so it needs ``allow_pickle=True``;
    without it such a file raises :class:`ModelFileError` saying so. A missing path raises
    :class:`~fheprune.errors.MissingFileError`, an unreadable one :class:`ModelFileError`.
    """
    if isinstance(source, nn.Module):
        return import_torch(source, _shape_of(source, input_shape), name=name)
    if _is_onnx_proto(source):
        return import_onnx(source, name=name)
    if not isinstance(source, str | os.PathLike):
        raise InputTypeError(
            "import_model takes an nn.Module, an onnx.ModelProto or a path, got "
            f"{type(source).__name__}"
        )
    path = Path(source)
    if not path.is_file():
        raise MissingFileError(f"no model file at {path}")
    if path.suffix.lower() == ".onnx":
        return import_onnx(path, name=name)
    return _import_torch_file(path, input_shape, name, allow_pickle)


def _shape_of(module: nn.Module, input_shape: Sequence[int] | None) -> Sequence[int]:
    if input_shape is not None:
        return input_shape
    shape = getattr(module, "input_shape", None)
    if isinstance(shape, tuple | list) and shape:
        return tuple(int(d) for d in shape)
    raise InputError(
        f"{type(module).__name__} has no input_shape attribute: pass input_shape, one sample's "
        "shape without the batch axis, e.g. (784,) or (1, 28, 28)"
    )


def _import_torch_file(
    path: Path, input_shape: Sequence[int] | None, name: str | None, allow_pickle: bool
) -> HEModel:
    from fheprune.training.checkpoint import MODEL_FORMAT, load_model

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise ModelFileError(
                f"{path} is not a readable torch file ({_first_line(exc)})"
            ) from exc
        if not allow_pickle:
            raise ModelFileError(
                f"{path} holds pickled Python objects (a whole module saved with "
                "torch.save(model)); loading it runs code from the file. Pass "
                "allow_pickle=True if you trust it, or export the model to ONNX"
            ) from exc
        return _import_pickled(path, input_shape, name)
    except Exception as exc:  # torch raises several types for corrupt and foreign files
        if "TorchScript" in str(exc):
            raise ModelFileError(
                f"{path} is a TorchScript archive, which torch.fx cannot trace; pass the Python "
                "module or export it to ONNX"
            ) from exc
        raise ModelFileError(f"{path} is not a readable torch file ({_first_line(exc)})") from exc
    if isinstance(payload, Mapping) and payload.get("format") == MODEL_FORMAT:
        model, _ = load_model(path)
        if name is not None:
            model.model_name = name
        return model
    if isinstance(payload, Mapping):
        raise ModelFileError(
            f"{path} holds only tensors (a state_dict or checkpoint), not a model: build the "
            "module, load these weights into it and import the module"
        )
    raise ModelFileError(f"{path} holds a {type(payload).__name__}, not a model")


def _import_pickled(path: Path, input_shape: Sequence[int] | None, name: str | None) -> HEModel:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded: Any = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelFileError(f"{path} could not be unpickled ({_first_line(exc)})") from exc
    if not isinstance(loaded, nn.Module):
        raise ModelFileError(f"{path} holds a {type(loaded).__name__}, not an nn.Module")
    return import_torch(loaded, _shape_of(loaded, input_shape), name=name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
