"""SpENCNN's Tables 3-5 on our runtime: rotation-aware pruning of conv networks, run encrypted.

    python benchmarks/rotation_aware.py [--quick] [--models lenet ...] [--out PATH] [options]

For each model (default: LeNet-like on MNIST, SpENCNN Table 2) it trains the dense baseline
(cached), then applies every method within the accuracy budget (default 0.5 points):

* dense; plaintext-domain baselines: non-structured (global magnitude) and channel pruning;
* SpENCNN: sub-block pruning (Algorithm 1), HE-group convolution at G = 2, 4, ..., G_base, and
  combined (sub-block pruning of the HE-group network at G_base, or at the largest G whose
  grouping alone leaves half the budget); grouped networks train from scratch on the dense
  model's schedule, as in SpENCNN;
* Hunter-style structured magnitude pruning aligned to the packing;
* Artemis positional and diagonal pruning (group-Lasso training, threshold, fine-tune).

Each result is compiled to the map layout (multi-channel packing, ``fheprune.layouts.channels``)
on automatically chosen 128-bit parameters and run encrypted: the client encrypts test images,
the server computes on ciphertexts only, the client decrypts. A row records rotations and other
operations left against dense (HE-Pmult, HE-add, HE-Cmult, from the executor's own counts,
which must equal the cost model's), weight sparsity (against the dense, ungrouped weights),
test accuracy, measured server latency per image, speedup against dense measured in the same
run, and encrypted-vs-plaintext argmax agreement. Per layer it records the executed rotations
beside the layout's lower bound (``rotation_lower_bound`` of the cost model: the baby-step
giant-step counting bound, 2*sqrt(|D|) - 2 for one ciphertext in and out; ceil(log2 area) per
ciphertext for a window sum).

Writes ``--out`` (JSON ``{"rows": [...], "layers": [...], "machine": ..., ...}``, atomically
after every method; trained models are cached in the work directory, and a method's
training calls checkpoint every epoch, so an interrupted run resumes within the method it
stopped in) and a Markdown table beside it. Rows of models a run leaves out are
kept from the report already at ``--out``. ``--models hefnet-mnist vgg5-mnist``: the MNIST
variants of SpENCNN's larger networks, on a shorter schedule (``LARGE``); their plaintexts do
not fit in memory, so every method of theirs encodes its plaintexts on demand (the latency
includes the encoding). ``--quick``: LeNet-like only, an 8,000-image training subset and short
schedules, one encrypted image per method (under ten minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fheprune import _core
from fheprune.pruning import cost_aware as ca
from fheprune.pruning import rotation_aware as ra
from fheprune.reporting import machine_info, quartiles, sig2, write_json_atomic
from fheprune.runtime.compiler import CompiledModel, compile_model, map_slots
from fheprune.training import CallCheckpoints
from fheprune.training.config import default_config
from fheprune.training.data import load_loaders, set_loader_epoch
from fheprune.training.metrics import evaluate
from fheprune.training.trainer import train

LOG = logging.getLogger("rotation_aware")

# The heavy part of an encrypted run is the encoded plaintexts: when some method of a model
# would hold more than this many bytes of them, every method of that model encodes its
# plaintexts on demand (the same mode for every row, so the speedups compare like with like).
PLAINTEXT_LIMIT_BYTES = 12 * 2**30
OTHER_OPS = ("mul_plain", "add", "add_plain", "multiply")


@dataclass(frozen=True)
class Schedule:
    train_epochs: int
    limit: int | None
    test_limit: int | None
    finetune_epochs: int
    per_iteration: int
    reg_epochs: int
    search_steps: int
    images: int
    repeats: int
    warmup_epochs: int = 3
    calibration: int = 1024
    max_iterations: int | None = None  # of the Algorithm 1 loops (sub-block, combined, ours)
    final_epochs: int = 8  # the cost-aware method's recovery after each round
    rounds: int = 2  # of the cost-aware method: prune to the budget, recover, again
    # The training rate (None: the model's default config). The quick schedule's few steps
    # need a higher one to get anywhere near the full schedule's accuracy.
    lr: float | None = None
    # The cost-aware method's distilled warm-up and recoveries: the full schedule's training
    # rate (the quick schedule's distilled warm-up diverged at its training rate, 0.02).
    recovery_lr: float = 0.01
    # The cost-aware method's distilled fine-tuning steps inside its pruning loop.
    tune_lr: float = 3e-3


QUICK = Schedule(
    train_epochs=8,
    limit=8000,
    test_limit=2000,
    finetune_epochs=1,
    per_iteration=12,
    reg_epochs=1,
    search_steps=3,
    images=3,
    repeats=1,
    warmup_epochs=1,
    calibration=256,
    max_iterations=6,
    final_epochs=1,
    rounds=1,
    lr=0.02,
)
FULL = Schedule(
    train_epochs=10,
    limit=30000,
    test_limit=None,
    finetune_epochs=1,
    per_iteration=12,
    reg_epochs=2,
    search_steps=4,
    images=10,
    repeats=1,
)
# HEFNet / VGG-5 (MNIST variants): a step costs about 3.3x LeNet-like's on this machine, and
# their layouts hold about 5x more units (every Algorithm 1 step prunes more of them), so the
# full table fits a few hours of 2 cores. Dense runs encrypted in minutes: one image, once.
# Distilled fine-tuning of these deeper polynomial networks diverged at 0.01 (VGG-5, within
# 14 batches), hence the lower distillation rates.
LARGE = Schedule(
    train_epochs=12,
    limit=20000,
    test_limit=None,
    finetune_epochs=1,
    per_iteration=32,
    reg_epochs=1,
    search_steps=5,
    images=10,
    repeats=1,
    warmup_epochs=2,
    calibration=512,
    max_iterations=10,
    final_epochs=3,
    rounds=1,
    recovery_lr=2e-3,
    tune_lr=1e-3,
)
LARGE_MODELS = ("hefnet-mnist", "vgg5-mnist")


def recipe_for(s: Schedule) -> ca.CostAwareRecipe:
    """Our cost-aware method's recipe under this schedule."""
    return ca.CostAwareRecipe(
        warmup_epochs=s.warmup_epochs,
        rounds=s.rounds,
        recovery_epochs=s.final_epochs,
        recovery_lr=s.recovery_lr,
        tune_lr=s.tune_lr,
        per_iteration=s.per_iteration,
        finetune_epochs=s.finetune_epochs,
        max_iterations=s.max_iterations,
    )


