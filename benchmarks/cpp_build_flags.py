"""What ``-march=native`` buys the C++ engine: the portable default build against a native one.

The engine's AVX-512 IFMA kernels are chosen at run time in both builds; ``-march=native`` only
lets the compiler tune the scalar code for the build machine. This script configures and builds
``fheprune_bench`` (cpp/tools/bench.cpp) both ways, runs the two binaries interleaved
(portable, native, portable, ...) so that drift on the machine hits both alike, and writes the
per-operation medians, interquartile ranges and the native/portable ratio as JSON.

    python benchmarks/cpp_build_flags.py [--quick] [--log-n 14] [--repeats 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

from fheprune.reporting import machine_info, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
BUILDS = {"portable": "OFF", "native": "ON"}


def build(name: str, native: str) -> Path:
    tree = ROOT / "build" / f"bench-{name}"
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tree), "-DCMAKE_BUILD_TYPE=Release",
         f"-DFHEPRUNE_NATIVE={native}", "-DFHEPRUNE_BUILD_TESTS=OFF",
         "-DFHEPRUNE_BUILD_EXAMPLES=OFF", "-DFHEPRUNE_INSTALL=OFF"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(tree), "--target", "fheprune_bench", "-j2"],
        check=True, capture_output=True,
    )  # fmt: skip
    return tree / "cpp" / "fheprune_bench"


def run_once(binary: Path, log_n: int) -> dict[str, float]:
    out = subprocess.run(
        [str(binary), str(log_n), "1"], check=True, capture_output=True, text=True
    ).stdout
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+)\s+([\d.]+) ms$", out, re.M)}


def quartiles(values: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median_ms": round(median, 3), "iqr_ms": round(q3 - q1, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 2^13, 3 repeats")
    parser.add_argument("--log-n", type=int, default=14, choices=(13, 14))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpp_build_flags.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.log_n, args.repeats = 13, 3
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (for quartiles)")

    binaries = {name: build(name, flag) for name, flag in BUILDS.items()}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in BUILDS}
    for _ in range(args.repeats):
        for name, binary in binaries.items():  # interleaved
            for op, ms in run_once(binary, args.log_n).items():
                samples[name].setdefault(op, []).append(ms)

    ops: dict[str, Any] = {}
    for op in samples["portable"]:
        row = {name: quartiles(samples[name][op]) for name in BUILDS}
        row["native_over_portable"] = round(
            row["native"]["median_ms"] / row["portable"]["median_ms"], 2
        )
        ops[op] = row
        print(
            f"{op:16s} portable {row['portable']['median_ms']:8.3f} ms  "
            f"native {row['native']['median_ms']:8.3f} ms  ratio {row['native_over_portable']}"
        )
    write_json_atomic(
        args.out,
        {
            "benchmark": "cpp_build_flags",
            "parameters": {"log_n": args.log_n, "threads": 1, "repeats": args.repeats},
            "note": "medians and interquartile ranges of per-operation times from "
            "cpp/tools/bench.cpp; builds run interleaved; AVX-512 kernels are dispatched at "
            "run time in both",
            "ops": ops,
            "machine": machine_info(),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
