"""The encrypted dense-vs-pruned benchmark's own logic: defaults, keys, comparisons, report.

The script runs for a quarter of an hour; these tests check what it computes from its runs
(paired speedups, the TenSEAL rows in both modes) and what it claims about itself.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

pytest.importorskip("fheprune._core", reason="the C++ engine is not built")
torch = pytest.importorskip("torch")


def bench() -> ModuleType:
    return load_benchmark("runtime_pruned_vs_dense")


def test_defaults_match_the_docstring() -> None:
    b = bench()
    args = b.parse_args([])
    assert args.target == "auto"
    assert "``auto`` (the default)" in b.__doc__
    assert args.repeats == 5 and b.DEFAULT_REPEATS >= 5
    assert args.out == Path("benchmarks/results/runtime_pruned_vs_dense.json")
    assert b.parse_args(["--target", "neuron"]).out.name == "runtime_pruned_vs_dense_neuron.json"
    assert b.parse_args(["--quick"]).out.name == "runtime_pruned_vs_dense_quick.json"
    assert b.target_for("mlp", "auto") == "neuron"
    assert b.target_for("ae-denoiser", "auto") == "weight"


def test_the_batched_tenseal_key_ignores_the_image_count() -> None:
    b = bench()
    row = {"model": "mlp", "layout": "tenseal-ckkstensor-batched", "tile": None}
    assert b.run_key({**row, "variant": "tenseal-batched", "images": 4096}) == b.run_key(
        {**row, "variant": "tenseal-batched", "images": 16}
    )
    single = {"model": "mlp", "layout": "tenseal-ckksvector", "tile": None}
    assert b.run_key({**single, "variant": "tenseal-single", "images": 4}) != b.run_key(
        {**single, "variant": "tenseal-single", "images": 16}
    )


def test_sig2_keeps_two_significant_digits() -> None:
    from fheprune.reporting import sig2

    assert [sig2(x) for x in (4781.97, 10.30, 4.29, 1.14, 0.0123)] == [
        "4800",
        "10",
        "4.3",
        "1.1",
        "0.012",
    ]


def test_in_fresh_process_runs_elsewhere_and_returns_the_result() -> None:
    import math
    import os

    from fheprune.reporting import in_fresh_process

    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(math.gcd, 12, 18) == 6
    assert in_fresh_process(int, "ff", base=16) == 255  # keyword arguments reach it too
    with pytest.raises(ValueError):
        in_fresh_process(math.sqrt, -1.0)  # the child's error reaches the caller


def _run(variant: str, tile: int | None, seconds: list[float], **extra: Any) -> dict[str, Any]:
    med = float(np.median(seconds))
    return {
        "model": "mlp",
        "task": "classification",
        "layout": "tile" if tile else f"tenseal-{variant}",
        "tile": None if tile is None else [tile, tile],
        "variant": variant,
        "images": 256,
        "latency_s": med,
        "latency_repeats_s": seconds,
        "per_image_s": med / 256,
        "memory_bytes": 100 if variant == "dense" else 40,
        "memory": {"plaintext_bytes": 80 if variant == "dense" else 20},
        "ops": {"rotate": 10, "mul_plain": 100 if variant == "dense" else 10},
        "tile_sparsity": 0.9,
        "rotation_lower_bound": 1,
        "mul_plain_lower_bound": 1,
        "accuracy": 0.9,
        "agreement": 1.0,
        "val_degradation": 0.02,
        "degradation": 0.024,
        **extra,
    }


def test_pruned_speedup_is_the_median_of_paired_ratios() -> None:
    b = bench()
    dense = _run("dense", 8, [1.0, 2.0, 1.0, 1.0, 1.0])
    # A slow moment hits both variants of repeat 2: the pair still says 10x.
    pruned = _run("pruned", 8, [0.1, 0.2, 0.1, 0.125, 0.125])
    c = b.comparisons([dense, pruned], {})["pruned_vs_dense"]["mlp@8x8"]
    assert c["speedup"] == pytest.approx(10.0)
    assert c["speedup_pairs"] == 5
    assert c["speedup_iqr"][0] == pytest.approx(8.0) and c["speedup_iqr"][1] == pytest.approx(10)
    assert c["val_degradation"] == 0.02 and c["degradation"] == 0.024


def test_tenseal_rows_compare_like_with_like() -> None:
    b = bench()
    dense = _run("dense", 8, [0.256] * 5)  # 1 ms per image
    params = {"poly_degree": 8192, "chain": [49, 40, 40, 40, 49]}
    batched = {
        "model": "mlp",
        "tile": None,
        "variant": "tenseal-batched",
        "images": 4096,
        "repeats": 5,
        "per_image_s": 0.006,
        "parameters": params,
    }
    single = {**batched, "variant": "tenseal-single", "images": 4, "per_image_s": 12.0}
    one = {"tile": [8, 8], "latency_s": 0.06}
    comp = b.comparisons([dense, batched, single], {"ours_one_image": one})
    assert comp["tenseal_batched"]["speedup_vs_tenseal"] == pytest.approx(6.0)
    assert comp["tenseal_single"]["speedup_vs_tenseal"] == pytest.approx(200.0)
    report = {
        "runs": [dense, _run("pruned", 8, [0.0256] * 5), batched, single],
        "comparisons": b.comparisons(
            [dense, _run("pruned", 8, [0.0256] * 5), batched, single], {"ours_one_image": one}
        ),
        "config": {
            "images": 256,
            "threads": 1,
            "repeats": 5,
            "quick": False,
            "models": ["mlp"],
            "tiles": [8],
            "targets": {"mlp": "neuron"},
            "schedule": {"train_epochs": None, "retrain_epochs": 2, "fractions": [0.9]},
        },
    }
    md = b.markdown(report)
    assert "| throughput (batched) | CKKSTensor batch=True" in md
    assert "| latency (one image) | CKKSVector" in md
    assert "| 6x |" in md and "| 200x |" in md
    assert "chosen on the validation split" in md and "2 retrain epoch(s)" in md
    assert "10x [10-10]" in md  # the pruned speedup with its IQR


@pytest.mark.parametrize("square", [False, True])
def test_tenseal_computes_our_lowered_network(square: bool) -> None:
    """Batched TenSEAL gives the dense MLP's outputs, at the depth our compiler lowers it to
    (the HE-PEx MLP's linear tanh fit folds away; a real square stays a square)."""
    ts = pytest.importorskip("tenseal")
    b = bench()
    from collections import OrderedDict

    from fheprune.models.activations import TanhPoly2

    torch.manual_seed(0)
    act = TanhPoly2()  # the HE-PEx MLP's activation (a linear fit of tanh)
    if square:
        act.coeffs.copy_(torch.tensor([0.05, 0.3, 0.1]))
    layers = [("fc1", torch.nn.Linear(20, 6)), ("act1", act), ("fc2", torch.nn.Linear(6, 3))]
    model = torch.nn.Sequential(OrderedDict(layers)).double().eval()
    steps = b._mlp_weights(model)
    assert [k for k, _, _ in steps] == (
        ["linear", "square", "linear"] if square else ["linear", "linear"]
    )
    x = np.random.default_rng(0).uniform(0, 1, (3, 20))
    want = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(b._reference(steps, x), want, rtol=1e-9, atol=1e-9)
    params = b.tenseal_parameters(ts, steps, "batched", 1)
    assert params["poly_degree"] == 8192
    assert len(params["chain"]) == (5 if square else 4)  # one level per mm and per square
    ctx = b._tenseal_context(ts, params["poly_degree"], params["chain"], 1)
    enc = b._tenseal_encrypt(ts, ctx, x, "batched")
    res = b._tenseal_forward(enc, b._tenseal_inputs(ts, ctx, steps, "batched"))
    np.testing.assert_allclose(b._tenseal_outputs(res, "batched", len(x)), want, atol=1e-2)
