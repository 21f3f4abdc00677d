"""From :class:`fheprune.data.Dataset` arrays to torch DataLoaders for each model's task.

* classification: input = image as float in [0, 1], target = int64 label;
* compressor (reconstruction): input = target = the clean image;
* denoiser (reconstruction): input = clip(x + N(0, noise_std^2), 0, 1), target = clean x. The
  noise is drawn once, from a generator seeded by ``config.seed`` (and the split), so it is
  the same for every epoch and every run with that seed.

Images become channels-first ``[C, H, W]``; FC-only models (MLP, autoencoders) get them
flattened in that order (``C*H*W`` features, the same order ``nn.Flatten`` uses in a CNN).

Batches are fetched with one tensor index per batch (no per-sample Python work), and the
training order comes from :class:`EpochShuffleSampler`, a pure function of (seed, epoch), so a
resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler
from torch.utils.data import Dataset as TorchDataset

from fheprune.errors import InputError, InputTypeError

from ..data import Dataset, load_dataset
from ..models.zoo import MODEL_NAMES, Task, normalize_dataset
from .config import TrainConfig

__all__ = [
    "DataSpec",
    "EpochShuffleSampler",
    "Loaders",
    "TensorPairs",
    "data_spec",
    "load_loaders",
    "make_loaders",
    "make_tensors",
    "permute_loaders",
    "set_loader_epoch",
]

# Offsets that give each split its own noise stream from the one config seed.
_NOISE_STREAM = {"train": 1, "test": 2}


@dataclass(frozen=True)
class DataSpec:
    """How a model consumes data: its task, flattened inputs or not, noisy inputs or not."""

    task: Task
    flatten: bool
    noisy: bool


_SPECS: dict[str, DataSpec] = {
    "mlp": DataSpec("classification", flatten=True, noisy=False),
    "ae-compressor": DataSpec("reconstruction", flatten=True, noisy=False),
    "ae-denoiser": DataSpec("reconstruction", flatten=True, noisy=True),
    "cnn": DataSpec("classification", flatten=False, noisy=False),
    "lenet": DataSpec("classification", flatten=False, noisy=False),
    "hefnet-mnist": DataSpec("classification", flatten=False, noisy=False),
    "vgg5-mnist": DataSpec("classification", flatten=False, noisy=False),
}


def data_spec(model_name: str) -> DataSpec:
    """The :class:`DataSpec` of a zoo model name ("mlp", "ae-denoiser", ...)."""
    spec = _SPECS.get(model_name.lower())
    if spec is None:
        raise InputError(f"unknown model {model_name!r}; supported: {', '.join(MODEL_NAMES)}")
    return spec


class TensorPairs(TorchDataset[tuple[torch.Tensor, torch.Tensor]]):
    """(input, target) pairs held as tensors; indexable by one index or a batch of indices.

    uint8 tensors (pixels) are converted to float32 in [0, 1] when fetched, which keeps the
    stored data at one byte per pixel.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise InputError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    @staticmethod
    def _decode(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float32).div_(255.0) if t.dtype == torch.uint8 else t

    def __getitem__(self, index: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(index, dtype=torch.long)
        return self._decode(self.inputs[idx]), self._decode(self.targets[idx])


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.n, generator=gen).tolist()

    def __len__(self) -> int:
        return self.n


def set_loader_epoch(loader: DataLoader[object], epoch: int) -> None:
    """Tell a loader built here (or any with an epoch-aware sampler) which epoch starts."""
    for sampler in (loader.sampler, getattr(loader.sampler, "sampler", None)):
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


@dataclass(frozen=True)
class Loaders:
    """Train / validation / test loaders of one model on one dataset.

    ``val`` is None when ``val_fraction`` is 0; ``test`` is None when no test split was given.
    """

    train: DataLoader[tuple[torch.Tensor, torch.Tensor]]
    val: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None
    test: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None
    spec: DataSpec
    input_shape: tuple[int, ...]


def _images_chw(ds: Dataset, flatten: bool) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(ds.images))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    images = images.contiguous()
    return images.reshape(len(images), -1) if flatten else images


def _noisy(clean: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=gen, dtype=torch.float32)
    return (clean.to(torch.float32) / 255.0 + std * noise).clamp_(0.0, 1.0)