def recovery_epochs(s: Schedule) -> int:
    """The distilled training our cost-aware method gets beyond its pruning steps (warm-up
    plus a recovery per round): with matched effort, every other pruned row gets as much."""
    return recipe_for(s).extra_epochs


#: Rows that get no matched recovery: dense is the reference, and ours has it built in.
NO_EXTRA_TRAINING = ("dense", "combined-cost-aware")


def training_budget(method: str, s: Schedule, matched: bool) -> str:
    """Each row's training, as the table states it."""
    extra = recovery_epochs(s)
    if method == "dense":
        return f"{s.train_epochs} epochs"
    if method == "combined-cost-aware":
        return (
            f"group-G ({s.train_epochs} epochs) + {s.warmup_epochs} distilled warm-up, "
            f"{s.finetune_epochs} distilled epoch(s) per step, {s.rounds} x {s.final_epochs} "
            "distilled recovery"
        )
    if method.startswith("group-"):
        own = f"{s.train_epochs} epochs from scratch"
    elif method.startswith("artemis"):
        own = f"{s.reg_epochs} group-Lasso epoch(s) + {s.finetune_epochs} epoch(s) per search step"
    elif method == "combined":
        own = f"group-G ({s.train_epochs} epochs) + {s.finetune_epochs} epoch(s) per step"
    else:
        own = f"{s.finetune_epochs} epoch(s) per step"
    return own + (f" + {extra} distilled recovery" if matched else "")


def schedule_for(model: str, quick: bool) -> Schedule:
    """The training schedule of one model's table."""
    if quick:
        return QUICK
    return LARGE if model in LARGE_MODELS else FULL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="LeNet-like, short schedules")
    p.add_argument("--models", nargs="+", default=["lenet"])
    p.add_argument("--methods", nargs="+", default=None, help="default: all")
    p.add_argument("--budget", type=float, default=0.005, help="accuracy points (0.005 = 0.5%%)")
    p.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="the cost-aware method keeps this much of the budget unspent on the validation "
        "split (a hedge against its noise)",
    )
    p.add_argument("--images", type=int, default=None, help="encrypted test images per method")
    p.add_argument(
        "--unmatched-effort",
        dest="matched_effort",
        action="store_false",
        help="give the baselines only their own fine-tuning (default: every pruned row also gets "
        "the distilled recovery epochs our cost-aware method gets, so that the comparison "
        "separates the method from the training)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="engine threads of the encrypted runs (default 1)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work-dir", type=Path, default=None, help="trained-model cache")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--no-client-shifts",
        dest="client_shifts",
        action="store_false",
        help="conv1 rotates on the server (default: the client sends pre-rotated copies)",
    )
    return p.parse_args(argv)


