"""How the executor scales with engine threads: one batch through the main job's dense and
pruned MLP programs (tile layout) on 1 and on 2 threads, runs interleaved.

    python benchmarks/executor_threads.py [--repeats 7] [--out FILE]

The bundles are the main job's (``results/runtime/bundles``; made from the cached pruning if
missing). Every repeat runs the batch once per thread count, alternating which goes first;
the JSON has every time, the medians, the interquartile ranges and the per-repeat speedups.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from fheprune import _core
from fheprune.reporting import machine_info, quartiles, write_json_atomic
from fheprune.runtime import Client, load_bundle
from fheprune.runtime.pipeline import MainJobConfig, main_job_bundles

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "results" / "runtime" / "bundles"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="to build the bundles if missing")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "executor_threads.json"
    )
    args = parser.parse_args()
    if not all((BUNDLES / name / "program.bin").is_file() for name in ("dense", "pruned")):
        print("building the main job's bundles (the pruning is cached after the first time)")
        main_job_bundles(MainJobConfig(tile=8, data_dir=args.data_dir, work_dir=BUNDLES.parent))
    rows = [measure(name, args.repeats, args.seed) for name in ("dense", "pruned")]
    write_json_atomic(
        args.out,
        {
            "benchmark": "executor_threads",
            "parameters": {"repeats": args.repeats, "seed": args.seed, "threads": [1, 2]},
            "runs": rows,
            "machine": machine_info(threads=2),
        },
    )
    print(f"wrote {args.out}")


def measure(name: str, repeats: int, seed: int) -> dict[str, Any]:
    bundle = load_bundle(BUNDLES / name)
    client = Client(bundle.spec)
    keys = client.evaluation_keys_bytes()
    group = int(bundle.spec.shape_program().samples_per_group)
    x = np.random.default_rng(seed).uniform(0.0, 1.0, (group, bundle.spec.in_features))
    inputs = client.encrypt(x)
    servers = {t: _core.Server(bundle.program, keys, threads=t) for t in (1, 2)}
    for server in servers.values():  # warm-up (Galois tables, first-touch of plaintexts)
        server.run(inputs)
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(repeats):
        for t in (1, 2) if r % 2 == 0 else (2, 1):
            start = time.perf_counter()
            servers[t].run(inputs)
            times[t].append(time.perf_counter() - start)
    speedups = [a / b for a, b in zip(times[1], times[2], strict=True)]
    row = {
        "program": f"main job {name} MLP (tile 8x8, N = {int(bundle.spec.parameters.poly_degree)})",
        "samples_per_run": group,
        "seconds": {str(t): v for t, v in times.items()},
        "median_s": {str(t): statistics.median(v) for t, v in times.items()},
        "iqr_s": {str(t): iqr(v) for t, v in times.items()},
        "speedup_median": statistics.median(speedups),
        "speedup_iqr": iqr(speedups),
        "speedups": speedups,
    }
    print(
        f"{name}: 1 thread {row['median_s']['1'] * 1e3:.1f} ms, 2 threads "
        f"{row['median_s']['2'] * 1e3:.1f} ms, speedup {row['speedup_median']:.2f}x "
        f"(IQR {row['speedup_iqr'][0]:.2f}-{row['speedup_iqr'][1]:.2f})"
    )
    return row


def iqr(values: list[float]) -> list[float]:
    return list(quartiles(values))


if __name__ == "__main__":
    main()
