"""The Orion reference benchmark degrades to a skip record where orion-fhe is not installed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "orion_reference", ROOT / "benchmarks" / "orion_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("orion_reference", module)
    spec.loader.exec_module(module)
    return module


def test_skip_record_without_orion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("orion") is not None:
        pytest.skip("orion is installed here; the skip path is not taken")
    bench = _load_benchmark()
    out = tmp_path / "orion.json"
    assert bench.main(["--out", str(out), "--quick", "--threads", "1"]) == 0
    assert "orion-fhe is not installed" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["runs"] == []
    assert "orion-fhe" in report["skipped"]
    assert "machine" in report
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_ckks_config_within_128_bit_bound() -> None:
    bench = _load_benchmark()
    for activation in ("quad-folded", "poly"):
        config = bench.ckks_config(15, "standard", activation)["ckks_params"]
        assert len(config["LogQ"]) - 1 == bench.circuit_depth(activation)
        assert sum(config["LogQ"]) + sum(config["LogP"]) <= bench.MAX_LOG_QP_128[15]
