"""Dense conv networks on the map layout: compact (sub-map) against dilated packing, counted and
timed, with every plaintext resident.

    python benchmarks/conv_dense.py [--models lenet hefnet-mnist vgg5-mnist] [--threads 1 2]
                                    [--repeats 5] [--quick] [--counts-only] [--out FILE]

For each model (untrained, seeded weights: the time of a CKKS program does not depend on the
weight values of a dense network) both layouts are compiled at 128-bit parameters chosen by
the dry run, with client shifts (the client sends pre-rotated copies for conv1), and the
program's own cost model gives per layer: plaintext products, rotations, their lower bounds
for the layout used, plaintext bytes. The compact layout is then run encrypted, one image,
on 1 and on 2 engine threads of one server (``Server.set_threads``: one copy of the plaintexts
and keys), runs interleaved (a warm-up each, then ``--repeats`` rounds
alternating which thread count goes first): every time, the median, the interquartile range,
the per-layer seconds of the median run, and the per-round speedup. The dilated layout is
timed as well where its plaintexts fit in ``--max-plaintext-gb`` (LeNet-like; HEFNet and
VGG-5 need 78 and 33 GB dilated). The decrypted logits are compared with the plaintext
forward pass. ``--counts-only`` compiles and counts without running anything encrypted (a few
seconds a model). Each layout reports its largest ratio of rotations to their lower bound.

Writes JSON (atomically, after every model) with the seed, the parameters and the machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from fheprune.models import build_model
from fheprune.reporting import in_fresh_process, machine_info, write_json_atomic
from fheprune.runtime import Client, ClientSpec, Server
from fheprune.runtime.compiler import CompiledModel, compile_model

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("conv_dense")


def quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]] if values else [0.0, 0.0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def layer_costs(compiled: CompiledModel) -> list[dict[str, Any]]:
    rows = []
    for layer in compiled.program.cost():
        ops = layer["ops"]
        if not (ops["mul_plain"] or ops["rotate"]):
            continue
        rows.append(
            {
                "layer": layer["name"],
                "kind": layer["kind"],
                "mul_plain": ops["mul_plain"],
                "mul_plain_lower_bound": layer["mul_plain_lower_bound"],
                "rotate": ops["rotate"],
                "rotation_lower_bound": layer["rotation_lower_bound"],
                "rotation_ratio": ops["rotate"] / layer["rotation_lower_bound"]
                if layer["rotation_lower_bound"]
                else None,
                "plaintext_bytes": layer["plaintext_bytes"],
            }
        )
    return rows


def layout_summary(compiled: CompiledModel) -> dict[str, Any]:
    spec = compiled.map_spec
    assert spec is not None
    total: dict[str, int] = {}
    for layer in compiled.program.cost():
        for key, value in layer["ops"].items():
            total[key] = total.get(key, 0) + int(value)
    layers = layer_costs(compiled)
    ratios = [r["rotation_ratio"] for r in layers if r["rotation_ratio"] is not None]
    return {
        "parameters": compiled.choice.message.split("using ")[-1],
        "levels": int(compiled.program.levels),
        "input_factors": list(spec.input.factors),
        "block": [spec.input.grid_h, spec.input.grid_w],
        "lanes": spec.input.lanes,
        "client_ciphertexts": spec.input.client_ciphertexts,
        "ops": total,
        "plaintext_bytes": int(sum(r["plaintext_bytes"] for r in compiled.program.cost())),
        "layers": layers,
        "worst_rotation_ratio": max(ratios, default=None),
    }


def time_servers(
    compiled: CompiledModel, threads: list[int], repeats: int, x: np.ndarray
) -> dict[str, Any]:
    """Interleaved runs of one image on one server, switching its thread count: one copy of the
    plaintexts and keys (two servers of HEFNet's did not fit in 24 GB)."""
    client = Client(ClientSpec.from_compiled(compiled))
    keys = client.evaluation_keys_bytes()
    ct = client.encrypt(x)
    start = time.perf_counter()
    server = Server(compiled.program.save(), keys, threads=threads[0])
    setup_s = time.perf_counter() - start
    times: dict[int, list[float]] = {t: [] for t in threads}
    layers: dict[int, list[dict[str, float]]] = {t: [] for t in threads}
    outputs: dict[int, np.ndarray] = {}
    engine_threads: dict[int, int] = {}  # what the server reports after switching
    for t in threads:  # warm-up
        server.set_threads(t)
        engine_threads[t] = server.threads
        outputs[t] = client.decrypt(server.run(ct), 1)
    for round_ in range(repeats):
        order = threads if round_ % 2 == 0 else threads[::-1]
        for t in order:
            server.set_threads(t)
            start = time.perf_counter()
            server.run(ct)
            times[t].append(time.perf_counter() - start)
            layers[t].append(
                {lay["name"]: float(lay["seconds"]) for lay in server.last_stats["layers"]}
            )
    want = compiled.plaintext_forward(x)
    result: dict[str, Any] = {
        "plaintext_bytes": int(server.plaintext_bytes),
        "setup_s": setup_s,
        "one_server": True,
    }
    for t in threads:
        median = statistics.median(times[t])
        at = min(range(len(times[t])), key=lambda k: abs(times[t][k] - median))
        result[f"threads_{t}"] = {
            "engine_threads": engine_threads[t],
            "seconds": times[t],
            "median_s": median,
            "iqr_s": quartiles(times[t]),
            "layer_seconds_of_median_run": layers[t][at],
            "max_abs_error": float(np.abs(outputs[t] - want).max()),
            "argmax_agrees": bool(np.argmax(outputs[t]) == np.argmax(want)),
        }
    if len(threads) >= 2:
        a, b = threads[0], threads[1]
        ratios = [s / f for s, f in zip(times[a], times[b], strict=True)]
        result["speedup"] = {
            "threads": [a, b],
            "per_round": ratios,
            "median": statistics.median(ratios),
            "iqr": quartiles(ratios),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet", "hefnet-mnist", "vgg5-mnist"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="LeNet-like only, 2 repeats")
    p.add_argument("--counts-only", action="store_true", help="compile and count, time nothing")
    p.add_argument("--max-plaintext-gb", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "conv_dense.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.models, args.repeats = ["lenet"], 2
    report: dict[str, Any] = {
        "seed": args.seed,
        "threads": args.threads,
        "repeats": args.repeats,
        "quick": args.quick,
        "counts_only": args.counts_only,
        "client_shifts": True,
        "weights": "untrained, build_model(name, 'mnist', seed)",
        "machine": machine_info(),
        "models": {},
    }
    rng = np.random.default_rng(args.seed)
    for name in args.models:
        x = rng.random((1, 1, 28, 28))
        # Each model in its own process: a model's servers hold gigabytes of plaintexts and
        # keys, and memory the allocator kept from one model left too little for the next.
        report["models"][name] = in_fresh_process(
            measure_model,
            name,
            args.seed,
            args.threads,
            args.repeats,
            args.max_plaintext_gb,
            x,
            timed=not args.counts_only,
        )
        write_json_atomic(args.out, report)
        log.info("%s done: %s", name, args.out)


def measure_model(
    name: str,
    seed: int,
    threads: list[int],
    repeats: int,
    max_plaintext_gb: float,
    x: np.ndarray,
    timed: bool = True,
) -> dict[str, Any]:
    """Both layouts of one model: their costs, and their times where the plaintexts fit."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model = build_model(name, "mnist", seed=seed).eval()
    entry: dict[str, Any] = {}
    for layout, compact in (("compact", True), ("dilated", False)):
        start = time.perf_counter()
        compiled = compile_model(model, layout="map", client_shifts=True, compact=compact)
        summary = layout_summary(compiled)
        summary["compile_s"] = time.perf_counter() - start
        gb = summary["plaintext_bytes"] / 1e9
        if not timed:
            summary["timing"] = None
            summary["not_timed"] = "--counts-only"
        elif compact or gb <= max_plaintext_gb:
            log.info("%s %s: timing (%.2f GB of plaintexts)", name, layout, gb)
            summary["timing"] = time_servers(compiled, threads, repeats, x)
        else:
            summary["timing"] = None
            summary["not_timed"] = f"{gb:.1f} GB of plaintexts > --max-plaintext-gb"
        entry[layout] = summary
        del compiled
    compact_ops = entry["compact"]["ops"]["mul_plain"]
    entry["products_ratio_dilated_over_compact"] = entry["dilated"]["ops"]["mul_plain"] / max(
        1, compact_ops
    )
    return entry


if __name__ == "__main__":
    main()
