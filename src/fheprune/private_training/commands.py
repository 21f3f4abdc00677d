"""``fheprune train-private``: encrypted training with encrypted data pruning, end to end."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fheprune.argtypes import number, positive
from fheprune.errors import FhepruneError
from fheprune.private_training import MODES, SCORES

__all__ = ["add_train_private_parser", "run_train_private"]

log = logging.getLogger("fheprune")


def _keep(text: str) -> float:
    value = number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a kept fraction must be in (0, 1], got {text}")
    return value


def add_train_private_parser(sub: Any, log_levels: tuple[str, ...]) -> None:
    p = sub.add_parser(
        "train-private",
        help="train a softmax classifier on encrypted features, pruning training data",
        description=(
            "HETAL-style private transfer learning with HEPrune's encrypted data pruning: "
            "the client extracts features with a public frozen extractor, encrypts them and "
            "the server trains on ciphertexts; every kept fraction and mode is one measured "
            "row (docs/private-training.md). Rows already in --out are kept (resume)."
        ),
    )
    p.add_argument(
        "--keep-fraction",
        type=_keep,
        nargs="+",
        default=[1.0, 0.1],
        help="fractions of the training samples kept (1 = no pruning, the baseline)",
    )
    p.add_argument(
        "--mode",
        choices=(*MODES, "both"),
        default="both",
        help="heprune: the server learns the mask and compacts ciphertexts; private: the "
        "client re-packs the kept samples and the server learns only their number",
    )
    p.add_argument(
        "--score",
        choices=(*SCORES, "both"),
        default="hefs",
        help="hefs: the server computes HEPrune's score under encryption; logits: the server "
        "computes logits and the client scores exactly (cheaper, reveals nothing more)",
    )
    p.add_argument("--epochs", type=positive, default=7)
    p.add_argument("--train-samples", type=positive, default=2048)
    p.add_argument("--validation-samples", type=positive, default=1024)
    p.add_argument("--backend", choices=("engine", "simulator"), default="engine")
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder holding mnist/ (or FHEPRUNE_DATA)")
    p.add_argument("--out", type=Path, default=Path("results/private_training.json"))
    p.add_argument("--log-level", default="INFO", choices=log_levels)


def run_train_private(args: argparse.Namespace) -> int:
    from fheprune.private_training.experiment import (
        TableSettings,
        default_runs,
        extractor_cache_for,
        format_row,
        plot_table,
        run_table,
    )

    modes = MODES if args.mode == "both" else (args.mode,)
    scores = SCORES if args.score == "both" else (args.score,)
    runs = default_runs(tuple(args.keep_fraction), modes, scores)
    settings = TableSettings(
        train_samples=args.train_samples,
        validation_samples=args.validation_samples,
        epochs=args.epochs,
        backend=args.backend,
        threads=args.threads,
        seed=args.seed,
    )
    try:
        table = run_table(
            args.data_dir, args.out, settings, runs, extractor_cache_for(args.out), progress=True
        )
    except FhepruneError as exc:
        log.error("%s", exc)
        return 2
    plot_table(table, args.out.with_suffix(".png"))
    for r in table["runs"]:
        print(format_row(r))
    print(f"report: {args.out}, plot: {args.out.with_suffix('.png')}")
    return 0
