"""Private training with encrypted data pruning, measured end to end on the engine.

    python benchmarks/private_training.py [--quick] [--out FILE] [--data-dir DIR]
        [--train-samples N] [--epochs E] [--fractions 1 0.5 0.2 0.1 0.05]
        [--scores hefs logits] [--modes heprune private] [--backend engine]

Writes JSON ``{"runs": [{"keep_fraction", "mode", "refresh", "samples", "epochs",
"train_seconds", "seconds_by_component", "accuracy", "plaintext_accuracy", "bytes_up",
"bytes_down", ...}], ...}`` through :func:`fheprune.private_training.experiment.run_table`
(the method lives in the package; this script only picks sizes). Every ``train_seconds`` is the
wall clock of one whole run: encryption, scoring, pruning, every step, every refresh and the
validation of every epoch. ``mode`` is ``full`` (no pruning, the HETAL-style baseline),
``heprune`` (the server learns the mask and compacts ciphertexts) or ``private`` (the client
re-packs the kept samples; the server learns only their number); ``score`` is ``hefs``
(HEPrune's score, computed under encryption) or ``logits`` (the client scores exactly from
decrypted logits). ``refresh`` is ``client``:
the client re-encrypts the weights after every step (bootstrapping them on the server would
need more key memory than this machine has, docs/private-training.md). A rerun with the same
settings resumes the table.

Sizes: the default (16384 training samples, 7 epochs, N = 2^15) runs the 17 rows in about 80
minutes on two cores (one score's nine rows, ``--scores hefs``, in under an hour); ``--quick``
(2048 samples) in about ten minutes. The size matters beyond
time: a kept fraction of a small set is a handful of steps on the hardest samples, and on 2048
samples the plaintext recipe itself loses 20 to 37 points at 20% and below (validation
96.7% full, 63.6% at 20%), while on 16384 it stays within 0.2 points down to 10%
(docs/private-training.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fheprune.private_training import MODES, SCORES
from fheprune.private_training.experiment import (
    KEEP_FRACTIONS,
    TableSettings,
    default_runs,
    extractor_cache_for,
    format_row,
    plot_table,
    run_table,
)

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2048 training samples")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default benchmarks/results/private_training.json (_quick.json with --quick)",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder holding mnist/ (default: FHEPRUNE_DATA)"
    )
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--validation-samples", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--fractions", type=float, nargs="+", default=list(KEEP_FRACTIONS))
    p.add_argument(
        "--scores",
        nargs="+",
        choices=SCORES,
        default=list(SCORES),
        help="how samples are scored: hefs (HEPrune's score under encryption), logits (the "
        "client scores exactly from decrypted logits); each pruned row runs once per score",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="privacy modes of the pruned rows: heprune (the server learns the mask), private "
        "(the client re-packs the kept samples)",
    )
    p.add_argument("--backend", choices=("engine", "simulator"), default="engine")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extractor-cache", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out is None:
        name = "private_training_quick.json" if args.quick else "private_training.json"
        args.out = ROOT / "benchmarks/results" / name
    return args


def settings_from(args: argparse.Namespace) -> TableSettings:
    train = args.train_samples or (2048 if args.quick else TableSettings.train_samples)
    return TableSettings(
        train_samples=train,
        validation_samples=args.validation_samples,
        epochs=args.epochs,
        backend=args.backend,
        threads=args.threads,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = settings_from(args)
    cache = args.extractor_cache or extractor_cache_for(args.out)
    table = run_table(
        args.data_dir,
        args.out,
        settings,
        default_runs(tuple(args.fractions), modes=tuple(args.modes), scores=tuple(args.scores)),
        cache,
        progress=True,
    )
    plot_table(table, args.out.with_suffix(".png"))
    for r in table["runs"]:
        print(format_row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
