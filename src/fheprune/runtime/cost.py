"""Latency and memory predictions from the cost model's counts and measured per-op timings.

``Program.cost()`` (C++) gives, per layer and per group of samples, the operations the
executor will perform and the lower bounds. :func:`calibrate` times each engine operation at
each level on this machine; :func:`predict` multiplies the two. Adds inside a fused
multiply-and-sum are part of its per-term time; the add after each rotation is charged with
the rotation.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fheprune import _core
from fheprune.errors import InputError

__all__ = ["OpTimings", "calibrate", "machine_timings", "predict"]


@dataclass
class OpTimings:
    """Seconds per operation, by (operation, level)."""

    poly_degree: int
    seconds: dict[str, dict[int, float]] = field(default_factory=dict)

    def get(self, op: str, level: int) -> float:
        by_level = self.seconds[op]
        if level in by_level:
            return by_level[level]
        nearest = min(by_level, key=lambda lv: abs(lv - level))
        return by_level[nearest]

    def to_dict(self) -> dict[str, Any]:
        return {
            "poly_degree": self.poly_degree,
            "seconds": {op: {str(k): v for k, v in d.items()} for op, d in self.seconds.items()},
        }


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, caches)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate(
    parameters: Any, *, threads: int = 1, repeats: int = 3, terms: int = 64, seed: int = 0
) -> OpTimings:
    """Time every operation the executor uses at every level of ``parameters``."""
    ctx = _core.Context(parameters, threads)
    keygen = _core.KeyGenerator(ctx)
    keys = keygen.create_evaluation_keys([1])
    encoder, evaluator = _core.Encoder(ctx), _core.Evaluator(ctx)
    encryptor = _core.Encryptor(ctx, keys.public_key)
    rng = np.random.default_rng(seed)
    timings = OpTimings(int(parameters.poly_degree))
    ops: dict[str, dict[int, float]] = {
        k: {} for k in ("mul_plain", "rotate", "add", "rescale", "add_plain", "square", "encrypt")
    }

    def at_level(level: int) -> None:
        # Distinct operands, more than the caches hold: a packed layer streams its tiles from
        # memory, so a cache-hot timing would under-predict it.
        pts = [
            encoder.encode(rng.uniform(-1, 1, ctx.slots), scale=ctx.default_scale, level=level)
            for _ in range(terms)
        ]
        cts = [encryptor.encrypt(p) for p in pts]
        ct, pt = cts[0], pts[0]
        ops["mul_plain"][level] = (
            _best_time(lambda: evaluator.multiply_plain_sum(cts, pts), repeats) / terms
        )
        ops["rotate"][level] = _best_time(
            lambda: evaluator.rotate(ct, 1, keys.galois_keys), repeats
        )
        ops["add"][level] = _best_time(lambda: evaluator.add(ct, ct), repeats)
        ops["add_plain"][level] = _best_time(lambda: evaluator.add_plain(ct, pt), repeats)
        ops["encrypt"][level] = _best_time(lambda: encryptor.encrypt(pt), repeats)
        if level > 0:
            ops["rescale"][level] = _best_time(lambda: evaluator.rescale(ct), repeats)
            ops["square"][level] = _best_time(
                lambda: evaluator.multiply_relin(ct, ct, keys.relin_key), repeats
            )

    for level in range(int(ctx.max_level), -1, -1):
        at_level(level)
    timings.seconds = ops
    return timings


@functools.lru_cache(maxsize=8)
def _calibrate_once(parameter_bytes: bytes, threads: int) -> OpTimings:
    return calibrate(_core.Parameters.from_bytes(parameter_bytes), threads=threads)


def machine_timings(parameters: Any, *, threads: int = 1) -> OpTimings:
    """:func:`calibrate`, measured once per parameters and thread count in this process (the
    dense and the pruned program of one comparison share their parameters)."""
    return _calibrate_once(bytes(parameters.to_bytes()), threads)


def predict(program: Any, timings: OpTimings, groups: int) -> dict[str, Any]:
    """Predicted server seconds per layer and in total for ``groups`` groups of samples."""
    layers = []
    total = 0.0
    for layer in program.cost():
        ops = layer["ops"]
        level = int(layer["level"])
        kind = layer["kind"]
        if kind == "refresh":
            if "refresh" not in timings.seconds:
                raise InputError(
                    f"the program refreshes ciphertexts ({layer['name']}) but the timings hold "
                    "no refresh time; measure one (benchmarks/bootstrapping.py) and add it as "
                    'timings.seconds["refresh"] = {level: seconds}'
                )
            seconds = ops["refresh"] * timings.get("refresh", level)
        elif kind == "square":
            seconds = ops["multiply"] * timings.get("square", level) + ops["rescale"] * timings.get(
                "rescale", level
            )
        else:
            # A rebuild (mask) happens one level above the products: charge its mask at `level`.
            mul_level = level - 1 if layer["rebuild"] else level
            rot_level = max(mul_level - 1, 0)
            seconds = (
                ops["mul_plain"] * timings.get("mul_plain", mul_level)
                + ops["rescale"] * timings.get("rescale", mul_level)
                + ops["rotate"] * (timings.get("rotate", rot_level) + timings.get("add", rot_level))
                + ops["add_plain"] * timings.get("add_plain", rot_level)
            )
        seconds *= groups
        total += seconds
        layers.append({"name": layer["name"], "seconds": seconds})
    return {"layers": layers, "seconds": total}


def summarize_cost(program: Any, groups: int) -> list[dict[str, Any]]:
    """Per layer: counts for ``groups`` groups, lower bounds, units kept."""
    rows = []
    for layer in program.cost():
        rows.append(
            {
                "name": layer["name"],
                "kind": layer["kind"],
                "units": layer["units"],
                "total_units": layer["total_units"],
                "ops": {k: v * groups for k, v in layer["ops"].items()},
                "rotation_lower_bound": layer["rotation_lower_bound"] * groups,
                "mul_plain_lower_bound": layer["mul_plain_lower_bound"] * groups,
                "plaintext_bytes": layer["plaintext_bytes"],
            }
        )
    return rows


def merge_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for row in rows:
        for k, v in row["ops"].items():
            total[k] = total.get(k, 0) + int(v)
    return total