def make_tensors(
    ds: Dataset, spec: DataSpec, *, noise_std: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for ``spec``: uint8 pixels / int64 labels, float32 noisy inputs."""
    images = _images_chw(ds, spec.flatten)
    if spec.task == "classification":
        return images, torch.from_numpy(ds.labels.copy())
    if spec.noisy:
        if noise_std <= 0:
            raise InputError("a denoiser needs noise_std > 0 (its inputs must be noisy)")
        return _noisy(images, noise_std, seed), images
    return images, images


def _batches(
    data: TensorPairs, batch_size: int, sampler: Sampler[int]
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    # batch_size=None + a BatchSampler as sampler: the dataset gets whole index lists.
    return DataLoader(
        data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None
    )


def permute_loaders(
    loaders: Loaders, input_perm: np.ndarray | None, output_perm: np.ndarray | None
) -> Loaders:
    """The loaders a co-permuted model needs: what the client does in the clear.

    A co-permuted model satisfies ``permuted(x[:, input_perm]) == model(x)[:, output_perm]``
    (dimension 1 is the feature, or for unflattened images the channel). So inputs are gathered
    with ``input_perm``, reconstruction targets with ``output_perm``, and class labels are
    mapped to their new output positions (``argsort(output_perm)[label]``).
    """

    def index(perm: np.ndarray | None) -> torch.Tensor | None:
        return None if perm is None else torch.as_tensor(np.asarray(perm), dtype=torch.long)

    in_idx, out_idx = index(input_perm), index(output_perm)
    classify = loaders.spec.task == "classification"

    def convert(
        loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> DataLoader[tuple[torch.Tensor, torch.Tensor]] | None:
        if loader is None:
            return None
        data = loader.dataset
        if not isinstance(data, TensorPairs):
            raise InputTypeError("permute_loaders needs loaders built by make_loaders")
        inputs, targets = data.inputs, data.targets
        if in_idx is not None:
            inputs = inputs.index_select(1, in_idx)
        if out_idx is not None:
            # Class c is now output argsort(out_idx)[c]; pixels move like the outputs.
            targets = torch.argsort(out_idx)[targets] if classify else targets[:, out_idx]
        batch_sampler = loader.sampler
        assert isinstance(batch_sampler, BatchSampler)
        return DataLoader(TensorPairs(inputs, targets), sampler=batch_sampler, batch_size=None)

    train_loader = convert(loaders.train)
    assert train_loader is not None
    return Loaders(
        train=train_loader,
        val=convert(loaders.val),
        test=convert(loaders.test),
        spec=loaders.spec,
        input_shape=loaders.input_shape,
    )


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive integer or None, got {value!r}")


def make_loaders(
    train: Dataset,
    test: Dataset | None,
    spec: DataSpec | str,
    config: TrainConfig,
    *,
    limit: int | None = None,
    test_limit: int | None = None,
) -> Loaders:
    """Loaders from loaded datasets.

    ``limit`` keeps a random subset (seeded by ``config.seed``) of that many training-split
    samples before the validation split is cut from it; ``test_limit`` keeps the first
    ``test_limit`` test samples. Both are for quick runs. Denoiser noise is drawn for the
    kept samples only, so it depends on (seed, limit).
    """
    spec = data_spec(spec) if isinstance(spec, str) else spec
    _check_limit("limit", limit)
    _check_limit("test_limit", test_limit)
    order = np.random.default_rng(config.seed).permutation(len(train))
    if limit is not None:
        order = order[:limit]
    n_val = math.floor(len(order) * config.val_fraction)
    if len(order) - n_val < 1:
        raise InputError(f"no training samples left ({len(order)} total, {n_val} held out)")
    kept = np.sort(order)
    if len(kept) < len(train):
        # Convert (and draw noise for) only the samples a quick run keeps.
        train = Dataset(
            images=train.images[kept],
            labels=train.labels[kept],
            name=train.name,
            classes=train.classes,
            split=train.split,
        )
    inputs, targets = make_tensors(
        train, spec, noise_std=config.noise_std, seed=config.seed * 10 + _NOISE_STREAM["train"]
    )
    # Positions within `kept`; sorted, so both subsets stay in file order.
    val_idx = torch.from_numpy(np.searchsorted(kept, np.sort(order[:n_val])))
    train_idx = torch.from_numpy(np.searchsorted(kept, np.sort(order[n_val:])))

    train_data = TensorPairs(inputs[train_idx], targets[train_idx])
    train_loader = _batches(
        train_data, config.batch_size, EpochShuffleSampler(len(train_data), config.seed)
    )
    val_loader = None
    if n_val:
        val_data = TensorPairs(inputs[val_idx], targets[val_idx])
        val_loader = _batches(val_data, config.eval_batch_size, SequentialSampler(val_data))
    test_loader = None
    if test is not None:
        t_in, t_out = make_tensors(
            test, spec, noise_std=config.noise_std, seed=config.seed * 10 + _NOISE_STREAM["test"]
        )
        if test_limit is not None:
            t_in, t_out = t_in[:test_limit], t_out[:test_limit]
        test_data = TensorPairs(t_in, t_out)
        test_loader = _batches(test_data, config.eval_batch_size, SequentialSampler(test_data))
    return Loaders(
        train=train_loader,
        val=val_loader,
        test=test_loader,
        spec=spec,
        input_shape=tuple(int(d) for d in inputs.shape[1:]),
    )


def load_loaders(
    model_name: str,
    dataset: str,
    config: TrainConfig,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    with_test: bool = True,
) -> Loaders:
    """Read ``dataset`` from the data directory and build the loaders of ``model_name``."""
    ds = normalize_dataset(dataset)
    train = load_dataset(ds, data_dir, split="train")
    test = load_dataset(ds, data_dir, split="test") if with_test else None
    return make_loaders(
        train, test, data_spec(model_name), config, limit=limit, test_limit=test_limit
    )
