"""The rotation-aware benchmark's report handling (the script itself runs for hours)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from benchmark_scripts import load_benchmark

pytest.importorskip("fheprune._core", reason="the C++ engine is not built")
pytest.importorskip("torch")


def bench() -> ModuleType:
    return load_benchmark("rotation_aware")


def fresh(**overrides: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "rows": [],
        "layers": [],
        "budget": 0.005,
        "seed": 0,
        "client_shifts": True,
        "margin": 0.0,
        "schedule": {},
        "parameters": {},
        "baseline_accuracy": {},
    }
    report.update(overrides)
    return report


def old_report() -> dict[str, Any]:
    rows = [{"model": m, "method": "dense"} for m in ("lenet", "vgg5-mnist")]
    return fresh(
        rows=rows,
        layers=[{"model": "lenet", "layer": "conv2"}, {"model": "vgg5-mnist", "layer": "conv2"}],
        schedule={"train_epochs": 10, "limit": 30000},  # the older, single-schedule form
        parameters={"lenet": "N=16384", "vgg5-mnist": "N=16384"},
        baseline_accuracy={"lenet": 0.98, "vgg5-mnist": 0.99},
        encoding={"vgg5-mnist": {"on_demand": True}},
    )


def test_a_run_keeps_the_rows_of_the_models_it_leaves_out(tmp_path: Path) -> None:
    b = bench()
    out = tmp_path / "report.json"
    out.write_text(json.dumps(old_report()))
    report = fresh()
    b.keep_other_models(report, out, ["vgg5-mnist"])
    assert [r["model"] for r in report["rows"]] == ["lenet"]
    assert [r["model"] for r in report["layers"]] == ["lenet"]
    assert report["parameters"] == {"lenet": "N=16384"}
    assert report["baseline_accuracy"] == {"lenet": 0.98}
    assert report["schedule"] == {"lenet": {"train_epochs": 10, "limit": 30000}}
    assert "encoding" not in report  # only the re-run model had one


@pytest.mark.parametrize(
    "change", [{"budget": 0.01}, {"seed": 1}, {"client_shifts": False}, {"threads": 2}]
)
def test_rows_measured_under_other_settings_are_not_kept(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    b = bench()
    out = tmp_path / "report.json"
    out.write_text(json.dumps(old_report()))
    report = fresh(**change)
    b.keep_other_models(report, out, ["vgg5-mnist"])
    assert report["rows"] == [] and report["parameters"] == {}


def test_an_unreadable_report_starts_a_new_one(tmp_path: Path) -> None:
    b = bench()
    out = tmp_path / "report.json"
    out.write_text("{truncated")
    report = fresh()
    b.keep_other_models(report, out, ["lenet"])
    assert report["rows"] == []
    b.keep_other_models(report, tmp_path / "missing.json", ["lenet"])
    assert report["rows"] == []


def test_larger_networks_get_the_large_schedule() -> None:
    b = bench()
    assert b.schedule_for("lenet", quick=False) is b.FULL
    assert b.schedule_for("vgg5-mnist", quick=False) is b.LARGE
    assert b.schedule_for("hefnet-mnist", quick=True) is b.QUICK
    assert b.LARGE.rounds == 1
    # Conv rows are medians over 10 encrypted images (with their IQR), not one run.
    assert b.FULL.images >= 10 and b.LARGE.images >= 10


def test_matched_effort_gives_every_pruned_row_our_recovery_epochs() -> None:
    b = bench()
    s = b.FULL
    extra = b.recovery_epochs(s)
    assert extra == s.warmup_epochs + s.rounds * s.final_epochs
    assert b.parse_args([]).matched_effort is True
    assert b.parse_args(["--unmatched-effort"]).matched_effort is False
    for method in ("sub-block", "group-4", "combined", "hunter", "artemis-diagonal"):
        assert b.training_budget(method, s, True).endswith(f"+ {extra} distilled recovery")
        assert "recovery" not in b.training_budget(method, s, False)
    assert "dense" in b.NO_EXTRA_TRAINING and "combined-cost-aware" in b.NO_EXTRA_TRAINING
    ours = b.training_budget("combined-cost-aware", s, True)
    assert f"{s.rounds} x {s.final_epochs} distilled recovery" in ours


def test_the_table_states_budget_spread_and_both_splits() -> None:
    b = bench()
    row = {
        "model": "lenet",
        "method": "hunter",
        "groups": 1,
        "rot_left": 0.9,
        "other_left": 0.8,
        "sparsity": 0.3,
        "accuracy": 0.975,
        "val_degradation": 0.004,
        "test_degradation": 0.0059,
        "within_budget_val": True,
        "latency_s": 1.0,
        "latency_runs_s": [0.9, 1.0, 1.2],
        "latency_iqr_s": [0.95, 1.1],
        "speedup": 1.1431,
        "encode_s": 0.0,
        "agreement": 1.0,
        "training": "1 epoch(s) per step + 19 distilled recovery",
    }
    md = b.markdown(fresh(rows=[row]))
    line = next(x for x in md.splitlines() if x.startswith("| lenet | hunter"))
    assert "+0.40 / +0.59" in line and "1.000 [0.950-1.100]" in line and "| 1.1x |" in line
    assert "19 distilled recovery" in line
    assert "(over)" in b.markdown(fresh(rows=[{**row, "within_budget_val": False}]))


def test_a_quick_report_says_it_does_not_predict_the_full_table() -> None:
    b = bench()
    quick = b.markdown(fresh(note=b.QUICK_NOTE))
    assert "not a prediction of the full table" in quick
    assert quick.index("Quick mode") < quick.index("| model |")
    assert "Quick mode" not in b.markdown(fresh())


def test_cost_aware_cache_names_carry_what_the_result_depends_on() -> None:
    """Only the cost-aware method's result depends on its prices, client shifts and margin;
    its cache names say all three, so a cache made under other settings is never read back."""
    b = bench()
    assert b.cache_key("group-8", client_shifts=False, margin=0.1) == "group-8"
    plain = b.cache_key("combined-cost-aware", client_shifts=True, margin=0.0)
    assert plain == f"combined-cost-aware-{b.COST_AWARE_PRICES}"
    names = {
        b.cache_key("combined-cost-aware", client_shifts=shifts, margin=margin)
        for shifts in (True, False)
        for margin in (0.0, 0.002)
    }
    assert len(names) == 4 and all(b.COST_AWARE_PRICES in n for n in names)


def test_encrypted_runs_take_the_thread_count() -> None:
    from fheprune.runtime.params import counting_parameters

    b = bench()
    assert b.parse_args([]).threads == 1
    assert b.parse_args(["--threads", "2"]).threads == 2
    runner = b.EncryptedRunner(counting_parameters(1, 512), threads=2)
    assert int(runner.context.threads) == 2
