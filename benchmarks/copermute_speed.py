"""Speed of HE-PEx co-permutation: a 4096 x 4096 mask, 32 x 32 tiles, rows + columns, one core.

The mask is a random Gaussian matrix pruned to 90% by magnitude (unstructured: every entry is
kept with probability 10%, independently), seed fixed. The C++ kernel
(``fheprune._core.copermute_matrix``) alternates row and column clustering for at most
``--rounds`` rounds (HE-PEx: 5), stopping when a round changes nothing; the process is pinned
to one core (the kernel is single-threaded anyway). Each figure is the median of
``--repeats`` runs (``time.perf_counter``); the tile counts are re-checked with numpy.

With ``--structured`` a second case is timed: the same size and sparsity, but the weights get
log-normal row and column scales before pruning (as trained layers have: some neurons matter
more), which is where permutation pays off.

Usage::

    python benchmarks/copermute_speed.py [--out benchmarks/results/copermute_speed.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fheprune.reporting import machine_info, write_json_atomic

BoolArray = npt.NDArray[np.bool_]


def random_mask(size: int, keep: float, seed: int, structured: bool) -> BoolArray:
    rng = np.random.default_rng(seed)
    weights = np.abs(rng.standard_normal((size, size), dtype=np.float32))
    if structured:
        weights *= np.exp(0.8 * rng.standard_normal(size)).astype(np.float32)[:, None]
        weights *= np.exp(0.8 * rng.standard_normal(size)).astype(np.float32)[None, :]
    threshold = np.quantile(weights, 1.0 - keep)
    mask: BoolArray = weights > threshold
    return mask


def nonzero_tiles(mask: BoolArray, t1: int, t2: int) -> int:
    rows, cols = mask.shape
    padded = np.zeros((-(-rows // t1) * t1, -(-cols // t2) * t2), dtype=bool)
    padded[:rows, :cols] = mask
    return int(padded.reshape(padded.shape[0] // t1, t1, -1, t2).any(axis=(1, 3)).sum())


def pin_one_core() -> int | None:
    """Pin this process to one core (Linux); returns the core, or None where unsupported."""
    getaff = getattr(os, "sched_getaffinity", None)
    setaff = getattr(os, "sched_setaffinity", None)
    if getaff is None or setaff is None:
        return None
    core = min(getaff(0))
    setaff(0, {core})
    return int(core)


def run_case(args: argparse.Namespace, structured: bool) -> dict[str, Any]:
    from fheprune import _core

    mask = random_mask(args.size, 1.0 - args.pruned, args.seed, structured)
    t1, t2 = args.tile
    seconds: list[float] = []
    result = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = _core.copermute_matrix(
            mask,
            t1,
            t2,
            rounds=args.rounds,
            max_iter=args.max_iter,
            restarts=args.restarts,
            candidates=args.candidates,
            seed=args.seed,
        )
        seconds.append(time.perf_counter() - start)
    assert result is not None
    row_perm, col_perm, total, before, after, rounds = result
    # Independent checks: the permutations are permutations and the counts are right.
    assert np.array_equal(np.sort(row_perm), np.arange(args.size))
    assert np.array_equal(np.sort(col_perm), np.arange(args.size))
    assert before == nonzero_tiles(mask, t1, t2)
    assert after == nonzero_tiles(mask[row_perm][:, col_perm], t1, t2)
    return {
        "structured": structured,
        "kept_fraction": float(mask.mean()),
        "seconds": statistics.median(seconds),
        "seconds_all": seconds,
        "rounds_run": rounds,
        "tiles_total": total,
        "zero_tiles_before": total - before,
        "zero_tiles_after": total - after,
        "tile_sparsity_before": (total - before) / total,
        "tile_sparsity_after": (total - after) / total,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--pruned", type=float, default=0.9, help="fraction of weights pruned")
    ap.add_argument("--tile", type=int, nargs=2, default=(32, 32), metavar=("T1", "T2"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--structured", action="store_true", help="also time a structured mask")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "copermute_speed.json"
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    core = pin_one_core()
    main_case = run_case(args, structured=False)
    data: dict[str, Any] = {
        "seed": args.seed,
        "params": {
            "size": args.size,
            "pruned": args.pruned,
            "pruning": "unstructured magnitude pruning of a random Gaussian matrix",
            "tile": list(args.tile),
            "rounds": args.rounds,
            "max_iter": args.max_iter,
            "restarts": args.restarts,
            "candidates": args.candidates,
            "repeats": args.repeats,
            "kernel": "fheprune._core.copermute_matrix (rows then columns per round)",
        },
        "machine": machine_info(pinned_core=core),
        "seconds": main_case["seconds"],
        "tile_sparsity_before": main_case["tile_sparsity_before"],
        "tile_sparsity_after": main_case["tile_sparsity_after"],
        "detail": main_case,
    }
    print(
        f"{args.size}x{args.size}, {args.pruned:.0%} pruned, tiles {args.tile[0]}x{args.tile[1]}: "
        f"{main_case['seconds']:.2f} s ({main_case['rounds_run']} rounds), tile sparsity "
        f"{main_case['tile_sparsity_before']:.4f} -> {main_case['tile_sparsity_after']:.4f}"
    )
    if args.structured:
        extra = run_case(args, structured=True)
        data["structured_case"] = extra
        print(
            f"structured: {extra['seconds']:.2f} s ({extra['rounds_run']} rounds), tile sparsity "
            f"{extra['tile_sparsity_before']:.4f} -> {extra['tile_sparsity_after']:.4f}"
        )
    write_json_atomic(args.out, data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
