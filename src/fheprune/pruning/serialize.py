"""Save / load a pruned model with its masks and permutations, without executing code.

Format (version 1): one ``.npz`` file (a zip of ``.npy`` members, read with
``allow_pickle=False``) holding

- ``meta``: UTF-8 JSON as a uint8 array - format name and version, model name + constructor
  kwargs, prunable layer names, tile shape, scheme, config, metrics, and for every other member
  its shape, dtype and SHA-256;
- ``state/<key>``: every entry of the model's ``state_dict`` (weights, biases, buffers);
- ``mask/<layer>``: the bool mask of every prunable layer;
- ``perm/<name>``: int64 permutations (each a reordering of ``0..n-1``).

The loader never imports the model zoo: it takes a ``builder(name, **kwargs)`` callable, builds
the model, checks every member against the metadata and the model (names, shapes, dtypes,
digests, masked weights really zero) and raises :class:`PrunedModelFormatError` on any
mismatch. Files are written to a temporary sibling and renamed into place (atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from fheprune.errors import InputError, InputTypeError, MissingFileError
from fheprune.fileio import atomic_write
from fheprune.layouts import TileShape, layer_module, layer_weights, prunable_layer_names

from .base import complete_masks

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedPrunedModel",
    "ModelBuilder",
    "PrunedModelFormatError",
    "PrunedModelMetadata",
    "load_pruned_model",
    "read_metadata",
    "save_pruned_model",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "fheprune.pruned-model"
FORMAT_VERSION = 1

_META = "meta"
_STATE, _MASK, _PERM = "state/", "mask/", "perm/"
_DTYPES = frozenset(
    {"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"}
)
_NPY_HEADER_SLACK = 4096  # bytes an .npy header may add on top of the raw data
_MAX_META_BYTES = 64 * 1024 * 1024

StrPath = str | os.PathLike[str]


class PrunedModelFormatError(InputError):
    """A pruned-model file is unreadable, of an unknown version, or does not match the model."""


class ModelBuilder(Protocol):
    """Builds an untrained model from the saved name and constructor kwargs."""

    def __call__(self, name: str, /, **kwargs: Any) -> nn.Module: ...


@dataclass(frozen=True)
class PrunedModelMetadata:
    format_version: int
    model_name: str
    model_kwargs: dict[str, Any]
    layers: list[str]
    tile_shape: TileShape | None
    scheme: str | None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    fheprune_version: str = ""


@dataclass
class LoadedPrunedModel:
    model: nn.Module
    masks: dict[str, Tensor]
    permutations: dict[str, Tensor]
    metadata: PrunedModelMetadata


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, TileShape):
        return [obj.t1, obj.t2]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Tensor):
        return obj.detach().cpu().tolist()
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise InputTypeError(f"cannot store a {type(obj).__name__} in pruned-model metadata")


def _digest(array: NDArray[Any]) -> str:
    return hashlib.sha256(array.tobytes(order="C")).hexdigest()


def _to_numpy(tensor: Tensor, what: str) -> NDArray[Any]:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DTYPES:  # e.g. bfloat16 has no numpy dtype
        raise InputError(f"{what}: dtype {name} cannot be stored (allowed: {sorted(_DTYPES)})")
    # copy(order="C"), not ascontiguousarray: the latter turns 0-d scalars into shape (1,).
    return tensor.detach().cpu().numpy().copy(order="C")


def _permutation_problem(values: NDArray[Any]) -> str | None:
    if values.ndim != 1:
        return f"a permutation is 1-D, got shape {values.shape}"
    if values.dtype != np.int64:
        return f"a permutation is int64, got {values.dtype}"
    if not np.array_equal(np.sort(values), np.arange(values.size, dtype=np.int64)):
        return f"not a permutation of 0..{values.size - 1}"
    return None


def save_pruned_model(
    path: StrPath,
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any] | None = None,
    tile_shape: TileShape | None = None,
    scheme: str | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    permutations: Mapping[str, Tensor | NDArray[Any] | Sequence[int]] | None = None,
) -> Path:
    """Write ``model`` (its full ``state_dict``), ``masks`` and ``permutations`` to ``path``.

    ``model_name`` + ``model_kwargs`` must rebuild the architecture through the loader's
    builder. Masks may omit layers (= nothing pruned there). Metadata values must be JSON
    (enums, :class:`TileShape`, numpy scalars and objects with ``to_dict()`` are converted).
    """
    target = Path(path)
    if not isinstance(model_name, str) or not model_name:
        raise InputError("model_name must be a non-empty string")
    layers = prunable_layer_names(model)
    full = complete_masks(layer_weights(model, layers), masks)
    arrays: dict[str, NDArray[Any]] = {}
    for key, value in model.state_dict().items():
        arrays[_STATE + key] = _to_numpy(value, f"state {key!r}")
    for name in layers:
        arrays[_MASK + name] = _to_numpy(full[name], f"mask {name!r}")
    for name, perm in (permutations or {}).items():
        values = np.asarray(perm.detach().cpu().numpy() if isinstance(perm, Tensor) else perm)
        if values.dtype.kind not in "iu":
            raise InputError(f"permutation {name!r} must hold integers, got {values.dtype}")
        values = values.astype(np.int64)
        problem = _permutation_problem(values)
        if problem is not None:
            raise InputError(f"permutation {name!r}: {problem}")
        arrays[_PERM + str(name)] = values
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fheprune_version": _package_version(),
        "model": {"name": model_name, "kwargs": dict(model_kwargs or {})},
        "layers": layers,
        "tile_shape": None if tile_shape is None else [tile_shape.t1, tile_shape.t2],
        "scheme": scheme,
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "arrays": {
            key: {"shape": list(a.shape), "dtype": a.dtype.name, "sha256": _digest(a)}
            for key, a in arrays.items()
        },
    }
    try:
        text = json.dumps(meta, default=_json_default, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"metadata is not storable as JSON: {exc}") from exc
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    atomic_write(target, lambda handle: np.savez_compressed(handle, allow_pickle=False, **arrays))
    log.info("saved pruned model %r (%d arrays) to %s", model_name, len(arrays) - 1, target)
    return target


def _package_version() -> str:
    from fheprune import __version__

    return str(__version__)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _fail(path: Path, problem: str) -> PrunedModelFormatError:
    return PrunedModelFormatError(f"{path}: {problem}")


class _Archive:
    """An opened npz with every read wrapped into :class:`PrunedModelFormatError`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise MissingFileError(
                f"no pruned-model file at {path} (write one with `fheprune prune --out`)"
            ) from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise _fail(path, f"not a pruned-model file ({exc})") from exc
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _fail(path, "not a pruned-model file (a single .npy array, not an archive)")
        self.npz = loaded

    def close(self) -> None:
        self.npz.close()

    def names(self) -> set[str]:
        return set(self.npz.files)

    def member_size(self, key: str) -> int:
        archive = self.npz.zip
        if archive is None:  # closed
            raise _fail(self.path, "archive already closed")
        return int(archive.getinfo(key + ".npy").file_size)

    def read(self, key: str) -> NDArray[Any]:
        try:
            array: NDArray[Any] = self.npz[key]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise _fail(self.path, f"member {key!r} is unreadable ({exc})") from exc
        return array


