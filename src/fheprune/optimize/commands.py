"""``fheprune optimize``: the command line of :func:`fheprune.optimize.optimize`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fheprune.argtypes import number, positive, seconds
from fheprune.errors import FhepruneError

from .constraints import OBJECTIVES

__all__ = ["add_optimize_parser", "format_result", "run_optimize"]

log = logging.getLogger("fheprune")


def _percent(text: str) -> float:
    """'2.5%' or '2.5' (percent) -> 0.025."""
    value = number(text.rstrip("%"))
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in [0, 100], got {text!r}")
    return value / 100


def _seconds(text: str) -> float:
    """'0.2' or '0.2s' -> 0.2 (argtypes.seconds, with an optional unit)."""
    return seconds(text.removesuffix("s"))


_UNITS = {"": 1, "b": 1, "kb": 2**10, "k": 2**10, "mb": 2**20, "m": 2**20, "gb": 2**30, "g": 2**30}


def _bytes(text: str) -> float:
    """'512MB', '2GB', '1048576' -> bytes (binary units)."""
    low = text.strip().lower()
    digits = low.rstrip("kmgb")
    unit = low[len(digits) :]
    if unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"unknown unit in {text!r}; use B, KB, MB or GB")
    value = number(digits) * _UNITS[unit]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive size, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 784 or 1,28,28, got {text!r}"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"shape must be positive sizes, got {text!r}")
    return dims


def _list(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}s, got {text!r}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    return parse


def add_optimize_parser(sub: Any, log_levels: tuple[str, ...]) -> None:
    p = sub.add_parser(
        "optimize",
        help="search pruning methods and layouts for the best program under constraints",
        description=(
            "Screen HE-PEx schemes x fractions x tile shapes (fully connected models) or "
            "rotation-aware methods x HE groups (conv models) as Ray Tune trials with the "
            "calibrated cost model, measure the most promising programs encrypted, and write "
            "the Pareto fronts, an HTML report, the best program's bundle and its pruned "
            "model. Every decision uses a validation split; the test split is read once."
        ),
    )
    p.add_argument("model", help="a zoo model name (mlp, lenet, ...) or a .onnx / torch file")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset")
    p.add_argument("--dataset", default="mnist")
    p.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        help="one sample's shape for torch files, e.g. 784 or 1,28,28",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a torch file that holds a whole pickled module (this runs code from the file)",
    )
    p.add_argument(
        "--max-degradation",
        type=_percent,
        default=0.025,
        help="accuracy points the pruned model may lose on validation (default 2.5%%)",
    )
    p.add_argument(
        "--max-latency",
        type=_seconds,
        default=None,
        help="server seconds per batch (--batch images)",
    )
    p.add_argument(
        "--max-memory",
        type=_bytes,
        default=None,
        help="server memory: plaintexts + keys + ciphertexts, e.g. 512MB",
    )
    p.add_argument("--min-throughput", type=number, default=None, help="images per second")
    p.add_argument("--objective", choices=OBJECTIVES, default="latency")
    p.add_argument("--workers", type=positive, default=2, help="concurrent trials (default 2)")
    p.add_argument(
        "--address",
        default=None,
        help="a Ray cluster to run trials on (default: a local Ray instance)",
    )
    p.add_argument(
        "--executor",
        choices=("ray", "local"),
        default="ray",
        help="'local' runs the trials one by one in this process, without Ray",
    )
    p.add_argument("--searcher", choices=("grid", "optuna"), default="grid")
    p.add_argument("--trials", type=positive, default=None, help="optuna: number of trials")
    p.add_argument("--quick", action="store_true", help="a small search space")
    p.add_argument("--tiles", type=_list(int), default=None, help="tile sides, e.g. 8,16")
    p.add_argument("--fractions", type=_list(float), default=None, help="e.g. 0.9,0.95")
    p.add_argument(
        "--methods", type=_list(str), default=None, help="conv models: e.g. hunter,subblock"
    )
    p.add_argument("--groups", type=_list(int), default=None, help="conv models: e.g. 1,8")
    p.add_argument(
        "--batch",
        type=positive,
        default=None,
        help="images per measured batch (default 256 FC, 1 conv)",
    )
    p.add_argument("--limit", type=positive, default=None, help="training samples (default all)")
    p.add_argument(
        "--train-epochs",
        type=positive,
        default=None,
        help="zoo baselines' training epochs (default: the published schedule)",
    )
    p.add_argument("--retrain-epochs", type=positive, default=2)
    p.add_argument(
        "--finetune-epochs",
        type=positive,
        default=1,
        help="conv models: epochs per fine-tune of the rotation-aware methods",
    )
    p.add_argument(
        "--group-epochs",
        type=positive,
        default=2,
        help="conv models: epochs of HE-group convolution warm-up",
    )
    p.add_argument("--measure-top", type=positive, default=3)
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--threads", type=positive, default=1, help="engine threads when measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("results/optimize"))
    p.add_argument("--log-level", default="INFO", choices=log_levels)


def format_result(result: dict[str, Any]) -> str:
    """The final table: the latency Pareto front (on predictions; measurements beside them)
    and the verdict."""
    lines = [
        f"{result['model']}: {result['trials']} candidates ({result['failed_trials']} failed), "
        f"{result['workers']} worker(s), {result['wall_s']:.0f} s; objective "
        f"{result['objective']}, latency per {result['batch']} image(s)"
    ]
    by_key = {r["key"]: r for r in result["screened"]}
    front = [by_key[k] for k in result["pareto"]["latency"] if k in by_key]
    width = max([len(r["label"]) for r in front] + [9])
    lines.append(
        f"{'candidate':{width}}  {'val pts':>9}  {'sparsity':>8}  {'predicted':>9}  "
        f"{'measured':>9}  {'memory':>9}"
    )
    for r in front:
        measured = r.get("measured")
        memory = (measured or r["predicted"])["memory_bytes"] / 2**20
        lines.append(
            f"{r['label']:{width}}  {100 * r['degradation']:>+9.2f}  "
            f"{100 * r['unit_sparsity']:>7.1f}%  {r['predicted']['latency_s']:>8.4f}s  "
            + (f"{measured['latency_s']:>8.4f}s" if measured else f"{'-':>9}")
            + f"  {memory:>6.1f}MiB"
        )
    best = result.get("best")
    if best is not None:
        m = best["measured"]
        lines.append(
            f"best: {best['label']}: {m['latency_s']:.4f} s per {result['batch']} image(s) "
            f"(predicted {best['predicted']['latency_s']:.4f}), {m['memory_bytes'] / 2**20:.1f} "
            f"MiB, validation degradation {100 * best['degradation']:+.2f} points, test accuracy "
            f"{best['test_metric']:.4f} (unpruned {best['baseline_test_metric']:.4f})"
        )
        lines.append(f"bundle: {best['bundle']}  model: {best['model']}")
    else:
        lines.append("no program meets every constraint; the closest misses:")
        lines += [f"  {v['message']}" for v in result["infeasible"]["violations"]]
    return "\n".join(lines)


def run_optimize(args: argparse.Namespace) -> int:
    from .constraints import Constraints
    from .search import OptimizeConfig, optimize

    try:
        cfg = OptimizeConfig(
            model=args.model,
            data_dir=args.data_dir,
            dataset=args.dataset,
            input_shape=args.input_shape,
            allow_pickle=args.allow_pickle,
            constraints=Constraints(
                max_degradation=args.max_degradation,
                max_latency_s=args.max_latency,
                max_memory_bytes=args.max_memory,
                min_throughput=args.min_throughput,
            ),
            objective=args.objective,
            out_dir=args.out_dir,
            workers=args.workers,
            address=args.address,
            executor=args.executor,
            searcher=args.searcher,
            trials=args.trials,
            quick=args.quick,
            tiles=args.tiles,
            fractions=args.fractions,
            methods=args.methods,
            groups=args.groups,
            batch=args.batch,
            limit=args.limit,
            train_epochs=args.train_epochs,
            retrain_epochs=args.retrain_epochs,
            finetune_epochs=args.finetune_epochs,
            group_epochs=args.group_epochs,
            measure_top=args.measure_top,
            repeats=args.repeats,
            threads=args.threads,
            seed=args.seed,
        )
        result = optimize(cfg)
    except FhepruneError as exc:
        log.error("%s", exc)
        return 2
    print(format_result(result))
    print(f"report: {args.out_dir / 'report.html'}")
    return 0 if result["best"] is not None else 1
