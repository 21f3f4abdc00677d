"""Merge HE-PEx sweep points from several runs into one report.

    python benchmarks/hepex_report.py OUT_DIR RUN_DIR [RUN_DIR ...] [--budget 0.025]

Each RUN_DIR is an output folder of ``benchmarks/hepex_sparsity.py`` (its ``points.jsonl``).
Sweeps are often run in parts (a model or tile shape at a time, or extra schemes later); this
writes ``hepex_sparsity.json`` / ``.md`` and the metric-vs-tile-sparsity plots for all of them
together. A point found in several runs (same model, scheme configuration, tile, fraction) is
taken from the last RUN_DIR that has it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fheprune.experiments.hepex import plot, point_key, read_points, write_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--budget", type=float, default=0.025)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    merged: dict[str, dict[str, object]] = {}
    seeds: set[object] = set()
    for run in args.runs:
        path = run / "points.jsonl"
        if not path.is_file():
            p.error(f"{path} not found: pass output folders of benchmarks/hepex_sparsity.py")
        for row in read_points(path):
            merged[point_key(row)] = row
        report = run / "hepex_sparsity.json"
        if report.is_file():
            seeds.add(json.loads(report.read_text(encoding="utf-8")).get("seed"))
    if len(seeds) > 1:
        p.error(f"the runs used different seeds {sorted(map(str, seeds))}; merge one seed")
    rows = sorted(
        merged.values(),
        key=lambda r: (r["model"], r["tile"][0], r["config"], r["fraction"]),  # type: ignore[index]
    )
    extra = {
        "runs": [str(r) for r in args.runs],
        "budget": args.budget,
        "seed": next(iter(seeds), None),
    }
    files = write_report(rows, args.out_dir, args.budget, extra).files
    files += plot(rows, {}, args.out_dir)
    print((args.out_dir / "hepex_sparsity.md").read_text(encoding="utf-8"))
    for f in files:
        logging.info("wrote %s", f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
