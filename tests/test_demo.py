"""Tests for the engine demo (fheprune.demo) and its CLI entry point.

The demo test needs the compiled engine and MNIST; it skips, with the reason, without either.
The missing-data CLI tests need neither: the data check runs before the engine is imported.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fheprune
from fheprune.cli import EXIT_DATA, main
from fheprune.data import DATA_ENV_VAR, DatasetNotFoundError, load_mnist
from fheprune.demo import BLOCK, pack_images, run_engine_demo, sum_steps

MISSING = "definitely-missing-fheprune-data"


@pytest.fixture(scope="module")
def mnist_available() -> None:
    pytest.importorskip(
        "fheprune._core", reason="the compiled engine (fheprune._core) is not built"
    )
    try:
        load_mnist(None, "test")
    except DatasetNotFoundError as exc:
        pytest.skip(f"MNIST not found ({exc})")


def test_packing_puts_images_at_block_starts() -> None:
    x = np.arange(2 * 784, dtype=np.float64).reshape(2, 784)
    packed = pack_images(x, 4096)
    assert packed.shape == (4096,)
    np.testing.assert_array_equal(packed[:784], x[0])
    np.testing.assert_array_equal(packed[BLOCK : BLOCK + 784], x[1])
    assert not packed[784:BLOCK].any() and not packed[2 * BLOCK :].any()
    assert sum_steps() == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def test_demo_matches_plaintext(mnist_available: None, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "demo.json"
    result = run_engine_demo(None, images=8, compare_seal=False, out=out)

    ours = result["ours"]
    # Outputs are squared class scores, O(1) here (one-hot ridge targets) and at most O(100)
    # for other models. With a 2^40 scale CKKS is accurate to ~1e-6 relative here (rescale and
    # key-switch noise summed over 1024 slots and 10 rotations), while any packing, slot or scale
    # bug is off by O(|output|); 1e-4 relative keeps a 100x margin over the noise and still
    # catches those. The absolute 1e-3 cap is the acceptance bound for outputs up to ~10.
    bound = min(1e-3, 1e-4 * max(1.0, result["max_abs_expected"]))
    assert ours["max_abs_error"] < bound, ours
    assert ours["agreement"] == 1.0
    assert result["seal"] is None and result["eval_ratio_ours_over_seal"] is None
    assert 0.8 < result["plaintext_accuracy_full_test"] <= 1.0
    for key in ("keygen_s", "encrypt_s", "eval_s", "eval_per_image_s", "decrypt_s"):
        assert ours[key] > 0.0, key
    assert ours["ciphertexts"] == 2

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert written["images"] == 8 and written["params"]["poly_degree"] == 8192
    assert [p.name for p in out.parent.iterdir()] == ["demo.json"]  # no temp file left behind


def _assert_helpful(message: str) -> None:
    assert MISSING in message, message
    assert DATA_ENV_VAR in message and "--data-dir" in message, message


def test_cli_missing_data_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / MISSING))
    with caplog.at_level(logging.ERROR):
        status = main(["demo", "--images", "4", "--no-seal", "--out", str(tmp_path / "r.json")])
    assert status == EXIT_DATA
    _assert_helpful(caplog.text)
    assert not (tmp_path / "r.json").exists()


def test_python_m_fheprune_missing_data(tmp_path: Path) -> None:
    # A real process: checks the exit status and that stderr has the message, not a traceback.
    src = str(Path(fheprune.__file__).resolve().parent.parent)
    env = {**os.environ, DATA_ENV_VAR: str(tmp_path / MISSING)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "fheprune", "demo", "--no-seal"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == EXIT_DATA, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    _assert_helpful(proc.stderr)
