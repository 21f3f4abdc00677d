"""The main job: prune an MNIST model with an HE-PEx scheme, compile dense and pruned, run both
encrypted (client and server roles), and report accuracy, op counts, latency and memory.

Each stage is a function the benchmarks reuse:

* :func:`pruned_model` trains (or loads the cached) baseline and pruned model;
* :func:`encrypted_run` runs one compiled model on a batch: client encrypts, server computes on
  ciphertexts only, client decrypts; it measures everything the report prints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fheprune.errors import InputError
from fheprune.reporting import machine_info, sig2, write_json_atomic

from .bundle import save_bundle
from .compiler import CompiledModel, compile_model
from .cost import machine_timings, merge_counts, predict, summarize_cost
from .roles import Client, ClientSpec, Server

__all__ = [
    "MainJobConfig",
    "PrunedModel",
    "compile_variants",
    "encrypted_run",
    "main_job_bundles",
    "pruned_model",
    "run_main_job",
]

log = logging.getLogger(__name__)


@dataclass
class PrunedModel:
    dense: nn.Module
    pruned: nn.Module
    input_perm: np.ndarray | None
    output_perm: np.ndarray | None
    fraction: float  # the pruning fraction validation chose
    tile_sparsity: float
    weight_sparsity: float
    # Chosen on validation (val_*): the budget is checked there. Test is only reported.
    val_baseline_metric: float
    val_metric: float
    val_degradation: float
    test_baseline_metric: float
    test_metric: float
    test_degradation: float
    scheme: str
    experiment: Any = None  # the Experiment that trained it (its loaders give the test data)


def pruned_model(
    model_name: str = "mlp",
    *,
    tile: int = 16,
    scheme: str = "P4E",
    scope: str = "global",
    criterion: str = "l1",
    target: str = "weight",
    budget: float = 0.025,
    fractions: tuple[float, ...] = (0.8, 0.85, 0.9, 0.91, 0.92, 0.93, 0.95, 0.97),
    retrain_epochs: int = 2,
    train_epochs: int | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
    work_dir: Path = Path("results/runtime"),
    seed: int = 0,
) -> PrunedModel:
    """The baseline and its best pruned version within ``budget`` (cached in ``work_dir``).

    The fraction is chosen by the degradation on the validation split held out of the
    training images; the test metrics of the chosen model are measured once and reported.
    """
    from fheprune.experiments.hepex import (
        POINT_METRICS,
        Experiment,
        SchemeSpec,
        SweepConfig,
        prune_within_budget,
        save_budget_point,
    )
    from fheprune.layouts import TileShape
    from fheprune.models import build_model
    from fheprune.pruning import load_pruned_model

    config = SweepConfig(
        models=[model_name],
        tiles=[tile],
        train_epochs=train_epochs,
        retrain_epochs=retrain_epochs,
        fractions=fractions,
        limit=limit,
        budget=budget,
        seed=seed,
        data_dir=data_dir,
        out_dir=Path(work_dir),
    )
    experiment = Experiment(config)
    dense = experiment.baseline(model_name)
    spec = SchemeSpec(scheme.upper(), scope, criterion, target)
    label = spec.label.replace(" ", "_").replace("/", "-")
    # Everything that changes the result is in the name, so a cache made under another
    # schedule, budget, fraction list or seed is never reused by mistake.
    # Torch's thread count is in it too: reductions in another order train another model.
    settings = json.dumps(
        [
            "val-select",
            train_epochs,
            retrain_epochs,
            limit,
            budget,
            list(fractions),
            seed,
            torch.get_num_threads(),
        ],
        sort_keys=True,
    )
    digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
    cache = Path(work_dir) / f"{model_name}-{label}-{tile}x{tile}-{digest}.npz"
    if cache.exists():
        log.info("loading the cached pruned model %s", cache)

        def builder(name: str, /, **kw: Any) -> nn.Module:
            return build_model(name, "mnist", **kw)

        loaded = load_pruned_model(cache, builder)
        meta = loaded.metadata
        perms = loaded.permutations or {}
        return PrunedModel(
            dense=dense,
            pruned=loaded.model,
            input_perm=None if "input" not in perms else np.asarray(perms["input"].numpy()),
            output_perm=None if "output" not in perms else np.asarray(perms["output"].numpy()),
            scheme=spec.label,
            experiment=experiment,
            fraction=float(meta.config["fraction"]),
            **{k: float(meta.metrics[k]) for k in POINT_METRICS},
        )
    best = prune_within_budget(experiment, model_name, spec, tile, fractions)
    if best is None:
        raise InputError(
            f"no pruning fraction in {fractions} keeps {model_name} within {budget:.1%} "
            "degradation on the validation split; allow a larger budget or try smaller "
            "fractions"
        )
    arrays = save_budget_point(cache, model_name, spec, TileShape(tile, tile), config, best)
    model, _, row = best
    metrics = {k: float(row[k]) for k in POINT_METRICS}
    return PrunedModel(
        dense=dense,
        pruned=model,
        input_perm=None if arrays is None else np.asarray(arrays["input"]),
        output_perm=None if arrays is None else np.asarray(arrays["output"]),
        scheme=spec.label,
        experiment=experiment,
        fraction=float(row["fraction"]),
        **metrics,
    )


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def encrypted_run(
    compiled: CompiledModel,
    x: np.ndarray,
    *,
    threads: int = 1,
    calibrate_timings: bool = True,
    repeats: int = 2,
) -> dict[str, Any]:
    """Client encrypts ``x`` [count, features], server runs, client decrypts. Measures it all.

    The server runs the batch ``repeats`` times; latency is the fastest run (the machines here
    are shared and noisy), and every run's counts must be the same.
    """
    count = int(x.shape[0])
    spec = ClientSpec.from_compiled(compiled)
    client = Client(spec, threads=threads)
    start = time.perf_counter()
    keys_bytes = client.evaluation_keys_bytes()
    keygen_s = time.perf_counter() - start
    start = time.perf_counter()
    server = Server(compiled.program.save(), keys_bytes, threads=threads)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    inputs = client.encrypt(x)
    encrypt_s = time.perf_counter() - start
    latencies = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        outputs = server.run(inputs)
        latencies.append(time.perf_counter() - start)
    latency_s = min(latencies)
    start = time.perf_counter()
    y = client.decrypt(outputs, count)
    decrypt_s = time.perf_counter() - start
    stats = server.last_stats
    groups = -(-count // int(compiled.program.samples_per_group))
    cost_rows = summarize_cost(compiled.program, groups)
    model_ops = merge_counts(cost_rows)
    run: dict[str, Any] = {
        "samples": count,
        "groups": groups,
        "outputs": y,
        "latency_s": latency_s,
        "latency_runs_s": latencies,
        "per_image_s": latency_s / count,
        "keygen_s": keygen_s,
        "server_setup_s": setup_s,
        "encrypt_s": encrypt_s,
        "decrypt_s": decrypt_s,
        "ops": stats["ops"],
        "ops_match_cost_model": stats["ops"] == model_ops,
        "layers": [
            {**row, "measured_ops": lay["ops"], "seconds": lay["seconds"]}
            for row, lay in zip(cost_rows, stats["layers"], strict=True)
        ],
        "memory": {
            "plaintext_bytes": server.plaintext_bytes,
            "evaluation_key_bytes": len(keys_bytes),
            "peak_ciphertext_bytes": int(stats["peak_ciphertext_bytes"]),
            "input_ciphertext_bytes": sum(int(c.byte_size) for c in inputs),
            # The process's peak so far (it only grows across runs in one process).
            "process_peak_rss_bytes": _peak_rss_bytes(),
        },
    }
    run["memory_bytes"] = (
        run["memory"]["plaintext_bytes"]
        + run["memory"]["evaluation_key_bytes"]
        + run["memory"]["peak_ciphertext_bytes"]
    )
    if calibrate_timings:
        timings = machine_timings(compiled.parameters, threads=threads)
        predicted = predict(compiled.program, timings, groups)
        run["predicted_latency_s"] = predicted["seconds"]
        run["prediction_error"] = (predicted["seconds"] - latency_s) / latency_s
    return run


@dataclass
class MainJobConfig:
    model: str = "mlp"
    tile: int = 16
    scheme: str = "P4E"
    # HE-PEx's first prune with a neuron target: dead neurons, gathered by the co-permutation
    # into whole dead tile rows, also remove their rotations (weight targets only remove
    # plaintext multiplies). Measured: benchmarks/runtime_pruned_vs_dense.py.
    target: str = "neuron"
    scope: str = "global"
    images: int = 1024
    threads: int = 1
    data_dir: str | None = None
    work_dir: Path = Path("results/runtime")
    out: Path = Path("results/main_job.json")
    plot: Path | None = Path("results/main_job.png")
    seed: int = 0
    retrain_epochs: int = 2


def _plaintext_outputs(model: nn.Module, x: np.ndarray, perm_in: Any, perm_out: Any) -> np.ndarray:
    xt = torch.as_tensor(x if perm_in is None else x[:, perm_in], dtype=torch.float32)
    with torch.no_grad():
        y: np.ndarray = model.eval()(xt).double().numpy()
    return y if perm_out is None else np.asarray(y[:, np.argsort(perm_out)])


def _main_job_model(cfg: MainJobConfig) -> PrunedModel:
    torch.manual_seed(cfg.seed)
    log.info("stage 1/4: model and %s pruning (cached after the first run)", cfg.scheme)
    return pruned_model(
        cfg.model,
        tile=cfg.tile,
        scheme=cfg.scheme,
        scope=cfg.scope,
        target=cfg.target,
        data_dir=cfg.data_dir,
        work_dir=cfg.work_dir,
        seed=cfg.seed,
        retrain_epochs=cfg.retrain_epochs,
    )


def compile_variants(pm: PrunedModel, tile: int) -> dict[str, CompiledModel]:
    """Dense and pruned in the tile layout, both on the dense model's parameters (the pruned
    one with the co-permutation's input and output permutations)."""
    dense = compile_model(pm.dense, layout="tile", tile=(tile, tile))
    pruned = compile_model(
        pm.pruned,
        layout="tile",
        tile=(tile, tile),
        parameters=dense.parameters,
        input_perm=pm.input_perm,
        output_perm=pm.output_perm,
    )
    return {"dense": dense, "pruned": pruned}


