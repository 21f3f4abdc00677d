"""Reference implementations used to cross-check and benchmark the engine.

:mod:`fheprune.reference.seal` wraps Microsoft SEAL (through the ``tenseal`` wheel). It is not
imported here, so ``fheprune.reference`` itself never needs ``tenseal``; the names below load it
on first access and raise ImportError ("pip install tenseal") where it is missing.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SealCKKS", "SealParams", "seal", "tenseal_version"]

_SEAL_NAMES = frozenset({"SealCKKS", "SealParams", "tenseal_version"})


def __getattr__(name: str) -> Any:
    if name == "seal":
        return importlib.import_module("fheprune.reference.seal")
    if name in _SEAL_NAMES:
        return getattr(importlib.import_module("fheprune.reference.seal"), name)
    raise AttributeError(f"module 'fheprune.reference' has no attribute {name!r}")
