"""Latency predictions from the cost model's counts and measured per-operation timings.

``Program.cost()`` (C++, ``estimate_cost``) gives, per layer and per group of samples, the
operations the executor will perform and, in ``ops_by_level``, the level of the ciphertext
each one acts on. Levels are worked out there, from the program, in one place; nothing here
re-derives them. :func:`calibrate` times each engine operation at each level on this machine;
:func:`predict` sums count x seconds over every (operation, level) of every layer.

:data:`TIMED_AS` is the one place that says which timing each counted operation is charged:

- ``mul_plain``: per term of a fused sum of products (``multiply_plain_sum`` over many
  terms), so the additions inside such a sum (``add_fused``) cost nothing more;
- ``add``, ``add_plain``, ``rescale``, ``rotate``: one each, at their own level; every
  ciphertext addition the executor performs outside a fused sum (the one after each
  rotation, the sums across giant-step blocks, a window sum's fold) is an ``add``;
- ``rotate_hoisted``: one rotation of a hoisted batch (the baby steps of diagonal and map
  layers), timed as a batch of :data:`HOISTED_BATCH` rotations of one ciphertext by distinct
  steps, divided by its size (the shared decomposition spread over the batch);
- ``multiply``: the product of a square (three parts, before relinearization), and
  ``relinearize``: its key switch, timed apart: a square right before a folding pool
  relinearizes once per folded sum, not once per product;
- ``constant``: the copy of an encrypted constant (an output that is its bias alone);
- ``refresh``: not calibrated here; measure it (benchmarks/bootstrapping.py) and add it as
  ``timings.seconds["refresh"] = {level: seconds}``.

Two sources of :class:`OpTimings`: :func:`calibrate` measures this machine (latency
predictions); :func:`reference_timings` is a fixed fit to one such measurement, for what must
not depend on the machine it runs on (pruning ranks units by it, so a seed prunes the same
way everywhere).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fheprune import _core
from fheprune.errors import InputError

__all__ = [
    "HOISTED_BATCH",
    "TIMED_AS",
    "OpTimings",
    "calibrate",
    "layer_seconds",
    "machine_timings",
    "predict",
    "reference_timings",
]

# Counted operation (Program.cost()'s "ops_by_level") -> the timing it is charged (None: no
# time of its own; see the module docstring).
TIMED_AS: dict[str, str | None] = {
    "mul_plain": "mul_plain",
    "add_fused": None,
    "add": "add",
    "add_plain": "add_plain",
    "rescale": "rescale",
    "rotate": "rotate",
    "rotate_hoisted": "rotate_hoisted",
    "multiply": "multiply",
    "relinearize": "relinearize",
    "constant": "constant",
    "refresh": "refresh",
}

# Rotations per hoisted batch when timing "rotate_hoisted" (a 3x3 kernel's eight baby steps).
HOISTED_BATCH = 8


# reference_timings(): milliseconds at N = 16384 on one core as a * p + b * p^2, p = level + 1
# primes (a key switch raises each of p digits to p primes). Least-squares fits to one
# calibrate() run of our engine on its AVX-512 IFMA path (2-core VM, 2026-12-07): within 25% of
# it at every level for products and additions, 13% for squares, 39% for rotations and 47%
# for hoisted ones (both worst at level 0). A square was then priced whole, (0.417, 0.108);
# split later into its product, fitted alone to a second run (linear, within 5%), and its
# relinearization, the rest, so that the two still add up to the square's price.
REFERENCE_MS_AT_16384: dict[str, tuple[float, float]] = {
    "mul_plain": (0.043, 0.0),
    "add": (0.033, 0.0),
    "add_plain": (0.020, 0.0),
    "constant": (0.019, 0.0),
    "rescale": (0.145, 0.0),
    "rotate": (0.343, 0.116),
    "rotate_hoisted": (0.236, 0.075),
    "multiply": (0.162, 0.0),
    "relinearize": (0.255, 0.108),
}


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


def reference_timings(max_level: int, poly_degree: int = 16384) -> OpTimings:
    """Fixed prices of every operation :func:`calibrate` times, at levels 0..``max_level``:
    :data:`REFERENCE_MS_AT_16384`, scaled to ``poly_degree`` by N log N. Not a measurement of
    this machine: for ranking work (pruning), where the same inputs must give the same
    answer everywhere; predict latency from :func:`calibrate`."""
    if max_level < 0 or poly_degree < 2 or poly_degree & (poly_degree - 1):
        raise InputError(
            f"reference timings need max_level >= 0 and a power-of-two ring degree, got "
            f"{max_level} and {poly_degree}"
        )
    ring = poly_degree * math.log2(poly_degree) / (16384 * 14)
    seconds = {
        op: {
            level: 1e-3 * ring * (a * (level + 1) + b * (level + 1) ** 2)
            for level in range(max_level + 1)
        }
        for op, (a, b) in REFERENCE_MS_AT_16384.items()
    }
    return OpTimings(poly_degree, seconds)


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
    """Time every operation :func:`predict` charges (every timing :data:`TIMED_AS` names but
    ``refresh``), and an encryption, at every level of ``parameters``."""
    ctx = _core.Context(parameters, threads)
    keygen = _core.KeyGenerator(ctx)
    # Steps 1..HOISTED_BATCH: a hoisted batch reads as many distinct keys as a layer's babies,
    # and plain rotations cycle through them (one key, reused, would sit in the caches and
    # under-predict both).
    hoisted_steps = list(range(1, HOISTED_BATCH + 1))
    keys = keygen.create_evaluation_keys(hoisted_steps)
    encoder, evaluator = _core.Encoder(ctx), _core.Evaluator(ctx)
    encryptor = _core.Encryptor(ctx, keys.public_key)
    rng = np.random.default_rng(seed)
    timings = OpTimings(int(parameters.poly_degree))
    names = (
        "mul_plain",
        "rotate",
        "rotate_hoisted",
        "add",
        "rescale",
        "add_plain",
        "multiply",
        "relinearize",
    )
    ops: dict[str, dict[int, float]] = {k: {} for k in (*names, "constant", "encrypt")}

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
        # Plain rotations by each of the steps in turn: one key, reused, stays in the caches
        # and times a rotation below what a layer's giant steps (distinct keys) cost.
        ops["rotate"][level] = (
            _best_time(
                lambda: [evaluator.rotate(ct, s, keys.galois_keys) for s in hoisted_steps],
                repeats,
            )
            / HOISTED_BATCH
        )
        ops["rotate_hoisted"][level] = (
            _best_time(
                lambda: evaluator.rotate_hoisted(ct, hoisted_steps, keys.galois_keys), repeats
            )
            / HOISTED_BATCH
        )
        ops["add"][level] = _best_time(lambda: evaluator.add(ct, ct), repeats)
        ops["add_plain"][level] = _best_time(lambda: evaluator.add_plain(ct, pt), repeats)
        ops["constant"][level] = _best_time(lambda: ct.copy(), repeats)
        ops["encrypt"][level] = _best_time(lambda: encryptor.encrypt(pt), repeats)
        if level > 0:
            ops["rescale"][level] = _best_time(lambda: evaluator.rescale(ct), repeats)
            ops["multiply"][level] = _best_time(lambda: evaluator.square(ct), repeats)
            product = evaluator.square(ct)
            ops["relinearize"][level] = _best_time(
                lambda: evaluator.relinearize(product, keys.relin_key), repeats
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


def layer_seconds(layer: Mapping[str, Any], timings: OpTimings) -> dict[str, float]:
    """Seconds of one layer of ``Program.cost()`` for one group, per counted operation: its
    count at each level x the seconds of its timing (:data:`TIMED_AS`) there. InputError
    when ``timings`` lack one it needs."""
    if layer["kind"] == "refresh" and "refresh" not in timings.seconds:
        raise InputError(
            f"the program refreshes ciphertexts ({layer['name']}) but the timings hold "
            "no refresh time; measure one (benchmarks/bootstrapping.py) and add it as "
            'timings.seconds["refresh"] = {level: seconds}'
        )
    out: dict[str, float] = {}
    for op, by_level in layer["ops_by_level"].items():
        timed = TIMED_AS.get(op, op)
        if timed is None:
            continue
        if not timings.seconds.get(timed):
            raise InputError(
                f"{layer['name']} performs {op!r} but the timings hold no {timed!r} time; "
                "calibrate() measures every operation predict() charges"
            )
        out[op] = sum(count * timings.get(timed, int(level)) for level, count in by_level.items())
    return out


def predict(program: Any, timings: OpTimings, groups: int) -> dict[str, Any]:
    """Predicted server seconds per layer and in total for ``groups`` groups of samples: the
    sum of :func:`layer_seconds` over every layer."""
    layers = []
    total = 0.0
    for layer in program.cost():
        seconds = sum(layer_seconds(layer, timings).values()) * groups
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