def main_job_bundles(cfg: MainJobConfig) -> dict[str, Path]:
    """The main job's deployable bundles (dense and pruned, ``WORK_DIR/bundles/<name>``), made
    without the encrypted runs (``fheprune serve`` serves them; the pruning is cached)."""
    variants = compile_variants(_main_job_model(cfg), cfg.tile)
    return {
        name: save_bundle(compiled, Path(cfg.work_dir) / "bundles" / name)
        for name, compiled in variants.items()
    }


def run_main_job(cfg: MainJobConfig) -> dict[str, Any]:
    pm = _main_job_model(cfg)
    if pm.experiment.task(cfg.model) != "classification":
        raise InputError(
            f"the main job reports classification accuracy; {cfg.model!r} is not a classifier "
            "(benchmarks/runtime_pruned_vs_dense.py measures autoencoders)"
        )
    xs, ys = [], []
    for xb, yb in pm.experiment.loaders(cfg.model).test:
        xs.append(xb.reshape(xb.shape[0], -1).double().numpy())
        ys.append(yb.numpy())
        if sum(len(v) for v in ys) >= cfg.images:
            break
    x = np.concatenate(xs)[: cfg.images]
    labels = np.concatenate(ys)[: cfg.images]

    log.info("stage 2/4: compile dense and pruned")
    variants = compile_variants(pm, cfg.tile)
    dense, pruned = variants["dense"], variants["pruned"]
    report: dict[str, Any] = {
        "model": cfg.model,
        "dataset": "mnist",
        "scheme": pm.scheme,
        "tile": [cfg.tile, cfg.tile],
        "images": int(x.shape[0]),
        "parameters": dense.choice.message,
        "pruning": {
            "tile_sparsity": pm.tile_sparsity,
            "weight_sparsity": pm.weight_sparsity,
            "selection": "validation",
            "val_baseline_accuracy": pm.val_baseline_metric,
            "val_pruned_accuracy": pm.val_metric,
            "val_degradation": pm.val_degradation,
            "baseline_accuracy": pm.test_baseline_metric,
            "pruned_accuracy": pm.test_metric,
            "degradation": pm.test_degradation,
        },
        "variants": {},
        "seed": cfg.seed,
        "machine": machine_info(threads=cfg.threads, torch_threads=torch.get_num_threads()),
    }
    for i, (name, compiled, model, pin, pout) in enumerate(
        [
            ("dense", dense, pm.dense, None, None),
            ("pruned", pruned, pm.pruned, pm.input_perm, pm.output_perm),
        ]
    ):
        log.info("stage %d/4: encrypted run, %s (%d images)", 3 + i, name, x.shape[0])
        bundle = save_bundle(compiled, Path(cfg.work_dir) / "bundles" / name)
        run = encrypted_run(compiled, x, threads=cfg.threads)
        run["bundle"] = str(bundle)
        y = run.pop("outputs")
        plain = _plaintext_outputs(model, x, pin, pout)
        run["agreement"] = float(np.mean(np.argmax(y, 1) == np.argmax(plain, 1)))
        run["max_abs_error"] = float(np.max(np.abs(y - plain)))
        run["accuracy_encrypted"] = float(np.mean(np.argmax(y, 1) == labels))
        run["accuracy_plaintext"] = float(np.mean(np.argmax(plain, 1) == labels))
        report["variants"][name] = run
    d, p = report["variants"]["dense"], report["variants"]["pruned"]
    report["speedup"] = d["latency_s"] / p["latency_s"]
    report["memory_ratio"] = p["memory_bytes"] / d["memory_bytes"]
    write_json_atomic(cfg.out, report)
    if cfg.plot is not None:
        _plot(report, cfg.plot)
    return report


