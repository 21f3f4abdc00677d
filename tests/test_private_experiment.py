"""The private-training table (fheprune.private_training.experiment), the benchmark script and
the ``train-private`` command, on small synthetic MNIST files and the simulator backend."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark
from test_data import idx_images, idx_labels, write_mnist
from test_private_features import class_images

from fheprune.cli import main
from fheprune.errors import InputError
from fheprune.private_training import experiment
from fheprune.private_training.experiment import TableSettings, default_runs, run_table

FIELDS = {
    "keep_fraction",
    "mode",
    "refresh",
    "samples",
    "epochs",
    "train_seconds",
    "seconds_by_component",
    "accuracy",
    "plaintext_accuracy",
    "bytes_up",
    "bytes_down",
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    images, labels = class_images(700, seed=0)
    write_mnist(tmp_path / "mnist", "train", idx_images(images), idx_labels(labels.astype("uint8")))
    images, labels = class_images(100, seed=1)
    write_mnist(tmp_path / "mnist", "test", idx_images(images), idx_labels(labels.astype("uint8")))
    return tmp_path


SETTINGS = TableSettings(
    train_samples=256,
    validation_samples=64,
    extractor_samples=300,
    epochs=2,
    rescore_every=1,
    backend="simulator",
)


def test_the_table_has_every_row_and_field_and_resumes(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "table.json"
    runs = default_runs((1.0, 0.25), scores=("hefs", "logits"))
    table = run_table(data_dir, out, SETTINGS, runs, tmp_path / "extractor.pt")
    assert [(r["keep_fraction"], r["mode"], r["score"]) for r in table["runs"]] == [
        (1.0, "full", None),
        (0.25, "heprune", "hefs"),
        (0.25, "private", "hefs"),
        (0.25, "heprune", "logits"),
        (0.25, "private", "logits"),
    ]
    for row in table["runs"]:
        assert set(row) >= FIELDS
        assert row["refresh"] == "client" and row["samples"] == 256
        assert 0.0 <= row["accuracy"] <= 1.0 and row["train_seconds"] > 0
    full, heprune, private, heprune_logits, private_logits = table["runs"]
    # Scoring by logits spends no encrypted softmax (the same selection, fewer products).
    for hefs, logits in ((heprune, heprune_logits), (private, private_logits)):
        assert logits["ops"]["ct_mult"] < hefs["ops"]["ct_mult"]
        assert "score" in hefs["seconds_by_component"]
        assert "score" not in logits["seconds_by_component"]
    assert full["speedup_vs_full"] == 1.0
    assert full["samples_trained"] == 2 * 256
    assert heprune["samples_trained"] <= 2 * 64 + 1 and private["samples_trained"] <= 2 * 64 + 1
    assert "cwp" in heprune["seconds_by_component"]
    assert "cwp" not in private["seconds_by_component"]
    assert json.loads(out.read_text())["extractor_digest"] == table["extractor_digest"]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished row was run again")

    monkeypatch.setattr(experiment, "train_private", refuse)
    again = run_table(data_dir, out, SETTINGS, runs, tmp_path / "extractor.pt")
    assert [r["train_seconds"] for r in again["runs"]] == [
        r["train_seconds"] for r in table["runs"]
    ]
    assert all(r["machine"]["cores"] >= 1 for r in again["runs"])  # each row keeps its machine
    with pytest.raises(InputError, match="epochs"):  # other settings never mix into a table
        run_table(data_dir, out, replace(SETTINGS, epochs=3), runs, tmp_path / "extractor.pt")


def test_a_table_grows_by_the_rows_it_lacks(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    first = run_table(data_dir, out, SETTINGS, [(1.0, "full", None)], tmp_path / "extractor.pt")
    twice = [(1.0, "full", None), (0.5, "private", "hefs"), (0.5, "private", "hefs")]
    grown = run_table(data_dir, out, SETTINGS, twice, None)
    assert [(r["keep_fraction"], r["mode"]) for r in grown["runs"]] == [
        (1.0, "full"),
        (0.5, "private"),
    ]
    assert grown["runs"][0]["train_seconds"] == first["runs"][0]["train_seconds"]
    assert grown["runs"][1]["bytes_up_by"]["repack"] > 0  # the simulator weighs ciphertexts


def test_the_benchmark_and_the_command_use_the_package(data_dir: Path, tmp_path: Path) -> None:
    bench = load_benchmark("private_training")
    args = bench.parse_args(["--quick"])
    assert bench.settings_from(args).train_samples == 2048
    assert bench.settings_from(bench.parse_args([])).train_samples == 16384
    # Each size has its own table (a quick run must not resume, or be refused by, the full one).
    assert args.out.name == "private_training_quick.json"
    assert bench.parse_args([]).out.name == "private_training.json"
    assert bench.settings_from(args).backend == "engine"
    assert bench.parse_args([]).modes == ["heprune", "private"]
    assert bench.parse_args(["--modes", "private"]).modes == ["private"]
    out = tmp_path / "cli.json"
    with pytest.raises(SystemExit):
        main(["train-private", "--keep-fraction", "0"])
    code = main(
        [
            "train-private",
            "--backend",
            "simulator",
            "--keep-fraction",
            "1",
            "--train-samples",
            "128",
            "--validation-samples",
            "64",
            "--epochs",
            "1",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
        ]
    )
    # 10,000 extractor images are not in the small files: a typed error, exit status 2.
    assert code == 2 and not out.exists()
