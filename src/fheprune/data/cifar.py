"""CIFAR-10, python version: pickled batches, loose or inside the official tar.gz.

Pickle can run arbitrary code, so batches are read with an allow-list unpickler that can only
rebuild what these files contain: dicts, lists, ints, bytes/str and plain numeric numpy arrays.
Every other global (``os.system``, ``builtins.eval``, ...) is refused before it is called.
The archive is read in memory with :mod:`tarfile`; nothing is ever extracted to disk.
"""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from fheprune.errors import InputError

from .dataset import Dataset
from .errors import CorruptDatasetError, DatasetNotFoundError
from .integrity import KnownFile, check_file
from .paths import StrPath, resolve_data_dir

__all__ = ["CIFAR10_ARCHIVE", "load_cifar10", "safe_unpickle"]

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

BATCH_DIR = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
# Only the archive's MD5 is published by the authors (A. Krizhevsky, U. Toronto).
CIFAR10_ARCHIVE = KnownFile(ARCHIVE_NAME, 170_498_071, "md5", "c58f30108f718f92721af3b95e74349a")

_BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_SUBDIRS = (".", "cifar10")
_SIDE = 32
_ROW = 3 * _SIDE * _SIDE
_CLASSES = 10
_MAX_MEMBER = 256 << 20  # a real batch is ~31 MB; bounds memory for hostile archives
_NUMERIC_KINDS = "biuf"


# --- restricted unpickling -------------------------------------------------------------------

_NDARRAY_TOKEN = object()  # stands in for numpy.ndarray so a pickle cannot call its constructor


def _refuse(why: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(why)


def _as_text(value: object) -> str:
    if isinstance(value, bytes):  # Python 2 pickles carry str as bytes under encoding="bytes"
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    raise _refuse(f"expected a string, got {type(value).__name__}")


def _plain_dtype(spec: object, align: object = False, copy: object = True) -> np.dtype[Any]:
    """``numpy.dtype`` limited to plain numeric types (no object, void or structured dtypes)."""
    del align, copy  # always build a private copy: the pickle's BUILD step may mutate it
    if isinstance(spec, np.dtype):
        dtype: np.dtype[Any] = spec
    else:
        dtype = np.dtype(_as_text(spec), align=False, copy=True)
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise _refuse(f"dtype {dtype} is not a plain numeric type")
    return dtype


def _reconstruct(subtype: object, shape: object, dtype: object) -> NDArray[Any]:
    """``numpy.core.multiarray._reconstruct``: an empty array that BUILD then fills."""
    if subtype is not _NDARRAY_TOKEN:
        raise _refuse("array subclass other than numpy.ndarray")
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d == 0 for d in shape)):
        raise _refuse(f"unexpected placeholder shape {shape!r}")
    return np.ndarray(shape, dtype=_plain_dtype(dtype))


def _scalar(dtype: object, data: object = b"") -> object:
    """``numpy.core.multiarray.scalar`` for numeric scalars only."""
    dt = _plain_dtype(dtype)
    raw = data.encode("latin-1") if isinstance(data, str) else data
    if not isinstance(raw, bytes) or len(raw) != dt.itemsize:
        raise _refuse("malformed numpy scalar")
    return np.frombuffer(raw, dtype=dt)[0]


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle bytes at protocol < 3."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse("codecs.encode is only allowed for latin-1 text")
    return text.encode("latin-1")


def _empty_bytes(*args: object) -> bytes:
    if args:
        raise _refuse("bytes() with arguments")
    return b""


_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): _NDARRAY_TOKEN,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x names
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _scalar


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _refuse(f"refused global {module}.{name}") from None


def safe_unpickle(raw: bytes, origin: Path | str) -> object:
    """Unpickle ``raw`` with the allow-list above; any failure is a CorruptDatasetError."""
    try:
        # encoding="bytes" keeps Python 2 str (the original batches) as bytes, as upstream says.
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # unpickling raises almost anything on hostile input
        raise CorruptDatasetError(
            origin, f"not a safe CIFAR-10 batch pickle ({type(exc).__name__}: {exc})"
        ) from exc


# --- batch decoding --------------------------------------------------------------------------


def _field(batch: dict[Any, Any], key: str) -> object:
    for k in (key.encode(), key):  # bytes keys in the originals, str in Python 3 re-pickles
        if k in batch:
            return batch[k]
    raise KeyError(key)


