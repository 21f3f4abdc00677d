"""Benchmark scripts loaded as modules, so that tests can check the scripts' own logic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``<name>_benchmark`` (a fresh load each call)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    path = folder / f"{name}.py"
    if str(folder) not in sys.path:  # scripts import their siblings, as when run directly
        sys.path.append(str(folder))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
