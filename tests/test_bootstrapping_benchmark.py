"""benchmarks/bootstrapping.py end to end at its quick size: the fields the issue asks for,
each of our rows from its own process, the reference rows marked skipped when their workers
fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "bootstrapping.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bootstrapping.py"),
            "--quick",
            "--repeats",
            "1",
            "--orion-python",
            "/bin/false",  # reference workers that fail at once
            "--desilo-python",
            "/bin/false",
            "--out",
            str(out),
        ],
        check=True,
        timeout=900,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    ours = [r for r in report["runs"] if r["impl"] == "ours"]
    assert [(r["log_n"], r["threads"], r["slots"]) for r in ours] == [(13, 1, 4096)]
    row = ours[0]
    for field in ("seconds", "levels_left", "precision_bits_min", "key_bytes"):
        assert row[field] is not None
    assert row["levels_left"] == 2
    assert row["precision_bits_mean"] > 15
    for impl in ("lattigo", "desilofhe"):
        rows = [r for r in report["runs"] if r["impl"] == impl]
        assert len(rows) == 1 and "worker failed" in rows[0]["skipped"], impl
    assert report["ratio_ours_over_lattigo"] == {"1": None}


def test_thread_speedup_is_each_implementations_own_ratio() -> None:
    from benchmark_scripts import load_benchmark

    bench = load_benchmark("bootstrapping")
    runs = [
        {"impl": "ours", "threads": 1, "slots": 8, "refresh_slots": 8, "seconds": 9.0},
        {"impl": "ours", "threads": 2, "slots": 8, "refresh_slots": 8, "seconds": 5.0},
        # a sparse row of ours is another workload: it must not stand in for the full one
        {"impl": "ours", "threads": 2, "slots": 8, "refresh_slots": 4, "seconds": 1.0},
        {"impl": "lattigo", "threads": 1, "slots": 8, "seconds": 8.0},
        {"impl": "lattigo", "threads": 2, "slots": 8, "seconds": 4.0},
        {"impl": "lattigo", "threads": 4, "skipped": "worker failed"},
    ]
    assert bench.thread_speedup(runs) == {"ours": {"2": 1.8}, "lattigo": {"2": 2.0}}
    assert bench.thread_speedup(runs[1:3]) == {}  # no one-thread row: no ratio
