"""Encrypted latency and memory, dense vs HE-PEx-pruned, on our CKKS runtime (HE-PEx Fig. 11).

    python benchmarks/runtime_pruned_vs_dense.py [--quick] [--resume] [--out PATH] [options]

For the MLP and the AE-Denoiser on MNIST and tile shapes 8, 16, 32 and 64 it prunes the trained
baseline with P4E (global scope) within HE-PEx's 2.5% degradation budget (cached as ``.npz`` in
``<work-dir>/runtime``, so only the first run prunes), compiles the dense model with automatic
parameters and the pruned one with the same parameters and its co-permutations, and runs both
encrypted (client encrypts, server computes on ciphertexts, client decrypts). Each run records
server latency, memory (plaintexts + evaluation keys + peak ciphertexts), operation counts
against the cost model and its lower bounds, predicted latency, and quality: classifier
accuracy (encrypted argmax vs labels) and argmax agreement with the plaintext model;
AE-Denoiser MSE against the clean target and max |error| vs the plaintext model.

The pruning fraction is chosen on the validation split (held out of the training images) and
the test degradation of the chosen model is reported beside it. Dense and pruned runs are
interleaved (repeat i of each back to back); the speedup is the median of the paired ratios,
with its interquartile range.

The outside baseline is the same dense MLP, lowered as our compiler lowers it (``mm`` + bias
per layer, a polynomial activation folded into a square, or into the next layer when it is
linear, as the HE-PEx MLP's degree-2 tanh fit is), on TenSEAL, in both of its modes,
each labelled: ``CKKSTensor`` with ``batch=True`` (one image per slot, N/2 images per
ciphertext: its throughput mode, compared with our batches) and ``CKKSVector`` (one image per
ciphertext, compared with our one-image latency). Each runs on the smallest 128-bit ring and
chain on which its operations run (a tiny dry run). Only server-side evaluation is timed.

``--target``: P4E's first-prune target. ``auto`` (the default) prunes whole neurons of the MLP
(the main job's choice) and single weights of the AE-Denoiser; ``weight`` or ``neuron`` apply
one target everywhere, and their results go to ``*_weight.json`` / ``*_neuron.json``.

Writes ``--out`` (JSON, atomically after every run; ``--resume`` skips runs already in it) and a
Markdown summary beside it. ``--quick``: both models at 16x16 tiles only, 64 images, one
repeat, a short pruning schedule in its own work directory, 4 single-image TenSEAL images and
one batched TenSEAL run (a few minutes on 2 cores from scratch; TenSEAL is most of it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fheprune.reporting import machine_info, quartiles, sig2, write_json_atomic
from fheprune.runtime.compiler import compile_model
from fheprune.runtime.pipeline import (
    PrunedModel,
    _plaintext_outputs,
    compile_variants,
    encrypted_run,
    pruned_model,
)

LOG = logging.getLogger("runtime_pruned_vs_dense")

MODELS = ("mlp", "ae-denoiser")
TILES = (8, 16, 32, 64)
SCHEME = "P4E"
SCOPE = "global"
DEFAULT_IMAGES = 256
QUICK_IMAGES = 64
# TenSEAL's CKKSVector.mm takes 12-20 s per MNIST image on one core (784 diagonals, each
# rotated with power-of-two Galois keys only), so its subset is small.
DEFAULT_TENSEAL_IMAGES = 16
QUICK_TENSEAL_IMAGES = 4
# TenSEAL's batched mode fills the slots of its ring (N/2 images; 4096 at N = 8192): the
# test images it reads, cut to N/2 once its parameters are known.
TENSEAL_BATCH_IMAGES = 8192
BATCH_IMAGES_KEY = "slots"
DEFAULT_REPEATS = 5
QUICK_REPEATS = 1
# Quick mode: a short pruning schedule (its caches live in their own work directory).
QUICK_SCHEDULE: dict[str, Any] = {
    "train_epochs": 2,
    "retrain_epochs": 1,
    "limit": 10000,
    "fractions": (0.5, 0.8, 0.9),
}
FULL_SCHEDULE: dict[str, Any] = {
    "train_epochs": None,  # Table 2 schedule (10 epochs)
    "retrain_epochs": 2,
    "limit": None,
    "fractions": (0.8, 0.85, 0.9, 0.93, 0.95, 0.97),
}
TENSEAL_SCALE_BITS = 40
# 128-bit bound on log2(q*P) (HomomorphicEncryption.org, as SEAL enforces it) per ring degree.
TENSEAL_MAX_BITS = {8192: 218, 16384: 438}
# HE-PEx Fig. 11: pruned / dense latency of the AE-Denoiser over tile shapes.
PAPER_AE_LATENCY_RATIO = (0.65, 0.90)
TARGETS = {
    "mlp_pruned_speedup_min": 2.0,
    "ae_pruned_over_dense_max": 0.65,
    "ours_over_tenseal_speedup_min": 3.0,
}


# --------------------------------------------------------------------------- data
def test_images(pm: PrunedModel, model: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` test inputs [count, 784] (float64) and their targets.

    Targets: int labels for the classifier; the clean images [count, 784] for the denoiser
    (its loader yields noisy inputs and clean targets).
    """
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    have = 0
    test = pm.experiment.loaders(model).test
    assert test is not None
    for xb, yb in test:
        xs.append(xb.reshape(xb.shape[0], -1).double().numpy())
        ys.append(yb.reshape(yb.shape[0], -1).double().numpy() if yb.ndim > 1 else yb.numpy())
        have += len(xb)
        if have >= count:
            break
    x = np.ascontiguousarray(np.concatenate(xs)[:count])
    y = np.concatenate(ys)[:count]
    if len(x) < count:
        LOG.warning("only %d test images available (asked for %d)", len(x), count)
    return x, y


