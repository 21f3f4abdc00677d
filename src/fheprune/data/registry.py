"""Name-based access to the loaders, for the CLI and experiment configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fheprune.errors import InputError

from .cifar import load_cifar10
from .dataset import Dataset
from .mnist import load_mnist
from .paths import StrPath
from .svhn import load_svhn

__all__ = ["DATASETS", "load_dataset"]

# Loaders take (data_dir, split, verify); Any because each narrows split to its own Literal.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "svhn": load_svhn,
}


def load_dataset(
    name: str, data_dir: StrPath | None = None, split: str = "train", verify: bool | None = None
) -> Dataset:
    """Load split ``split`` of dataset ``name`` (case-insensitive, e.g. "MNIST")."""
    loader: Callable[..., Any] | None = DATASETS.get(name.lower())
    if loader is None:
        raise InputError(f"unknown dataset {name!r}; supported: {', '.join(sorted(DATASETS))}")
    dataset: Dataset = loader(data_dir, split=split, verify=verify)
    return dataset
