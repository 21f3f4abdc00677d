"""Command line: ``fheprune <command>`` (also ``python -m fheprune <command>``).

Commands:

* ``demo``: encrypted MNIST inference with our engine, compared with SEAL (see fheprune.demo).

Exit status: 0 on success, 2 for a usage or data problem (bad argument, missing or corrupt
dataset), 3 when the compiled engine cannot be imported.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fheprune.data import DATA_ENV_VAR, DataError

__all__ = ["EXIT_DATA", "EXIT_NO_ENGINE", "build_parser", "main"]

LOG = logging.getLogger("fheprune")

EXIT_DATA = 2  # same status argparse uses for bad arguments: the user must fix the input
EXIT_NO_ENGINE = 3

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fheprune",
        description="HE-aware pruning and a packed CKKS runtime for encrypted inference.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    demo.add_argument("--images", type=_positive, default=64, help="test images (default 64)")
    demo.add_argument("--threads", type=_positive, default=1, help="engine threads (default 1)")
    demo.add_argument("--seed", type=int, default=0, help="seed recorded in the report")
    demo.add_argument(
        "--no-seal", action="store_true", help="skip the SEAL comparison (needs tenseal)"
    )
    demo.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    demo.add_argument("--log-level", default="INFO", choices=_LOG_LEVELS)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "demo":
        return _run_demo(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects the rest
