"""Command line: ``fheprune <command>`` (also ``python -m fheprune <command>``).

Commands:

* ``run``: the main job - prune the MNIST MLP with P4E, compile dense and pruned into packed
  CKKS programs, run both encrypted (client and server roles) and report accuracy, operation
  counts, latency and memory (see fheprune.runtime.pipeline).
* ``demo``: encrypted MNIST inference with our engine, compared with SEAL (see fheprune.demo).
* ``prune``: prune a model with a named HE-PEx scheme and tile shape within an accuracy (or
  loss) budget; saves the pruned model, its masks and permutations (fheprune.pruning.serialize).
* ``serve``: serve a compiled bundle over HTTP to many clients (fheprune.serving).
* ``client``: the client side of ``serve``: keygen, register, infer, decrypt, delete.
* ``optimize``: search pruning methods and layouts for the best program under constraints
  (fheprune.optimize).
* ``train-private``: train a classifier on encrypted features with encrypted data pruning
  (fheprune.private_training).

Exit status: 0 on success, 2 for a usage or data problem (bad argument, missing or corrupt
dataset), 3 when the compiled engine cannot be imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fheprune.argtypes import number, positive
from fheprune.data import DATA_ENV_VAR, DataError

__all__ = ["EXIT_DATA", "EXIT_NO_ENGINE", "build_parser", "main"]

LOG = logging.getLogger("fheprune")

EXIT_DATA = 2  # same status argparse uses for bad arguments: the user must fix the input
EXIT_NO_ENGINE = 3

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# Every argument is checked here, before any work starts: a bad value must not cost minutes of
# training before it fails.


def _power_of_two(text: str) -> int:
    value = positive(text)
    if value & (value - 1):
        below = 1 << (value.bit_length() - 1)
        raise argparse.ArgumentTypeError(
            f"tile sides must be powers of two (they divide the slot count), got {value}; "
            f"try {below} or {2 * below}"
        )
    return value


def _threads(text: str) -> int:
    value = positive(text)
    try:
        from fheprune import _core
    except ImportError:  # reported by the command itself
        return value
    most = int(_core.max_threads())
    if value > most:
        raise argparse.ArgumentTypeError(
            f"at most {most} engine threads on this machine (usually one per core), got {value}"
        )
    return value


def _percent(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive percentage, got {value}")
    return value


def _fraction(text: str) -> float:
    value = number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {value}")
    return value


def _square_tile(text: str) -> str:
    from fheprune.layouts import TileShape

    try:
        tile = TileShape.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if tile.t1 != tile.t2 or tile.t1 < 1:
        raise argparse.ArgumentTypeError(f"the sweep uses square tiles (t1 = t2 >= 1), got {text}")
    return text


def _scheme(text: str) -> str:
    from fheprune.pruning.schemes import SCHEME_NAMES  # lazy: torch is only needed here

    name = text.upper()
    if name not in SCHEME_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown HE-PEx scheme {text!r}; choose one of {', '.join(SCHEME_NAMES)}"
        )
    return name


def _unwritable(path: Path | None) -> str | None:
    """Why ``path`` cannot be written (None: it can), checked before any work."""
    if path is None:
        return None
    if path.is_dir():
        return f"{path} is a folder, expected a file name"
    parent = path.parent
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create {parent}: {ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot write into {ancestor}"
    return None


def _check_outputs(folders: Sequence[str] = (), **paths: Path | None) -> bool:
    """Logs each output that cannot be written (as --name); True when all can. ``folders``
    names the paths that are folders to create rather than files."""
    ok = True
    for name, path in paths.items():
        # A folder is writable when a file inside it would be.
        problem = _unwritable(path / "file" if name in folders and path else path)
        if problem is not None:
            LOG.error("--%s: %s", name.replace("_", "-"), problem)
            ok = False
    return ok


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fheprune",
        description="HE-aware pruning and a packed CKKS runtime for encrypted inference.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="the main job: prune, compile, run encrypted, report dense vs pruned",
        description=(
            "Train (or load the cached) MLP on MNIST, prune it with an HE-PEx scheme within "
            "2.5%% accuracy, compile dense and pruned into packed CKKS programs (tile layout), "
            "encrypt test images, run them on the server side, decrypt, and print one table: "
            "accuracy and agreement, op counts, latency and memory, dense vs pruned."
        ),
    )
    run.add_argument(
        "--data-dir", default=None, help=f"folder holding mnist/ (default ${DATA_ENV_VAR})"
    )
    run.add_argument(
        "--tile", type=_power_of_two, default=8, help="square tile side, a power of two (default 8)"
    )
    run.add_argument("--scheme", type=_scheme, default="P4E", help="HE-PEx scheme (default P4E)")
    run.add_argument(
        "--target",
        default="neuron",
        choices=("weight", "neuron", "neuron+input"),
        help="first-prune target (default neuron: dead neurons also drop rotations)",
    )
    run.add_argument("--scope", default="global", choices=("local", "global"))
    run.add_argument("--images", type=positive, default=1024, help="test images (default 1024)")
    run.add_argument("--threads", type=_threads, default=1, help="engine threads (default 1)")
    run.add_argument("--retrain-epochs", type=positive, default=2)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--work-dir", type=Path, default=Path("results/runtime"))
    run.add_argument("--out", type=Path, default=Path("results/main_job.json"))
    run.add_argument("--plot", type=Path, default=Path("results/main_job.png"))
    run.add_argument("--log-level", default="INFO", choices=_LOG_LEVELS)
    demo = sub.add_parser(
        "demo",
        help="encrypted MNIST inference (linear layer + square), ours vs SEAL",
        description=(
            "Train a linear MNIST classifier (ridge regression), evaluate it and a square "
            "activation on encrypted test images (4 per ciphertext, preset n8192-l2), and "
            "report the error against plaintext and the timings against Microsoft SEAL."
        ),
    )
    demo.add_argument(
        "--data-dir",
        default=None,
        help=f"folder holding mnist/ (default: ${DATA_ENV_VAR}, else a shared/data folder nearby)",
    )
    demo.add_argument("--images", type=positive, default=64, help="test images (default 64)")
    demo.add_argument("--threads", type=_threads, default=1, help="engine threads (default 1)")
    demo.add_argument("--seed", type=int, default=0, help="seed recorded in the report")
    demo.add_argument(
        "--no-seal", action="store_true", help="skip the SEAL comparison (needs tenseal)"
    )
    demo.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    demo.add_argument("--log-level", default="INFO", choices=_LOG_LEVELS)

    prune = sub.add_parser(
        "prune",
        help="prune a model with an HE-PEx scheme within a degradation budget",
        description=(
            "Train (or load the cached) model, run the scheme for increasing pruning "
            "fractions, keep the highest tile sparsity whose degradation stays within the "
            "budget, and save it (weights, masks, permutations; a code-free .npz)."
        ),
    )
    prune.add_argument("--model", default="mlp", help="mlp, cnn, ae-compressor, ae-denoiser, lenet")
    prune.add_argument("--dataset", default="mnist", help="mnist, cifar10 or svhn")
    prune.add_argument("--scheme", type=_scheme, default="P4E", help="P2, P2T, P3, P3E, P4 or P4E")
    prune.add_argument(
        "--tile", type=_square_tile, default="16x16", help="tile shape t1xt2 (default 16x16)"
    )
    prune.add_argument(
        "--budget", type=_percent, default=2.5, help="max degradation in percent (default 2.5)"
    )
    prune.add_argument("--scope", default="local", choices=("local", "global"))
    prune.add_argument(
        "--criterion",
        default="l1",
        choices=("l1", "random", "act"),
        help="act: |w| times the RMS of its input on training data (default l1)",
    )
    prune.add_argument("--target", default="weight", choices=("weight", "neuron", "neuron+input"))
    prune.add_argument("--reduction", default="avg", choices=("avg", "max", "min"))
    prune.add_argument(
        "--input-fraction",
        type=_fraction,
        default=None,
        help="neuron+input: fraction of input features pruned, ranked among themselves "
        "(default: ranked with the neurons)",
    )
    prune.add_argument(
        "--fractions",
        type=_fraction,
        nargs="+",
        default=[0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99],
        help="pruning fractions to try (increasing)",
    )
    prune.add_argument("--train-epochs", type=positive, default=None)
    prune.add_argument("--retrain-epochs", type=positive, default=2)
    prune.add_argument("--limit", type=positive, default=None, help="training samples")
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--data-dir", default=None)
    prune.add_argument("--work-dir", type=Path, default=Path("results/prune"))
    prune.add_argument("--out", type=Path, required=True, help="pruned model file (.npz)")
    prune.add_argument("--log-level", default="INFO", choices=_LOG_LEVELS)

    from fheprune.serving.commands import add_client_parser, add_serve_parser

    add_serve_parser(sub, _LOG_LEVELS)
    add_client_parser(sub, _LOG_LEVELS)
    from fheprune.optimize.commands import add_optimize_parser

    add_optimize_parser(sub, _LOG_LEVELS)
    from fheprune.private_training.commands import add_train_private_parser

    add_train_private_parser(sub, _LOG_LEVELS)
    return parser


def _run_main_job(args: argparse.Namespace) -> int:
    if not _check_outputs(["work_dir"], out=args.out, plot=args.plot, work_dir=args.work_dir):
        return EXIT_DATA
    from fheprune.runtime import CompileError
    from fheprune.runtime.pipeline import MainJobConfig, format_table, run_main_job

    config = MainJobConfig(
        tile=args.tile,
        scheme=args.scheme,
        target=args.target,
        scope=args.scope,
        images=args.images,
        threads=args.threads,
        data_dir=args.data_dir,
        work_dir=args.work_dir,
        out=args.out,
        plot=args.plot,
        seed=args.seed,
        retrain_epochs=args.retrain_epochs,
    )
    try:
        report = run_main_job(config)
    except DataError as exc:
        LOG.error("%s", exc)
        return EXIT_DATA
    except (CompileError, ValueError) as exc:
        LOG.error("%s", exc)
        return EXIT_DATA
    print(format_table(report))
    print(f"report: {args.out}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    if not _check_outputs(out=args.out):
        return EXIT_DATA
    from fheprune.demo import DemoConfigError, run_engine_demo  # lazy: keeps --help instant

    try:
        run_engine_demo(
            args.data_dir,
            images=args.images,
            threads=args.threads,
            seed=args.seed,
            compare_seal=not args.no_seal,
            out=args.out,
        )
    except (DataError, DemoConfigError) as exc:
        # The loaders' messages already say what was looked for and how to fix it.
        LOG.error("%s", exc)
        return EXIT_DATA
    except ImportError as exc:
        LOG.error("%s", exc)
        return EXIT_NO_ENGINE
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    if list(args.fractions) != sorted(set(args.fractions)):
        LOG.error("--fractions must increase strictly, got %s", args.fractions)
        return EXIT_DATA
    if not _check_outputs(["work_dir"], out=args.out, work_dir=args.work_dir):
        return EXIT_DATA
    from fheprune.experiments.hepex import (  # lazy: torch is only needed here
        Experiment,
        SchemeSpec,
        SweepConfig,
        prune_within_budget,
        save_budget_point,
    )
    from fheprune.layouts import TileShape

    tile = TileShape.parse(args.tile)  # checked by the parser
    spec = SchemeSpec(
        args.scheme.upper(),
        args.scope,
        args.criterion,
        args.target,
        args.reduction,
        input_fraction=args.input_fraction,
    )
    try:
        spec.prune_config(0.5, args.seed)  # fail now, not after training
    except (TypeError, ValueError) as exc:
        LOG.error("%s", exc)
        return EXIT_DATA
    config = SweepConfig(
        models=[args.model],
        tiles=[tile.t1],
        dataset=args.dataset,
        train_epochs=args.train_epochs,
        retrain_epochs=args.retrain_epochs,
        limit=args.limit,
        budget=args.budget / 100,
        seed=args.seed,
        data_dir=args.data_dir,
        out_dir=args.work_dir,
    )
    try:
        experiment = Experiment(config)
        best = prune_within_budget(experiment, args.model, spec, tile.t1, args.fractions)
    except DataError as exc:
        LOG.error("%s", exc)
        return EXIT_DATA
    except ValueError as exc:  # unknown model / scheme / dataset names
        LOG.error("%s", exc)
        return EXIT_DATA
    if best is None:
        LOG.error(
            "no pruning fraction in %s stays within %.2f%% degradation on the validation split",
            args.fractions,
            args.budget,
        )
        return 1
    save_budget_point(args.out, args.model, spec, tile, config, best)
    row = best[2]
    print(
        f"{args.model} {spec.label} {tile.t1}x{tile.t2}: fraction {row['fraction']:.2f}, "
        f"tile sparsity {100 * row['tile_sparsity']:.1f}%, weight sparsity "
        f"{100 * row['weight_sparsity']:.1f}%; validation {row['val_metric']:.4f} "
        f"(baseline {row['val_baseline_metric']:.4f}, degradation "
        f"{row['val_degradation']:+.4f}, chose the fraction); test {row['test_metric']:.4f} "
        f"(baseline {row['test_baseline_metric']:.4f}, degradation "
        f"{row['test_degradation']:+.4f}) -> {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "run":
        return _run_main_job(args)
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "prune":
        return _run_prune(args)
    if args.command == "optimize":
        from fheprune.optimize.commands import run_optimize

        return run_optimize(args)
    if args.command == "train-private":
        from fheprune.private_training.commands import run_train_private

        return run_train_private(args)
    if args.command in ("serve", "client"):
        from fheprune.serving.commands import run_client, run_serve

        return run_serve(args) if args.command == "serve" else run_client(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects the rest
