"""The C++ examples against the Python package: a program compiled in Python runs on the C++
server (examples/run_program.cpp) with keys and ciphertexts from files, and the C++ client
(examples/file_client.cpp) works with the Python server. Both directions must give what the
torch model computes.

The binaries come from the in-tree build that ``scripts/test.sh`` makes before pytest
(``build/tests/examples``), or from ``FHEPRUNE_EXAMPLES_DIR``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

_core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")

from fheprune.models.zoo import MLPClassifier  # noqa: E402
from fheprune.runtime import Client, ClientSpec, Server, compile_model  # noqa: E402
from fheprune.runtime.compiler import CompiledModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(os.environ.get("FHEPRUNE_EXAMPLES_DIR", ROOT / "build" / "tests" / "examples"))

pytestmark = pytest.mark.skipif(
    not (EXAMPLES / "run_program").exists(),
    reason=f"C++ examples not built in {EXAMPLES} (scripts/test.sh builds them)",
)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


IN, OUT = 20, 5


def inputs(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (count, IN))


def compiled_mlp() -> tuple[torch.nn.Module, CompiledModel]:
    """A float64 MLP 20 -> 12 (square) -> 5 in the tile layout at 128-bit parameters (the
    example binaries, like any process that has not opted in, refuse insecure files)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLPClassifier(in_features=IN, hidden=(12,), classes=OUT, activation="square")
    model = model.double().eval()
    parameters = _core.Parameters(8192, [53, 33, 33, 33], [53], 33)
    compiled = compile_model(model, parameters=parameters, layout="tile", tile=(4, 4))
    return model, compiled


def expected(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def test_cpp_server_runs_a_program_compiled_in_python(tmp_path: Path) -> None:
    model, compiled = compiled_mlp()
    client = Client(ClientSpec.from_compiled(compiled))
    program = tmp_path / "program.fhp"
    keys = tmp_path / "evaluation.keys"
    program.write_bytes(compiled.program.save())
    keys.write_bytes(client.evaluation_keys_bytes())
    x = inputs(6)
    cts = client.encrypt(x)
    client.save_ciphertexts(cts, tmp_path / "in")

    done = run(EXAMPLES / "run_program", program, keys, tmp_path / "in", tmp_path / "out", 2)
    assert done.returncode == 0, done.stderr
    assert "ran" in done.stdout

    y_cpp = client.decrypt(client.load_ciphertexts(tmp_path / "out"), len(x))
    python_server = Server(compiled.program.save(), client.evaluation_keys_bytes())
    y_py = client.decrypt(python_server.run(cts), len(x))
    np.testing.assert_allclose(y_cpp, y_py, atol=1e-4)  # a 33-bit scale: ~1e-5 noise
    np.testing.assert_allclose(y_cpp, expected(model, x), atol=1e-3)
    # The C++ server reports the fingerprint the Python program computes.
    assert python_server.program_fingerprint == bytes(compiled.program.fingerprint).hex()


def test_cpp_server_refuses_another_clients_ciphertexts(tmp_path: Path) -> None:
    _, compiled = compiled_mlp()
    spec = ClientSpec.from_compiled(compiled)
    owner, stranger = Client(spec), Client(spec)
    (tmp_path / "program.fhp").write_bytes(compiled.program.save())
    (tmp_path / "evaluation.keys").write_bytes(owner.evaluation_keys_bytes())
    stranger.save_ciphertexts(stranger.encrypt(inputs(2)), tmp_path / "in")

    done = run(
        EXAMPLES / "run_program",
        tmp_path / "program.fhp",
        tmp_path / "evaluation.keys",
        tmp_path / "in",
        tmp_path / "out",
    )
    assert done.returncode == 1
    assert "another secret key" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cpp_client_with_the_python_server(tmp_path: Path) -> None:
    model, compiled = compiled_mlp()
    program = tmp_path / "program.fhp"
    program.write_bytes(compiled.program.save())
    x = inputs(5, seed=3)
    np.savetxt(tmp_path / "inputs.txt", x)
    np.savetxt(tmp_path / "expected.txt", expected(model, x))
    client_dir = tmp_path / "client"

    assert run(EXAMPLES / "file_client", "keygen", program, client_dir).returncode == 0
    done = run(EXAMPLES / "file_client", "encrypt", program, client_dir, tmp_path / "inputs.txt")
    assert done.returncode == 0, done.stderr
    # The bundle the C++ client hands over holds no secret key.
    bundle = (client_dir / "evaluation.keys").read_bytes()
    assert _core.peek_kind(bundle) == "evaluation_keys"

    server = Server(program.read_bytes(), bundle)
    server.run_folder(client_dir / "in", client_dir / "out")
    done = run(
        EXAMPLES / "file_client",
        "decrypt",
        program,
        client_dir,
        len(x),
        tmp_path / "expected.txt",
        "1e-3",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got = np.loadtxt(done.stdout.splitlines()[: len(x)])
    np.testing.assert_allclose(got, expected(model, x), atol=1e-3)
    assert got.shape == (len(x), OUT)
