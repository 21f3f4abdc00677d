"""benchmarks/conv_dense.py's timing logic on a small conv network at insecure test parameters:
one server switched between thread counts, interleaved rounds, paired ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark
from toys import small_cnn

_core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")

from fheprune.runtime.compiler import compile_model  # noqa: E402


def test_time_servers_pairs_rounds_on_one_server() -> None:
    bench = load_benchmark("conv_dense")
    params = _core.Parameters(2048, [50] + [40] * 5, [50], 40, insecure_for_testing=True)
    compiled = compile_model(small_cnn(1), layout="map", parameters=params)
    x = np.random.default_rng(0).random((1, 1, 8, 8))
    result = bench.time_servers(compiled, [1, 2], 3, x)
    assert result["one_server"] and result["setup_s"] > 0
    assert result["plaintext_bytes"] == sum(c["plaintext_bytes"] for c in compiled.program.cost())
    for t in (1, 2):
        row = result[f"threads_{t}"]
        assert row["engine_threads"] == t  # the one server really switched
        assert len(row["seconds"]) == 3
        assert row["median_s"] == sorted(row["seconds"])[1]
        assert row["argmax_agrees"] and row["max_abs_error"] < 1e-3
        layers = {c["name"] for c in compiled.program.cost()}
        assert set(row["layer_seconds_of_median_run"]) == layers
    one, two = result["threads_1"]["seconds"], result["threads_2"]["seconds"]
    ratios = [a / b for a, b in zip(one, two, strict=True)]
    assert result["speedup"]["per_round"] == ratios
    assert result["speedup"]["median"] == sorted(ratios)[1]


def test_threads_pruned_needs_the_cached_models(tmp_path: Path) -> None:
    bench = load_benchmark("threads_pruned")
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not data.exists():
        pytest.skip("the MNIST files are not beside the repository")
    with pytest.raises(SystemExit, match=r"run benchmarks/rotation_aware\.py with this --work-dir"):
        bench.main(
            ["--work-dir", str(tmp_path), "--data-dir", str(data), "--out", str(tmp_path / "o")]
        )
    assert not (tmp_path / "o").exists()
