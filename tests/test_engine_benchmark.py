"""The engine-vs-SEAL benchmark's own logic: the scalar-path row and what it says of builds."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

ckks = pytest.importorskip("fheprune.ckks", reason="the C++ engine is not built")


def bench() -> ModuleType:
    return load_benchmark("engine_vs_seal")


def test_the_scalar_row_switches_the_vector_kernels_off_and_back() -> None:
    b = bench()
    fast, slow = b.OursBackend(ckks), b.OursBackend(ckks, vector=False)
    assert (fast.name, slow.name) == ("ours", "ours_scalar")
    assert slow.thread_counts == (1,)
    params = b.BenchParams.for_n(8192, b.HOIST_STEPS)
    try:
        slow.setup(params)
        assert not ckks.vector_kernels_enabled()
        x = np.random.default_rng(0).uniform(-1, 1, params.slots)
        inputs = b.make_inputs(slow, x, x)
        assert max(b.sanity_errors(slow, inputs, x, x).values()) < b.SANITY_TOL
        fast.enter()
        assert ckks.vector_kernels_enabled() == ckks.vector_kernels_available()
    finally:
        ckks.set_vector_kernels(True)
        slow.close()


def test_builds_and_table_name_both_paths() -> None:
    b = bench()
    backends = [b.OursBackend(ckks), b.OursBackend(ckks, vector=False), b.SealBackend()]
    builds = b.describe_builds(backends)
    assert builds["ours_scalar"]["avx512_ifma_kernels"] is False
    assert builds["ours_scalar"]["vector_kernels"] == "none"
    kernel_set = ckks.vector_kernel_set()
    assert kernel_set in ("avx512-ifma", "avx2-fma", "none")
    assert (kernel_set != "none") == ckks.vector_kernels_available()
    assert builds["ours"]["vector_kernels"] == kernel_set
    assert builds["ours"]["avx512_ifma_kernels"] == (kernel_set == "avx512-ifma")
    assert "SEAL from the TenSEAL" in builds["seal"]["summary"]
    entry = {
        "ours_s": 1e-3,
        "seal_s": 2e-3,
        "ratio": 0.5,
        "ours_2t_s": 6e-4,
        "ours_scalar_s": 2.2e-3,
        "scalar_ratio": 1.1,
    }
    table = b.format_table({"ops": {"rotate@8192": entry}, "builds": builds})
    assert "ours scalar" in table and "scalar/SEAL" in table
    assert "0.5x" in table and "1.1x" in table
    assert "ours_scalar: ours, portable scalar kernels only" in table


def test_machine_info_names_the_kernels_that_run() -> None:
    """Every results file says which engine kernels produced its times, and the switch to the
    scalar path shows there."""
    from fheprune.reporting import machine_info

    assert machine_info()["engine_vector_kernels"] == (
        ckks.vector_kernel_set() if ckks.vector_kernels_available() else "none"
    )
    ckks.set_vector_kernels(False)
    try:
        assert machine_info()["engine_vector_kernels"] == "none"
    finally:
        ckks.set_vector_kernels(True)
