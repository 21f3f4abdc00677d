"""fheprune: HE-aware pruning and a packed CKKS runtime for encrypted inference.

Subpackages import lazily, so pure-Python parts (datasets, pruning) work even where the
compiled engine is not built.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("fheprune")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["__version__", "ckks", "data"]


def __getattr__(name: str) -> Any:
    if name in ("ckks", "data"):
        return importlib.import_module(f"fheprune.{name}")
    raise AttributeError(f"module 'fheprune' has no attribute {name!r}")
