"""The search space: candidate pruned programs, one :class:`Candidate` per trial.

Two families, by the layout the model compiles to:

* **tile layout** (fully connected models): an HE-PEx scheme (by default P2, P2T, P3E and
  P4E with its first-prune scope / criterion / target; see :data:`HEPEX_SCHEMES`) at one
  pruning fraction and one square tile shape. The tile shape is also the program's tile, so
  it changes both the units pruning can empty and the cost of every unit;
* **diagonal layout** (fully connected models): the unpruned model with its weights as
  generalized diagonals, one sample per ciphertext (a batch costs one run per sample, but a
  single sample needs no tile replication);
* **map layout** (convolutional models): a rotation-aware method (Hunter-style, SpENCNN
  sub-block, Artemis positional / diagonal) at a number of HE groups. With more than one
  group the model first becomes an HE-group convolution (warm-started from the dense
  weights), so "subblock" with groups > 1 is SpENCNN's full method. These methods search
  their own pruning fraction within the accuracy budget.

The dense model is always a candidate (``method = "dense"``), so a search whose every pruned
point misses the budget still returns a program.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fheprune.errors import InputError

__all__ = [
    "HEPEX_SCHEMES",
    "ROTATION_METHODS",
    "Candidate",
    "fc_space",
    "map_space",
]

Family = Literal["tile", "diagonal", "map"]

#: HE-PEx scheme configurations the optimizer knows (scheme, scope, criterion, target).
HEPEX_SCHEMES: tuple[tuple[str, str, str, str], ...] = (
    ("P2", "global", "l1", "weight"),
    ("P2T", "local", "l1", "weight"),  # Hunter adapted to tiles: T-avg reduction
    ("P3E", "global", "l1", "weight"),
    ("P4E", "global", "l1", "weight"),
    ("P4E", "global", "l1", "neuron"),
    ("P4E", "local", "l1", "neuron"),
)

#: Rotation-aware methods on the map layout.
ROTATION_METHODS: tuple[str, ...] = (
    "hunter",
    "subblock",
    "artemis-positional",
    "artemis-diagonal",
)


@dataclass(frozen=True)
class Candidate:
    """One point of the search space (JSON round-trips through :meth:`to_dict`)."""

    family: Family
    method: str  # "dense", an HE-PEx scheme, or a rotation-aware method
    scope: str = "global"
    criterion: str = "l1"
    target: str = "weight"
    tile: int | None = None  # square tile side (tile family)
    fraction: float | None = None  # pruning fraction (tile family; None for dense)
    groups: int = 1  # HE groups of the grouped convolutions (map family)

    def __post_init__(self) -> None:
        if self.family not in ("tile", "diagonal", "map"):
            raise InputError(
                f"unknown candidate family {self.family!r}; 'tile', 'diagonal' or 'map'"
            )
        if self.family == "diagonal" and (self.method != "dense" or self.tile is not None):
            raise InputError("diagonal-layout candidates are the unpruned model, with no tile")
        if self.family == "tile":
            if self.tile is None or self.tile < 1 or self.tile & (self.tile - 1):
                raise InputError(f"tile candidates need a power-of-two tile side, got {self.tile}")
            if self.method != "dense" and not (
                self.fraction is not None and 0.0 < self.fraction < 1.0
            ):
                raise InputError(f"{self.method} needs a fraction in (0, 1), got {self.fraction}")
        elif (
            self.family == "map" and self.method != "dense" and self.method not in ROTATION_METHODS
        ):
            raise InputError(
                f"unknown map-layout method {self.method!r}; supported: "
                f"{', '.join(ROTATION_METHODS)}"
            )
        if self.groups < 1:
            raise InputError(f"groups must be a positive integer, got {self.groups}")

    @property
    def label(self) -> str:
        if self.family == "tile":
            if self.method == "dense":
                return f"dense {self.tile}x{self.tile}"
            prune = f"{self.scope}/{self.criterion}/{self.target}"
            if self.method == "P2T":
                prune = f"{self.scope}/T-avg"
            return f"{self.method} {prune} {self.tile}x{self.tile} f={self.fraction:g}"
        if self.family == "diagonal":
            return "dense diagonal"
        groups = f" G={self.groups}" if self.groups > 1 else ""
        return f"{self.method}{groups}"

    @property
    def key(self) -> str:
        """Stable id of the candidate (trial folders and the resume cache are named by it)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown candidate fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def fc_space(
    tiles: Sequence[int] = (8, 16, 32),
    fractions: Sequence[float] = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97),
    schemes: Sequence[tuple[str, str, str, str]] = HEPEX_SCHEMES,
) -> list[Candidate]:
    """Every scheme x fraction x tile, plus the dense model at every tile and in the diagonal
    layout."""
    out = [Candidate("diagonal", "dense")]
    out += [Candidate("tile", "dense", tile=t) for t in tiles]
    for scheme, scope, criterion, target in schemes:
        for t in tiles:
            for f in fractions:
                out.append(Candidate("tile", scheme, scope, criterion, target, tile=t, fraction=f))
    return out


def map_space(
    methods: Sequence[str] = ROTATION_METHODS, groups: Sequence[int] = (1,)
) -> list[Candidate]:
    """Every rotation-aware method at every group count, plus the unpruned model at every
    group count (at groups > 1: HE-group convolution alone)."""
    out: list[Candidate] = []
    for g in groups:
        out.append(Candidate("map", "dense", groups=g))
        out.extend(Candidate("map", m, groups=g) for m in methods)
    return out