def _decode_batch(raw: bytes, origin: Path | str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    batch = safe_unpickle(raw, origin)
    if not isinstance(batch, dict):
        raise CorruptDatasetError(origin, f"expected a dict, got {type(batch).__name__}")
    try:
        data, labels_obj = _field(batch, "data"), _field(batch, "labels")
    except KeyError as exc:
        raise CorruptDatasetError(origin, f"batch has no {exc.args[0]!r} entry") from None
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _ROW
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDatasetError(origin, f"'data' must be uint8 [n, {_ROW}], got {desc}")
    if isinstance(labels_obj, np.ndarray) and labels_obj.dtype.kind in "iu":
        labels = labels_obj.astype(np.int64).reshape(-1)
    elif isinstance(labels_obj, list) and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels_obj
    ):
        labels = np.array(labels_obj, dtype=np.int64).reshape(-1)
    else:
        raise CorruptDatasetError(origin, "'labels' must be a list of integers")
    if len(labels) != len(data):
        raise CorruptDatasetError(origin, f"{len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= _CLASSES):
        raise CorruptDatasetError(origin, f"labels must lie in 0..{_CLASSES - 1}")
    # Each row is 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major 32x32.
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return images, labels


# --- locating and loading --------------------------------------------------------------------


def _read_archive(path: Path, names: Sequence[str], verify: bool | None) -> dict[str, bytes]:
    check_file(path, CIFAR10_ARCHIVE, verify)
    wanted = {f"{BATCH_DIR}/{n}": n for n in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                key = member.name.removeprefix("./")
                if key not in wanted or wanted[key] in found:
                    continue
                if not member.isreg() or member.size > _MAX_MEMBER:
                    raise CorruptDatasetError(
                        path, f"member {member.name} is not a regular file of sane size"
                    )
                stream = tar.extractfile(member)
                if stream is None:  # unreachable for regular members; keeps mypy honest
                    raise CorruptDatasetError(path, f"cannot read member {member.name}")
                found[wanted[key]] = stream.read()
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise CorruptDatasetError(path, f"cannot read the tar.gz archive: {exc}") from exc
    missing = [n for n in names if n not in found]
    if missing:
        listed = ", ".join(f"{BATCH_DIR}/{m}" for m in missing)
        raise CorruptDatasetError(path, f"archive lacks {listed}")
    return found


class _Source:
    """One place the batches can come from: a loose batch folder or the archive."""

    def __init__(self, path: Path, names: Sequence[str], verify: bool | None) -> None:
        self.path, self.names, self.verify = path, names, verify
        self.is_archive = path.name == ARCHIVE_NAME

    def origin(self, name: str) -> str:
        if self.is_archive:
            return f"{self.path} (member {BATCH_DIR}/{name})"
        return str(self.path / name)

    def read(self) -> dict[str, bytes]:
        if self.is_archive:
            return _read_archive(self.path, self.names, self.verify)
        out: dict[str, bytes] = {}
        for n in self.names:
            check_file(self.path / n, None, self.verify)  # no per-batch reference digests exist
            out[n] = (self.path / n).read_bytes()
        return out


def _find_source(root: Path, names: Sequence[str], verify: bool | None) -> _Source:
    """Pick loose batches or the archive; strict verification prefers the archive."""
    loose: list[_Source] = []
    archives: list[_Source] = []
    for sub in _SUBDIRS:
        folder = root / sub / BATCH_DIR
        if all((folder / n).is_file() for n in names):
            loose.append(_Source(folder, names, verify))
        if (root / sub / ARCHIVE_NAME).is_file():
            archives.append(_Source(root / sub / ARCHIVE_NAME, names, verify))
    options = archives + loose if verify else loose + archives
    if options:
        return options[0]
    expected = [root / s / BATCH_DIR / n for s in _SUBDIRS for n in names]
    expected += [root / s / ARCHIVE_NAME for s in _SUBDIRS]
    raise DatasetNotFoundError(
        f"CIFAR-10 not found under {root}. Expected {root / BATCH_DIR}/ holding "
        f"{', '.join(names)} (python version), or {root / ARCHIVE_NAME}; the same inside "
        f"{root / 'cifar10'} also works. Point at the folder with FHEPRUNE_DATA or --data-dir.",
        expected,
    )


def load_cifar10(
    data_dir: StrPath | None = None, split: Split = "train", verify: bool | None = None
) -> Dataset:
    """Load one CIFAR-10 split as uint8 images ``[n, 32, 32, 3]`` (RGB) and int64 labels.

    ``verify`` follows :mod:`fheprune.data.integrity`; only the archive has a published digest,
    so ``verify=True`` needs the archive.
    """
    if split not in _BATCHES:
        raise InputError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    names = _BATCHES[split]
    root = resolve_data_dir(data_dir, expected=[f"{BATCH_DIR}/{names[0]}", ARCHIVE_NAME])
    source = _find_source(root, names, verify)
    blobs = source.read()
    parts = [_decode_batch(blobs[n], source.origin(n)) for n in names]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    log.info("CIFAR-10 %s: %d images from %s", split, len(labels), source.path)
    return Dataset(
        images=np.ascontiguousarray(images),
        labels=labels,
        name="cifar10",
        classes=_CLASSES,
        split=split,
    )
