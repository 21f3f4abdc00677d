"""SVHN (cropped digits, format 2) from the official MATLAB ``*_32x32.mat`` files.

The files hold ``X`` as uint8 ``[32, 32, 3, n]`` and ``y`` as ``[n, 1]`` with digits 1..9 and
10 standing for 0. Reading MATLAB v5 files needs scipy, imported only when SVHN is used.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Literal

import numpy as np

from fheprune.errors import InputError

from .dataset import Dataset
from .errors import CorruptDatasetError, DataError, DatasetNotFoundError
from .integrity import KnownFile, check_file
from .paths import StrPath, resolve_data_dir

__all__ = ["SVHN_FILES", "load_svhn"]

log = logging.getLogger(__name__)

Split = Literal["train", "test", "extra"]

# Sizes and MD5s of the files at ufldl.stanford.edu/housenumbers (the MD5s torchvision checks).
SVHN_FILES: dict[str, KnownFile] = {
    k.name: k
    for k in (
        KnownFile("train_32x32.mat", 182_040_794, "md5", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        KnownFile("test_32x32.mat", 64_275_384, "md5", "eb5a983be6a315427106f1b164d9cef3"),
        KnownFile("extra_32x32.mat", 1_329_278_602, "md5", "a93ce644f1a588dc4d68dda5feec44a7"),
    )
}
_SPLITS = ("train", "test", "extra")
_SUBDIRS = ("svhn", ".")
_SIDE = 32
_CLASSES = 10


def _loadmat() -> Any:
    try:
        module = importlib.import_module("scipy.io")
    except ImportError as exc:
        raise DataError(
            "SVHN is stored as MATLAB .mat files, which need scipy: pip install scipy"
        ) from exc
    return module.loadmat


def load_svhn(
    data_dir: StrPath | None = None, split: Split = "train", verify: bool | None = None
) -> Dataset:
    """Load one SVHN split as uint8 images ``[n, 32, 32, 3]`` and int64 labels in 0..9.

    ``verify`` follows :mod:`fheprune.data.integrity`. Labels are accepted in 0..10 and 10 is
    mapped to 0, so files whose labels were already remapped load unchanged.
    """
    if split not in _SPLITS:
        raise InputError(f"SVHN split must be one of {', '.join(_SPLITS)}, got {split!r}")
    name = f"{split}_32x32.mat"
    root = resolve_data_dir(data_dir, expected=[f"svhn/{name}"])
    candidates = [root / sub / name for sub in _SUBDIRS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetNotFoundError(
            f"SVHN {split} file not found: expected {candidates[0]} or {candidates[1]} "
            "(format 2, cropped digits). Point at the folder holding svhn/ with FHEPRUNE_DATA "
            "or --data-dir.",
            candidates,
        )
    check_file(path, SVHN_FILES.get(name), verify)
    loadmat = _loadmat()
    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except NotImplementedError as exc:  # scipy's answer to HDF5-based v7.3 files
        raise CorruptDatasetError(path, f"MATLAB v7.3 files are not supported ({exc})") from exc
    except Exception as exc:  # scipy raises many types for malformed files
        raise CorruptDatasetError(path, f"not a readable MATLAB file: {exc}") from exc

    if "X" not in mat or "y" not in mat:
        raise CorruptDatasetError(path, "expected variables X and y")
    x = np.asarray(mat["X"])
    y = np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (_SIDE, _SIDE, 3):
        raise CorruptDatasetError(
            path, f"X must be uint8 [32, 32, 3, n], got {x.dtype} {list(x.shape)}"
        )
    n = x.shape[3]
    if y.size != n or (y.ndim == 2 and 1 not in y.shape) or y.ndim > 2:
        raise CorruptDatasetError(path, f"y must have shape [{n}, 1], got {list(y.shape)}")
    y = y.reshape(-1)
    # MATLAB tools often save labels as double; accept them only when they are whole numbers.
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise CorruptDatasetError(path, "y holds non-integer labels")
    if y.dtype.kind not in "iuf":
        raise CorruptDatasetError(path, f"y must be numeric, got {y.dtype}")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > _CLASSES):
        raise CorruptDatasetError(path, "labels must lie in 1..10 (10 meaning digit 0)")
    labels[labels == _CLASSES] = 0
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    log.info("SVHN %s: %d images from %s", split, n, path)
    return Dataset(images=images, labels=labels, name="svhn", classes=_CLASSES, split=split)
