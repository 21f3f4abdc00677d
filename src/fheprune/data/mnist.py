"""MNIST from the original IDX files (gzip-compressed or not).

The files may sit in ``<data_dir>/mnist/``, in torchvision's ``<data_dir>/MNIST/raw/`` or
directly in ``<data_dir>/``. Every header field is checked and the payload length must match
the header exactly, so truncated downloads and concatenated files are rejected rather than
silently reshaped. Checksums follow the rule in :mod:`fheprune.data.integrity`.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import struct
import zlib
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from fheprune.errors import InputError

from .dataset import Dataset
from .errors import CorruptDatasetError, DatasetNotFoundError
from .integrity import KnownFile, check_file
from .paths import StrPath, resolve_data_dir

__all__ = ["MNIST_FILES", "load_mnist"]

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_ROWS = _COLS = 28
_CLASSES = 10

_STEMS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SUBDIRS = ("mnist", "MNIST/raw", ".")

# Official files (LeCun et al.); the .gz SHA-256 match shared/data/SHA256SUMS and the official
# MD5s. The uncompressed entries are the digests of those files after gunzip.
MNIST_FILES: dict[str, KnownFile] = {
    k.name: k
    for k in (
        KnownFile(
            "train-images-idx3-ubyte.gz",
            9_912_422,
            "sha256",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        KnownFile(
            "train-labels-idx1-ubyte.gz",
            28_881,
            "sha256",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        KnownFile(
            "t10k-images-idx3-ubyte.gz",
            1_648_877,
            "sha256",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        KnownFile(
            "t10k-labels-idx1-ubyte.gz",
            4_542,
            "sha256",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
        KnownFile(
            "train-images-idx3-ubyte",
            47_040_016,
            "sha256",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        KnownFile(
            "train-labels-idx1-ubyte",
            60_008,
            "sha256",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        KnownFile(
            "t10k-images-idx3-ubyte",
            7_840_016,
            "sha256",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        KnownFile(
            "t10k-labels-idx1-ubyte",
            10_008,
            "sha256",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    )
}

_CHUNK = 1 << 20


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_up_to(stream: _Reader, limit: int) -> bytearray:
    """Read at most ``limit`` bytes; memory grows with real data, not with header claims."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = stream.read(min(_CHUNK, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _parse_idx(
    path: Path, raw: bytes, magic: int, dims_expected: tuple[int | None, ...]
) -> NDArray[np.uint8]:
    """Decode one IDX file; ``None`` in ``dims_expected`` means "any positive size"."""
    compressed = path.name.endswith(".gz")
    stream: _Reader = gzip.GzipFile(fileobj=io.BytesIO(raw)) if compressed else io.BytesIO(raw)
    ndim = len(dims_expected)
    header_len = 4 + 4 * ndim
    try:
        header = _read_up_to(stream, header_len)
        if len(header) < header_len:
            raise CorruptDatasetError(
                path, f"file ends inside the IDX header ({len(header)} of {header_len} bytes)"
            )
        (found_magic,) = struct.unpack(">I", header[:4])
        if found_magic != magic:
            hint = "; it looks gzip-compressed, so name it .gz" if raw[:2] == b"\x1f\x8b" else ""
            raise CorruptDatasetError(
                path,
                f"IDX magic number is {found_magic}, expected {magic} ({magic:#010x}){hint}",
            )
        dims = struct.unpack(f">{ndim}I", header[4:])
        for axis, (got, want) in enumerate(zip(dims, dims_expected, strict=True)):
            if got == 0 or (want is not None and got != want):
                need = "a positive size" if want is None else str(want)
                raise CorruptDatasetError(
                    path, f"IDX header dimension {axis} is {got}, expected {need}"
                )
        expected = math.prod(dims)  # Python ints: no overflow on absurd headers
        # One byte beyond the expected payload tells a too-long file from an exact one.
        payload = _read_up_to(stream, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise CorruptDatasetError(path, f"cannot decompress: {exc}") from exc
    where = " (decompressed)" if compressed else ""
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "longer than its header says"
        shape = " x ".join(str(d) for d in dims)
        raise CorruptDatasetError(
            path,
            f"file is {what}: the header ({shape}) needs exactly {expected} payload bytes "
            f"after the {header_len}-byte header{where}, found "
            f"{len(payload) if len(payload) <= expected else 'more'}",
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _locate(root: Path, split: Split) -> tuple[Path, Path]:
    """Find images and labels for ``split`` in the first folder that holds both."""
    stems = _STEMS[split]
    for sub in _SUBDIRS:
        folder = root / sub
        found: list[Path] = []
        for stem in stems:
            for name in (f"{stem}.gz", stem):
                if (folder / name).is_file():
                    found.append(folder / name)
                    break
        if len(found) == 2:
            return found[0], found[1]
        if found:
            log.warning("%s holds %s but not its partner file; ignoring it", folder, found[0].name)
    expected = [root / sub / f"{stem}.gz" for sub in _SUBDIRS for stem in stems]
    raise DatasetNotFoundError(
        f"MNIST {split} files not found under {root}. Expected {stems[0]}.gz and "
        f"{stems[1]}.gz (or the same names without .gz) in {root / 'mnist'}, "
        f"{root / 'MNIST' / 'raw'} or {root}. Point at the folder holding mnist/ with "
        "FHEPRUNE_DATA or --data-dir.",
        expected,
    )


def _load_file(
    path: Path, magic: int, dims: tuple[int | None, ...], verify: bool | None
) -> NDArray[np.uint8]:
    raw = path.read_bytes()  # the largest official file is 47 MB uncompressed
    check_file(path, MNIST_FILES.get(path.name), verify, data=raw)
    return _parse_idx(path, raw, magic, dims)


def load_mnist(
    data_dir: StrPath | None = None, split: Split = "train", verify: bool | None = None
) -> Dataset:
    """Load one MNIST split as uint8 images ``[n, 28, 28]`` and int64 labels ``[n]``.

    ``verify`` follows :mod:`fheprune.data.integrity`: ``None`` hashes files that have the
    official name and size, ``True`` insists on official files, ``False`` skips hashing.
    """
    if split not in _STEMS:
        raise InputError(f"MNIST split must be 'train' or 'test', got {split!r}")
    stems = _STEMS[split]
    root = resolve_data_dir(data_dir, expected=[f"mnist/{s}.gz" for s in stems])
    images_path, labels_path = _locate(root, split)

    images = _load_file(images_path, IMAGES_MAGIC, (None, _ROWS, _COLS), verify)
    labels_u8 = _load_file(labels_path, LABELS_MAGIC, (None,), verify)
    if len(images) != len(labels_u8):
        raise CorruptDatasetError(
            labels_path,
            f"holds {len(labels_u8)} labels but {images_path.name} holds {len(images)} images",
        )
    if labels_u8.max() >= _CLASSES:
        bad = int(np.argmax(labels_u8 >= _CLASSES))
        raise CorruptDatasetError(
            labels_path,
            f"label {int(labels_u8[bad])} at index {bad} is outside 0..{_CLASSES - 1}",
        )
    log.info("MNIST %s: %d images from %s", split, len(images), images_path.parent)
    return Dataset(
        images=images,
        labels=labels_u8.astype(np.int64),
        name="mnist",
        classes=_CLASSES,
        split=split,
    )
