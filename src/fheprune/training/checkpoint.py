"""Atomic torch files: training checkpoints and cached trained models.

Files are written to a temporary file in the target directory, fsynced, then moved into place
with ``os.replace``, so a crash leaves either the old file or the new one, never half of one.
Loading always uses ``torch.load(..., weights_only=True)``: only tensors and plain Python
containers are accepted, no pickled code runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fheprune.errors import InputError, InputTypeError

from ..fileio import atomic_write
from ..models import zoo

__all__ = [
    "MODEL_FORMAT",
    "CheckpointError",
    "atomic_save",
    "load_model",
    "load_weights",
    "safe_load",
    "save_model",
]

MODEL_FORMAT = "fheprune-model"
_MODEL_VERSION = 1

_CLASSES: dict[str, type[zoo.HEModel]] = {
    cls.__name__: cls
    for cls in (zoo.MLPClassifier, zoo.AutoEncoder, zoo.CNNClassifier, zoo.LeNetLike)
}


class CheckpointError(InputError):
    """A checkpoint or model file is unreadable, of the wrong kind, or does not fit."""


def atomic_save(obj: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def safe_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU, with a clear error on failure."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def save_model(
    model: zoo.HEModel,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Cache a zoo model: its class, constructor arguments, registry name and weights.

    ``metadata`` (e.g. test accuracy, config) must hold only plain Python values and tensors.
    """
    cls_name = type(model).__name__
    if cls_name not in _CLASSES:
        raise InputTypeError(f"save_model handles zoo models only, got {cls_name}")
    payload = {
        "format": MODEL_FORMAT,
        "version": _MODEL_VERSION,
        "class": cls_name,
        "arch": dict(model.arch),
        "model_name": model.model_name,
        "dataset": model.dataset,
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_save(payload, path)


def _read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a {MODEL_FORMAT} file")
    if payload.get("version") != _MODEL_VERSION:
        raise CheckpointError(
            f"{path} has model-file version {payload.get('version')!r}; "
            f"this fheprune reads version {_MODEL_VERSION}"
        )
    return payload


def load_model(path: str | os.PathLike[str]) -> tuple[zoo.HEModel, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`; returns ``(model, metadata)``."""
    payload = _read_model_file(path)
    cls = _CLASSES.get(str(payload.get("class")))
    if cls is None:
        raise CheckpointError(f"{path}: unknown model class {payload.get('class')!r}")
    try:
        model = cls(**payload["arch"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild {cls.__name__}: {exc}") from exc
    model.model_name = payload.get("model_name")
    model.dataset = payload.get("dataset")
    metadata: dict[str, Any] = payload.get("metadata") or {}
    return model, metadata


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the weights of a :func:`save_model` file into an existing ``model``.

    Raises :class:`CheckpointError` naming the mismatch when the shapes or names differ.
    Returns the file's metadata.
    """
    payload = _read_model_file(path)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this model: {exc}") from exc
    metadata: dict[str, Any] = payload.get("metadata") or {}
    return metadata
