"""Tests for fheprune.data: real MNIST when present, hand-made files in every format otherwise.

Nothing here touches the network; downloads are exercised with file:// URLs and fake openers.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import re
import shutil
import struct
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from fheprune.data import (
    DATA_ENV_VAR,
    ChecksumMismatchError,
    CorruptDatasetError,
    DataError,
    Dataset,
    DatasetNotFoundError,
    DownloadError,
    download,
    load_cifar10,
    load_dataset,
    load_mnist,
    load_svhn,
    resolve_data_dir,
    to_float,
)
from fheprune.data import cifar as cifar_module
from fheprune.data import paths as paths_module
from fheprune.data.integrity import KnownFile, digest_bytes, digest_file
from fheprune.data.mnist import MNIST_FILES

STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# --------------------------------------------------------------------------------------------
# helpers: IDX files
# --------------------------------------------------------------------------------------------


def idx_images(images: NDArray[np.uint8], *, magic: int = 2051, count: int | None = None) -> bytes:
    n, rows, cols = images.shape
    header = struct.pack(">IIII", magic, n if count is None else count, rows, cols)
    return header + images.tobytes()


def idx_labels(labels: NDArray[np.uint8], *, magic: int = 2049, count: int | None = None) -> bytes:
    header = struct.pack(">II", magic, len(labels) if count is None else count)
    return header + labels.astype(np.uint8).tobytes()


def random_mnist(n: int, seed: int = 0) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_mnist(
    folder: Path,
    split: str,
    images_blob: bytes,
    labels_blob: bytes,
    *,
    compress: bool = True,
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for stem, blob in zip(STEMS[split], (images_blob, labels_blob), strict=True):
        path = folder / (stem + ".gz" if compress else stem)
        path.write_bytes(gzip.compress(blob) if compress else blob)
        out.append(path)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------
# real MNIST (skipped only when the shared data folder is absent)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist_dir() -> Path:
    try:
        root = resolve_data_dir(None)
    except DatasetNotFoundError as exc:
        pytest.skip(f"real MNIST unavailable: no data directory ({exc})")
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST unavailable: {root / 'mnist'} does not hold the official files")
    return root


@pytest.fixture(scope="module")
def real_mnist(real_mnist_dir: Path) -> dict[str, Dataset]:
    # verify=True: strict mode only passes when every file has the official SHA-256.
    return {s: load_mnist(real_mnist_dir, split=s, verify=True) for s in ("train", "test")}


def test_real_mnist_shapes(real_mnist: dict[str, Dataset]) -> None:
    for split, n in (("train", 60_000), ("test", 10_000)):
        ds = real_mnist[split]
        assert ds.images.shape == (n, 28, 28)
        assert ds.images.dtype == np.uint8
        assert ds.labels.shape == (n,)
        assert ds.labels.dtype == np.int64
        assert (ds.name, ds.classes, ds.split, len(ds)) == ("mnist", 10, split, n)


def test_real_mnist_content_is_sane(real_mnist: dict[str, Dataset]) -> None:
    train, test = real_mnist["train"], real_mnist["test"]
    # Well-known facts about the official files.
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    hist = np.bincount(train.labels, minlength=10)
    assert hist.sum() == 60_000 and hist.min() == 5421 and hist.max() == 6742
    test_hist = np.bincount(test.labels, minlength=10)
    assert test_hist.min() == 892 and test_hist.max() == 1135
    assert train.images.min() == 0 and train.images.max() == 255
    assert 33.0 < float(train.images.mean()) < 33.6  # the classic 0.1307 * 255


def test_real_mnist_checksums_match_constants(real_mnist_dir: Path) -> None:
    for stems in STEMS.values():
        for stem in stems:
            path = real_mnist_dir / "mnist" / f"{stem}.gz"
            known = MNIST_FILES[path.name]
            assert path.stat().st_size == known.size
            assert digest_file(path) == known.digest


def test_real_mnist_found_by_search(real_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the env var the repo-sibling search must still find shared/data.
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    if real_mnist_dir.resolve() != (Path(paths_module.__file__).parents[4] / "shared" / "data"):
        pytest.skip("data directory came from FHEPRUNE_DATA, not from the repo-sibling layout")
    assert resolve_data_dir(None).resolve() == real_mnist_dir.resolve()


def test_corrupted_official_file_is_rejected(real_mnist_dir: Path, tmp_path: Path) -> None:
    images = real_mnist_dir / "mnist" / "t10k-images-idx3-ubyte.gz"
    labels = real_mnist_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    shutil.copyfile(images, tmp_path / images.name)
    blob = bytearray(labels.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit, same size
    (tmp_path / labels.name).write_bytes(bytes(blob))
    with pytest.raises(ChecksumMismatchError) as info:
        load_mnist(tmp_path, split="test")  # default verify=None: official size => hashed
    assert info.value.path == tmp_path / labels.name
    assert info.value.expected == MNIST_FILES[labels.name].digest


# --------------------------------------------------------------------------------------------
# hand-made MNIST folders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("layout", ["mnist", ".", "MNIST/raw"])
def test_small_idx_folder_loads(tmp_path: Path, compress: bool, layout: str) -> None:
    images, labels = random_mnist(7)
    write_mnist(
        tmp_path / layout, "train", idx_images(images), idx_labels(labels), compress=compress
    )
    ds = load_mnist(tmp_path, split="train")
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels.astype(np.int64))
    assert ds.labels.dtype == np.int64 and ds.split == "train"


def test_small_folder_fails_strict_verification(tmp_path: Path) -> None:
    images, labels = random_mnist(3)
    write_mnist(tmp_path / "mnist", "test", idx_images(images), idx_labels(labels))
    assert len(load_mnist(tmp_path, split="test", verify=False)) == 3
    with pytest.raises(ChecksumMismatchError, match="size"):
        load_mnist(tmp_path, split="test", verify=True)


def test_official_size_file_with_other_content_is_rejected(tmp_path: Path) -> None:
    # A structurally valid raw label file of exactly the official t10k size (10,008 bytes).
    images, _ = random_mnist(10_000, seed=1)
    labels = np.zeros(10_000, dtype=np.uint8)
    _, labels_path = write_mnist(
        tmp_path, "test", idx_images(images), idx_labels(labels), compress=False
    )
    assert labels_path.stat().st_size == MNIST_FILES[labels_path.name].size
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        load_mnist(tmp_path, split="test")
    assert len(load_mnist(tmp_path, split="test", verify=False)) == 10_000


def test_official_size_garbage_gz_is_a_checksum_error(tmp_path: Path) -> None:
    images, labels = random_mnist(2)
    write_mnist(tmp_path, "test", idx_images(images), idx_labels(labels))
    garbage = np.random.default_rng(0).bytes(MNIST_FILES["t10k-labels-idx1-ubyte.gz"].size)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(garbage)
    with pytest.raises(ChecksumMismatchError):
        load_mnist(tmp_path, split="test")
    # Without hashing the format check still rejects it, with a less specific error.
    with pytest.raises(CorruptDatasetError, match="decompress"):
        load_mnist(tmp_path, split="test", verify=False)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_truncated_images_file(tmp_path: Path, compress: bool) -> None:
    images, labels = random_mnist(4)
    write_mnist(tmp_path, "train", idx_images(images)[:-1], idx_labels(labels), compress=compress)
    with pytest.raises(CorruptDatasetError, match="truncated") as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert str(4 * 28 * 28) in message  # the exact payload size the header demands


def test_oversized_labels_file(tmp_path: Path) -> None:
    images, labels = random_mnist(4)
    write_mnist(tmp_path, "train", idx_images(images), idx_labels(labels) + b"\x00")
    with pytest.raises(CorruptDatasetError, match="longer than its header") as info:
        load_mnist(tmp_path)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    images, labels = random_mnist(4)
    images_path, _ = write_mnist(tmp_path, "train", idx_images(images), idx_labels(labels))
    images_path.write_bytes(images_path.read_bytes()[:-20])
    with pytest.raises(CorruptDatasetError, match="decompress"):
        load_mnist(tmp_path)


def test_header_shorter_than_required(tmp_path: Path) -> None:
    _, labels = random_mnist(1)
    write_mnist(tmp_path, "train", b"\x00\x00\x08\x03\x00", idx_labels(labels))
    with pytest.raises(CorruptDatasetError, match="header"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("which", ["images", "labels"])
def test_wrong_magic(tmp_path: Path, which: str) -> None:
    images, labels = random_mnist(3)
    img = idx_images(images, magic=2049 if which == "images" else 2051)
    lab = idx_labels(labels, magic=2051 if which == "labels" else 2049)
    write_mnist(tmp_path, "train", img, lab)
    expected = "2051" if which == "images" else "2049"
    with pytest.raises(CorruptDatasetError, match=f"magic.*expected {expected}"):
        load_mnist(tmp_path)


def test_compressed_file_without_gz_suffix(tmp_path: Path) -> None:
    images, labels = random_mnist(2)
    images_path, _ = write_mnist(
        tmp_path, "train", idx_images(images), idx_labels(labels), compress=False
    )
    images_path.write_bytes(gzip.compress(idx_images(images)))
    with pytest.raises(CorruptDatasetError, match=r"name it \.gz"):
        load_mnist(tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    small = np.zeros((2, 14, 14), dtype=np.uint8)
    write_mnist(tmp_path, "train", idx_images(small), idx_labels(np.zeros(2, np.uint8)))
    with pytest.raises(CorruptDatasetError, match="dimension 1 is 14, expected 28"):
        load_mnist(tmp_path)


def test_zero_images_rejected(tmp_path: Path) -> None:
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    write_mnist(tmp_path, "train", idx_images(empty), idx_labels(np.zeros(0, np.uint8)))
    with pytest.raises(CorruptDatasetError, match="dimension 0 is 0"):
        load_mnist(tmp_path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    images, labels = random_mnist(5)
    write_mnist(tmp_path, "train", idx_images(images), idx_labels(labels[:4]))
    with pytest.raises(CorruptDatasetError, match=r"4 labels .* 5 images"):
        load_mnist(tmp_path)


def test_header_count_disagrees_with_payload(tmp_path: Path) -> None:
    images, labels = random_mnist(5)
    write_mnist(tmp_path, "train", idx_images(images, count=6), idx_labels(labels))
    with pytest.raises(CorruptDatasetError, match="truncated"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    images, labels = random_mnist(5)
    labels[3] = 10
    write_mnist(tmp_path, "train", idx_images(images), idx_labels(labels))
    with pytest.raises(CorruptDatasetError, match="label 10 at index 3"):
        load_mnist(tmp_path)


def test_gz_preferred_and_partial_folder_skipped(tmp_path: Path) -> None:
    good_images, good_labels = random_mnist(3, seed=1)
    # mnist/ holds only the image file, so the complete pair directly in the root wins.
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"junk")
    write_mnist(tmp_path, "train", idx_images(good_images), idx_labels(good_labels))
    np.testing.assert_array_equal(load_mnist(tmp_path).images, good_images)


def test_bad_split_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="validation")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 6),
    compress=st.booleans(),
    cut=st.integers(1, 10_000),
    seed=st.integers(0, 2**16),
)
def test_any_truncation_is_a_corrupt_dataset_error(
    n: int, compress: bool, cut: int, seed: int
) -> None:
    images, labels = random_mnist(n, seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images_path, _ = write_mnist(
            root, "train", idx_images(images), idx_labels(labels), compress=compress
        )
        np.testing.assert_array_equal(load_mnist(root).images, images)  # intact file loads
        blob = images_path.read_bytes()
        images_path.write_bytes(blob[: max(0, len(blob) - cut)])
        with pytest.raises(CorruptDatasetError):
            load_mnist(root)


# --------------------------------------------------------------------------------------------
# data directory resolution
# --------------------------------------------------------------------------------------------


def test_missing_dir_names_expected_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(missing)
    message = str(info.value)
    assert str(missing / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert str(missing / "mnist" / "train-labels-idx1-ubyte.gz") in message
    assert DATA_ENV_VAR in message and "--data-dir" in message
    assert isinstance(info.value, DataError) and isinstance(info.value, FileNotFoundError)


def test_empty_dir_names_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path, split="test")
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message
    assert tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz" in info.value.expected


def test_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = random_mnist(2)
    write_mnist(tmp_path / "mnist", "test", idx_images(images), idx_labels(labels))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert len(load_mnist(split="test")) == 2
    # An explicit argument beats the environment.
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_dir(other) == other


def test_env_var_pointing_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "typo"))
    with pytest.raises(DatasetNotFoundError, match=rf"\${DATA_ENV_VAR}"):
        resolve_data_dir(None)


def test_search_finds_repo_sibling_shared_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    work = tmp_path / "repo" / "src" / "deep"
    work.mkdir(parents=True)
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.chdir(work)
    assert resolve_data_dir(None) == tmp_path / "shared" / "data"


def test_search_failure_explains_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(paths_module, "_search_roots", lambda: [tmp_path])
    # Only tmp_path itself: a shared/data beside the temp directory must not satisfy the search.
    monkeypatch.setattr(paths_module, "_ancestors", lambda start: iter([start]))
    with pytest.raises(DatasetNotFoundError) as info:
        resolve_data_dir(None, expected=["mnist/train-images-idx3-ubyte.gz"])
    message = str(info.value)
    assert DATA_ENV_VAR in message and "--data-dir" in message
    assert str(tmp_path / "shared" / "data") in message
    assert "mnist/train-images-idx3-ubyte.gz" in message


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


# typeshed does not describe the pure-Python pickler's internals (write, memoize, dispatch).
_PurePythonPickler: Any = pickle._Pickler


class Py2StylePickler(_PurePythonPickler):  # type: ignore[misc]
    """Writes what Python 2's cPickle wrote for the original batches.

    str and bytes become BINSTRING opcodes (read back as bytes with encoding="bytes") and
    numpy globals use the numpy 1.x module name ``numpy.core.multiarray``.
    """

    dispatch = _PurePythonPickler.dispatch.copy()

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def cifar_batch(n: int, seed: int) -> tuple[NDArray[np.uint8], list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    return data, labels


def pickle_batch(
    data: NDArray[np.uint8], labels: list[int], *, py2: bool = False, name: str = "batch"
) -> bytes:
    batch = {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    if not py2:
        return pickle.dumps(batch, protocol=2)
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(batch)
    return buf.getvalue()


BatchSet = dict[str, tuple[NDArray[np.uint8], list[int]]]


def cifar_batches(n: int = 4) -> BatchSet:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: cifar_batch(n, seed) for seed, name in enumerate(names)}


def write_cifar_folder(root: Path, batches: BatchSet, *, py2: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        (folder / name).write_bytes(pickle_batch(data, labels, py2=py2, name=name))
    return folder


def write_cifar_archive(path: Path, members: dict[str, bytes], prefix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{prefix}cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def expected_cifar(batches: BatchSet, names: list[str]) -> tuple[NDArray[np.uint8], Any]:
    images = []
    labels: list[int] = []
    for name in names:
        data, lab = batches[name]
        # Build the expected image explicitly from the documented row layout.
        red = data[:, :1024].reshape(-1, 32, 32)
        green = data[:, 1024:2048].reshape(-1, 32, 32)
        blue = data[:, 2048:].reshape(-1, 32, 32)
        images.append(np.stack([red, green, blue], axis=-1))
        labels += lab
    return np.concatenate(images), np.array(labels, dtype=np.int64)


TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.mark.parametrize("py2", [False, True], ids=["py3-protocol2", "py2-cpickle-style"])
def test_cifar_folder_loads(tmp_path: Path, py2: bool) -> None:
    batches = cifar_batches()
    write_cifar_folder(tmp_path, batches, py2=py2)
    train = load_cifar10(tmp_path, split="train")
    test = load_cifar10(tmp_path, split="test")
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    assert train.images.flags.c_contiguous and train.images.dtype == np.uint8
    for ds, names in ((train, TRAIN), (test, ["test_batch"])):
        images, labels = expected_cifar(batches, names)
        np.testing.assert_array_equal(ds.images, images)
        np.testing.assert_array_equal(ds.labels, labels)
        assert (ds.name, ds.classes) == ("cifar10", 10)


def test_cifar_channel_order(tmp_path: Path) -> None:
    # One image whose red plane is 10, green 20, blue 30, with a marker pixel at (row 1, col 2).
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)])
    row[1 * 32 + 2] = 200  # red, row 1, column 2
    row[1024 + 31 * 32] = 201  # green, row 31, column 0
    data = row.astype(np.uint8)[None, :]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle_batch(data, [3]))
    img = load_cifar10(tmp_path, split="test").images[0]
    assert img.shape == (32, 32, 3)
    assert img[0, 0].tolist() == [10, 20, 30]
    assert img[1, 2].tolist() == [200, 20, 30]
    assert img[31, 0].tolist() == [10, 201, 30]


@pytest.mark.parametrize("prefix", ["", "./"])
def test_cifar_archive_loads_without_extracting(tmp_path: Path, prefix: str) -> None:
    batches = cifar_batches(3)
    members = {name: pickle_batch(d, lab) for name, (d, lab) in batches.items()}
    members["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    write_cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", members, prefix)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    train = load_cifar10(tmp_path, split="train")
    test = load_cifar10(tmp_path, split="test")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written to disk
    np.testing.assert_array_equal(train.images, expected_cifar(batches, TRAIN)[0])
    np.testing.assert_array_equal(test.labels, expected_cifar(batches, ["test_batch"])[1])


def test_cifar_archive_missing_member(tmp_path: Path) -> None:
    data, labels = cifar_batch(2, 0)
    write_cifar_archive(
        tmp_path / "cifar-10-python.tar.gz", {"data_batch_1": pickle_batch(data, labels)}
    )
    with pytest.raises(CorruptDatasetError, match="data_batch_2"):
        load_cifar10(tmp_path, split="train")


def test_cifar_archive_symlink_member_refused(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(CorruptDatasetError, match="regular file"):
        load_cifar10(tmp_path, split="test")


def test_cifar_archive_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, labels = cifar_batch(2, 0)
    path = write_cifar_archive(
        tmp_path / "cifar-10-python.tar.gz", {"test_batch": pickle_batch(data, labels)}
    )
    # The real constant describes a 170 MB file; pretend this archive has the official size.
    fake = KnownFile(path.name, path.stat().st_size, "md5", "0" * 32)
    monkeypatch.setattr(cifar_module, "CIFAR10_ARCHIVE", fake)
    with pytest.raises(ChecksumMismatchError, match="md5"):
        load_cifar10(tmp_path, split="test")
    assert len(load_cifar10(tmp_path, split="test", verify=False)) == 2
    right = KnownFile(path.name, path.stat().st_size, "md5", digest_file(path, "md5"))
    monkeypatch.setattr(cifar_module, "CIFAR10_ARCHIVE", right)
    assert len(load_cifar10(tmp_path, split="test", verify=True)) == 2


def test_cifar_real_archive_constant() -> None:
    official = KnownFile(
        "cifar-10-python.tar.gz", 170_498_071, "md5", "c58f30108f718f92721af3b95e74349a"
    )
    archive = cifar_module.CIFAR10_ARCHIVE
    assert archive == official


def test_cifar_strict_verification_needs_archive(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path, cifar_batches(1))
    with pytest.raises(DataError, match="no reference checksum"):
        load_cifar10(tmp_path, split="test", verify=True)


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return eval, ("1 + 1",)


class _OtherCodec:
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return codecs.encode, ("payload", "rot13")  # pickled as _codecs.encode


# REDUCE on the numpy.ndarray global itself (would allocate an arbitrary array).
_NDARRAY_CALL = b"\x80\x02cnumpy\nndarray\nK\x10\x85R."


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda m: pickle.dumps({b"data": _SystemCall(m)}, protocol=2), r"(os|posix)\.system"),
        (lambda m: pickle.dumps(_SystemCall(m), protocol=5), r"(os|posix)\.system"),
        (lambda m: pickle.dumps({b"labels": _Eval()}, protocol=0), r"builtin__\.eval"),
        (
            lambda m: pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=2),
            "dtype object is not a plain numeric type",
        ),
        (lambda m: _NDARRAY_CALL, "not callable"),
        (lambda m: pickle.dumps(_OtherCodec(), protocol=2), "only allowed for latin-1"),
    ],
    ids=["os.system", "os.system-proto5", "eval", "object-array", "ndarray-call", "codecs"],
)
def test_malicious_pickle_refused(
    tmp_path: Path, payload: Callable[[Path], bytes], reason: str
) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload(marker))
    with pytest.raises(CorruptDatasetError, match="not a safe CIFAR-10 batch") as info:
        load_cifar10(tmp_path, split="test")
    assert re.search(reason, str(info.value)), str(info.value)
    assert not marker.exists()


def test_malicious_pickle_in_archive_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _SystemCall(marker)}, protocol=2)
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", {"test_batch": evil})
    with pytest.raises(CorruptDatasetError, match=r"refused global (os|posix)\.system"):
        load_cifar10(tmp_path, split="test")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "labels"),
        ([1, 2, 3], "dict"),
    ],
)
def test_cifar_bad_batches(tmp_path: Path, batch: object, match: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CorruptDatasetError, match=match):
        load_cifar10(tmp_path, split="test")


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "cifar-10-python.tar.gz" in message


# --------------------------------------------------------------------------------------------
# SVHN
# --------------------------------------------------------------------------------------------


def write_svhn(path: Path, x: NDArray[Any], y: NDArray[Any]) -> None:
    savemat = pytest.importorskip("scipy.io", reason="scipy is needed to write .mat files").savemat
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": x, "y": y})


@pytest.mark.parametrize("layout", ["svhn", "."])
def test_svhn_loads_and_maps_ten_to_zero(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    n = 12
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n, dtype=np.uint8) % 10 + 1).reshape(n, 1)  # 1..10, as in the real files
    write_svhn(tmp_path / layout / "test_32x32.mat", x, y)
    ds = load_svhn(tmp_path, split="test")
    assert ds.images.shape == (n, 32, 32, 3) and ds.images.dtype == np.uint8
    for i in range(n):
        np.testing.assert_array_equal(ds.images[i], x[:, :, :, i])
    expected = y.reshape(-1).astype(np.int64)
    expected[expected == 10] = 0
    np.testing.assert_array_equal(ds.labels, expected)
    assert 0 in ds.labels and ds.labels.max() == 9
    assert (ds.name, ds.split, ds.classes) == ("svhn", "test", 10)


def test_svhn_double_labels_accepted(tmp_path: Path) -> None:
    x = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    write_svhn(tmp_path / "svhn" / "train_32x32.mat", x, np.array([[10.0], [3.0]]))
    assert load_svhn(tmp_path).labels.tolist() == [0, 3]


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[1], [11]], np.uint8), "1..10"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[1], [2], [3]], np.uint8), "y must"),
        (np.zeros((28, 28, 3, 2), np.uint8), np.array([[1], [2]], np.uint8), "X must"),
        (np.zeros((32, 32, 3, 2), np.float64), np.array([[1], [2]], np.uint8), "X must"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[1.5], [2]]), "non-integer"),
    ],
)
def test_svhn_bad_content(tmp_path: Path, x: NDArray[Any], y: NDArray[Any], match: str) -> None:
    write_svhn(tmp_path / "svhn" / "train_32x32.mat", x, y)
    with pytest.raises(CorruptDatasetError, match=match):
        load_svhn(tmp_path)


def test_svhn_garbage_file(tmp_path: Path) -> None:
    pytest.importorskip("scipy.io")
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(b"not a matlab file" * 20)
    with pytest.raises(CorruptDatasetError):
        load_svhn(tmp_path)


def test_svhn_without_scipy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import now fails
    with pytest.raises(DataError, match="pip install scipy"):
        load_svhn(tmp_path)


def test_svhn_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"svhn/train_32x32\.mat"):
        load_svhn(tmp_path)


# --------------------------------------------------------------------------------------------
# registry, Dataset, to_float
# --------------------------------------------------------------------------------------------


def test_registry(tmp_path: Path) -> None:
    images, labels = random_mnist(3)
    write_mnist(tmp_path / "mnist", "test", idx_images(images), idx_labels(labels))
    write_cifar_folder(tmp_path, cifar_batches(2))
    assert load_dataset("mnist", tmp_path, split="test").name == "mnist"
    assert load_dataset("CIFAR10", tmp_path, split="test").images.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="cifar10, mnist, svhn"):
        load_dataset("imagenet", tmp_path)


def test_dataset_validates() -> None:
    images = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        Dataset(images=images, labels=np.zeros(1, np.int64), name="x", classes=10, split="t")
    with pytest.raises(ValueError, match="labels must lie"):
        Dataset(images=images, labels=np.array([0, 10]), name="x", classes=10, split="t")
    with pytest.raises(ValueError, match="uint8"):
        Dataset(images=images.astype(np.float32), labels=np.zeros(2, np.int64), name="x",
                classes=10, split="t")  # fmt: skip


def test_to_float_endpoints_and_type() -> None:
    out = to_float(np.array([[0, 128, 255]], dtype=np.uint8))
    assert out.dtype == np.float32
    assert out[0, 0] == 0.0 and out[0, 2] == 1.0
    with pytest.raises(TypeError):
        to_float(np.zeros(3, np.float32))


@given(st.binary(min_size=1, max_size=256))
def test_to_float_roundtrip(raw: bytes) -> None:
    pixels = np.frombuffer(raw, dtype=np.uint8)
    scaled = to_float(pixels)
    assert float(scaled.min()) >= 0.0 and float(scaled.max()) <= 1.0
    np.testing.assert_array_equal(np.rint(scaled * 255).astype(np.uint8), pixels)


# --------------------------------------------------------------------------------------------
# download helper (never touches the network)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def payload(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(np.random.default_rng(0).bytes(3 * (1 << 20) + 17))  # several chunks
    yield src, digest_file(src)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def test_download_file_url(tmp_path: Path, payload: tuple[Path, str]) -> None:
    src, sha = payload
    dest = tmp_path / "data"
    out = download("mnist/blob.bin", dest, urls=[src.as_uri()], sha256=sha.upper())
    assert out == dest / "mnist" / "blob.bin"
    assert out.read_bytes() == src.read_bytes()
    assert _leftovers(out.parent) == []


def test_download_checksum_mismatch_leaves_nothing(
    tmp_path: Path, payload: tuple[Path, str]
) -> None:
    src, _ = payload
    dest = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download("blob.bin", dest, urls=[src.as_uri()], sha256="0" * 64)
    assert isinstance(info.value.failures[0][1], ChecksumMismatchError)
    assert not (dest / "blob.bin").exists()
    assert _leftovers(dest) == []


def test_download_falls_back_to_next_mirror(tmp_path: Path, payload: tuple[Path, str]) -> None:
    src, sha = payload
    dest = tmp_path / "data"
    bad = (tmp_path / "absent.bin").as_uri()
    out = download("blob.bin", dest, urls=[bad, src.as_uri()], sha256=sha)
    assert out.read_bytes() == src.read_bytes()


def test_download_with_injected_opener(tmp_path: Path) -> None:
    blob = b"fheprune" * 1000
    sha = digest_bytes(blob)
    calls: list[str] = []

    def opener(url: str) -> io.BytesIO:
        calls.append(url)
        return io.BytesIO(blob)

    dest = tmp_path / "data"
    out = download("x.bin", dest, urls=["https://mirror.invalid/x.bin"], sha256=sha, opener=opener)
    assert out.read_bytes() == blob and calls == ["https://mirror.invalid/x.bin"]
    # A present, verified file is not fetched again.
    download("x.bin", dest, urls=["https://mirror.invalid/x.bin"], sha256=sha, opener=opener)
    assert len(calls) == 1


def test_download_keeps_old_file_when_new_one_is_bad(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "x.bin").write_bytes(b"old")
    with pytest.raises(DownloadError):
        download(
            "x.bin",
            dest,
            urls=["https://mirror.invalid/x"],
            sha256=digest_bytes(b"wanted"),
            opener=lambda url: io.BytesIO(b"tampered"),
        )
    assert (dest / "x.bin").read_bytes() == b"old"
    assert _leftovers(dest) == []
    download(
        "x.bin",
        dest,
        urls=["https://mirror.invalid/x"],
        sha256=digest_bytes(b"wanted"),
        opener=lambda url: io.BytesIO(b"wanted"),
    )
    assert (dest / "x.bin").read_bytes() == b"wanted"


def test_download_size_cap(tmp_path: Path) -> None:
    blob = b"a" * 5000
    with pytest.raises(DownloadError, match="allowed 100 bytes"):
        download(
            "x.bin",
            tmp_path,
            urls=["https://mirror.invalid/x"],
            sha256=digest_bytes(blob),
            opener=lambda url: io.BytesIO(blob),
            max_bytes=100,
        )
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.parametrize(
    ("name", "urls", "sha"),
    [
        ("../escape.bin", ["https://a/x"], "0" * 64),
        ("/abs.bin", ["https://a/x"], "0" * 64),
        ("x.bin", ["ftp://a/x"], "0" * 64),
        ("x.bin", [], "0" * 64),
        ("x.bin", ["https://a/x"], "abc"),
    ],
)
def test_download_rejects_bad_arguments(
    tmp_path: Path, name: str, urls: list[str], sha: str
) -> None:
    with pytest.raises(ValueError):
        download(name, tmp_path, urls=urls, sha256=sha, opener=lambda url: io.BytesIO(b""))


@pytest.mark.parametrize(
    "error",
    [
        DatasetNotFoundError("gone", [Path("/x/mnist/a.gz")]),
        CorruptDatasetError(Path("/x/a.gz"), "truncated"),
        ChecksumMismatchError("/x/a.gz", "sha256", "aa", "bb"),
        DownloadError("all mirrors failed", [("https://a/x", OSError("refused"))]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling(error: DataError) -> None:
    # Data-loader worker processes send exceptions back pickled.
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error) and str(clone) == str(error)
    assert vars(clone).keys() == vars(error).keys()
