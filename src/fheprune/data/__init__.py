"""Dataset loading: MNIST, CIFAR-10 and SVHN from their original files, as numpy arrays.

Loaders never touch the network and never need torch. The data directory is found by
:func:`resolve_data_dir` (argument, ``$FHEPRUNE_DATA`` or a ``shared/data`` folder nearby);
checksum rules are described in :mod:`fheprune.data.integrity`.
"""

from .cifar import load_cifar10
from .dataset import Dataset, to_float
from .download import download
from .errors import (
    ChecksumMismatchError,
    CorruptDatasetError,
    DataError,
    DatasetNotFoundError,
    DownloadError,
)
from .mnist import load_mnist
from .paths import DATA_ENV_VAR, resolve_data_dir
from .registry import DATASETS, load_dataset
from .svhn import load_svhn

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "ChecksumMismatchError",
    "CorruptDatasetError",
    "DataError",
    "Dataset",
    "DatasetNotFoundError",
    "DownloadError",
    "download",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
    "load_svhn",
    "resolve_data_dir",
    "to_float",
]