AUTO_TARGETS = {"mlp": "neuron", "ae-denoiser": "weight"}


def target_for(model: str, target: str) -> str:
    """P4E's first-prune target for ``model`` under ``--target``."""
    return AUTO_TARGETS.get(model, "weight") if target == "auto" else target


def quality(task: str, y: np.ndarray, plain: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """accuracy / agreement as the report defines them for the model's task."""
    max_err = float(np.max(np.abs(y - plain)))
    if task == "classification":
        return {
            "accuracy": float(np.mean(np.argmax(y, 1) == target)),
            "accuracy_metric": "encrypted argmax accuracy vs labels",
            "agreement": float(np.mean(np.argmax(y, 1) == np.argmax(plain, 1))),
            "agreement_metric": "argmax agreement, encrypted vs plaintext",
            "plaintext_accuracy": float(np.mean(np.argmax(plain, 1) == target)),
            "max_abs_error": max_err,
        }
    return {
        "accuracy": float(np.mean((y - target) ** 2)),
        "accuracy_metric": "encrypted reconstruction MSE vs clean target (lower is better)",
        "agreement": max_err,
        "agreement_metric": "max |encrypted - plaintext| output",
        "plaintext_accuracy": float(np.mean((plain - target) ** 2)),
        "max_abs_error": max_err,
    }


# --------------------------------------------------------------------------- our runtime
def run_key(run: dict[str, Any]) -> str:
    """What makes two runs the same measurement (``--resume`` skips runs whose key is done).

    TenSEAL's batched run always fills its ring's slots, so its image count is not part of it.
    """
    tile = run.get("tile")
    tile_s = "-" if tile is None else f"{tile[0]}x{tile[1]}"
    images = BATCH_IMAGES_KEY if run["variant"] == "tenseal-batched" else run["images"]
    return f"{run['model']}|{run['layout']}|{tile_s}|{run['variant']}|{images}"


def _ours_runs(
    model: str,
    tile: int,
    pm: PrunedModel,
    x: np.ndarray,
    target: np.ndarray,
    args: argparse.Namespace,
    todo: set[str],
) -> list[dict[str, Any]]:
    """Dense and pruned encrypted runs at one tile shape (repeats interleaved; median kept)."""
    task = pm.experiment.task(model)
    load_1m = os.getloadavg()[0]
    start = time.perf_counter()
    compiled = compile_variants(pm, tile)
    dense, pruned = compiled["dense"], compiled["pruned"]
    compile_s = time.perf_counter() - start
    LOG.info(
        "%s %dx%d: %s (compiled both in %.1f s)", model, tile, tile, dense.choice.message, compile_s
    )
    variants = [
        ("dense", dense, _plaintext_outputs(pm.dense, x, None, None)),
        ("pruned", pruned, _plaintext_outputs(pm.pruned, x, pm.input_perm, pm.output_perm)),
    ]
    variants = [v for v in variants if v[0] in todo]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for rep in range(args.repeats):
        for name, compiled, _ in variants:
            run = encrypted_run(compiled, x, threads=args.threads)
            LOG.info(
                "%s %dx%d %s, repeat %d/%d: server %.3f s (%.2f ms/image), memory %.1f MiB",
                model,
                tile,
                tile,
                name,
                rep + 1,
                args.repeats,
                run["latency_s"],
                1e3 * run["per_image_s"],
                run["memory_bytes"] / 2**20,
            )
            samples[name].append(run)
    out = []
    for name, compiled, plain in variants:
        reps = samples[name]
        latencies = [r["latency_s"] for r in reps]
        med = sorted(reps, key=lambda r: r["latency_s"])[(len(reps) - 1) // 2]
        y = med.pop("outputs")
        for r in reps:
            r.pop("outputs", None)
        rot_lb = sum(float(lay["rotation_lower_bound"]) for lay in med["layers"])
        mul_lb = sum(float(lay["mul_plain_lower_bound"]) for lay in med["layers"])
        row: dict[str, Any] = {
            "model": model,
            "task": task,
            "layout": "tile",
            "tile": [tile, tile],
            "variant": name,
            "images": int(x.shape[0]),
            "threads": args.threads,
            "samples_per_group": int(compiled.program.samples_per_group),
            "groups": med["groups"],
            "parameters": dense.choice.message,
            "latency_s": float(statistics.median(latencies)),
            "latency_repeats_s": latencies,
            "per_image_s": float(statistics.median(latencies)) / int(x.shape[0]),
            "memory_bytes": int(med["memory_bytes"]),
            "memory": med["memory"],
            "ops": med["ops"],
            "ops_match_cost_model": bool(all(r["ops_match_cost_model"] for r in reps)),
            "rotation_lower_bound": rot_lb,
            "mul_plain_lower_bound": mul_lb,
            "predicted_latency_s": med.get("predicted_latency_s"),
            "prediction_error": (
                None
                if med.get("predicted_latency_s") is None
                else (med["predicted_latency_s"] - statistics.median(latencies))
                / statistics.median(latencies)
            ),
            "keygen_s": med["keygen_s"],
            "server_setup_s": med["server_setup_s"],
            "encrypt_s": med["encrypt_s"],
            "decrypt_s": med["decrypt_s"],
            "compile_s": compile_s,
            "layers": [
                {
                    k: lay[k]
                    for k in (
                        "name",
                        "kind",
                        "units",
                        "total_units",
                        "ops",
                        "seconds",
                        "rotation_lower_bound",
                        "mul_plain_lower_bound",
                        "plaintext_bytes",
                    )
                }
                for lay in med["layers"]
            ],
            **quality(task, y, plain, target),
            "loadavg_1m_before": load_1m,
            "pruning": {
                "scheme": pm.scheme,
                "fraction": pm.fraction,
                "selection": "validation",
                # What this run asked for; a cached .npz keeps the choice it was made with.
                "fractions_requested": list(args.fractions_requested),
                "tile_sparsity": pm.tile_sparsity,
                "weight_sparsity": pm.weight_sparsity,
                "val_baseline_metric": pm.val_baseline_metric,
                "val_pruned_metric": pm.val_metric,
                "val_degradation": pm.val_degradation,
                "baseline_metric": pm.test_baseline_metric,
                "pruned_metric": pm.test_metric,
                "degradation": pm.test_degradation,
            },
        }
        row["tile_sparsity"] = pm.tile_sparsity
        row["val_degradation"] = pm.val_degradation
        row["degradation"] = pm.test_degradation
        out.append(row)
    return out


def ours_one_image(
    pm: PrunedModel, x: np.ndarray, tiles: Sequence[int], threads: int
) -> dict[str, Any]:
    """Our dense MLP on a single image (one group) per tile: latency, not amortized throughput.

    The fastest tile is the headline (median of 5 runs each, all kept).
    """
    per_tile = {}
    samples: dict[str, list[float]] = {}
    for tile in tiles:
        compiled = compile_model(pm.dense, layout="tile", tile=(tile, tile))
        lat: list[float] = []
        samples[f"{tile}x{tile}"] = lat
        for _ in range(5):
            run = encrypted_run(compiled, x[:1], threads=threads, calibrate_timings=False)
            lat.append(run["latency_s"])
        per_tile[f"{tile}x{tile}"] = float(statistics.median(lat))
        LOG.info(
            "ours dense MLP, one image at %dx%d: %.1f ms",
            tile,
            tile,
            1e3 * per_tile[f"{tile}x{tile}"],
        )
    best = min(tiles, key=lambda t: per_tile[f"{t}x{t}"])
    return {
        "tile": [best, best],
        "latency_s": per_tile[f"{best}x{best}"],
        "per_tile_s": per_tile,
        "samples_s": samples,
        "statistic": "median of 5",
    }


# --------------------------------------------------------------------------- TenSEAL
def _mlp_weights(model: torch.nn.Module) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The network as our compiler lowers it: ("linear", W [out, in], b) and ("square", ...)
    steps, each activation folded exactly as ``fold_activations`` folds it (a linear one,
    like the HE-PEx MLP's degree-2 tanh fit, disappears into the next layer). TenSEAL then
    computes the same network ours does, at the same depth."""
    from fheprune.runtime.compiler import LinearStep, fold_activations, lower_model

    empty = np.zeros(0)
    return [
        ("linear", s.weight, s.bias) if isinstance(s, LinearStep) else ("square", empty, empty)
        for s in fold_activations(lower_model(model))
    ]


def _tenseal_candidates() -> list[tuple[int, list[int]]]:
    """(N, chain) with scale 2^40, fewest levels first, N=8192 before 16384; all 128-bit."""
    out = []
    for n, budget in TENSEAL_MAX_BITS.items():
        for levels in range(1, 6):
            outer = min(60, (budget - TENSEAL_SCALE_BITS * levels) // 2)
            if outer <= TENSEAL_SCALE_BITS:  # q0 must hold the scale plus headroom
                break
            out.append((n, [outer] + [TENSEAL_SCALE_BITS] * levels + [outer]))
    return out


def _tenseal_context(ts: Any, n: int, chain: list[int], threads: int) -> Any:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=chain, n_threads=threads)
    ctx.global_scale = 2.0**TENSEAL_SCALE_BITS
    ctx.generate_galois_keys()
    return ctx


#: TenSEAL's two ways to run the MLP. "single": CKKSVector, one image per ciphertext (vector-
#: matrix products by rotations). "batched": CKKSTensor with batch=True, one image per slot
#: (N/2 images per ciphertext, one ciphertext per input feature; products by plaintext
#: scalars, no rotation): TenSEAL's throughput mode, the one to compare our batches with.
TENSEAL_MODES = ("single", "batched")


def _tenseal_encrypt(ts: Any, ctx: Any, x: np.ndarray, mode: str) -> Any:
    if mode == "single":
        return ts.ckks_vector(ctx, x.tolist())
    return ts.ckks_tensor(ctx, ts.plain_tensor(x), batch=True).reshape([1, x.shape[1]])


def _tenseal_forward(enc: Any, steps: list[tuple[str, Any, Any]]) -> Any:
    """Server side: the steps in order, ``mm`` + bias or ``square`` (TenSEAL's API only)."""
    for kind, weight, bias in steps:
        enc = enc.square() if kind == "square" else enc.mm(weight) + bias
    return enc


def _tenseal_inputs(
    ts: Any, ctx: Any, steps: list[tuple[str, np.ndarray, np.ndarray]], mode: str
) -> list[tuple[str, Any, Any]]:
    """The steps with weights as TenSEAL takes them ([in, out] lists) and biases as ``mode``
    adds them.

    Single: in TenSEAL 0.3.x a ``CKKSVector + list`` followed by ``mm`` gives a wrong product
    (about 1e-1 absolute error, while ``mm`` of a fresh or ``mm``-produced vector is exact to
    1e-7), so a bias that a later ``mm`` reads is a vector the server encrypts once with the
    public key (same cost class: one ciphertext addition per image). Batched: plain [1, out]
    tensors.
    """
    out: list[tuple[str, Any, Any]] = []
    last_mm = max(i for i, s in enumerate(steps) if s[0] == "linear")
    for i, (kind, weight, bias) in enumerate(steps):
        if kind == "square":
            out.append((kind, None, None))
        elif mode == "batched":
            out.append((kind, weight.T.tolist(), ts.plain_tensor(bias.reshape(1, -1))))
        elif i < last_mm:
            out.append((kind, weight.T.tolist(), ts.ckks_vector(ctx, bias.tolist())))
        else:
            out.append((kind, weight.T.tolist(), bias.tolist()))
    return out


def _tenseal_outputs(res: Any, mode: str, count: int) -> np.ndarray:
    out = np.asarray(res.decrypt() if mode == "single" else res.decrypt().tolist())
    return out.reshape(count, -1)


def _reference(steps: list[tuple[str, np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    for kind, weight, bias in steps:
        x = x * x if kind == "square" else x @ weight.T + bias
    return x


def tenseal_parameters(
    ts: Any, steps: list[tuple[str, np.ndarray, np.ndarray]], mode: str, threads: int
) -> dict[str, Any]:
    """The smallest 128-bit chain on which ``mode`` runs ``steps``' operations (a dry run on
    a tiny network of the same shape: same operations, same depth)."""
    rng = np.random.default_rng(0)
    widths = [8] + [4] * sum(1 for k, _, _ in steps if k == "linear")
    tiny: list[tuple[str, np.ndarray, np.ndarray]] = []
    layer = 0
    for kind, _, _ in steps:
        if kind == "square":
            tiny.append(("square", np.zeros(0), np.zeros(0)))
            continue
        w = rng.uniform(-0.5, 0.5, (widths[layer + 1], widths[layer]))
        tiny.append(("linear", w, rng.uniform(-0.5, 0.5, widths[layer + 1])))
        layer += 1
    x = rng.uniform(0, 1, (1 if mode == "single" else 3, 8))
    want = _reference(tiny, x)
    tried = []
    for n, chain in _tenseal_candidates():
        try:
            ctx = _tenseal_context(ts, n, chain, threads)
            enc = _tenseal_encrypt(ts, ctx, x[0] if mode == "single" else x, mode)
            res = _tenseal_forward(enc, _tenseal_inputs(ts, ctx, tiny, mode))
            err = float(np.max(np.abs(_tenseal_outputs(res, mode, len(x)) - want)))
            if not err < 1e-3:
                raise ValueError(f"max error {err:.2e}")
        except Exception as exc:  # TenSEAL raises ValueError for level/scale/security problems
            tried.append(
                {"poly_degree": n, "chain": chain, "error": f"{type(exc).__name__}: {exc}"}
            )
            LOG.info("TenSEAL %s N=%d chain %s: fails (%s)", mode, n, chain, exc)
            continue
        tried.append({"poly_degree": n, "chain": chain, "error": None, "tiny_max_error": err})
        LOG.info("TenSEAL %s N=%d chain %s: runs the network's operations", mode, n, chain)
        return {
            "poly_degree": n,
            "chain": chain,
            "scale_bits": TENSEAL_SCALE_BITS,
            "tiny_net_max_error": err,
            "tried": tried,
        }
    raise RuntimeError(f"no TenSEAL chain runs the MLP in {mode} mode: {tried}")


def tenseal_run(
    pm: PrunedModel,
    x: np.ndarray,
    labels: np.ndarray,
    threads: int,
    mode: str,
    repeats: int = 1,
) -> dict[str, Any]:
    """The dense MLP on TenSEAL in ``mode``; server-side seconds only.

    Single: each image is one timed forward (its spread over images is the spread reported).
    Batched: ``x`` is one batch of up to N/2 images, timed ``repeats`` times.
    """
    import tenseal as ts

    steps = _mlp_weights(pm.dense)
    params = tenseal_parameters(ts, steps, mode, threads)
    if mode == "batched":
        x, labels = x[: params["poly_degree"] // 2], labels[: params["poly_degree"] // 2]
    start = time.perf_counter()
    ctx = _tenseal_context(ts, params["poly_degree"], params["chain"], threads)
    server_steps = _tenseal_inputs(ts, ctx, steps, mode)  # server side, public key, once
    keygen_s = time.perf_counter() - start
    plain = _plaintext_outputs(pm.dense, x, None, None)
    load_1m = os.getloadavg()[0]
    seconds: list[float] = []
    if mode == "single":
        outs = []
        for i in range(len(x)):
            enc = _tenseal_encrypt(ts, ctx, x[i], mode)
            start = time.perf_counter()
            res = _tenseal_forward(enc, server_steps)
            seconds.append(time.perf_counter() - start)
            outs.append(_tenseal_outputs(res, mode, 1)[0])
            LOG.info("TenSEAL single image %d/%d: %.2f s", i + 1, len(x), seconds[-1])
        y = np.stack(outs)
        per_image = seconds
    else:
        enc = _tenseal_encrypt(ts, ctx, x, mode)
        for rep in range(repeats):
            start = time.perf_counter()
            res = _tenseal_forward(enc, server_steps)
            seconds.append(time.perf_counter() - start)
            LOG.info(
                "TenSEAL batched, %d images, repeat %d/%d: %.1f s (%.2f ms/image)",
                len(x), rep + 1, repeats, seconds[-1], 1e3 * seconds[-1] / len(x),
            )  # fmt: skip
        y = _tenseal_outputs(res, mode, len(x))
        per_image = [t / len(x) for t in seconds]
    q1, q3 = quartiles(per_image)
    return {
        "model": "mlp",
        "task": "classification",
        "layout": f"tenseal-{'ckksvector' if mode == 'single' else 'ckkstensor-batched'}",
        "tile": None,
        "variant": f"tenseal-{mode}",
        "mode": mode,
        "images": len(x),
        "repeats": len(seconds) if mode == "batched" else 1,
        "threads": threads,
        "tenseal_version": ts.__version__,
        "parameters": params,
        "latency_s": float(sum(seconds)) if mode == "single" else float(np.median(seconds)),
        "per_image_s": float(np.median(per_image)),
        "per_image_iqr_s": [q1, q3],
        "per_image_times_s": per_image,
        "keygen_s": keygen_s,
        "timed": (
            "server side only: "
            + ", ".join("square" if k == "square" else "mm + bias" for k, _, _ in steps)
            + " (activations folded as our compiler folds them); "
            + (
                "one image per ciphertext, one timed forward per image"
                if mode == "single"
                else f"one batch of {len(x)} images in the slots, timed {len(seconds)} times"
            )
            + "; encryption and decryption excluded"
        ),
        "loadavg_1m_before": load_1m,
        **quality("classification", y, plain, labels),
    }


# --------------------------------------------------------------------------- report
def comparisons(runs: Sequence[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    by = {(r["model"], None if r["tile"] is None else r["tile"][0], r["variant"]): r for r in runs}
    pvd: dict[str, Any] = {}
    for (model, tile, variant), d in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        if variant != "dense" or (model, tile, "pruned") not in by:
            continue
        p = by[(model, tile, "pruned")]
        # Paired: repeat i of dense and of pruned ran back to back (interleaved).
        paired = [
            a / b for a, b in zip(d["latency_repeats_s"], p["latency_repeats_s"], strict=False)
        ]
        pvd[f"{model}@{tile}x{tile}"] = {
            "latency_ratio": p["latency_s"] / d["latency_s"],
            "speedup": statistics.median(paired),
            "speedup_iqr": list(quartiles(paired)),
            "speedup_pairs": len(paired),
            "memory_ratio": p["memory_bytes"] / d["memory_bytes"],
            "plaintext_memory_ratio": p["memory"]["plaintext_bytes"]
            / d["memory"]["plaintext_bytes"],
            "rotation_ratio": p["ops"]["rotate"] / max(1, d["ops"]["rotate"]),
            "mul_plain_ratio": p["ops"]["mul_plain"] / max(1, d["ops"]["mul_plain"]),
            "tile_sparsity": p["tile_sparsity"],
            "val_degradation": p.get("val_degradation"),
            "degradation": p["degradation"],
        }
    out: dict[str, Any] = {"pruned_vs_dense": pvd}
    dense_mlp = {k[1]: r for k, r in by.items() if k[0] == "mlp" and k[2] == "dense"}
    batched = by.get(("mlp", None, "tenseal-batched"))
    if batched is not None and dense_mlp:
        best_t = min(dense_mlp, key=lambda t: dense_mlp[t]["per_image_s"])
        best = dense_mlp[best_t]
        out["tenseal_batched"] = {
            "compares": "throughput: our dense batch (several images per ciphertext group) "
            "against TenSEAL's CKKSTensor with one image per slot (N/2 images per ciphertext)",
            "tenseal_per_image_s": batched["per_image_s"],
            "tenseal_images": batched["images"],
            "tenseal_parameters": {k: batched["parameters"][k] for k in ("poly_degree", "chain")},
            "best_tile": [best_t, best_t],
            "ours_dense_per_image_s": best["per_image_s"],
            "ours_images": best["images"],
            "speedup_vs_tenseal": batched["per_image_s"] / best["per_image_s"],
            "per_tile": {
                f"{t}x{t}": {
                    "ours_dense_per_image_s": r["per_image_s"],
                    "speedup_vs_tenseal": batched["per_image_s"] / r["per_image_s"],
                }
                for t, r in sorted(dense_mlp.items())
            },
        }
    single = by.get(("mlp", None, "tenseal-single"))
    one = extra.get("ours_one_image")
    if single is not None and one is not None:
        out["tenseal_single"] = {
            "compares": "latency of one image: ours with one image in the program against "
            "TenSEAL's CKKSVector, one image per ciphertext",
            "tenseal_per_image_s": single["per_image_s"],
            "tenseal_images": single["images"],
            "tenseal_parameters": {k: single["parameters"][k] for k in ("poly_degree", "chain")},
            "ours_one_image_latency_s": one["latency_s"],
            "ours_one_image_tile": one["tile"],
            "speedup_vs_tenseal": single["per_image_s"] / one["latency_s"],
        }
    return out


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _iqr_text(iqr: Sequence[float]) -> str:
    return f"{sig2(iqr[0])}-{sig2(iqr[1])}"


def _with_iqr(run: dict[str, Any]) -> str:
    lo, hi = quartiles(run["latency_repeats_s"])
    return f"{run['latency_s']:.3f} [{lo:.3f}-{hi:.3f}]"


def _budget_text(cfg: dict[str, Any]) -> str:
    sch = cfg.get("schedule", {})
    train = sch.get("train_epochs")
    return (
        f"baseline {'Table 2 schedule (10 epochs)' if train is None else f'{train} epoch(s)'}, "
        f"{sch.get('retrain_epochs')} retrain epoch(s) per P4E retrain step, no distillation, "
        f"fractions {sch.get('fractions')}"
    )


def _tenseal_markdown(comp: dict[str, Any], by: dict[Any, dict[str, Any]]) -> list[str]:
    """Ours against TenSEAL, each mode labelled: batched against our batches (throughput),
    single against our one-image program (latency)."""
    lines: list[str] = []
    ts_b, ts_s = comp.get("tenseal_batched"), comp.get("tenseal_single")
    if ts_b is None and ts_s is None:
        return lines
    lines += [
        "## Dense MLP: ours vs TenSEAL",
        "",
        "TenSEAL computes the same network as ours (activations folded the way our compiler "
        "folds them), on the smallest 128-bit chain its operations run on (a dry run); "
        "server-side seconds only.",
        "",
        "| comparison | TenSEAL mode | TenSEAL N, chain | TenSEAL per image | ours per image "
        "| speedup |",
        "|---|---|---|---|---|---|",
    ]
    if ts_b is not None:
        run = by[("mlp", None, "tenseal-batched")]
        t = ts_b["best_tile"][0]
        prm = ts_b["tenseal_parameters"]
        lines.append(
            f"| throughput (batched) | CKKSTensor batch=True, {run['images']} images per "
            f"ciphertext, {run['repeats']} repeat(s) | {prm['poly_degree']}, {prm['chain']} "
            f"| {1e3 * ts_b['tenseal_per_image_s']:.2f} ms | "
            f"{1e3 * ts_b['ours_dense_per_image_s']:.2f} ms ({t}x{t} tiles, "
            f"{ts_b['ours_images']} images) | {sig2(ts_b['speedup_vs_tenseal'])}x |"
        )
    if ts_s is not None:
        run = by[("mlp", None, "tenseal-single")]
        t = ts_s["ours_one_image_tile"][0]
        prm = ts_s["tenseal_parameters"]
        lines.append(
            f"| latency (one image) | CKKSVector, one image per ciphertext, {run['images']} "
            f"images | {prm['poly_degree']}, {prm['chain']} "
            f"| {ts_s['tenseal_per_image_s']:.2f} s | "
            f"{1e3 * ts_s['ours_one_image_latency_s']:.1f} ms ({t}x{t} tiles, one image) "
            f"| {sig2(ts_s['speedup_vs_tenseal'])}x |"
        )
    lines.append("")
    return lines


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    comp = report["comparisons"]
    cfg = report["config"]
    targets = cfg.get("targets") or {}
    target_text = (
        ", ".join(f"{t} target for {m}" for m, t in targets.items())
        if targets
        else f"{cfg.get('target', 'weight')} target"
    )
    lines = [
        f"# Encrypted inference: dense vs HE-PEx-pruned (P4E, global; {target_text}), MNIST",
        "",
        f"{cfg['images']} images per run, {cfg['threads']} thread(s), median of "
        f"{cfg['repeats']} interleaved repeat(s) (IQR in brackets; the speedup is the median "
        "of the paired dense/pruned ratios); server latency only (keys, encryption, decryption "
        "excluded). Memory = plaintexts + evaluation keys + peak ciphertexts on the server. "
        "Each fraction was chosen on the validation split; the degradation shown is on test. "
        f"Training budget, every variant: {_budget_text(cfg)}."
        + (" Quick mode (short pruning schedule)." if cfg["quick"] else ""),
        "",
    ]
    by = {(r["model"], None if r["tile"] is None else r["tile"][0], r["variant"]): r for r in runs}
    for model in cfg["models"]:
        tiles = [t for t in cfg["tiles"] if (model, t, "dense") in by or (model, t, "pruned") in by]
        if not tiles:
            continue
        cls = by.get((model, tiles[0], "dense"), {}).get("task", "classification")
        acc = "accuracy" if cls == "classification" else "MSE"
        agr = "agreement" if cls == "classification" else "max abs err"
        lines += [
            f"## {model}",
            "",
            "| tile | tile sparsity | degradation val / test | latency dense (s) "
            "| latency pruned (s) | speedup | memory dense (MiB) | memory pruned (MiB) "
            "| pruned/dense memory | rotations dense / pruned (lower bound) "
            f"| mul_plain dense / pruned | {acc} dense / pruned | {agr} dense / pruned "
            "| prediction error dense / pruned |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for t in tiles:
            d, p = by.get((model, t, "dense")), by.get((model, t, "pruned"))
            if d is None or p is None:
                lines.append(f"| {t}x{t} | (incomplete) |" + " |" * 12)
                continue
            c = comp["pruned_vs_dense"][f"{model}@{t}x{t}"]
            qf = ".4f" if cls == "classification" else ".5f"
            ef = ".3f" if cls == "classification" else ".2e"
            lines.append(
                f"| {t}x{t} | {100 * p['tile_sparsity']:.1f}% "
                f"| {_fmt(p.get('val_degradation'), '+.4f')} / {p['degradation']:+.4f} "
                f"| {_with_iqr(d)} | {_with_iqr(p)} "
                f"| {sig2(c['speedup'])}x [{_iqr_text(c['speedup_iqr'])}] "
                f"| {_mib(d['memory_bytes'])} | {_mib(p['memory_bytes'])} "
                f"| {sig2(c['memory_ratio'])}x "
                f"| {d['ops']['rotate']} / {p['ops']['rotate']} "
                f"({d['rotation_lower_bound']:.0f} / {p['rotation_lower_bound']:.0f}) "
                f"| {d['ops']['mul_plain']} / {p['ops']['mul_plain']} "
                f"| {format(d['accuracy'], qf)} / {format(p['accuracy'], qf)} "
                f"| {format(d['agreement'], ef)} / {format(p['agreement'], ef)} "
                f"| {_fmt(d.get('prediction_error'), '+.0%')} / "
                f"{_fmt(p.get('prediction_error'), '+.0%')} |"
            )
        if model == "ae-denoiser":
            lo, hi = PAPER_AE_LATENCY_RATIO
            lines += [
                "",
                f"HE-PEx (Fig. 11) reports {lo:.2f}-{hi:.2f}x pruned/dense latency "
                "for the AE-Denoiser.",
            ]
        lines.append("")
    lines += _tenseal_markdown(comp, by)
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    pvd = comp["pruned_vs_dense"]
    mlp = {k: v for k, v in pvd.items() if k.startswith("mlp@")}
    if mlp:
        best = max(mlp.items(), key=lambda kv: kv[1]["speedup"])
        lines.append(
            f"| pruned MLP >= {TARGETS['mlp_pruned_speedup_min']:.0f}x faster than dense "
            f"| best {sig2(best[1]['speedup'])}x ({best[0]}); "
            + ", ".join(f"{k.split('@')[1]}: {sig2(v['speedup'])}x" for k, v in mlp.items())
            + f" | {'yes' if best[1]['speedup'] >= TARGETS['mlp_pruned_speedup_min'] else 'no'} |"
        )
    ae = {k: v for k, v in pvd.items() if k.startswith("ae-denoiser@")}
    if ae:
        lim = TARGETS["ae_pruned_over_dense_max"]
        ok = [k for k, v in ae.items() if v["latency_ratio"] <= lim and v["memory_ratio"] <= lim]
        lines.append(
            f"| AE-Denoiser pruned/dense latency and memory <= {lim:.2f}x "
            "| "
            + ", ".join(
                f"{k.split('@')[1]}: {sig2(v['latency_ratio'])}x / {sig2(v['memory_ratio'])}x"
                for k, v in ae.items()
            )
            + f" | {'yes (' + ', '.join(k.split('@')[1] for k in ok) + ')' if ok else 'no'} |"
        )
    ts_b = comp.get("tenseal_batched")
    if ts_b is not None:
        sp = ts_b["speedup_vs_tenseal"]
        lines.append(
            f"| our dense MLP >= {TARGETS['ours_over_tenseal_speedup_min']:.0f}x faster than "
            f"TenSEAL (both batched) | {sig2(sp)}x per image (our best tile) | "
            f"{'yes' if sp >= TARGETS['ours_over_tenseal_speedup_min'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="16x16 only, 64 images, short schedule")
    p.add_argument("--models", nargs="+", default=None, choices=MODELS)
    p.add_argument("--tiles", nargs="+", type=int, default=None)
    p.add_argument("--images", type=int, default=None, help=f"default {DEFAULT_IMAGES}")
    p.add_argument(
        "--tenseal-images",
        type=int,
        default=None,
        help=f"TenSEAL subset (default {DEFAULT_TENSEAL_IMAGES}, quick {QUICK_TENSEAL_IMAGES}; "
        "0 skips TenSEAL)",
    )
    p.add_argument("--repeats", type=int, default=None, help="encrypted runs per variant")
    p.add_argument("--threads", type=int, default=1, help="engine (and TenSEAL) threads")
    p.add_argument(
        "--target",
        default="auto",
        choices=["auto", "weight", "neuron"],
        help="P4E's first-prune target. auto (default): neuron for the MLP (whole neurons, "
        "gathered by the co-permutation into dead tile rows, also drop rotations; the main "
        "job's choice) and weight for the AE-Denoiser (its 784 outputs are never pruned, and "
        "pruning hidden neurons breaks the budget); weight / neuron: that target everywhere",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads for training/pruning (1 avoids stalls on a shared 2-core machine)",
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--work-dir", type=Path, default=Path("results"))
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/runtime_pruned_vs_dense[_quick][_neuron]"
        ".json by --quick / --target); the .md goes beside it",
    )
    p.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=None,
        help="pruning fractions searched (default: "
        + " ".join(str(f) for f in FULL_SCHEDULE["fractions"])
        + "; quick: "
        + " ".join(str(f) for f in QUICK_SCHEDULE["fractions"])
        + ")",
    )
    p.add_argument("--resume", action="store_true", help="skip runs already in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    args.models = args.models or list(MODELS)
    args.tiles = args.tiles or ([16] if args.quick else list(TILES))
    if args.out is None:
        name = "runtime_pruned_vs_dense" + ("_quick" if args.quick else "")
        name += "" if args.target == "auto" else f"_{args.target}"
        args.out = Path("benchmarks/results") / f"{name}.json"
    if args.images is None:
        args.images = QUICK_IMAGES if args.quick else DEFAULT_IMAGES
    if args.tenseal_images is None:
        args.tenseal_images = QUICK_TENSEAL_IMAGES if args.quick else DEFAULT_TENSEAL_IMAGES
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.images < 1 or args.repeats < 1 or args.tenseal_images < 0 or args.threads < 1:
        p.error("--images, --repeats and --threads must be >= 1, --tenseal-images >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    np.random.seed(args.seed)
    schedule = dict(QUICK_SCHEDULE if args.quick else FULL_SCHEDULE)
    if args.fractions:
        schedule["fractions"] = tuple(args.fractions)
    args.fractions_requested = schedule["fractions"]
    work_dir = args.work_dir / ("runtime-quick" if args.quick else "runtime")
    config = {
        "quick": args.quick,
        "models": args.models,
        "tiles": args.tiles,
        "images": args.images,
        "tenseal_images": args.tenseal_images,
        "repeats": args.repeats,
        "threads": args.threads,
        "scheme": SCHEME,
        "scope": SCOPE,
        "target": args.target,
        "targets": {m: target_for(m, args.target) for m in args.models},
        "torch_threads": args.torch_threads,
        "budget": 0.025,
        "schedule": {k: list(v) if isinstance(v, tuple) else v for k, v in schedule.items()},
        "work_dir": str(work_dir),
        "data_dir": args.data_dir,
        "statistic": "median server latency over repeats (interleaved dense/pruned)",
    }
    runs: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    sessions: list[dict[str, Any]] = []
    if args.resume and args.out.exists():
        old = json.loads(args.out.read_text(encoding="utf-8"))

        def compatible(r: dict[str, Any]) -> bool:
            if r.get("threads") != args.threads:
                return False
            if r.get("variant") == "tenseal-batched":
                return True  # one full batch of N/2 images, whatever --tenseal-images says
            if r.get("tile") is None:
                return bool(r.get("images") == args.tenseal_images)
            scheme = str(r.get("pruning", {}).get("scheme", ""))
            target = target_for(str(r.get("model")), args.target)
            return r.get("images") == args.images and scheme.endswith(f"/{target}")

        runs = [r for r in old.get("runs", []) if compatible(r)]
        if len(runs) < len(old.get("runs", [])):
            LOG.warning(
                "dropping %d runs made with other --images/--tenseal-images/--threads/--target",
                len(old["runs"]) - len(runs),
            )
        extra = old.get("extra", {})
        sessions = old.get("sessions") or [
            {
                "saved": old.get("machine", {}).get("timestamp"),
                "elapsed_s": old.get("elapsed_s", 0.0),
            }
        ]
        LOG.info("resuming: %d runs already in %s", len(runs), args.out)
    done = {run_key(r) for r in runs}
    session = {"started": machine_info()["timestamp"], "runs_before": len(runs)}
    sessions.append(session)
    md_path = args.out.with_suffix(".md")
    t_start = time.perf_counter()

    def save(status: str) -> dict[str, Any]:
        session["elapsed_s"] = time.perf_counter() - t_start
        session["runs_after"] = len(runs)
        report = {
            "runs": runs,
            "comparisons": comparisons(runs, extra),
            "extra": extra,
            "machine": machine_info(threads=args.threads, torch_threads=torch.get_num_threads()),
            "seed": args.seed,
            "config": config,
            "status": status,
            "elapsed_s": sum(x.get("elapsed_s", 0.0) for x in sessions),
            "sessions": sessions,
        }
        write_json_atomic(args.out, report)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(markdown(report), encoding="utf-8")
        return report

    ts_keys = {
        mode: run_key(
            {
                "model": "mlp",
                "layout": "tenseal-" + ("ckksvector" if mode == "single" else "ckkstensor-batched"),
                "tile": None,
                "variant": f"tenseal-{mode}",
                "images": args.tenseal_images,
            }
        )
        for mode in TENSEAL_MODES
    }
    tenseal_todo = args.tenseal_images > 0 and (
        any(k not in done for k in ts_keys.values()) or "ours_one_image" not in extra
    )
    mlp_pm: PrunedModel | None = None
    for model in args.models:
        for tile in args.tiles:
            keys = {
                v: run_key(
                    {
                        "model": model,
                        "layout": "tile",
                        "tile": [tile, tile],
                        "variant": v,
                        "images": args.images,
                    }
                )
                for v in ("dense", "pruned")
            }
            todo = {v for v, k in keys.items() if k not in done}
            need_mlp = model == "mlp" and mlp_pm is None and tenseal_todo
            if not todo and not need_mlp:
                LOG.info("%s %dx%d: already in %s, skipping", model, tile, tile, args.out)
                continue
            start = time.perf_counter()
            try:
                pm = pruned_model(
                    model,
                    tile=tile,
                    scheme=SCHEME,
                    scope=SCOPE,
                    target=target_for(model, args.target),
                    fractions=tuple(schedule["fractions"]),
                    retrain_epochs=schedule["retrain_epochs"],
                    train_epochs=schedule["train_epochs"],
                    limit=schedule["limit"],
                    data_dir=args.data_dir,
                    work_dir=work_dir,
                    seed=args.seed,
                )
            except RuntimeError as exc:  # no fraction within the budget
                LOG.error("%s %dx%d: %s; skipping", model, tile, tile, exc)
                extra.setdefault("skipped", {})[f"{model}@{tile}x{tile}"] = str(exc)
                save("partial")
                continue
            LOG.info(
                "%s %dx%d: %s tile sparsity %.1f%%, degradation %+.4f validation (chose), "
                "%+.4f test (%.1f s)",
                model,
                tile,
                tile,
                pm.scheme,
                100 * pm.tile_sparsity,
                pm.val_degradation,
                pm.test_degradation,
                time.perf_counter() - start,
            )
            if model == "mlp" and mlp_pm is None:
                mlp_pm = pm
            if not todo:
                continue
            x, target = test_images(pm, model, args.images)
            for row in _ours_runs(model, tile, pm, x, target, args, todo):
                runs.append(row)
                done.add(run_key(row))
            save("partial")

    if "mlp" in args.models and tenseal_todo and mlp_pm is not None:
        if "ours_one_image" not in extra:
            x1, _ = test_images(mlp_pm, "mlp", 1)
            extra["ours_one_image"] = ours_one_image(mlp_pm, x1, args.tiles, args.threads)
        for mode in TENSEAL_MODES:
            if ts_keys[mode] in done:
                continue
            count = args.tenseal_images if mode == "single" else TENSEAL_BATCH_IMAGES
            x, labels = test_images(mlp_pm, "mlp", count)
            LOG.info("TenSEAL baseline (%s): dense MLP on %d images", mode, len(x))
            runs.append(tenseal_run(mlp_pm, x, labels, args.threads, mode, args.repeats))
            done.add(ts_keys[mode])
            save("partial")
    report = save("complete")
    LOG.info("done in %.1f s; wrote %s and %s", time.perf_counter() - t_start, args.out, md_path)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
