"""Pruned conv programs on 1 and 2 engine threads, paired: how much a pruned program gains from
the second thread, beside its dense network.

    python benchmarks/threads_pruned.py [--model lenet] [--work-dir results/rot-lenet-ca/work]
                                        [--methods dense combined-cost-aware] [--repeats 9]
                                        [--out FILE]

Reads the models `benchmarks/rotation_aware.py` trained and cached in ``--work-dir`` (nothing
is trained here), compiles each with client shifts, and times one MNIST test image on one
server whose thread count is switched between rounds (``conv_dense.time_servers``: a warm-up
each, then ``--repeats`` interleaved rounds; medians, interquartile ranges, per-layer seconds
of the median run, and the median of the per-round speedups). Where the image exceeds the
program's proven input range it is scaled into it (the time does not depend on the values).
Writes JSON atomically with the parameters and the machine.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import conv_dense
import numpy as np
import rotation_aware as ra_bench

import fheprune.pruning.rotation_aware as ra
from fheprune.reporting import machine_info, write_json_atomic
from fheprune.runtime import ClientSpec
from fheprune.training.config import default_config
from fheprune.training.data import load_loaders

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("threads_pruned")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet")
    p.add_argument("--work-dir", type=Path, default=ROOT / "results" / "rot-lenet-ca" / "work")
    p.add_argument("--methods", nargs="+", default=["dense", "combined-cost-aware"])
    p.add_argument("--threads", nargs=2, type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads_pruned.json"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = default_config(args.model, "mnist").replace(seed=args.seed)
    loaders = load_loaders(
        args.model, "mnist", config, data_dir=args.data_dir, limit=1000, test_limit=1
    )
    test = loaders.test
    assert test is not None
    image = test.dataset[0][0].numpy()[None]
    cache = ra_bench.MethodCache(args.work_dir / args.model)
    make = ra.grouped_builder(args.model, "mnist", seed=args.seed)
    report: dict[str, Any] = {
        "model": args.model,
        "work_dir": str(args.work_dir),
        "threads": args.threads,
        "repeats": args.repeats,
        "seed": args.seed,
        "image": "the first MNIST test image",
        "machine": machine_info(),
        "methods": {},
    }
    for method in args.methods:
        key = ra_bench.cache_key(method, client_shifts=True, margin=0.0)
        result = cache.load(key, make)
        if result is None:
            raise SystemExit(
                f"no cached {method!r} ({key}.pt) in {cache.folder}: "
                "run benchmarks/rotation_aware.py with this --work-dir first"
            )
        _, compiled, cost = ra_bench.compile_map(result.model, True)
        # The client refuses inputs beyond the range the program is proven to hold; the time
        # does not depend on the values, so the image is scaled into it.
        bound = ClientSpec.from_compiled(compiled).max_input
        peak = float(np.abs(image).max())
        scale = 1.0 if bound is None or peak <= bound else 0.99 * bound / peak
        log.info("%s: timing on %s threads", method, args.threads)
        timing = conv_dense.time_servers(compiled, args.threads, args.repeats, scale * image)
        report["parameters"] = compiled.choice.message.split("using ")[-1]
        report["methods"][method] = {
            "cache_key": key,
            "input_scale": scale,
            "ops": {k: sum(int(c["ops"][k]) for c in cost) for k in cost[0]["ops"]},
            "timing": timing,
        }
        write_json_atomic(args.out, report)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
