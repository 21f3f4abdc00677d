"""HE-PEx sparsity sweep: best tile sparsity within 2.5% degradation, per model and scheme.

    python benchmarks/hepex_sparsity.py [--quick] [--out-dir results/hepex] [options]

Sweeps the pruning fraction for every scheme (P2 variants, P2T variants, P3, P3E, P4, P4E) on
MLP, CNN, AE-Compressor and AE-Denoiser over MNIST for tile shapes 8, 16, 32 and 64; writes
``hepex_sparsity.json`` (seed, parameters, machine), ``hepex_sparsity.md`` (beside the paper's
numbers) and plots into the output directory. Interrupted runs resume from ``points.jsonl``.
``--quick``: one model, one tile shape, a short schedule (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from fheprune.experiments.hepex import (
    DEFAULT_FRACTIONS,
    DEFAULT_P2T_LOW_FRACTIONS,
    DEFAULT_SCHEMES,
    SchemeSpec,
    SweepConfig,
    run_sweep,
)

QUICK_SCHEMES = (
    SchemeSpec("P2", "local", "l1", "weight"),
    SchemeSpec("P2T", "local", reduction="avg"),
    SchemeSpec("P2T", "local", reduction="max"),
    SchemeSpec("P3", "local", "l1", "weight"),
    SchemeSpec("P3E", "local", "l1", "weight"),
    SchemeSpec("P4", "local", "l1", "weight"),
    SchemeSpec("P4E", "local", "l1", "weight"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one model, one tile, short schedule")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--tiles", nargs="+", type=int, default=None)
    p.add_argument("--fractions", nargs="+", type=float, default=None)
    p.add_argument(
        "--p2t-low-fractions",
        nargs="*",
        type=float,
        default=None,
        help="extra fractions for P2T only (default 0.05 .. 0.45; none with --quick)",
    )
    p.add_argument(
        "--schemes",
        nargs="+",
        default=None,
        help="keep only scheme configurations whose label starts with one of these",
    )
    p.add_argument("--train-epochs", type=int, default=None, help="default: Table 2 schedule")
    p.add_argument("--retrain-epochs", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="training samples (default: all)")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--budget", type=float, default=0.025)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    schemes = QUICK_SCHEMES if args.quick else DEFAULT_SCHEMES
    if args.schemes:
        schemes = tuple(s for s in schemes if any(s.label.startswith(x) for x in args.schemes))
    config = SweepConfig(
        models=args.models
        or (["mlp"] if args.quick else ["mlp", "cnn", "ae-compressor", "ae-denoiser"]),
        tiles=args.tiles or ([16] if args.quick else [8, 16, 32, 64]),
        fractions=args.fractions or ((0.8, 0.9, 0.95, 0.98) if args.quick else DEFAULT_FRACTIONS),
        p2t_low_fractions=args.p2t_low_fractions
        if args.p2t_low_fractions is not None
        else (() if args.quick else DEFAULT_P2T_LOW_FRACTIONS),
        schemes=schemes,
        train_epochs=args.train_epochs
        if args.train_epochs is not None
        else (2 if args.quick else None),
        retrain_epochs=args.retrain_epochs
        if args.retrain_epochs is not None
        else (1 if args.quick else 2),
        limit=args.limit if args.limit is not None else (20000 if args.quick else None),
        test_limit=args.test_limit
        if args.test_limit is not None
        else (5000 if args.quick else None),
        budget=args.budget,
        seed=args.seed,
        data_dir=args.data_dir,
        out_dir=args.out_dir or Path("results/hepex-quick" if args.quick else "results/hepex"),
    )
    report = run_sweep(config, progress=lambda items: tqdm(list(items), desc="sweep points"))
    print((config.out_dir / "hepex_sparsity.md").read_text(encoding="utf-8"))
    for path in report.files:
        logging.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