class MethodCache:
    """Trained method results on disk (model state, masks, numbers): a rerun resumes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str, make: Callable[[int], nn.Module]) -> ra.RotationAwareResult | None:
        path = self.path(key)
        if not path.exists():
            return None
        blob = torch.load(path, weights_only=True)
        model = make(int(blob["groups"]))
        model.load_state_dict(blob["state"])
        masks = {k: v.bool() for k, v in blob["masks"].items()}
        return ra.RotationAwareResult(
            method=str(blob["method"]),
            groups=int(blob["groups"]),
            model=model,
            masks=masks,
            accuracy=float(blob["accuracy"]),
            baseline_accuracy=float(blob["baseline_accuracy"]),
            weight_sparsity=float(blob["weight_sparsity"]),
            # Counted again on the current layout (a layout change renumbers the units).
            alive_units=ra.alive_unit_counts(
                masks,
                ra.model_units(model, kind=str(blob["unit_kind"])),  # type: ignore[arg-type]
            ),
            unit_kind=str(blob["unit_kind"]),
        )

    def save(self, key: str, r: ra.RotationAwareResult) -> None:
        blob = {
            "method": r.method,
            "groups": r.groups,
            "state": r.model.state_dict(),
            "masks": dict(r.masks),
            "accuracy": r.accuracy,
            "baseline_accuracy": r.baseline_accuracy,
            "weight_sparsity": r.weight_sparsity,
            "alive_units": json.dumps({k: list(v) for k, v in r.alive_units.items()}),
            "unit_kind": r.unit_kind,
        }
        tmp = self.path(key).with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(self.path(key))


#: What the cost-aware method prices its units on, in its cache names: the C++ program's own
#: split and levels (``cost_aware._savings``). Results cached under the earlier prices (the
#: lowering's split hints, names without this tag) are not read back.
COST_AWARE_PRICES = "program-priced"


def cost_aware_variant(*, client_shifts: bool, margin: float) -> str:
    """Suffix of the cost-aware method's cache entries: its result depends on how its units
    were priced (the price model, client shifts) and on the margin; no other method's does."""
    return (
        f"-{COST_AWARE_PRICES}"
        + ("" if client_shifts else "-server-shifts")
        + (f"-margin{margin:g}" if margin else "")
    )


def cache_key(method: str, *, client_shifts: bool, margin: float) -> str:
    """The method's name in the trained-model cache."""
    if method != "combined-cost-aware":
        return method
    return method + cost_aware_variant(client_shifts=client_shifts, margin=margin)


def method_table(
    dense: nn.Module,
    make: Callable[[int], nn.Module],
    harness: ra.TrainerHarness,
    train_harness: ra.TrainerHarness,
    *,
    budget: float,
    baseline: float,
    slots: int,
    s: Schedule,
    grouped: Callable[[], ra.RotationAwareResult] | None = None,
    group_result: Callable[[int], ra.RotationAwareResult | None] | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    client_shifts: bool = True,
    stages: MethodCache | None = None,
    margin: float = 0.0,
) -> dict[str, Callable[[], ra.RotationAwareResult]]:
    """Every method as a thunk: (name -> run it on a copy of the dense model).

    ``harness`` fine-tunes (pruning); ``train_harness`` trains from scratch, with the dense
    model's schedule (HE-group convolution: the grouped network is its own architecture, as in
    SpENCNN). ``grouped`` gives the HE-group result the combined method starts from (default:
    train one at G_base); ``group_result(g)`` the group-g row when it was already run.
    ``calibration``: the training batch the cost-aware method measures damages on;
    ``client_shifts``: how the programs are compiled (the cost-aware method prices units so);
    ``stages``: where the cost-aware method caches its pruned stage before the final
    fine-tuning.
    """
    g_base = ra.g_base(make(1), slots)
    common: dict[str, Any] = {"budget": budget, "baseline": baseline, "slots": slots}

    def fresh() -> nn.Module:
        return copy.deepcopy(dense)

    def group(g: int) -> ra.RotationAwareResult:
        return ra.he_group_conv(
            make, g, train_harness, epochs=s.train_epochs, baseline=baseline, slots=slots
        )

    def combined() -> ra.RotationAwareResult:
        """SpENCNN's combination: sub-block pruning of the HE-group network, the budget
        still counted against the dense model."""
        base = grouped() if grouped is not None else group(g_base)
        return ra.subblock_prune(
            copy.deepcopy(base.model),
            harness,
            per_iteration=s.per_iteration,
            finetune_epochs=s.finetune_epochs,
            max_iterations=0 if baseline - base.accuracy > budget else s.max_iterations,
            method="combined",
            **common,
        )

    table: dict[str, Callable[[], ra.RotationAwareResult]] = {
        "dense": lambda: ra.RotationAwareResult(
            "dense", 1, fresh(), {}, baseline, baseline, 0.0, {}, "position"
        ),
        "non-structured": lambda: ra.magnitude_prune(
            fresh(),
            harness,
            finetune_epochs=s.finetune_epochs,
            search_steps=s.search_steps,
            **common,
        ),
        "channel": lambda: ra.channel_prune(
            fresh(),
            harness,
            finetune_epochs=s.finetune_epochs,
            search_steps=s.search_steps,
            **common,
        ),
        "sub-block": lambda: ra.subblock_prune(
            fresh(),
            harness,
            per_iteration=s.per_iteration,
            max_iterations=s.max_iterations,
            finetune_epochs=s.finetune_epochs,
            **common,
        ),
    }
    g = 2
    while g <= g_base:
        table[f"group-{g}"] = lambda g=g: group(g)  # type: ignore[misc]
        g *= 2
    table["combined"] = combined

    def cost_aware() -> ra.RotationAwareResult:
        """Ours (``fheprune.pruning.cost_aware.combined_cost_aware``) from G_base, with this
        schedule's recipe; its pruned stages are cached per round."""
        if calibration is None:
            raise ValueError("the cost-aware method needs a calibration batch")
        stem = "combined-cost-aware-pruned" + cost_aware_variant(
            client_shifts=client_shifts, margin=margin
        )

        def stage(round_: int) -> str:
            return stem if round_ == 1 else f"{stem}-round{round_}"

        def load_round(round_: int) -> ra.RotationAwareResult | None:
            return None if stages is None else stages.load(stage(round_), make)

        def save_round(round_: int, pruned: ra.RotationAwareResult) -> None:
            if stages is not None:
                stages.save(stage(round_), pruned)

        def group_model(g: int) -> nn.Module:
            base = (group_result(g) if group_result is not None else None) or group(g)
            return copy.deepcopy(base.model)

        return ca.combined_cost_aware(
            dense,
            group_model,
            harness,
            train_harness,
            calibration,
            g_start=g_base,
            budget=budget,
            baseline=baseline,
            slots=slots,
            recipe=recipe_for(s),
            client_shifts=client_shifts,
            margin=margin,
            load_round=load_round,
            save_round=save_round,
        )

    table["combined-cost-aware"] = cost_aware
    table["hunter"] = lambda: ra.hunter_prune(
        fresh(),
        harness,
        finetune_epochs=s.finetune_epochs,
        search_steps=s.search_steps,
        **common,
    )
    for variant, name in (("position", "artemis-positional"), ("diagonal", "artemis-diagonal")):
        table[name] = lambda variant=variant: ra.artemis_prune(  # type: ignore[misc]
            fresh(),
            harness,
            variant=variant,
            reg_epochs=s.reg_epochs,
            finetune_epochs=s.finetune_epochs,
            search_steps=s.search_steps,
            **common,
        )
    return table


