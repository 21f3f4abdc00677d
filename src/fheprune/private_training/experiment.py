"""The private-training table: encrypted training at several kept fractions and modes, each
row a wall-clock measurement of the whole run (with the machine it ran on), beside the
plaintext recipe's accuracy.

Used by ``fheprune train-private`` and ``benchmarks/private_training.py``. Rows are written to
the output JSON as they finish (atomically), and a rerun with the same settings skips the rows
already there, so a long table resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fheprune.errors import InputError
from fheprune.private_training import MODES, SCORES
from fheprune.private_training import kernels as K
from fheprune.private_training.backend import (
    EngineBackend,
    SimulatedBackend,
    TrainingParameters,
    Vector,
    training_parameters,
)
from fheprune.private_training.features import build_or_load_extractor, split_private_data
from fheprune.private_training.layout import SampleLayout
from fheprune.private_training.softmax import SoftmaxApprox
from fheprune.private_training.trainer import (
    PrivateTrainingConfig,
    accuracy,
    describe,
    train_plaintext,
    train_private,
)
from fheprune.reporting import in_fresh_process, machine_info, write_json_atomic

log = logging.getLogger(__name__)

KEEP_FRACTIONS = (1.0, 0.5, 0.2, 0.1, 0.05)


@dataclass(frozen=True)
class TableSettings:
    train_samples: int = 16384
    validation_samples: int = 1024
    test_samples: int | None = None
    extractor_samples: int = 10_000
    epochs: int = 7
    learning_rate: float = 4.0  # chosen on validation among 1, 2, 4 (docs/private-training.md)
    momentum: float = 0.5
    rescore_every: int = 5
    logit_bound: float = 3.0
    log_n: int = 15
    backend: str = "engine"  # or "simulator"
    threads: int = 1
    seed: int = 0


def levels_needed(approx: SoftmaxApprox) -> int:
    """The chain's top level for one step: packing mask, forward, softmax, gradient, update."""
    return 1 + 1 + approx.depth + 1 + 1


#: A row of the table: (kept fraction, mode, score); the full-data row is (1.0, "full", None).
Run = tuple[float, str, str | None]


def _config(settings: TableSettings, keep: float, mode: str, score: str) -> PrivateTrainingConfig:
    return PrivateTrainingConfig(
        keep_fraction=keep,
        mode=mode,  # type: ignore[arg-type]
        score=score,  # type: ignore[arg-type]
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        momentum=settings.momentum,
        rescore_every=settings.rescore_every,
        logit_bound=settings.logit_bound,
        seed=settings.seed,
    )


def _row_key(row: dict[str, Any]) -> Run:
    return float(row["keep_fraction"]), str(row["mode"]), row.get("score")


def measure_row(
    settings: TableSettings,
    params: TrainingParameters,
    layout: SampleLayout,
    run: Run,
    data: tuple[Vector, NDArray[np.int64], Vector, NDArray[np.int64], Vector, NDArray[np.int64]],
    progress: bool = False,
) -> dict[str, Any]:
    """One row of the table: a whole private training run with fresh keys, the plaintext
    recipe beside it, and their accuracies. Module-level, so that it can run in a process of
    its own."""
    keep, mode, score = run
    x, y, xv, yv, xt, yt = data
    client: Any
    server: Any
    cfg = _config(settings, keep, "private" if mode == "full" else mode, score or "hefs")
    if settings.backend == "simulator":
        client = SimulatedBackend(layout.slots, params.top_level)
        server = client.server_view()
    else:
        # Fresh keys per run, so no run inherits another's operation counts.
        client, server = EngineBackend.create(params, K.rotation_steps(layout), settings.threads)
    result = train_private(client, server, layout, cfg, x, y, xv, yv, progress)
    reference = train_plaintext(layout, cfg, x, y, xv, yv)
    row = {
        "keep_fraction": keep,
        "mode": mode,
        "score": score,
        "refresh": "client",
        "backend": settings.backend,
        "samples": len(x),
        "epochs": cfg.epochs,
        **describe(result),
        "accuracy": accuracy(result.weights, xt, yt),
        "validation_accuracy": accuracy(result.weights, xv, yv),
        "plaintext_accuracy": accuracy(reference, xt, yt),
        "plaintext_validation_accuracy": accuracy(reference, xv, yv),
        "history": result.history,
        "machine": machine_info(),
    }
    return row


