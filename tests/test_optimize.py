"""The optimizer: constraints, search space, Pareto fronts, the trial store, and whole searches
(in-process, on a local Ray instance, interrupted and resumed) on a tiny MNIST set-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from test_experiments import needs_mnist

from fheprune.errors import FhepruneError, InputError
from fheprune.optimize import (
    Candidate,
    Constraints,
    OptimizeConfig,
    fc_space,
    map_space,
    optimize,
    pareto_front,
)
from fheprune.optimize.constraints import objective_value
from fheprune.optimize.store import TrialStore

# ------------------------------------------------------------------------------ pieces


def test_constraints_name_what_is_missed_and_by_how_much() -> None:
    c = Constraints(
        max_degradation=0.025, max_latency_s=0.1, max_memory_bytes=2**20, min_throughput=1000
    )
    metrics = {"degradation": 0.03, "latency_s": 0.25, "memory_bytes": 2**19, "throughput": 400}
    found = {v.constraint: v for v in c.violations(metrics)}
    assert set(found) == {"max_degradation", "max_latency_s", "min_throughput"}
    assert found["max_latency_s"].excess == pytest.approx(0.15)
    assert found["min_throughput"].excess == pytest.approx(600)
    assert "(off by 0.15 s)" in found["max_latency_s"].describe()
    assert "off by 0.5 accuracy points" in found["max_degradation"].describe()
    assert not c.violations(
        {"degradation": 0.02, "latency_s": 0.1, "memory_bytes": 2**20, "throughput": 1000}
    )


@pytest.mark.parametrize(
    "kwargs", [{"max_degradation": -0.1}, {"max_degradation": 2.5}, {"max_latency_s": float("nan")}]
)
def test_bad_constraints_are_typed_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        Constraints(**kwargs)


def test_objective_values_are_minimized() -> None:
    m = {"latency_s": 2.0, "memory_bytes": 10.0, "throughput": 50.0}
    assert objective_value(m, "latency") == 2.0
    assert objective_value(m, "memory") == 10.0
    assert objective_value(m, "throughput") == -50.0
    with pytest.raises(InputError):
        objective_value(m, "accuracy")  # type: ignore[arg-type]


def test_candidates_round_trip_and_have_stable_distinct_keys() -> None:
    space = fc_space((8, 16), (0.5, 0.9)) + map_space(groups=(1, 8))
    keys = [c.key for c in space]
    assert len(set(keys)) == len(keys)
    for c in space:
        assert Candidate.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert (
        Candidate("tile", "P4E", tile=8, fraction=0.9).key
        == Candidate("tile", "P4E", tile=8, fraction=0.9).key
    )


def test_group_sizes_are_the_powers_of_two_up_to_g_base() -> None:
    from fheprune.optimize.search import group_sizes

    assert group_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert group_sizes(12) == (1, 2, 4, 8, 12)
    assert group_sizes(1) == (1,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": "tile", "method": "P4E", "tile": 12, "fraction": 0.5},
        {"family": "tile", "method": "P4E", "tile": 8, "fraction": 1.0},
        {"family": "tile", "method": "P4E", "tile": 8},
        {"family": "map", "method": "relu-prune"},
        {"family": "grid", "method": "dense"},
        {"family": "map", "method": "hunter", "groups": 0},
        {"family": "diagonal", "method": "P4E", "fraction": 0.5},
        {"family": "diagonal", "method": "dense", "tile": 8},
    ],
)
def test_bad_candidates_are_typed_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        Candidate(**kwargs)
    with pytest.raises(InputError):
        Candidate.from_dict({"family": "tile", "method": "dense", "tile": 8, "colour": 1})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=25))
def test_pareto_front_is_exactly_the_undominated_points(points: list[tuple[int, int]]) -> None:
    front = pareto_front(points, lambda p: p[0], lambda p: p[1])

    def dominated(p: tuple[int, int]) -> bool:
        return any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)

    assert sorted(set(front)) == sorted({p for p in points if not dominated(p)})
    assert len(front) == len(set(front))  # exact ties kept once
    assert [p[0] for p in front] == sorted(p[0] for p in front)


def test_store_keeps_records_and_skips_torn_ones(tmp_path: Path) -> None:
    store = TrialStore(tmp_path)
    art = tmp_path / "art"
    art.mkdir()
    (art / "weights.pt").write_bytes(b"w")
    store.save_record({"key": "a", "status": "ok"}, art)
    store.save_measured("a", {"latency_s": 1.0})
    assert (store.folder("a") / "weights.pt").read_bytes() == b"w"
    assert store.records() == [{"key": "a", "status": "ok", "measured": {"latency_s": 1.0}}]
    store.folder("b").mkdir()
    (store.folder("b") / "record.json").write_text('{"key": "b", "sta')  # a torn write
    assert store.record("b") is None
    assert [r["key"] for r in store.records()] == ["a"]


# ------------------------------------------------------------------------ whole searches

TINY = {
    "limit": 2000,
    "train_epochs": 1,
    "retrain_epochs": 1,
    "batch": 64,
    "repeats": 2,
    "measure_top": 2,
    "tiles": (8,),
    "fractions": (0.9,),
    "schemes": (("P4E", "global", "l1", "neuron"),),
}


def _config(out: Path, **kwargs: Any) -> OptimizeConfig:
    return OptimizeConfig(model="mlp", out_dir=out, **{**TINY, **kwargs})


@needs_mnist
def test_search_finds_the_known_best_point(tmp_path: Path) -> None:
    # Without an accuracy constraint the pruned program (about a tenth of the rotations and
    # plaintext multiplies) is the fastest; with no degradation allowed only dense qualifies.
    # The diagonal layout (one sample per ciphertext) is screened too, and loses at 64 images.
    loose = optimize(
        _config(tmp_path / "a", executor="local", constraints=Constraints(max_degradation=1.0)),
        progress=False,
    )
    assert loose["best"]["candidate"]["method"] == "P4E"
    diagonal = next(r for r in loose["screened"] if r["candidate"]["family"] == "diagonal")
    assert diagonal["unit_sparsity"] == 0.0 and diagonal["predicted"]["latency_s"] > 0
    measured = [r for r in loose["screened"] if r.get("measured")]
    assert len(measured) == 2
    fastest = min(measured, key=lambda r: r["measured"]["latency_s"])
    assert loose["best"]["key"] == fastest["key"]
    assert loose["best"]["measured"]["ops_match_cost_model"]
    assert loose["best"]["measured"]["argmax_agreement"] >= 0.95
    assert 0 <= loose["best"]["test_metric"] <= 1
    assert (tmp_path / "a" / "bundle").is_dir()
    assert (tmp_path / "a" / "model" / "weights.pt").is_file()
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "Pareto" in html

    strict = optimize(
        _config(tmp_path / "a", executor="local", constraints=Constraints(max_degradation=0.0)),
        progress=False,
    )
    assert strict["best"]["candidate"]["method"] == "dense"
    # Another budget is another search: nothing of the first was read back as this one's.
    assert len(list((tmp_path / "a" / "trials").iterdir())) == 2 * len(loose["screened"])
    assert {r["key"] for r in strict["screened"]}.isdisjoint(r["key"] for r in loose["screened"])


@needs_mnist
def test_unmeetable_constraint_says_which_and_by_how_much(tmp_path: Path) -> None:
    result = optimize(
        _config(
            tmp_path,
            executor="local",
            constraints=Constraints(max_degradation=1.0, max_latency_s=1e-6),
        ),
        progress=False,
    )
    assert result["best"] is None
    (violation,) = result["infeasible"]["violations"]
    assert violation["constraint"] == "max_latency_s"
    assert violation["value"] == result["infeasible"]["closest"]["measured"]["latency_s"]
    assert violation["excess"] == pytest.approx(violation["value"] - 1e-6)
    assert "No program meets every constraint" in (tmp_path / "report.html").read_text()


@needs_mnist
def test_selection_never_reads_the_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fheprune.optimize.search as search

    reads: list[str] = []
    real = search._ZooLoaders.__call__

    def spy(self: Any, with_test: bool = False) -> Any:
        reads.append("test" if with_test else "val")
        return real(self, with_test)

    monkeypatch.setattr(search._ZooLoaders, "__call__", spy)
    monkeypatch.setattr(search, "_finish", lambda best, *a: {**search._summary(best)})
    import fheprune.optimize.report as report

    monkeypatch.setattr(report, "write_report", lambda *a: None)
    result = optimize(
        _config(tmp_path, executor="local", constraints=Constraints(max_degradation=1.0)),
        progress=False,
    )
    assert result["best"] is not None
    assert reads and "test" not in reads


@needs_mnist
def test_ray_trials_match_in_process_trials_and_resume(tmp_path: Path) -> None:
    local = optimize(_config(tmp_path / "local", executor="local"), progress=False)
    ray_out = tmp_path / "ray"
    on_ray = optimize(_config(ray_out, executor="ray", workers=2), progress=False)
    assert on_ray["executor"] == "ray" and on_ray["failed_trials"] == 0
    by_key = {r["key"]: r for r in local["screened"]}
    assert {r["key"] for r in on_ray["screened"]} == set(by_key)
    for r in on_ray["screened"]:
        # Same seed, same data, same schedule: the same pruned model and program.
        assert r["layers"] == by_key[r["key"]]["layers"]
        assert r["predicted"]["rotation_keys"] == by_key[r["key"]]["predicted"]["rotation_keys"]
    # A second run redoes nothing: every record and measurement is read back.
    stamps = {p: p.stat().st_mtime_ns for p in (ray_out / "trials").rglob("*.json")}
    again = optimize(_config(ray_out, executor="ray", workers=2), progress=False)
    assert again["best"]["key"] == on_ray["best"]["key"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@needs_mnist
def test_an_interrupted_search_resumes_without_losing_trials(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "fheprune",
        "optimize",
        "mlp",
        "--executor",
        "local",
        "--limit",
        "2000",
        "--train-epochs",
        "1",
        "--retrain-epochs",
        "1",
        "--batch",
        "64",
        "--repeats",
        "1",
        "--measure-top",
        "1",
        "--quick",
        "--tiles",
        "8",
        "--fractions",
        "0.85,0.9,0.95",
        "--max-degradation",
        "100",
        "--out-dir",
        str(out),
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("trials/*/record.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p: p.read_bytes() for p in out.glob("trials/*/record.json")}
    assert len(first) >= 2, "the search should have stored trials before it was killed"
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best:" in done.stdout
    for path, content in first.items():
        assert path.read_bytes() == content  # kept, not redone
    result = json.loads((out / "result.json").read_text())
    assert len(result["screened"]) == result["trials"] == 3 * 3 + 2  # + dense tile, diagonal


@needs_mnist
def test_the_optuna_searcher_samples_the_space_on_ray(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    result = optimize(
        _config(tmp_path, searcher="optuna", trials=3, fractions=(0.85, 0.9)), progress=False
    )
    # The unpruned program is evaluated first; every sampled point is a grid candidate.
    grid = {Candidate.from_dict(r["candidate"]).label for r in result["screened"]}
    assert "dense 8x8" in grid
    assert result["space"] == 4 and 1 <= result["trials"] <= 3  # samples, repeats screened once
    assert grid <= {
        "dense 8x8",
        "dense diagonal",
        *(f"P4E global/l1/neuron 8x8 f={f:g}" for f in (0.85, 0.9)),
    }
    assert result["best"] is not None


def test_optimizer_refuses_bad_configurations(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        OptimizeConfig(workers=0)
    with pytest.raises(InputError):
        OptimizeConfig(searcher="optuna")
    with pytest.raises(InputError, match="runs on Ray"):
        OptimizeConfig(searcher="optuna", trials=4, executor="local")
    with pytest.raises(InputError, match="optuna"):
        OptimizeConfig(trials=4)
    with pytest.raises(InputError, match="Ray Client"):
        OptimizeConfig(address="ray://head:10001")
    with pytest.raises(FhepruneError):
        optimize(OptimizeConfig(model=str(tmp_path / "missing.onnx"), out_dir=tmp_path))


def _onnx_file(model: Any, path: Path) -> Path:
    import torch

    pytest.importorskip("onnx")
    torch.onnx.export(model.eval(), torch.zeros(1, 784), str(path), dynamo=False)
    return path


@needs_mnist
def test_an_onnx_model_is_searched_like_a_zoo_model(tmp_path: Path) -> None:
    import torch

    from fheprune.models import build_model
    from fheprune.training import evaluate, load_loaders
    from fheprune.training.config import TrainConfig

    model = build_model("mlp", seed=3)
    source = _onnx_file(model, tmp_path / "user.onnx")
    result = optimize(
        OptimizeConfig(
            model=str(source),
            out_dir=tmp_path / "out",
            executor="local",
            constraints=Constraints(max_degradation=1.0),
            **{k: v for k, v in TINY.items() if k != "train_epochs"},
        ),
        progress=False,
    )
    # The imported model is the user's model: same validation accuracy as torch gives it.
    loaders = load_loaders("mlp", "mnist", TrainConfig(), limit=TINY["limit"], with_test=False)
    with torch.no_grad():
        expected = evaluate(model, loaders.val, "classification")
    assert result["baseline"]["val_metric"] == pytest.approx(expected, abs=1e-9)
    assert result["model"] == "user"
    assert result["best"] is not None and (tmp_path / "out" / "bundle").is_dir()


def test_an_unsupported_onnx_node_stops_the_command_with_its_name(tmp_path: Path) -> None:
    from torch import nn

    model = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    source = _onnx_file(model, tmp_path / "relu.onnx")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fheprune",
            "optimize",
            str(source),
            "--executor",
            "local",
            "--out-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Relu" in done.stderr and "TanhPoly2" in done.stderr


def test_a_program_that_cannot_hold_the_data_is_refused_at_screening() -> None:
    from toys import toy_compiled

    from fheprune.optimize.trial import _check_input_range
    from fheprune.runtime import ClientSpec

    compiled = toy_compiled()
    bound = ClientSpec.from_compiled(compiled).max_input
    assert bound is not None
    _check_input_range(compiled, bound)  # data at the bound: fine
    with pytest.raises(InputError, match="InputRangeError"):
        _check_input_range(compiled, 2 * bound)