def _meta_dict(archive: _Archive) -> dict[str, Any]:
    path = archive.path
    if _META not in archive.names():
        raise _fail(path, "no metadata member; not a pruned-model file")
    if archive.member_size(_META) > _MAX_META_BYTES:
        raise _fail(path, "metadata member is implausibly large")
    raw = archive.read(_META)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _fail(path, "metadata member must be a 1-D uint8 array")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _fail(path, "metadata must be a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(
            path,
            f"format_version {version} is newer than this fheprune reads ({FORMAT_VERSION}); "
            "upgrade fheprune",
        )
    return meta


def _expect(path: Path, meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _fail(path, f"metadata field {key!r} is missing or has the wrong type")
    return value


def _parse_metadata(path: Path, meta: Mapping[str, Any]) -> PrunedModelMetadata:
    model = _expect(path, meta, "model", dict)
    name, kwargs = model.get("name"), model.get("kwargs")
    if not isinstance(name, str) or not name or not isinstance(kwargs, dict):
        raise _fail(path, "metadata 'model' needs a non-empty 'name' and a 'kwargs' object")
    layers = _expect(path, meta, "layers", list)
    if not all(isinstance(n, str) for n in layers) or len(set(layers)) != len(layers):
        raise _fail(path, "metadata 'layers' must be distinct strings")
    raw_tile = meta.get("tile_shape")
    tile: TileShape | None = None
    if raw_tile is not None:
        try:
            if not isinstance(raw_tile, list) or len(raw_tile) != 2:
                raise InputError("expected [t1, t2]")
            tile = TileShape(raw_tile[0], raw_tile[1])
        except (TypeError, ValueError) as exc:
            raise _fail(path, f"invalid tile_shape {raw_tile!r} ({exc})") from exc
    scheme = meta.get("scheme")
    if scheme is not None and not isinstance(scheme, str):
        raise _fail(path, "metadata 'scheme' must be a string or null")
    version = meta.get("fheprune_version", "")
    return PrunedModelMetadata(
        format_version=int(meta["format_version"]),
        model_name=name,
        model_kwargs=kwargs,
        layers=list(layers),
        tile_shape=tile,
        scheme=scheme,
        config=_expect(path, meta, "config", dict),
        metrics=_expect(path, meta, "metrics", dict),
        fheprune_version=version if isinstance(version, str) else "",
    )


def read_metadata(path: StrPath) -> PrunedModelMetadata:
    """The validated metadata of a pruned-model file (no arrays are read)."""
    archive = _Archive(Path(path))
    try:
        return _parse_metadata(archive.path, _meta_dict(archive))
    finally:
        archive.close()


def _array_specs(
    path: Path, meta: Mapping[str, Any]
) -> dict[str, tuple[tuple[int, ...], str, str]]:
    raw = _expect(path, meta, "arrays", dict)
    specs: dict[str, tuple[tuple[int, ...], str, str]] = {}
    for key, spec in raw.items():
        ok = (
            isinstance(spec, dict)
            and isinstance(spec.get("shape"), list)
            and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec["shape"]
            )
            and spec.get("dtype") in _DTYPES
            and isinstance(spec.get("sha256"), str)
        )
        if not ok or key == _META:
            raise _fail(path, f"invalid array entry {key!r} in metadata")
        specs[key] = (tuple(spec["shape"]), spec["dtype"], spec["sha256"])
    return specs


