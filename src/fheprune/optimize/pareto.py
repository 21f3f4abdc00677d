"""Pareto fronts over (degradation, cost): the points no other point beats on both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["pareto_front"]

T = TypeVar("T")


def pareto_front(points: Sequence[T], *keys: Callable[[T], float]) -> list[T]:
    """The points not dominated by any other (every key minimized), sorted by the first key.

    A point dominates another when it is no worse on every key and better on at least one;
    of exact ties the first is kept.
    """
    values = [tuple(k(p) for k in keys) for p in points]
    front: list[int] = []
    for i, vi in enumerate(values):
        dominated = False
        for j, vj in enumerate(values):
            if j == i:
                continue
            no_worse = all(a <= b for a, b in zip(vj, vi, strict=True))
            if no_worse and (vj != vi or j < i):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted((points[i] for i in front), key=lambda p: keys[0](p))