def run_table(
    data_dir: str | Path | None,
    out: Path,
    settings: TableSettings,
    runs: list[Run],
    extractor_cache: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every (keep_fraction, mode, score) in ``runs`` not yet in ``out`` and return the
    table."""
    splits = split_private_data(
        data_dir,
        train_samples=settings.train_samples,
        validation_samples=settings.validation_samples,
        test_samples=settings.test_samples,
        extractor_samples=settings.extractor_samples,
        seed=settings.seed,
    )
    extractor = build_or_load_extractor(splits, extractor_cache, seed=settings.seed)
    x, y = extractor.extract(splits.train.images), splits.train.labels
    xv, yv = extractor.extract(splits.validation.images), splits.validation.labels
    xt, yt = extractor.extract(splits.test.images), splits.test.labels
    layout = SampleLayout(1 << (settings.log_n - 1), x.shape[1], 10)
    approx = SoftmaxApprox(layout.classes, layout.lanes, settings.logit_bound)
    params: TrainingParameters = training_parameters(levels_needed(approx), log_n=settings.log_n)

    header = {
        "settings": asdict(settings),
        "extractor_digest": extractor.digest,
        "parameters": {
            "log_n": params.log_n,
            "chain_bits": list(params.chain_bits),
            "special_bits": list(params.special_bits),
            "scale_bits": params.scale_bits,
            "levels": params.top_level,
        },
        "samples_per_ciphertext": layout.samples_per_ciphertext,
        "refresh": "client",
        # The client computes the validation loss from decrypted logits (exact softmax).
        "validation": "logits",
        "softmax": {
            "logit_bound": approx.logit_bound,
            "depth": approx.depth,
            "exp_degree": approx.exp_degree,
            "squarings": approx.squarings,
            "inverse_degree": approx.inverse_degree,
            "newton_steps": approx.newton_steps,
        },
    }
    table: dict[str, Any] = {**header, "runs": []}
    if out.exists():
        old = json.loads(out.read_text())
        wanted = json.loads(json.dumps(header))
        differ = sorted(k for k in header if k != "settings" and old.get(k) != wanted[k])
        old_settings = old.get("settings") or {}
        differ += sorted(
            f"{k} ({old_settings.get(k)!r}, now {v!r})"
            for k, v in wanted["settings"].items()
            if old_settings.get(k) != v
        )
        if differ:
            raise InputError(
                f"{out} holds a table made with other {', '.join(differ)}; resuming would mix "
                "them: choose another --out (or delete the file)"
            )
        table["runs"] = old.get("runs", [])
    done = {_row_key(r) for r in table["runs"]}

    for keep, mode, score in runs:
        if keep == 1.0:
            mode, score = "full", None
        if (keep, mode, score) in done:
            log.info("keep %.2f %s %s: already in %s", keep, mode, score, out)
            continue
        data = (x, y, xv, yv, xt, yt)
        if settings.backend == "engine":
            # Each encrypted row in its own process. In one process the first row takes its
            # memory from the system and later rows reuse what earlier ones freed: the
            # full-data row, first, spent about 6 s more encrypting at the default size.
            row = in_fresh_process(
                measure_row, settings, params, layout, (keep, mode, score), data, progress
            )
        else:
            row = measure_row(settings, params, layout, (keep, mode, score), data, progress)
        table["runs"].append(row)
        done.add((keep, mode, score))
        write_json_atomic(out, table)
        log.info(
            "keep %.2f %s %s: %.1f s, accuracy %.4f (plaintext %.4f)",
            keep,
            mode,
            score,
            row["train_seconds"],
            row["accuracy"],
            row["plaintext_accuracy"],
        )
    _add_speedups(table)
    write_json_atomic(out, table)
    return table


def _add_speedups(table: dict[str, Any]) -> None:
    full = [r for r in table["runs"] if r["mode"] == "full"]
    if not full:
        return
    base = full[0]
    for r in table["runs"]:
        # Only rows measured on the same kind of machine as the baseline compare.
        same = _machine_kind(r) == _machine_kind(base)
        r["speedup_vs_full"] = base["train_seconds"] / r["train_seconds"] if same else None


def _machine_kind(row: dict[str, Any]) -> tuple[object, ...]:
    m = row.get("machine", {})
    return (m.get("cpu_model"), m.get("cores"), m.get("platform"))


def default_runs(
    fractions: tuple[float, ...] = KEEP_FRACTIONS,
    modes: tuple[str, ...] = MODES,
    scores: tuple[str, ...] = ("hefs",),
) -> list[Run]:
    """(kept fraction, mode, score) rows: 1.0 is the full-data baseline, once (it scores
    nothing); every other fraction once per mode and score."""
    for score in scores:
        if score not in SCORES:
            raise InputError(f"score must be one of {SCORES}, got {score!r}")
    runs: list[Run] = []
    for keep in fractions:
        if keep == 1.0:
            runs.append((1.0, "full", None))
        else:
            runs.extend((keep, m, sc) for sc in scores for m in modes)
    return runs


def extractor_cache_for(out: Path) -> Path:
    """Where a table keeps its feature extractor: beside its JSON."""
    return out.with_name(out.stem + "-extractor.pt")


def format_row(row: dict[str, Any]) -> str:
    """One table row for a terminal."""
    speedup = row.get("speedup_vs_full")
    return (
        f"keep {row['keep_fraction']:<5} {row['mode']:<8} {row.get('score') or '-':<7}"
        f"{row['train_seconds']:8.1f} s"
        + (f" x{speedup:.2f}" if speedup is not None else "")
        + f"  accuracy {row['accuracy']:.4f} (plaintext recipe {row['plaintext_accuracy']:.4f})"
        f"  up {row['bytes_up'] / 2**20:.0f} MiB, down {row['bytes_down'] / 2**20:.0f} MiB"
    )


def plot_table(table: dict[str, Any], path: Path) -> None:
    """Accuracy and time against the kept fraction; time per component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    full = [r for r in table["runs"] if r["mode"] == "full"]
    lines = sorted(
        {(r["mode"], r.get("score") or "hefs") for r in table["runs"]} - {("full", "hefs")}
    )
    twin = ax1.twinx()
    for n, (mode, score) in enumerate(lines):
        rows = sorted(
            full
            + [r for r in table["runs"] if (r["mode"], r.get("score") or "hefs") == (mode, score)],
            key=lambda r: r["keep_fraction"],
        )
        keeps = [r["keep_fraction"] for r in rows]
        marker = "os^v"[n % 4]
        ax1.plot(keeps, [r["train_seconds"] for r in rows], marker=marker, label=f"{mode}, {score}")
        twin.plot(keeps, [100 * r["accuracy"] for r in rows], "k:", marker=marker, alpha=0.5)
    twin.set_ylabel("test accuracy (%, dotted)")
    ax1.set_xscale("log")
    ax1.set_xlabel("kept fraction")
    ax1.set_ylabel("training time (s, whole run)")
    ax1.legend(loc="upper left")
    components = sorted({c for r in table["runs"] for c in r["seconds_by_component"]})
    labels = [f"{r['keep_fraction']}\n{r['mode']}\n{r.get('score') or ''}" for r in table["runs"]]
    bottom = np.zeros(len(table["runs"]))
    for comp in components:
        vals = np.array([r["seconds_by_component"].get(comp, 0.0) for r in table["runs"]])
        ax2.bar(labels, vals, bottom=bottom, label=comp)
        bottom += vals
    ax2.set_ylabel("seconds")
    ax2.legend(fontsize=7)
    ax2.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