def load_pruned_model(path: StrPath, builder: ModelBuilder) -> LoadedPrunedModel:
    """Rebuild a saved pruned model with ``builder`` and check everything against the file.

    Raises :class:`PrunedModelFormatError` for an unreadable or corrupted file, an unknown
    format version, and any disagreement between metadata, arrays and the built model;
    :class:`~fheprune.errors.MissingFileError` (a ``FileNotFoundError``) when there is none.
    """
    archive = _Archive(Path(path))
    where = archive.path
    try:
        meta = _meta_dict(archive)
        info = _parse_metadata(where, meta)
        specs = _array_specs(where, meta)
        stored = archive.names() - {_META}
        if stored != set(specs):
            missing, extra = sorted(set(specs) - stored), sorted(stored - set(specs))
            raise _fail(
                where, f"arrays do not match the metadata (missing {missing}, extra {extra})"
            )

        try:
            model = builder(info.model_name, **info.model_kwargs)
        except Exception as exc:  # any builder failure means the file names an unbuildable model
            raise _fail(where, f"builder could not make model {info.model_name!r} ({exc})") from exc
        if not isinstance(model, nn.Module):
            raise _fail(where, f"builder returned a {type(model).__name__}, not an nn.Module")
        layers = prunable_layer_names(model)
        if layers != info.layers:
            raise _fail(where, f"model has prunable layers {layers}, file has {info.layers}")

        # What the model demands, checked against the metadata before any array is read, so
        # a crafted file cannot make us allocate more than the model itself needs.
        state = model.state_dict()
        expected: dict[str, tuple[tuple[int, ...], str]] = {
            _STATE + k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in state.items()
        }
        for name in layers:
            expected[_MASK + name] = (tuple(layer_module(model, name).weight.shape), "bool")
        got = {k: v for k, v in specs.items() if not k.startswith(_PERM)}
        if set(got) != set(expected):
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            raise _fail(where, f"file does not match the model (missing {missing}, extra {extra})")
        for key, (shape, dtype) in expected.items():
            if got[key][:2] != (shape, dtype):
                raise _fail(
                    where,
                    f"{key!r} is {got[key][1]}{list(got[key][0])} in the file, the model needs "
                    f"{dtype}{list(shape)}",
                )

        arrays: dict[str, NDArray[Any]] = {}
        for key, (shape, dtype, digest) in specs.items():
            limit = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if archive.member_size(key) > limit + _NPY_HEADER_SLACK:
                raise _fail(where, f"member {key!r} is larger than its declared shape")
            array = archive.read(key)
            if array.dtype.name != dtype or tuple(array.shape) != shape:
                raise _fail(
                    where,
                    f"member {key!r} is {array.dtype.name}{list(array.shape)}, metadata says "
                    f"{dtype}{list(shape)}",
                )
            if _digest(array) != digest:
                raise _fail(where, f"member {key!r} is corrupted (SHA-256 mismatch)")
            arrays[key] = array
    finally:
        archive.close()

    model.load_state_dict(
        {k[len(_STATE) :]: torch.from_numpy(a) for k, a in arrays.items() if k.startswith(_STATE)},
        strict=True,
    )
    masks = {name: torch.from_numpy(arrays[_MASK + name]) for name in layers}
    for name in layers:
        if bool((layer_module(model, name).weight.detach()[~masks[name]] != 0).any()):
            raise _fail(where, f"layer {name!r} has non-zero weights where its mask is pruned")
    permutations: dict[str, Tensor] = {}
    for key, array in arrays.items():
        if key.startswith(_PERM):
            problem = _permutation_problem(array)
            if problem is not None:
                raise _fail(where, f"permutation {key[len(_PERM) :]!r}: {problem}")
            permutations[key[len(_PERM) :]] = torch.from_numpy(array)
    log.info("loaded pruned model %r from %s", info.model_name, where)
    return LoadedPrunedModel(model=model, masks=masks, permutations=permutations, metadata=info)
