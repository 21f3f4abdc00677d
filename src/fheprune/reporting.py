"""What every report shares: the machine it ran on, and JSON written atomically."""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fheprune.fileio import atomic_write

__all__ = [
    "cpu_model",
    "in_fresh_process",
    "machine_info",
    "quartiles",
    "sig2",
    "write_json_atomic",
    "write_text_atomic",
]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def engine_vector_kernels() -> str | None:
    """The engine's kernels that run in this process: "avx512-ifma", "avx2-fma" or "none"
    (switched off or absent); None where the engine is not built. Times from machines with
    different kernels differ by up to about 4x per operation (``docs/engine.md``)."""
    try:
        from fheprune import ckks
    except ImportError:
        return None
    return str(ckks.vector_kernel_set()) if ckks.vector_kernels_enabled() else "none"


def machine_info(**extra: Any) -> dict[str, Any]:
    """Platform, CPU, cores, interpreter and library versions, a UTC timestamp; plus ``extra``."""
    affinity = getattr(os, "sched_getaffinity", None)
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fheprune": _version("fheprune"),
        "torch": _version("torch"),
        "tenseal": _version("tenseal"),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "engine_vector_kernels": engine_vector_kernels(),
    }
    info.update(extra)
    return info


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: Path, data: Any, *, sort_keys: bool = False) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles of timed repeats (inclusive method; a single sample is both)."""
    if len(values) < 2:
        return float(values[0]), float(values[0])
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def sig2(x: float) -> str:
    """A ratio to two significant digits: timed runs on our shared machines move by about 10%,
    so more digits would print noise."""
    return f"{float(f'{x:.2g}'):g}"


def in_fresh_process(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in a new (spawned) process, its result back here.

    Timed configurations of the engine each get one: in one long process, a refresh measured
    after other configurations had run took up to 25% longer than the same one measured first
    (memory handed back and taken again), which would rank configurations by their place in a
    sweep. ``function`` must be importable (module level) and its arguments picklable."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(function, *args, **kwargs).result()
