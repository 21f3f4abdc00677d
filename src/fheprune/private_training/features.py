"""The public feature extractor of HETAL-style private transfer learning, and the data splits.

A small CNN is trained in the clear on a part of MNIST that no client owns (the first
``extractor_samples`` training images), frozen, and shipped with the SHA-256 digest of its
weights, so client and server can check they use the same extractor. A client maps its own
images to feature vectors; the server trains a softmax classifier on those vectors encrypted.

Every feature vector has L2 norm exactly 1 and ends in a constant bias lane ``1/sqrt(2)``::

    x = concat(f / (||f|| * sqrt(2)), 1/sqrt(2))

The encrypted kernels rely on both: ``|w . x| <= ||w||`` bounds every logit by the weight
norm (the polynomial approximations need a known input range), and the bias lane gives the
linear classifier its intercept without a separate encrypted bias.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from fheprune.data.dataset import Dataset, to_float
from fheprune.data.mnist import load_mnist
from fheprune.data.paths import StrPath
from fheprune.errors import InputError, InputTypeError, MissingFileError
from fheprune.training.checkpoint import CheckpointError, atomic_save, safe_load
from fheprune.training.trainer import TrainingDivergedError

__all__ = [
    "BIAS_LANE",
    "EXTRACTOR_FORMAT",
    "ExtractorMismatchError",
    "FeatureExtractor",
    "PrivateSplits",
    "build_or_load_extractor",
    "split_private_data",
]

log = logging.getLogger(__name__)

EXTRACTOR_FORMAT = "fheprune-feature-extractor-v1"

#: The constant last lane of every feature vector; with the scaled features it makes norm 1.
BIAS_LANE = 1.0 / math.sqrt(2.0)

_SIDE = 28  # MNIST images are 28 x 28 grey
_EXTRACT_BATCH = 1024


class ExtractorMismatchError(CheckpointError):
    """An extractor file is corrupt, not an extractor, or not the extractor that was expected
    (its weights do not hash to the stored or the expected digest)."""


# --------------------------------------------------------------------------------------------
# data splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateSplits:
    """Disjoint MNIST parts: ``extractor`` trains the public extractor in the clear; the
    client's ``train`` and ``validation`` images are the private data; ``test`` is MNIST's."""

    extractor: Dataset
    train: Dataset
    validation: Dataset
    test: Dataset


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}")


def _subset(data: Dataset, index: NDArray[np.int64] | slice, split: str) -> Dataset:
    return Dataset(
        images=np.ascontiguousarray(data.images[index]),
        labels=np.ascontiguousarray(data.labels[index]),
        name=data.name,
        classes=data.classes,
        split=split,
    )


def split_private_data(
    data_dir: StrPath | None,
    *,
    extractor_samples: int = 10_000,
    train_samples: int,
    validation_samples: int,
    test_samples: int | None = None,
    seed: int = 0,
) -> PrivateSplits:
    """Cut MNIST into the extractor's part and the client's private train/validation parts.

    The extractor gets the first ``extractor_samples`` training images (a fixed, public
    prefix); the rest are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``train_samples`` become the client's training set, the next ``validation_samples`` its
    validation set, so the three never share an image. ``test`` is the MNIST test split (its
    first ``test_samples`` images when given). Raises :class:`InputError` when a part asks
    for more images than there are.
    """
    _check_count("extractor_samples", extractor_samples, minimum=0)
    _check_count("train_samples", train_samples, minimum=1)
    _check_count("validation_samples", validation_samples, minimum=0)
    if test_samples is not None:
        _check_count("test_samples", test_samples, minimum=1)
    full = load_mnist(data_dir, "train")
    wanted = extractor_samples + train_samples + validation_samples
    if wanted > len(full):
        raise InputError(
            f"the private split asks for {wanted} MNIST training images (extractor "
            f"{extractor_samples} + train {train_samples} + validation {validation_samples}) "
            f"but the train split holds only {len(full)}"
        )
    test = load_mnist(data_dir, "test")
    if test_samples is not None:
        if test_samples > len(test):
            raise InputError(
                f"test_samples is {test_samples} but the MNIST test split holds only "
                f"{len(test)} images"
            )
        test = _subset(test, slice(0, test_samples), "test")
    order = np.random.default_rng(seed).permutation(len(full) - extractor_samples)
    rest = order.astype(np.int64) + extractor_samples
    splits = PrivateSplits(
        extractor=_subset(full, slice(0, extractor_samples), "extractor"),
        train=_subset(full, rest[:train_samples], "train"),
        validation=_subset(
            full, rest[train_samples : train_samples + validation_samples], "validation"
        ),
        test=test,
    )
    log.info(
        "private MNIST split: extractor %d, train %d, validation %d, test %d (seed %d)",
        len(splits.extractor),
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        seed,
    )
    return splits


# --------------------------------------------------------------------------------------------
# the extractor
# --------------------------------------------------------------------------------------------


def _backbone(features: int) -> nn.Sequential:
    """Two stride-2 convolutions and a linear map: 28x28 grey -> ``features`` numbers."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, features),
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the caller's setting.

    The network is tiny, so threads buy nothing: on a loaded machine two threads made a
    training step 30x slower than one. One thread also makes the float reductions, hence
    the digest, independent of the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _backbone_shapes(features: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of :func:`_backbone`, by state_dict key."""
    return {
        "0.weight": (8, 1, 5, 5),
        "0.bias": (8,),
        "2.weight": (16, 8, 5, 5),
        "2.bias": (16,),
        "5.weight": (features, 16 * 7 * 7),
        "5.bias": (features,),
    }


def _state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, shape, float32 little-endian values) of every tensor, in sorted key
    order; lengths are framed so no two different states hash the same byte stream."""
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to(device="cpu", dtype=torch.float32).contiguous()
        name = key.encode("utf-8")
        h.update(struct.pack("<Q", len(name)) + name)
        h.update(struct.pack(f"<Q{tensor.dim()}q", tensor.dim(), *tensor.shape))
        h.update(tensor.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def _check_images(images: object, what: str) -> NDArray[np.uint8]:
    if not isinstance(images, np.ndarray):
        raise InputTypeError(f"{what} must be a numpy uint8 array, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise InputError(
            f"{what} must be uint8 [n, {_SIDE}, {_SIDE}] grey images, got {images.dtype} with "
            f"shape {images.shape}"
        )
    return images


def _data_digest(data: Dataset) -> str:
    """SHA-256 of a dataset's images and labels: a cached extractor is reused only for the
    data it was trained on."""
    h = hashlib.sha256()
    h.update(struct.pack("<Q", len(data)))
    h.update(np.ascontiguousarray(data.images).tobytes())
    h.update(np.ascontiguousarray(data.labels).astype("<i8", copy=False).tobytes())
    return h.hexdigest()


class FeatureExtractor:
    """A frozen CNN backbone that maps 28x28 grey images to unit-norm feature vectors with a
    bias lane (see the module doc); identified by :attr:`digest`."""

    def __init__(
        self,
        backbone: nn.Sequential,
        features: int,
        *,
        training: Mapping[str, Any] | None = None,
    ) -> None:
        """Wrap a trained ``backbone`` (use :meth:`train` or :meth:`load` to make one); it is
        put in eval mode and frozen so nothing can move the published weights."""
        _check_count("features", features, minimum=1)
        self._features = int(features)
        self._backbone = backbone.cpu().eval()
        for parameter in self._backbone.parameters():
            parameter.requires_grad_(False)
        self._digest = _state_digest(self._backbone.state_dict())
        # Extraction runs in float64: float32 convolutions give results that move by ~1e-8
        # with the batch size (the kernels pick algorithms per shape), so one image's features
        # would depend on the images it was batched with. The weights stay the float32 ones.
        self._backbone64 = copy.deepcopy(self._backbone).double()
        self._training: dict[str, Any] = dict(training or {})

    # -- properties ---------------------------------------------------------------------------

    @property
    def features(self) -> int:
        """Number of backbone outputs; :meth:`extract` returns one more lane (the bias)."""
        return self._features

    @property
    def width(self) -> int:
        """Length of each extracted vector: ``features + 1``."""
        return self._features + 1

    @property
    def backbone(self) -> nn.Sequential:
        """The frozen torch backbone (eval mode, no gradients)."""
        return self._backbone

    @property
    def digest(self) -> str:
        """SHA-256 hex of the backbone's weights: the identity client and server compare."""
        return self._digest

    @property
    def training(self) -> dict[str, Any]:
        """How it was trained (seed, epochs, data digest, ...); empty when unknown."""
        return dict(self._training)

    def __repr__(self) -> str:
        return f"FeatureExtractor(features={self._features}, digest={self._digest[:12]}...)"

    # -- training -----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        data: Dataset,
        *,
        features: int = 15,
        epochs: int = 10,
        seed: int = 0,
        batch_size: int = 128,
        lr: float = 5e-3,
        progress: bool = True,
    ) -> FeatureExtractor:
        """Train backbone + a temporary linear head with Adam and cross-entropy in the clear,
        then discard the head and freeze the backbone.

        Deterministic for a seed (same torch build): it runs on one thread, and weights are
        initialised and batches shuffled from ``seed`` inside a forked torch RNG (the caller's
        global RNG state is left as it was). ``progress`` shows a tqdm bar when stderr is a
        terminal.
        """
        if not isinstance(data, Dataset):
            raise InputTypeError(f"data must be a Dataset, got {type(data).__name__}")
        images = _check_images(data.images, "the extractor's training images")
        _check_count("features", features, minimum=1)
        _check_count("epochs", epochs, minimum=1)
        _check_count("batch_size", batch_size, minimum=1)
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise InputError(f"lr must be a positive finite number, got {lr!r}")
        if len(data) == 0:
            raise InputError("the extractor's training set is empty")

        inputs = torch.from_numpy(to_float(images)).unsqueeze(1)
        targets = torch.from_numpy(data.labels)
        n = len(data)
        batches = math.ceil(n / batch_size)
        show = progress and sys.stderr.isatty()
        with torch.random.fork_rng(devices=[]), _one_thread():
            torch.manual_seed(seed)
            backbone = _backbone(features)
            head = nn.Linear(features, data.classes)
            model = nn.Sequential(backbone, head)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            shuffle = torch.Generator().manual_seed(seed)
            model.train()
            bar = tqdm(
                total=epochs * batches, desc="feature extractor", disable=not show, leave=False
            )
            try:
                for epoch in range(epochs):
                    order = torch.randperm(n, generator=shuffle)
                    loss_sum, correct = 0.0, 0
                    for start in range(0, n, batch_size):
                        index = order[start : start + batch_size]
                        x, y = inputs[index], targets[index]
                        optimizer.zero_grad(set_to_none=True)
                        logits = model(x)
                        loss = F.cross_entropy(logits, y)
                        if not torch.isfinite(loss):
                            raise TrainingDivergedError(
                                f"feature-extractor loss is {loss.item()} in epoch {epoch + 1}; "
                                "try a smaller lr"
                            )
                        torch.autograd.backward(loss)
                        optimizer.step()
                        loss_sum += float(loss.item()) * len(index)
                        correct += int((logits.argmax(1) == y).sum())
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4g}")
                    log.info(
                        "feature extractor epoch %d/%d: loss %.4g, train accuracy %.4f",
                        epoch + 1,
                        epochs,
                        loss_sum / n,
                        correct / n,
                    )
            finally:
                bar.close()
        training = {
            "seed": int(seed),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "samples": n,
            "data_sha256": _data_digest(data),
        }
        extractor = cls(backbone, features, training=training)
        log.info("feature extractor trained on %d images: digest %s", n, extractor.digest)
        return extractor

    # -- extraction ---------------------------------------------------------------------------

    def extract(self, images: NDArray[np.uint8]) -> NDArray[np.float64]:
        """Feature vectors ``[n, features + 1]`` of uint8 images ``[n, 28, 28]``; each row has
        L2 norm 1 (to float rounding) and ends in the bias lane ``1/sqrt(2)``.

        A backbone output of exactly zero (the norm cannot be divided by) maps to the unit
        vector ``e_0 / sqrt(2)`` plus the bias lane, so the norm is still 1.
        """
        images = _check_images(images, "images")
        n = len(images)
        out = np.empty((n, self.width), dtype=np.float64)
        with torch.no_grad(), _one_thread():
            for start in range(0, n, _EXTRACT_BATCH):
                chunk = torch.from_numpy(to_float(images[start : start + _EXTRACT_BATCH]))
                f = self._backbone64(chunk.double().unsqueeze(1)).numpy()
                out[start : start + len(f), : self._features] = f
        raw = out[:, : self._features]
        if not np.isfinite(raw).all():
            raise InputError("the extractor produced non-finite features; its weights are bad")
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        zero = norms[:, 0] == 0.0
        np.divide(raw, norms * math.sqrt(2.0), out=raw, where=~zero[:, None])
        raw[zero] = 0.0
        raw[zero, 0] = BIAS_LANE
        out[:, self._features] = BIAS_LANE
        return out

    # -- files --------------------------------------------------------------------------------

    def save(self, path: StrPath) -> Path:
        """Write the extractor atomically (temp file + rename), with its digest."""
        payload = {
            "format": EXTRACTOR_FORMAT,
            "features": self._features,
            "digest": self._digest,
            "training": dict(self._training),
            "state_dict": {
                k: v.detach().cpu().clone() for k, v in self._backbone.state_dict().items()
            },
        }
        target = atomic_save(payload, path)
        log.info("saved feature extractor %s to %s", self._digest[:12], target)
        return target

    @classmethod
    def load(cls, path: StrPath, expected_digest: str | None = None) -> FeatureExtractor:
        """Read a file written by :meth:`save`, checking its format, shapes and digest.

        The digest is recomputed from the weights and must equal the stored one and, when
        given, ``expected_digest`` (the value published with the extractor); otherwise
        :class:`ExtractorMismatchError` says what was expected and what was found.
        """
        if expected_digest is not None and not isinstance(expected_digest, str):
            raise InputTypeError(
                f"expected_digest must be a hex string, got {type(expected_digest).__name__}"
            )
        try:
            payload = safe_load(path)
        except FileNotFoundError as exc:
            raise MissingFileError(f"feature-extractor file {path} does not exist") from exc
        except CheckpointError as exc:
            raise ExtractorMismatchError(
                f"{path} is not a readable feature-extractor file: {exc}"
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != EXTRACTOR_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ExtractorMismatchError(
                f"{path} is not a feature extractor: expected format {EXTRACTOR_FORMAT!r}, "
                f"found {found!r}"
            )
        features = payload.get("features")
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ExtractorMismatchError(
                f"{path}: expected a positive int 'features', found {features!r}"
            )
        state = payload.get("state_dict")
        want = _backbone_shapes(features)  # not built yet: a hostile 'features' costs nothing
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ExtractorMismatchError(f"{path}: 'state_dict' is not a dict of tensors")
        got = {str(k): tuple(v.shape) for k, v in state.items()}
        if got != want:
            raise ExtractorMismatchError(
                f"{path}: weights do not fit a {features}-feature extractor: expected "
                f"{want}, found {got}"
            )
        if not all(
            v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in state.values()
        ):
            raise ExtractorMismatchError(f"{path}: expected finite float32 weights")
        found_digest = _state_digest(state)
        stored = payload.get("digest")
        if stored != found_digest:
            raise ExtractorMismatchError(
                f"{path}: the weights hash to {found_digest} but the file records "
                f"{stored!r}; the file was altered or corrupted"
            )
        if expected_digest is not None and expected_digest.lower() != found_digest:
            raise ExtractorMismatchError(
                f"{path} holds extractor {found_digest}, expected {expected_digest}"
            )
        backbone = _backbone(features)
        backbone.load_state_dict(state)
        training = payload.get("training")
        return cls(backbone, features, training=training if isinstance(training, dict) else None)


def build_or_load_extractor(
    splits_or_data: Dataset | PrivateSplits,
    cache_path: StrPath | None,
    *,
    features: int = 15,
    epochs: int = 10,
    seed: int = 0,
    lr: float = 5e-3,
    progress: bool = True,
) -> FeatureExtractor:
    """The extractor for this data and settings: read from ``cache_path`` when a valid file
    for the same data, features, epochs, learning rate and seed is there, otherwise trained
    and saved there.

    A :class:`PrivateSplits` trains on its ``extractor`` part. An unreadable, tampered or
    stale cache is logged and replaced, never trusted; ``cache_path=None`` always trains.
    """
    data = splits_or_data.extractor if isinstance(splits_or_data, PrivateSplits) else splits_or_data
    if not isinstance(data, Dataset):
        raise InputTypeError(
            f"splits_or_data must be a Dataset or PrivateSplits, got {type(data).__name__}"
        )
    if cache_path is not None and os.path.exists(cache_path):
        try:
            cached = FeatureExtractor.load(cache_path)
        except (ExtractorMismatchError, MissingFileError) as exc:
            log.warning("ignoring the cached feature extractor: %s", exc)
        else:
            wanted = {"seed": seed, "epochs": epochs, "lr": lr, "data_sha256": _data_digest(data)}
            seen = {k: cached.training.get(k) for k in wanted}
            if cached.features == features and seen == wanted:
                log.info("feature extractor %s from %s", cached.digest[:12], cache_path)
                return cached
            log.warning(
                "cached feature extractor %s was made with features=%d, %s; wanted "
                "features=%d, %s: retraining",
                cache_path,
                cached.features,
                seen,
                features,
                wanted,
            )
    extractor = FeatureExtractor.train(
        data, features=features, epochs=epochs, seed=seed, lr=lr, progress=progress
    )
    if cache_path is not None:
        extractor.save(cache_path)
    return extractor
