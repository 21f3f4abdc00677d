"""The optimizer end to end: the HE-PEx MLP and the LeNet-like network, each searched with
1 and with 2 Ray workers on the same space, budget and seed.

    python benchmarks/optimize.py [--quick] [--out FILE] [--models mlp lenet]

Per model and worker count it runs ``fheprune.optimize.optimize`` in a fresh folder (the
trained baseline is shared, so both searches start from the same model) and records the
search's wall time, the best program, the Pareto fronts and, for every candidate measured
encrypted, the cost model's prediction error. The MLP's best program is put beside the
hand-picked configuration of ``benchmarks/results/runtime_pruned_vs_dense.json`` (8x8 P4E).
``--quick`` is the small search space (the one this file's committed JSON comes from).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from fheprune.optimize import Constraints, OptimizeConfig, optimize
from fheprune.optimize.search import resolve_model
from fheprune.reporting import machine_info, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
HAND_PICKED = ROOT / "benchmarks" / "results" / "runtime_pruned_vs_dense.json"

#: Per model: the search's settings (the same for both worker counts).
SETTINGS: dict[str, dict[str, Any]] = {
    "mlp": {"retrain_epochs": 2, "batch": 256, "measure_top": 3, "repeats": 5},
    "lenet": {
        "train_epochs": 4,
        "limit": 12000,
        "finetune_epochs": 1,
        "group_epochs": 1,
        "batch": 1,
        "measure_top": 2,
        "repeats": 3,
    },
}


def _spin(n: int) -> float:
    start = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - start


def parallel_ceiling(n: int = 20_000_000) -> dict[str, float]:
    """How much faster two CPU-bound processes finish together than one after the other on
    this machine right now (2.0 = two free cores): the ceiling of any 2-worker speedup."""
    from concurrent.futures import ProcessPoolExecutor

    alone = _spin(n)
    with ProcessPoolExecutor(2) as pool:
        pool.submit(_spin, 1000).result()  # start the workers before timing
        start = time.perf_counter()
        list(pool.map(_spin, [n, n]))
        together = time.perf_counter() - start
    return {"one_process_s": alone, "two_processes_s": together, "ceiling": 2 * alone / together}


def _hand_picked() -> dict[str, Any] | None:
    """The committed hand-picked MLP configuration (8x8 P4E, pruned), from an earlier run."""
    if not HAND_PICKED.is_file():
        return None
    data = json.loads(HAND_PICKED.read_text())
    for row in data.get("runs", []):
        if (
            row.get("model") == "mlp"
            and list(row.get("tile", [])) == [8, 8]
            and (row.get("variant") == "pruned")
        ):
            keep = ("latency_s", "per_image_s", "images", "tile_sparsity", "degradation")
            return {"source": str(HAND_PICKED.relative_to(ROOT)), **{k: row[k] for k in keep}}
    return None


def _point(r: dict[str, Any]) -> dict[str, Any]:
    src = r.get("measured") or r["predicted"]
    return {
        "label": r["label"],
        "degradation": r["degradation"],
        "latency_s": src["latency_s"],
        "memory_bytes": src["memory_bytes"],
        "measured": bool(r.get("measured")),
    }


def _config(
    model: str, workers: int, quick: bool, out: Path, data_dir: str | None, seed: int
) -> OptimizeConfig:
    return OptimizeConfig(
        model=model,
        data_dir=data_dir,
        constraints=Constraints(max_degradation=0.025 if model == "mlp" else 0.005),
        objective="latency",
        out_dir=out,
        workers=workers,
        quick=quick,
        seed=seed,
        **SETTINGS[model],
    )


def run(
    model: str, workers: int, quick: bool, out: Path, data_dir: str | None, seed: int
) -> dict[str, Any]:
    result = optimize(_config(model, workers, quick, out, data_dir, seed), progress=True)
    by_key = {r["key"]: r for r in result["screened"]}
    measured = [r for r in result["screened"] if r.get("measured")]
    best = result["best"]
    return {
        "model": model,
        "objective": result["objective"],
        "constraints": result["constraints"],
        "trials": result["trials"],
        "failed_trials": result["failed_trials"],
        "best": None
        if best is None
        else {
            "label": best["label"],
            "candidate": best["candidate"],
            "latency_s": best["measured"]["latency_s"],
            "latency_runs_s": best["measured"]["latency_runs_s"],
            "predicted_latency_s": best["predicted"]["latency_s"],
            "memory_bytes": best["measured"]["memory_bytes"],
            "val_degradation": best["degradation"],
            "test_metric": best["test_metric"],
            "baseline_test_metric": best["baseline_test_metric"],
            "test_degradation": best["test_degradation"],
            "batch": result["batch"],
        },
        "infeasible": result["infeasible"],
        "pareto": {
            kind: [_point(by_key[k]) for k in keys] for kind, keys in result["pareto"].items()
        },
        # The target's number: the screening's prediction (the one the ranking used) against
        # the measurement. Also the prediction from timings taken just before measuring, and
        # the memory prediction.
        "prediction_errors": {
            r["label"]: r["measured"]["screening_prediction_error"] for r in measured
        },
        "prediction_errors_recalibrated": {
            r["label"]: r["measured"]["prediction_error"] for r in measured
        },
        "memory_prediction_errors": {
            r["label"]: r["measured"]["memory_prediction_error"] for r in measured
        },
        "wall_s": result["wall_s"],
        "screen_s": result["timing"]["screen_s"],
        "measure_s": result["timing"]["measure_s"],
        "workers": workers,
        "settings": SETTINGS[model],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=sorted(SETTINGS))
    parser.add_argument("--workers", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7, help="paired runs vs hand-picked")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "results" / "optimize-bench")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "optimize.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs: list[dict[str, Any]] = []
    if args.out.exists():  # resume: keep finished (model, workers) runs
        runs = [
            r
            for r in json.loads(args.out.read_text()).get("runs", [])
            if r.get("quick") == args.quick
        ]
    paired: dict[str, Any] = {}
    for model in args.models:
        # The baseline is trained once, before any timed search, and shared by all of them.
        shared = args.work_dir / f"{model}-shared"
        resolve_model(_config(model, 1, args.quick, shared, args.data_dir, args.seed))
        for workers in args.workers:
            if any(r["model"] == model and r["workers"] == workers for r in runs):
                continue
            ceiling = parallel_ceiling()
            out = args.work_dir / f"{model}-w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            shutil.copytree(shared / "baseline", out / "baseline")
            row = run(model, workers, args.quick, out, args.data_dir, args.seed)
            row["quick"] = args.quick
            row["machine_parallel_ceiling_before"] = ceiling
            runs.append(row)
            write_json_atomic(args.out, _document(runs, args, paired))
            print(
                f"{model} with {workers} worker(s): {row['wall_s']:.0f} s, best "
                f"{row['best']['label'] if row['best'] else None}"
            )
        best = next((r for r in runs if r["model"] == model and r["best"]), None)
        if model == "mlp" and best is not None:
            paired = versus_hand_picked(
                args.work_dir / f"mlp-w{best['workers']}" / "bundle",
                args.data_dir,
                args.repeats,
            )
            print(f"optimizer's best vs hand-picked 8x8 P4E: {paired['speedup_median']:.2g}x")
    write_json_atomic(args.out, _document(runs, args, paired))
    print(f"wrote {args.out}")


def versus_hand_picked(bundle_dir: Path, data_dir: str | None, repeats: int) -> dict[str, Any]:
    """The optimizer's best MLP program against the hand-picked one (the runtime benchmark's
    8x8 P4E global/neuron recipe, rebuilt here), same 256 images, runs interleaved."""
    import numpy as np

    from fheprune.runtime import Client, ClientSpec, Server, load_bundle
    from fheprune.runtime.pipeline import compile_variants, pruned_model

    pm = pruned_model(
        "mlp",
        tile=8,
        scheme="P4E",
        scope="global",
        target="neuron",
        retrain_epochs=2,
        data_dir=data_dir,
        fractions=(0.8, 0.85, 0.9, 0.93, 0.95, 0.97),
        work_dir=ROOT / "results" / "runtime",
    )
    hand = compile_variants(pm, 8)["pruned"]
    found = load_bundle(bundle_dir)
    x = np.random.default_rng(0).uniform(0.0, 1.0, (256, 784))
    programs = {
        "optimizer": (found.spec, found.program),
        "hand_picked": (ClientSpec.from_compiled(hand), hand.program.save()),
    }
    runners = {}
    for name, (spec, program) in programs.items():
        client = Client(spec)
        server = Server(program, client.evaluation_keys_bytes())
        runners[name] = (server, client.encrypt(x))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(repeats):
        order = list(runners) if i % 2 == 0 else list(reversed(runners))
        for name in order:
            server, inputs = runners[name]
            start = time.perf_counter()
            server.run(inputs)
            times[name].append(time.perf_counter() - start)
    ratios = [h / o for h, o in zip(times["hand_picked"], times["optimizer"], strict=True)]
    q = statistics.quantiles(ratios, n=4)
    return {
        "images": 256,
        "repeats": repeats,
        "seconds": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "speedup_median": statistics.median(ratios),
        "speedup_iqr": [q[0], q[2]],
        "hand_picked": {
            "tile_sparsity": pm.tile_sparsity,
            "degradation_val": pm.val_degradation,
            "degradation_test": pm.test_degradation,
            "selection": "pipeline.pruned_model (fraction chosen on validation)",
        },
    }


def _document(
    runs: list[dict[str, Any]], args: argparse.Namespace, paired: dict[str, Any]
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for model in {r["model"] for r in runs}:
        walls = {r["workers"]: r["wall_s"] for r in runs if r["model"] == model}
        screens = {r["workers"]: r["screen_s"] for r in runs if r["model"] == model}
        errors = [
            abs(e) for r in runs if r["model"] == model for e in r["prediction_errors"].values()
        ]
        entry: dict[str, Any] = {
            "prediction_abs_error_max": max(errors, default=None),
            "prediction_abs_error_median": statistics.median(errors) if errors else None,
        }
        if 1 in walls and 2 in walls:
            entry["wall_speedup_2_vs_1"] = walls[1] / walls[2]
            entry["screen_speedup_2_vs_1"] = screens[1] / screens[2]
        summary[model] = entry
    hand = _hand_picked()
    if hand is not None:
        summary["mlp_hand_picked_committed"] = hand
    if paired:
        summary["mlp_vs_hand_picked_same_run"] = paired
    return {
        "benchmark": "optimize",
        "parameters": {
            "quick": args.quick,
            "seed": args.seed,
            "models": sorted({r["model"] for r in runs}),
            "workers": args.workers,
        },
        "runs": runs,
        "summary": summary,
        "machine": machine_info(threads=1),
    }


if __name__ == "__main__":
    main()
