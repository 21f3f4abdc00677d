"""Constraint-driven search for the best pruned, packed CKKS program (``fheprune optimize``).

:func:`optimize` takes a model (zoo name or file), constraints and an objective, screens a
search space of pruning methods x layouts with the calibrated cost model as Ray Tune trials,
measures the most promising candidates encrypted, and returns the Pareto fronts and the best
program that meets every constraint (or what cannot be met, and by how much).

The search itself (torch, the engine, Ray) is imported on first use, so that the command line
can describe ``fheprune optimize`` without loading any of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .constraints import OBJECTIVES, Constraints, Objective, Violation
from .pareto import pareto_front
from .space import HEPEX_SCHEMES, ROTATION_METHODS, Candidate, fc_space, map_space

__all__ = [
    "HEPEX_SCHEMES",
    "OBJECTIVES",
    "ROTATION_METHODS",
    "Candidate",
    "Constraints",
    "Objective",
    "OptimizeConfig",
    "Violation",
    "fc_space",
    "map_space",
    "optimize",
    "pareto_front",
]

if TYPE_CHECKING:
    from .search import OptimizeConfig, optimize

_LAZY = {"OptimizeConfig": "search", "optimize": "search"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