def calibration_batch(loaders: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training samples in epoch-0 order (deterministic for the seed)."""
    set_loader_epoch(loaders.train, 0)
    xs, ys, seen = [], [], 0
    for x, y in loaders.train:
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if seen >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def op_totals(layers: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for layer in layers:
        for k, v in layer["ops"].items():
            total[k] = total.get(k, 0) + int(v)
    return total


class EncryptedRunner:
    """One client secret key for every method of a model; each method's server gets the
    evaluation keys of its own rotation steps, made when it runs and dropped after it (a
    VGG-5's Galois keys are 41 MB a step at N = 16384: the union over all methods would not
    fit in memory). Each server is an ``EngineExecutor`` on its program with those keys: the
    same computation a ``Server`` loading files runs (the file path is tested in
    tests/test_conv_runtime.py and used by the main job)."""

    def __init__(self, parameters: Any, *, on_demand: bool = False, threads: int = 1) -> None:
        self.on_demand = on_demand
        self.context = _core.Context(parameters, threads)
        self.keygen = _core.KeyGenerator(self.context)
        self.encoder = _core.Encoder(self.context)
        self.encryptor = _core.Encryptor(self.context, self.keygen.secret_key)
        self.decryptor = _core.Decryptor(self.context, self.keygen.secret_key)

    def run(self, compiled: CompiledModel, images: np.ndarray, repeats: int) -> dict[str, Any]:
        spec = compiled.map_spec
        steps = sorted(int(v) for v in compiled.program.rotation_steps())
        start = time.perf_counter()
        keys = self.keygen.create_evaluation_keys(steps)
        keygen_s = time.perf_counter() - start
        start = time.perf_counter()
        executor = _core.EngineExecutor(
            compiled.program, self.context, keys, encode_on_demand=self.on_demand
        )
        setup_s = time.perf_counter() - start
        per_image, outputs, stats, encode_s = [], [], None, []
        for image in images:
            packed = spec.pack(image[None])[0]
            cts = [
                self.encryptor.encrypt(self.encoder.encode(np.ascontiguousarray(v))) for v in packed
            ]
            best, best_encode = float("inf"), 0.0
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                out, stats = executor.run(cts)
                seconds = time.perf_counter() - start
                if seconds < best:
                    best, best_encode = seconds, float(stats["encode_seconds"])
            per_image.append(best)
            encode_s.append(best_encode)
            rows = [
                np.zeros(spec.slots)
                if c is None
                else np.asarray(self.encoder.decode(self.decryptor.decrypt(c)))
                for c in out
            ]
            outputs.append(compiled.program.unpack_outputs(np.stack(rows), 1)[0])
        assert stats is not None
        return {
            "per_image_s": statistics.median(per_image),
            # Of which encoding plaintexts (on demand only; 0 when encoded at set-up).
            "encode_s": statistics.median(encode_s),
            "per_image_runs_s": per_image,
            "server_setup_s": setup_s,
            "outputs": np.stack(outputs),
            "ops": stats["ops"],
            "layer_seconds": {lay["name"]: lay["seconds"] for lay in stats["layers"]},
            "plaintext_bytes": int(executor.plaintext_bytes),
            "peak_ciphertext_bytes": int(stats["peak_ciphertext_bytes"]),
            "rotation_keys": len(steps),
            "galois_key_bytes": int(keys.galois_keys.byte_size),
            "keygen_s": keygen_s,
        }


def plaintext_bytes(cost: list[dict[str, Any]]) -> int:
    """Bytes of every plaintext the program's executor encodes (from the cost model)."""
    return sum(int(c["plaintext_bytes"]) for c in cost)


def compile_map(
    model: nn.Module, client_shifts: bool = True
) -> tuple[nn.Module, CompiledModel, list[dict[str, Any]]]:
    model = copy.deepcopy(model).double().eval()
    compiled = compile_model(model, layout="map", client_shifts=client_shifts)
    return model, compiled, list(compiled.program.cost())


def annotate_speedups(report: dict[str, Any]) -> None:
    """Each row's ``speedup_without_encoding``: against dense with the on-demand encoding time
    taken out of both latencies (None where nothing was encoded on demand). Stored in the
    rows, so the report's numbers are all in the JSON."""
    dense_compute = {
        r["model"]: r["latency_s"] - r["encode_s"]
        for r in report["rows"]
        if r["method"] == "dense" and r["latency_s"] is not None and r.get("encode_s")
    }
    for r in report["rows"]:
        r["speedup_without_encoding"] = None
        if r.get("encode_s") and r["latency_s"] is not None and r["model"] in dense_compute:
            r["speedup_without_encoding"] = dense_compute[r["model"]] / (
                r["latency_s"] - r["encode_s"]
            )


#: What a ``--quick`` report says about itself (in its JSON and at the top of its table).
QUICK_NOTE = (
    "Quick mode: a smoke run, not a prediction of the full table. Its models train on 8,000 "
    "images for a few epochs and stop near 92% accuracy, where the 0.5-point budget is within "
    "the accuracy's own noise between runs; pruning on them is cut short (one cost-aware round, "
    "at most 6 steps per loop) and removes far less than on the full schedule, so its speedups "
    "understate the full run's (docs/rotation_aware.md)."
)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Rotation-aware pruning on our CKKS runtime (SpENCNN Tables 3-5)",
        "",
        *([report["note"], ""] if report.get("note") else []),
        f"Budget: {report['budget'] * 100:.2f} accuracy points. Parameters per model: "
        + "; ".join(f"{m}: {p}" for m, p in report["parameters"].items())
        + (
            ". Client shifts: the client sends one pre-rotated copy of its image per live "
            "kernel position of conv1 (conv1 runs without rotations), in every row."
            if report.get("client_shifts")
            else ". No client shifts (conv1 rotates on the server)."
        ),
        "",
        "| model | method | G | rot left | other left | sparsity | accuracy | degradation "
        "val / test | latency (s) [IQR] | speedup | of which encoding (s) | speedup without it "
        "| agreement | training |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    annotate_speedups(report)
    for r in report["rows"]:
        lat = "-" if r["latency_s"] is None else f"{r['latency_s']:.3f}"
        if r.get("latency_iqr_s") and len(r.get("latency_runs_s") or []) > 1:
            lat += f" [{r['latency_iqr_s'][0]:.3f}-{r['latency_iqr_s'][1]:.3f}]"
        spd = "-" if r["speedup"] is None else f"{sig2(r['speedup'])}x"
        deg = "-"
        if r.get("val_degradation") is not None:
            over = "" if r.get("within_budget_val", True) else " (over)"
            deg = f"{100 * r['val_degradation']:+.2f} / {100 * r['test_degradation']:+.2f}{over}"
        agr = "-" if r.get("agreement") is None else f"{r['agreement'] * 100:.0f}%"
        rot = "-" if r["rot_left"] is None else f"{r['rot_left'] * 100:.2f}%"
        other = "-" if r["other_left"] is None else f"{r['other_left'] * 100:.2f}%"
        enc = f"{r['encode_s']:.3f}" if r.get("encode_s") and r["latency_s"] is not None else "-"
        without = r.get("speedup_without_encoding")
        compute_spd = "-" if without is None else f"{sig2(without)}x"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['groups']} | {rot} | {other} | "
            f"{r['sparsity'] * 100:.2f}% | {r['accuracy'] * 100:.2f}% | {deg} | {lat} | {spd} "
            f"| {enc} | {compute_spd} | {agr} | {r.get('training', '-')} |"
        )
    lines += [
        "",
        "Rot / other left: the method's executed rotations / other HE operations "
        f"({', '.join(OTHER_OPS)}) over dense's. Degradation: accuracy points lost against "
        "dense, on the validation split (which every choice was made on; '(over)': past the "
        "budget there) and on test. Latency: median server time per image over the encrypted "
        "images (fastest of the repeats of each), interquartile range in brackets; speedup: "
        "dense's median over the row's, in the same run, to two significant digits. Training: "
        "each row's training budget; with matched effort (the default) every pruned row gets "
        "the distilled recovery epochs our cost-aware method gets, kept only where validation "
        "accuracy improves. Models whose plaintexts do not "
        "fit in memory encode them on demand in every run, for every method: their latency "
        "includes that encoding (measured separately, 'of which encoding'); 'speedup without "
        "it' compares the latencies with the encoding time taken out.",
        *[
            f"\nNot compiled: {r['model']} / {r['method']}: {r['not_compiled']}"
            for r in report["rows"]
            if r.get("not_compiled")
        ],
        "",
        "## Rotations per layer against the lower bound",
        "",
        "| model | method | layer | rotations | lower bound | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["layers"]:
        ratio = "-" if not r["lower_bound"] else f"{r['rotations'] / r['lower_bound']:.2f}"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['layer']} | {r['rotations']} | "
            f"{r['lower_bound']:.0f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def keep_other_models(report: dict[str, Any], out: Path, models: list[str]) -> None:
    """Carry over what an earlier report at ``out`` measured for models this run leaves alone
    (the LeNet-like table survives a ``--models vgg5-mnist`` run), if it has the same budget,
    seed and client shifts."""
    if not out.exists():
        return
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        LOG.warning("%s: not readable (%s); starting a new report", out, exc)
        return
    same = all(old.get(k) == report[k] for k in ("budget", "seed", "client_shifts", "margin"))
    same = same and old.get("threads", 1) == report.get("threads", 1)  # older: one thread
    if not same or not isinstance(old.get("rows"), list):
        LOG.warning("%s: another budget, seed or setting; starting a new report", out)
        return
    kept = {r["model"] for r in old["rows"]} - set(models)
    for key in ("rows", "layers"):
        report[key] = [r for r in old.get(key, []) if r["model"] in kept]
    if "train_epochs" in old.get("schedule", {}):  # one schedule for all (older reports)
        old["schedule"] = {m: old["schedule"] for m in kept}
    for key in ("schedule", "parameters", "baseline_accuracy", "keys", "encoding"):
        entries = {m: v for m, v in old.get(key, {}).items() if m in kept}
        if entries:
            report[key] = entries
    if kept:
        LOG.info("keeping the rows of %s from %s", ", ".join(sorted(kept)), out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    models = ["lenet"] if args.quick else args.models
    root = Path(__file__).resolve().parent / "results"
    out = args.out or root / ("rotation_aware_quick.json" if args.quick else "rotation_aware.json")
    work = args.work_dir or Path("results") / (
        "rotation-aware-quick" if args.quick else "rotation-aware"
    )
    torch.manual_seed(args.seed)
    report: dict[str, Any] = {
        "rows": [],
        "layers": [],
        "budget": args.budget,
        "seed": args.seed,
        "quick": bool(args.quick),
        **({"note": QUICK_NOTE} if args.quick else {}),
        "client_shifts": bool(args.client_shifts),
        "margin": args.margin,
        "threads": args.threads,
        "schedule": {},
        "parameters": {},
        "baseline_accuracy": {},
        "machine": machine_info(),
    }
    keep_other_models(report, out, models)
    started = time.perf_counter()
    for model_name in models:
        s = schedule_for(model_name, args.quick)
        if args.images is not None:
            s = Schedule(**{**s.__dict__, "images": args.images})
        report["schedule"][model_name] = s.__dict__
        config = default_config(model_name, "mnist").replace(epochs=s.train_epochs, seed=args.seed)
        if s.lr is not None:
            config = config.replace(lr=s.lr)
        loaders = load_loaders(
            model_name,
            "mnist",
            config,
            data_dir=args.data_dir,
            limit=s.limit,
            test_limit=s.test_limit,
        )
        # Fine-tuning pruned polynomial networks at the training rate can diverge.
        # Every training call checkpoints, so a method interrupted mid-way resumes (its calls
        # replay from their checkpoints) instead of starting over.
        calls = CallCheckpoints()
        harness = ra.TrainerHarness(
            loaders, config.replace(lr=1e-3), split="val", checkpoints=calls
        )
        train_harness = ra.TrainerHarness(loaders, config, split="val", checkpoints=calls)
        report.setdefault("matched_effort", {})[model_name] = bool(args.matched_effort)

        make = ra.grouped_builder(model_name, "mnist", seed=args.seed)

        cache = MethodCache(work / model_name)
        dense_path = cache.path("dense-baseline")
        dense = make(1)
        if dense_path.exists():
            dense.load_state_dict(torch.load(dense_path, weights_only=True))
        else:
            LOG.info("%s: training the dense baseline (%d epochs)", model_name, s.train_epochs)
            train(dense, loaders, config, checkpoint_dir=work / model_name / "dense-ckpt")
            tmp = dense_path.with_suffix(".tmp")
            torch.save(dense.state_dict(), tmp)
            tmp.replace(dense_path)
        baseline = harness.evaluate(dense)
        test_loader = loaders.test
        assert test_loader is not None
        report["baseline_accuracy"][model_name] = float(
            evaluate(dense, test_loader, loaders.spec.task)
        )
        slots = map_slots(dense)
        # method -> (result, cost); programs are compiled again when they run (one at a time).
        prepared: dict[str, tuple[ra.RotationAwareResult, Any]] = {}
        # method -> its result before any matched recovery: what later methods build on.
        bases: dict[str, ra.RotationAwareResult] = {}
        # The distilled training our method's recoveries use, for matched effort.
        recovery = ca.distilled(train_harness, copy.deepcopy(dense).eval(), s.recovery_lr)
        parameters = None
        uncompiled: dict[str, str] = {}  # method -> why its program could not be built

        def grouped(
            baseline: float = baseline,
            bases: dict[str, ra.RotationAwareResult] = bases,
        ) -> ra.RotationAwareResult:
            """The HE-group result the combined method prunes further. SpENCNN uses G_base;
            when grouping alone spends more than half the budget (our G_base is 8 at
            N = 16384; SpENCNN's LeNet ran at G_base = 4), the largest G that leaves half of
            it, so that sub-block pruning has budget left."""
            results = {r.groups: r for name, r in bases.items() if name.startswith("group-")}
            if not results:
                raise SystemExit("the combined method needs the group-G methods before it")
            for limit in (args.budget / 2, args.budget):
                fits = [g for g, r in results.items() if baseline - r.accuracy <= limit]
                if fits:
                    return results[max(fits)]
            return results[max(results)]

        def group_result(
            g: int, bases: dict[str, ra.RotationAwareResult] = bases
        ) -> ra.RotationAwareResult | None:
            return bases.get(f"group-{g}")

        table = method_table(
            dense,
            make,
            harness,
            train_harness,
            budget=args.budget,
            baseline=baseline,
            slots=slots,
            s=s,
            grouped=grouped,
            group_result=group_result,
            calibration=calibration_batch(loaders, s.calibration),
            client_shifts=args.client_shifts,
            stages=cache,
            margin=args.margin,
        )
        chosen = args.methods or list(table)
        if chosen[0] != "dense":
            chosen = ["dense", *[m for m in chosen if m != "dense"]]
        images = np.stack([test_loader.dataset[i][0].numpy() for i in range(s.images)])
        # 1. Prune (cached) and compile every method (the group-G rows before "combined").
        for method in chosen:
            if method not in table:
                raise SystemExit(f"unknown method {method!r}; choose from {', '.join(table)}")
            t0 = time.perf_counter()
            key = cache_key(method, client_shifts=args.client_shifts, margin=args.margin)
            result = cache.load(key, make)
            if result is None:
                LOG.info("%s / %s: pruning", model_name, method)
                calls.begin(work / model_name / "calls" / key)
                result = table[method]()
                cache.save(key, result)
                calls.finish()
            bases[method] = result
            if args.matched_effort and method not in NO_EXTRA_TRAINING:
                # The same distilled recovery ours gets, kept only where validation improves.
                matched = cache.load(f"{key}-matched", make)
                if matched is None:
                    LOG.info("%s / %s: matched recovery", model_name, method)
                    calls.begin(work / model_name / "calls" / f"{key}-matched")
                    matched = ca.polish(result, recovery, recovery_epochs(s))
                    cache.save(f"{key}-matched", matched)
                    calls.finish()
                result = matched
            try:
                _, compiled, cost = compile_map(result.model, args.client_shifts)
            except _core.CompileError as exc:
                # Too big to compile: the row keeps its training numbers and says why it has
                # no counts, instead of ending the run.
                LOG.warning("%s / %s: not compiled: %s", model_name, method, exc)
                uncompiled[method] = str(exc)
                prepared[method] = (result, None)
                continue
            # Every method of a model has the same depth, so the same parameters.
            parameters = compiled.parameters
            report["parameters"][model_name] = compiled.choice.message.split("using ")[-1]
            prepared[method] = (result, cost)
            del compiled
            LOG.info("%s / %s: ready (%.0f s)", model_name, method, time.perf_counter() - t0)
        # 2. Plaintexts are encoded at the server's set-up unless some method's would not fit
        # in memory; then every method of the model encodes each plaintext when it needs it
        # (latency includes encoding).
        runnable = [m for m, (_, cost) in prepared.items() if cost is not None]
        largest = max((plaintext_bytes(prepared[m][1]) for m in runnable), default=0)
        on_demand = largest > PLAINTEXT_LIMIT_BYTES
        report.setdefault("encoding", {})[model_name] = {
            "on_demand": on_demand,
            "largest_plaintext_bytes": largest,
        }
        if on_demand:
            LOG.info(
                "%s: plaintexts up to %.1f GiB: every method encodes them on demand",
                model_name,
                largest / 2**30,
            )
        runner = (
            EncryptedRunner(parameters, on_demand=on_demand, threads=args.threads)
            if runnable and parameters is not None
            else None
        )
        # 3. Run each method encrypted; rows are relative to dense, measured in this run.
        dense_cost = prepared["dense"][1]
        dense_ops = None if dense_cost is None else op_totals(dense_cost)
        dense_latency: float | None = None
        for method in chosen:
            result, cost = prepared[method]
            run = None
            if runner is not None and method in runnable:
                model, compiled, _ = compile_map(result.model, args.client_shifts)
                run = runner.run(compiled, images, s.repeats)
                del compiled
            ops = None if cost is None else op_totals(cost)
            test_acc = float(evaluate(result.model, test_loader, loaders.spec.task))
            latency = None if run is None else float(run["per_image_s"])
            if method == "dense":
                dense_latency = latency
            plain = None
            if run is not None:
                with torch.no_grad():
                    plain = model(torch.as_tensor(images, dtype=torch.float64)).numpy()
            row = {
                "model": model_name,
                "method": method,
                "groups": result.groups,
                "rot_left": ops["rotate"] / max(1, dense_ops["rotate"])
                if ops is not None and dense_ops is not None
                else None,
                "other_left": sum(ops[k] for k in OTHER_OPS)
                / max(1, sum(dense_ops[k] for k in OTHER_OPS))
                if ops is not None and dense_ops is not None
                else None,
                "sparsity": result.weight_sparsity,
                "accuracy": test_acc,
                "val_accuracy": result.accuracy,
                # The budget was checked on validation; test is reported beside it.
                "val_degradation": baseline - result.accuracy,
                "test_degradation": report["baseline_accuracy"][model_name] - test_acc,
                "within_budget_val": baseline - result.accuracy <= args.budget + 1e-12,
                "training": training_budget(method, s, args.matched_effort),
                "latency_s": latency,
                "latency_runs_s": None if run is None else run["per_image_runs_s"],
                "latency_iqr_s": None if run is None else list(quartiles(run["per_image_runs_s"])),
                "speedup": None
                if latency is None or dense_latency is None
                else dense_latency / latency,
                "rotations": None if ops is None else ops["rotate"],
                "ops": ops,
                "ops_match_cost_model": None if run is None else run["ops"] == ops,
                "agreement": None
                if run is None or plain is None
                else float(np.mean(np.argmax(run["outputs"], 1) == np.argmax(plain, 1))),
                "max_abs_error": None
                if run is None or plain is None
                else float(np.max(np.abs(run["outputs"] - plain))),
                "layer_seconds": None if run is None else run["layer_seconds"],
                "plaintext_bytes": None if cost is None else plaintext_bytes(cost),
                "encode_s": None if run is None else run["encode_s"],
                "not_compiled": uncompiled.get(method),
                "server_setup_s": None if run is None else run["server_setup_s"],
                "rotation_keys": None if run is None else run["rotation_keys"],
                "galois_key_bytes": None if run is None else run["galois_key_bytes"],
                "keygen_s": None if run is None else run["keygen_s"],
                "alive_units": {k: list(v) for k, v in result.alive_units.items()},
            }
            report["rows"] = [
                r for r in report["rows"] if (r["model"], r["method"]) != (model_name, method)
            ] + [row]
            report["layers"] = [
                r for r in report["layers"] if (r["model"], r["method"]) != (model_name, method)
            ]
            for c in cost or []:
                if c["ops"]["rotate"] or c["rotation_lower_bound"]:
                    report["layers"].append(
                        {
                            "model": model_name,
                            "method": method,
                            "layer": c["name"],
                            "kind": c["kind"],
                            "rotations": int(c["ops"]["rotate"]),
                            "lower_bound": float(c["rotation_lower_bound"]),
                        }
                    )
            LOG.info(
                "%s / %s: acc %.2f%%, rot left %s, latency %s, speedup %s",
                model_name,
                method,
                100 * test_acc,
                "-" if row["rot_left"] is None else f"{100 * row['rot_left']:.1f}%",
                "-" if latency is None else f"{latency:.3f}s",
                "-" if row["speedup"] is None else f"{row['speedup']:.2f}x",
            )
            report["elapsed_s"] = time.perf_counter() - started
            annotate_speedups(report)
            write_json_atomic(out, report)
            out.with_suffix(".md").write_text(markdown(report))
        del runner
    ratios = [r["rotations"] / r["lower_bound"] for r in report["layers"] if r["lower_bound"] > 0]
    if ratios:
        report["worst_rotation_ratio"] = max(ratios)
        report["median_rotation_ratio"] = statistics.median(ratios)
    annotate_speedups(report)
    write_json_atomic(out, report)
    out.with_suffix(".md").write_text(markdown(report))
    LOG.info("wrote %s (%.0f s)", out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