def format_table(report: dict[str, Any]) -> str:
    d, p = report["variants"]["dense"], report["variants"]["pruned"]
    pr = report["pruning"]
    rows = [
        (
            "accuracy, validation (chose)",
            f"{pr['val_baseline_accuracy']:.4f}",
            f"{pr['val_pruned_accuracy']:.4f}",
        ),
        (
            "accuracy, full test set",
            f"{pr['baseline_accuracy']:.4f}",
            f"{pr['pruned_accuracy']:.4f}",
        ),
        (
            "accuracy (plaintext)",
            f"{d['accuracy_plaintext']:.4f}",
            f"{p['accuracy_plaintext']:.4f}",
        ),
        (
            "accuracy (encrypted)",
            f"{d['accuracy_encrypted']:.4f}",
            f"{p['accuracy_encrypted']:.4f}",
        ),
        ("argmax agreement", f"{d['agreement']:.4f}", f"{p['agreement']:.4f}"),
        ("max |logit error|", f"{d['max_abs_error']:.2e}", f"{p['max_abs_error']:.2e}"),
        ("plaintext mults", str(d["ops"]["mul_plain"]), str(p["ops"]["mul_plain"])),
        ("rotations", str(d["ops"]["rotate"]), str(p["ops"]["rotate"])),
        ("rescales", str(d["ops"]["rescale"]), str(p["ops"]["rescale"])),
        ("ops == cost model", str(d["ops_match_cost_model"]), str(p["ops_match_cost_model"])),
        ("server latency (s)", f"{d['latency_s']:.3f}", f"{p['latency_s']:.3f}"),
        ("per image (ms)", f"{1e3 * d['per_image_s']:.2f}", f"{1e3 * p['per_image_s']:.2f}"),
        (
            "predicted latency (s)",
            f"{d.get('predicted_latency_s', float('nan')):.3f}",
            f"{p.get('predicted_latency_s', float('nan')):.3f}",
        ),
        (
            "plaintexts (MiB)",
            f"{d['memory']['plaintext_bytes'] / 2**20:.1f}",
            f"{p['memory']['plaintext_bytes'] / 2**20:.1f}",
        ),
        (
            "eval keys (MiB)",
            f"{d['memory']['evaluation_key_bytes'] / 2**20:.1f}",
            f"{p['memory']['evaluation_key_bytes'] / 2**20:.1f}",
        ),
        (
            "memory total (MiB)",
            f"{d['memory_bytes'] / 2**20:.1f}",
            f"{p['memory_bytes'] / 2**20:.1f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"{report['model']} on MNIST, {report['scheme']} at "
        f"{report['tile'][0]}x{report['tile'][1]} tiles: tile sparsity "
        f"{100 * report['pruning']['tile_sparsity']:.1f}%, "
        f"{report['images']} encrypted images (degradation: validation "
        f"{100 * pr['val_degradation']:.2f}%, which chose the fraction; full test set "
        f"{100 * pr['degradation']:.2f}%)",
        f"parameters: {report['parameters']}",
        f"{'':{width}}  {'dense':>12}  {'pruned':>12}",
    ]
    lines += [f"{a:{width}}  {b:>12}  {c:>12}" for a, b, c in rows]
    lines.append(
        # Two significant digits: one run on a shared machine moves by about 10%.
        f"pruned vs dense: {sig2(report['speedup'])}x faster, memory "
        f"{sig2(report['memory_ratio'])}x (one run; benchmarks/runtime_pruned_vs_dense.py "
        "repeats it)"
    )
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a test/benchmark extra
        log.warning("matplotlib is not installed; skipping the plot")
        return
    variants = ["dense", "pruned"]
    colors = ["#888", "#2a7"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    v = report["variants"]
    axes[0].bar(variants, [v[k]["latency_s"] for k in variants], color=colors)
    axes[0].set_title("server latency (s)")
    axes[1].bar(variants, [v[k]["memory_bytes"] / 2**20 for k in variants], color=colors)
    axes[1].set_title("memory (MiB)")
    ops = ["mul_plain", "rotate", "rescale"]
    for j, k in enumerate(variants):
        axes[2].bar(
            np.arange(len(ops)) + 0.4 * j,
            [v[k]["ops"][o] for o in ops],
            width=0.4,
            label=k,
            color=colors[j],
        )
    axes[2].set_xticks(np.arange(len(ops)) + 0.2, ops)
    axes[2].set_yscale("log")
    axes[2].set_title("operations")
    axes[2].legend()
    fig.suptitle(
        f"{report['model']} MNIST, {report['scheme']} {report['tile'][0]}x{report['tile'][1]}: "
        f"{report['speedup']:.2f}x faster pruned"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
