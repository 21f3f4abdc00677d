"""What the user asks for: constraints every deployed program must meet, and one objective.

Degradation is in the task's own units (accuracy points for classifiers, as everywhere in
fheprune: 0.025 = 2.5 points), latency in seconds per batch of ``batch`` images, memory in
bytes on the server (plaintexts + evaluation keys + ciphertexts), throughput in images per
second. A constraint left as None is not checked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fheprune.errors import InputError

__all__ = ["OBJECTIVES", "Constraints", "Objective", "Violation", "objective_value"]

Objective = Literal["latency", "memory", "throughput"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "memory", "throughput")


@dataclass(frozen=True)
class Violation:
    """One constraint a candidate misses, and by how much (in the constraint's units)."""

    constraint: str
    limit: float
    value: float

    @property
    def excess(self) -> float:
        """How far past the limit (positive); for a minimum, how far short of it."""
        return abs(self.value - self.limit)

    def describe(self) -> str:
        unit = {
            "max_degradation": ("accuracy points", 100.0),
            "max_latency_s": ("s", 1.0),
            "max_memory_bytes": ("MiB", 1.0 / 2**20),
            "min_throughput": ("images/s", 1.0),
        }[self.constraint]
        name, scale = unit
        return (
            f"{self.constraint}: {self.value * scale:.4g} {name} against a limit of "
            f"{self.limit * scale:.4g} {name} (off by {self.excess * scale:.4g} {name})"
        )


@dataclass(frozen=True)
class Constraints:
    max_degradation: float = 0.025
    max_latency_s: float | None = None
    max_memory_bytes: float | None = None
    min_throughput: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None:
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InputError(f"constraint {name} must be a non-negative number, got {value!r}")
        if self.max_degradation > 1:
            raise InputError(
                f"max_degradation is a fraction (0.025 = 2.5 points), got {self.max_degradation}"
            )

    def violations(self, metrics: dict[str, Any]) -> list[Violation]:
        """The constraints ``metrics`` (degradation, latency_s, memory_bytes, throughput)
        misses; a metric that is missing is not judged."""
        out: list[Violation] = []

        def over(name: str, limit: float | None, key: str) -> None:
            value = metrics.get(key)
            if limit is not None and value is not None and value > limit:
                out.append(Violation(name, float(limit), float(value)))

        over("max_degradation", self.max_degradation, "degradation")
        over("max_latency_s", self.max_latency_s, "latency_s")
        over("max_memory_bytes", self.max_memory_bytes, "memory_bytes")
        value = metrics.get("throughput")
        if self.min_throughput is not None and value is not None and value < self.min_throughput:
            out.append(Violation("min_throughput", float(self.min_throughput), float(value)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def objective_value(metrics: dict[str, Any], objective: Objective) -> float:
    """The quantity to minimize: latency or memory as they are, throughput negated."""
    if objective == "latency":
        return float(metrics["latency_s"])
    if objective == "memory":
        return float(metrics["memory_bytes"])
    if objective == "throughput":
        return -float(metrics["throughput"])
    raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
