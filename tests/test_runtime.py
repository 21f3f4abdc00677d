"""The encrypted runtime: folding, the slot simulator, the engine through the roles, the cost
model, typed errors, and what the server gets to see.

Small insecure parameters throughout: N = 1024 (512 slots), a 50-bit q0 and special prime and
40-bit scale primes, one per level.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

_core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")

from fheprune.models.activations import PolyActivation, TanhPoly2, TrainablePoly  # noqa: E402
from fheprune.models.zoo import MLPClassifier  # noqa: E402
from fheprune.runtime import (  # noqa: E402
    Client,
    ClientSpec,
    CompileError,
    Server,
    SimulatedExecutor,
    SpecError,
    choose_parameters,
    compile_model,
    max_levels,
)
from fheprune.runtime.compiler import LinearStep, SquareStep  # noqa: E402
from fheprune.runtime.params import RING_DEGREES, SCALE_BITS  # noqa: E402

IN, OUT = 20, 5
HEADER, HASH = 52, 32  # envelope: header bytes before the payload, checksum bytes after it
OPS = (
    "mul_plain",
    "add",
    "add_plain",
    "rotate",
    "rescale",
    "multiply",
    "relinearize",
    "constant",
    "refresh",
)


# ---- Helpers -----------------------------------------------------------------------------


def params(levels: int) -> Any:
    """N = 1024 with ``levels`` levels (a chain of levels + 1 primes); insecure, tests only."""
    return _core.Parameters(1024, [50] + [40] * levels, [50], 40, insecure_for_testing=True)


@cache
def context(levels: int) -> Any:
    return _core.Context(params(levels))


def make_model(hidden: tuple[int, ...], activation: str = "square", seed: int = 0) -> nn.Module:
    """A float64 MLP 20 -> hidden -> 5. ``activation``: "square", "tanh2" (the fitted tanh,
    which is affine), "tanh2-quadratic" (TanhPoly2 with a non-zero square term) or "poly"
    (TrainablePoly with non-trivial a, b, c that differ per layer)."""
    base = "tanh2" if activation.startswith("tanh2") else activation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(in_features=IN, hidden=hidden, classes=OUT, activation=base)
    model = model.double().eval()
    with torch.no_grad():
        acts = [m for m in model.children() if isinstance(m, PolyActivation)]
        for i, act in enumerate(acts):
            if isinstance(act, TrainablePoly):
                act.a.fill_(0.3 - 0.08 * i)
                act.b.fill_(0.8 + 0.1 * i)
                act.c.fill_(-0.2 + 0.15 * i)
            elif isinstance(act, TanhPoly2) and activation == "tanh2-quadratic":
                act.coeffs.copy_(torch.tensor([-0.05 * (i + 1), 0.29, 0.03], dtype=torch.float64))
    return model


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.children() if isinstance(m, nn.Linear)]


def weight_tile(layer: int, tile: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of one weight tile of linear layer ``layer`` in the tile layout: the first
    layer cuts t1 output rows x t2 input columns, and orientations alternate."""
    t1, t2 = tile
    return (t1, t2) if layer % 2 == 0 else (t2, t1)


def prune_blocks(
    model: nn.Module, blocks: list[tuple[int, int]], fraction: float, seed: int
) -> None:
    """Zero whole (rows x cols) blocks of each linear layer's weight with probability
    ``fraction`` (blocks[i] for layer i)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer, (rows, cols) in zip(linears(model), blocks, strict=True):
            w = layer.weight
            for r in range(0, w.shape[0], rows):
                for c in range(0, w.shape[1], cols):
                    if rng.random() < fraction:
                        w[r : r + rows, c : c + cols] = 0.0


def nonzero_blocks(w: np.ndarray, rows: int, cols: int) -> int:
    return sum(
        bool(np.any(w[r : r + rows, c : c + cols]))
        for r in range(0, w.shape[0], rows)
        for c in range(0, w.shape[1], cols)
    )


def compile_exact(model: nn.Module, **kwargs: Any) -> Any:
    """Compile under parameters with exactly the levels the program needs (no spare level)."""
    needed = compile_model(model, parameters=params(16), **kwargs).program.levels
    return compile_model(model, parameters=params(needed), **kwargs)


def model_ops(program: Any, groups: int) -> dict[str, int]:
    """The cost model's counts for ``groups`` groups of samples."""
    layers = program.cost()
    return {op: groups * sum(layer["ops"][op] for layer in layers) for op in OPS}


def total(program: Any, op: str) -> int:
    return sum(layer["ops"][op] for layer in program.cost())


def simulate(compiled: Any, x: np.ndarray, rotation_keys: list[int] | None = None) -> Any:
    program = compiled.program
    sim = SimulatedExecutor(program, context(program.levels), rotation_keys)
    out, stats = sim.run(program.pack_inputs(x))
    return program.unpack_outputs(out, x.shape[0]), stats


def torch_forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y: np.ndarray = model(torch.from_numpy(x)).numpy()
    return y


def inputs(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (count, IN))


# ---- Folding: the compiled chain computes exactly what the torch model does ----------------


@pytest.mark.parametrize("hidden", [(12,), (12, 9, 7)])
@pytest.mark.parametrize("activation", ["square", "tanh2", "tanh2-quadratic", "poly"])
def test_plaintext_forward_equals_torch(hidden: tuple[int, ...], activation: str) -> None:
    model = make_model(hidden, activation, seed=3)
    compiled = compile_model(model, tile=(4, 4), parameters=params(12))
    x = inputs(17)
    want = torch_forward(model, x)
    np.testing.assert_allclose(compiled.plaintext_forward(x), want, rtol=1e-9, atol=1e-9)
    # Only bare squares remain, one per quadratic activation; an affine one disappears.
    squares = sum(isinstance(s, SquareStep) for s in compiled.steps)
    assert squares == (0 if activation == "tanh2" else len(hidden))
    assert all(isinstance(s, LinearStep | SquareStep) for s in compiled.steps)
    assert sum(isinstance(s, LinearStep) for s in compiled.steps) == len(hidden) + 1


def test_folding_keeps_zero_tiles_zero() -> None:
    # The fold scales weights by `a` and moves constants into biases: a pruned tile must stay
    # exactly zero, or the program would keep units the pruning removed.
    model = make_model((12, 9), "poly", seed=4)
    prune_blocks(model, [weight_tile(i, (4, 4)) for i in range(3)], 0.5, seed=4)
    compiled = compile_model(model, tile=(4, 4), parameters=params(12))
    folded = [s.weight for s in compiled.steps if isinstance(s, LinearStep)]
    for w_model, w_folded in zip(linears(model), folded, strict=True):
        zero = w_model.weight.detach().numpy() == 0.0
        assert np.all(w_folded[zero] == 0.0)


# ---- The slot simulator runs the packed program: outputs and counts ----------------------

SIDES = st.sampled_from([2, 4, 8])
HIDDEN = st.sampled_from([(12,), (40, 9), (12, 9, 7)])


@settings(max_examples=10, deadline=None)
@given(
    t1=SIDES,
    t2=SIDES,
    hidden=HIDDEN,
    activation=st.sampled_from(["square", "poly"]),
    fraction=st.sampled_from([0.0, 0.3, 0.7]),
    seed=st.integers(0, 2**16),
)
def test_simulator_tile_layout(
    t1: int, t2: int, hidden: tuple[int, ...], activation: str, fraction: float, seed: int
) -> None:
    tile = (t1, t2)
    model = make_model(hidden, activation, seed)
    prune_blocks(model, [weight_tile(i, tile) for i in range(len(hidden) + 1)], fraction, seed)
    compiled = compile_exact(model, tile=tile)
    program = compiled.program
    assert program.tile_shape == (t2, t1, 512 // (t1 * t2))
    # Exactly the non-zero tiles are kept.
    folded = [s.weight for s in compiled.steps if isinstance(s, LinearStep)]
    kept = [c["units"] for c in program.cost() if c["kind"] == "tile"]
    assert kept == [nonzero_blocks(w, *weight_tile(i, tile)) for i, w in enumerate(folded)]

    count = program.samples_per_group + 1  # two groups, the second one partial
    x = inputs(count, seed)
    y, stats = simulate(compiled, x)
    np.testing.assert_allclose(y, compiled.plaintext_forward(x), rtol=1e-6, atol=1e-6)
    assert stats["ops"] == model_ops(program, groups=2)
    for layer in program.cost():
        assert layer["rotation_lower_bound"] <= layer["ops"]["rotate"]
        assert layer["mul_plain_lower_bound"] <= layer["ops"]["mul_plain"]


@settings(max_examples=8, deadline=None)
@given(
    hidden=HIDDEN,
    activation=st.sampled_from(["square", "poly"]),
    fraction=st.sampled_from([0.0, 0.3, 0.7]),
    block=st.sampled_from([1, 3, 4]),
    seed=st.integers(0, 2**16),
)
def test_simulator_diagonal_layout(
    hidden: tuple[int, ...], activation: str, fraction: float, block: int, seed: int
) -> None:
    model = make_model(hidden, activation, seed)
    prune_blocks(model, [(block, block)] * (len(hidden) + 1), fraction, seed)
    compiled = compile_exact(model, layout="diagonal")
    program = compiled.program
    assert program.layout == "diagonal"
    x = inputs(3, seed)
    y, stats = simulate(compiled, x)
    np.testing.assert_allclose(y, compiled.plaintext_forward(x), rtol=1e-6, atol=1e-6)
    assert stats["ops"] == model_ops(program, groups=3)  # one sample per group
    for layer in program.cost():
        assert layer["rotation_lower_bound"] <= layer["ops"]["rotate"]
        assert layer["mul_plain_lower_bound"] <= layer["ops"]["mul_plain"]


@pytest.mark.parametrize("layout", ["tile", "diagonal"])
def test_rotation_steps_are_the_exact_key_set(layout: str) -> None:
    # Every step the program lists is needed: without any one of them the run fails.
    model = make_model((12, 9), "square", seed=5)
    compiled = compile_exact(model, layout=layout, tile=(4, 4))
    steps = list(compiled.program.rotation_steps())
    assert steps == sorted(set(steps)) and steps
    x = inputs(2)
    simulate(compiled, x, steps)
    for s in steps:
        with pytest.raises(_core.MissingKeyError):
            simulate(compiled, x, [t for t in steps if t != s])


# ---- Zero tiles save work ----------------------------------------------------------------


def test_pruned_tiles_lower_mul_plain_exactly() -> None:
    # fc1: 12 x 20 in 4 x 4 tiles -> 3 output tile-rows x 5 input tile-columns.
    dense = make_model((12,), "square", seed=6)
    base = compile_exact(dense, tile=(4, 4)).program
    assert base.cost()[0]["units"] == base.cost()[0]["total_units"] == 15
    pruned = make_model((12,), "square", seed=6)
    removed = [(0, 1), (1, 3), (2, 0), (2, 4)]  # no output tile-row loses all its tiles
    with torch.no_grad():
        for ot, it in removed:
            linears(pruned)[0].weight[4 * ot : 4 * ot + 4, 4 * it : 4 * it + 4] = 0.0
    compiled = compile_exact(pruned, tile=(4, 4))
    program = compiled.program
    assert program.cost()[0]["units"] == 15 - len(removed)
    assert total(program, "mul_plain") == total(base, "mul_plain") - len(removed)
    assert total(program, "rotate") == total(base, "rotate")
    x = inputs(40)
    y, stats = simulate(compiled, x)
    np.testing.assert_allclose(y, compiled.plaintext_forward(x), atol=1e-9)
    assert stats["ops"] == model_ops(program, groups=2)


def test_dead_output_tile_row_skips_rotations() -> None:
    base = compile_exact(make_model((12,), "square", seed=7), tile=(4, 4)).program
    model = make_model((12,), "square", seed=7)
    with torch.no_grad():  # output tile-row 1 of fc1 (rows 4..7): no weight, no bias
        fc1 = linears(model)[0]
        fc1.weight[4:8] = 0.0
        fc1.bias[4:8] = 0.0
    compiled = compile_exact(model, tile=(4, 4))
    program = compiled.program
    fc1, fc1_base = program.cost()[0], base.cost()[0]
    t_outer = program.tile_shape[0]  # fc1 sums over the outer tile dimension
    assert fc1["ops"]["rotate"] == fc1_base["ops"]["rotate"] - int(math.log2(t_outer))
    assert fc1["ops"]["mul_plain"] == fc1_base["ops"]["mul_plain"] - 5
    assert total(program, "rotate") < total(base, "rotate")
    # fc2's tiles that read the dead input are skipped too (fc2: 2 output tiles).
    assert program.cost()[2]["ops"]["mul_plain"] == base.cost()[2]["ops"]["mul_plain"] - 2
    x = inputs(40)
    y, stats = simulate(compiled, x)
    np.testing.assert_allclose(y, compiled.plaintext_forward(x), atol=1e-9)
    assert stats["ops"] == model_ops(program, groups=2)


# ---- The engine, through the client and server roles ------------------------------------


class Setup:
    """One compiled model, its client and server, for the encrypted tests of one layout."""

    def __init__(self, layout: str) -> None:
        model = make_model((12,), "square", seed=8)
        with torch.no_grad():
            fc1, fc2 = linears(model)
            fc1.weight[0:4, 4:8] = 0.0  # a pruned tile
            fc2.weight[4] = 0.0  # output 4 alone in the last output tile: dead
            fc2.bias[4] = 0.0
        self.compiled = compile_exact(model, layout=layout, tile=(4, 4))
        self.program_bytes: bytes = self.compiled.program.save()
        self.spec = ClientSpec.from_compiled(self.compiled)
        self.client = Client(self.spec)
        self.keys_bytes: bytes = self.client.evaluation_keys_bytes()
        self.server = Server(self.program_bytes, self.keys_bytes)
        self.count = self.compiled.program.samples_per_group + 1
        self.x = inputs(self.count, seed=9)
        self.inputs = self.client.encrypt(self.x)
        self.outputs = self.server.run(self.inputs)


@pytest.fixture(scope="module", params=["tile", "diagonal"])
def setup(request: pytest.FixtureRequest) -> Setup:
    return Setup(request.param)


def test_encrypted_run_matches_plaintext_and_cost_model(setup: Setup) -> None:
    y = setup.client.decrypt(setup.outputs, setup.count)
    np.testing.assert_allclose(y, setup.compiled.plaintext_forward(setup.x), atol=1e-4)
    groups = len(setup.inputs) // setup.compiled.program.input_ciphertexts
    assert groups == 2
    assert setup.server.last_stats["ops"] == model_ops(setup.compiled.program, groups)
    if setup.compiled.layout == "tile":
        # The dead output tile comes back as a known zero, never computed.
        assert setup.outputs[1] is None and setup.outputs[3] is None
        assert np.all(y[:, 4] == 0.0)


def test_set_threads_runs_the_same_bits(setup: Setup) -> None:
    server = Server(setup.program_bytes, setup.keys_bytes)
    assert server.threads == 1
    server.set_threads(2)
    assert server.threads == 2
    again = server.run(setup.inputs)
    assert [c is None for c in again] == [c is None for c in setup.outputs]
    # Exact: the same operations on other threads.
    want = setup.client.decrypt(setup.outputs, setup.count)
    assert setup.client.decrypt(again, setup.count).tobytes() == want.tobytes()
    with pytest.raises(_core.ParameterError, match="at least one engine thread"):
        server.set_threads(0)
    assert server.threads == 2


def test_file_exchange_round_trips(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "program.bin").write_bytes(setup.program_bytes)
    (tmp_path / "client.json").write_text(setup.spec.to_json())
    spec = ClientSpec.from_json((tmp_path / "client.json").read_text())
    assert spec.to_json() == setup.spec.to_json()
    client = Client(spec)
    (tmp_path / "evaluation_keys.bin").write_bytes(client.evaluation_keys_bytes())
    server = Server.from_files(tmp_path / "program.bin", tmp_path / "evaluation_keys.bin")
    client.save_ciphertexts(client.encrypt(setup.x), tmp_path / "inputs")
    server.run_folder(tmp_path / "inputs", tmp_path / "outputs")
    outputs = client.load_ciphertexts(tmp_path / "outputs")
    assert len(outputs) == len(setup.outputs)
    assert [c is None for c in outputs] == [c is None for c in setup.outputs]
    y = client.decrypt(outputs, setup.count)
    np.testing.assert_allclose(y, setup.compiled.plaintext_forward(setup.x), atol=1e-4)


def test_server_artifacts_hold_no_secret_key(setup: Setup, tmp_path: Path) -> None:
    client, server = setup.client, setup.server
    assert _core.peek_kind(setup.keys_bytes) == "evaluation_keys"
    assert _core.peek_kind(setup.program_bytes) == "program"
    with pytest.raises(_core.SerializationError):
        _core.load_secret_key(client.context, setup.keys_bytes)
    secret = _core.save_secret_key(client.context, client._keygen.secret_key)
    payload = secret[HEADER:-HASH]
    offsets = np.linspace(64, len(payload) - 64, 8).astype(int)
    windows = [payload[o : o + 64] for o in offsets]
    assert all(w in secret for w in windows)  # the probe itself works
    client.save_ciphertexts(setup.inputs, tmp_path / "inputs")
    server.run_folder(tmp_path / "inputs", tmp_path / "outputs")
    artifacts = {"program": setup.program_bytes, "evaluation keys": setup.keys_bytes}
    for folder in ("inputs", "outputs"):
        for path in sorted((tmp_path / folder).glob("*.ct")):
            artifacts[f"{folder}/{path.name}"] = path.read_bytes()
    for name, data in artifacts.items():
        for w in windows:
            assert w not in data, f"a piece of the secret key appears in {name}"


# ---- Typed errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "name"),
    [(nn.ReLU(), "ReLU"), (nn.Conv2d(1, 1, 1), "Conv2d")],
)
def test_unsupported_layer(layer: nn.Module, name: str) -> None:
    model = nn.Sequential(nn.Linear(IN, 8), layer, nn.Linear(8, OUT))
    with pytest.raises(CompileError) as err:
        compile_model(model, parameters=params(4))
    message = str(err.value)
    assert "'1'" in message and name in message  # the layer, by name and type
    for supported in ("nn.Linear", "Square", "TanhPoly2", "TrainablePoly"):
        assert supported in message


@pytest.mark.parametrize(
    ("sizes", "kwargs", "match"),
    [
        ((600, OUT), {"layout": "diagonal"}, "600 input features do not fit 512 slots"),
        ((IN, 600, OUT), {"layout": "diagonal"}, "does not fit 512 slots"),
        ((IN, OUT), {"tile": (32, 32)}, "does not divide 512 slots"),
        ((IN, OUT), {"tile": (3, 4)}, "powers of two"),
    ],
)
def test_shapes_that_do_not_fit_the_slots(
    sizes: tuple[int, ...], kwargs: dict[str, Any], match: str
) -> None:
    layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    with pytest.raises(CompileError, match=match):
        compile_model(nn.Sequential(*layers), parameters=params(4), **kwargs)


def test_too_few_levels() -> None:
    model = make_model((12,), "square")  # fc1, act1, fc2: three levels
    with pytest.raises(_core.LevelError, match="needs 3 levels"):
        compile_model(model, tile=(4, 4), parameters=params(2))
    # A program run under a context of other parameters is refused before any work.
    program = compile_model(model, tile=(4, 4), parameters=params(3)).program
    with pytest.raises(_core.MismatchError, match="compiled for"):
        SimulatedExecutor(program, context(2))


def test_missing_rotation_keys_in_the_simulator() -> None:
    compiled = compile_exact(make_model((12,), "square"), tile=(4, 4))
    with pytest.raises(_core.MissingKeyError):
        simulate(compiled, inputs(2), rotation_keys=[])


def test_missing_rotation_key_in_the_engine() -> None:
    compiled = compile_exact(make_model((12,), "square"), tile=(4, 4))
    client = Client(ClientSpec.from_compiled(compiled))
    steps = list(client.spec.rotation_steps)
    keys = client._keygen.create_evaluation_keys(steps[:-1])
    # Refused at set-up, before any work, with the missing step named.
    with pytest.raises(_core.MissingKeyError, match=rf"rotation steps {steps[-1]}\b"):
        Server(compiled.program.save(), _core.save(client.context, keys))


def test_program_and_keys_from_different_parameters(setup: Setup) -> None:
    other = compile_exact(make_model((12, 9), "square"), tile=(4, 4))  # more levels
    assert other.program.levels != setup.compiled.program.levels
    keys = Client(ClientSpec.from_compiled(other)).evaluation_keys_bytes()
    with pytest.raises(_core.MismatchError):
        Server(setup.program_bytes, keys)


def test_keys_of_another_client(setup: Setup) -> None:
    stranger = Client(setup.spec)  # same parameters, another secret key
    server = Server(setup.program_bytes, stranger.evaluation_keys_bytes())
    with pytest.raises(_core.MismatchError):
        server.run(setup.inputs)


def corruptions(data: bytes) -> Iterator[bytes]:
    yield b""
    yield data[:HEADER]
    yield data[:-1]
    yield data[: len(data) // 2]
    for at in (HEADER + 3, len(data) // 2, len(data) - HASH - 1, len(data) - 1):
        flipped = bytearray(data)
        flipped[at] ^= 0x40
        yield bytes(flipped)
    yield data + b"\0"


def test_truncated_or_corrupted_program(setup: Setup) -> None:
    for bad in corruptions(setup.program_bytes):
        with pytest.raises(_core.SerializationError):
            _core.Program.load(bad)
        with pytest.raises(_core.SerializationError):
            Server(bad, setup.keys_bytes)
    # Another kind of object is not a program either.
    with pytest.raises(_core.SerializationError):
        _core.Program.load(setup.keys_bytes)
    assert _core.Program.load(setup.program_bytes).save() == setup.program_bytes


def program_file(parameters: Any, tile: tuple[int, int, int], weights: list[float]) -> bytes:
    """A tile program with one layer (1 input -> len(weights) outputs, no bias), written
    byte by byte in the program format, sealed in the envelope (BLAKE2b-256 checksum)."""
    block = bytes(parameters.to_bytes())
    payload = struct.pack("<Q", len(block)) + block + struct.pack("<HQQQQ", 1, *tile, 1)
    payload += (
        struct.pack("<QHQ", 1, 1, 3) + b"fc1" + struct.pack("<QQ", len(weights), len(weights))
    )
    payload += struct.pack(f"<{len(weights)}d", *weights) + struct.pack("<Q", 0)
    data = b"FHEPRUNE" + struct.pack("<HH", 1, 9) + bytes(32) + struct.pack("<Q", len(payload))
    data += payload
    return data + hashlib.blake2b(data, digest_size=32).digest()


def test_program_file_that_would_expand_past_the_memory_bound() -> None:
    # Each non-zero weight of a [1, 1, slots] tile program is a whole slot vector in memory:
    # 8193 weights (64 KB of file) at 32768 slots would be 2^28 + 32768 doubles. The loader
    # refuses before it allocates; the same layout with few weights loads.
    big = _core.Parameters(65536, [60, 40], [60], 40, insecure_for_testing=True)
    small = program_file(big, (1, 1, 32768), [0.5] * 8)
    assert _core.Program.load(small).cost()[0]["units"] == 8
    with pytest.raises(_core.SerializationError, match="program too large"):
        _core.Program.load(program_file(big, (1, 1, 32768), [0.5] * 8193))


def test_corrupted_client_spec(setup: Setup) -> None:
    good = json.loads(setup.spec.to_json())
    bad_texts = [
        "",
        "{not json",
        json.dumps({**good, "format": "something-else"}),
        json.dumps({**good, "version": 99}),
        json.dumps({k: v for k, v in good.items() if k != "layers"}),
        json.dumps({**good, "layers": [["conv", 3]]}),
        json.dumps({**good, "parameters": "zz"}),
        json.dumps({**good, "parameters": good["parameters"][:-8]}),
        json.dumps({**good, "in_features": "twenty"}),
    ]
    for text in bad_texts:
        with pytest.raises(SpecError):
            ClientSpec.from_json(text)


@pytest.mark.parametrize("case", ["layer sizes", "tile shape", "not an object"])
def test_inconsistent_client_spec_is_a_spec_error(case: str) -> None:
    spec = ClientSpec.from_compiled(compile_exact(make_model((12,), "square"), tile=(4, 4)))
    good = json.loads(spec.to_json())
    text = {
        "layer sizes": json.dumps({**good, "layers": [["linear", 12, IN + 1]]}),
        "tile shape": json.dumps({**good, "tile_shape": [4, 4]}),
        "not an object": "[1, 2]",
    }[case]
    with pytest.raises(SpecError):
        ClientSpec.from_json(text)


# ---- Parameter choice (dry run) ---------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(levels=st.integers(1, 20), min_slots=st.sampled_from([1, 512, 4096, 8192]))
def test_choose_parameters(levels: int, min_slots: int) -> None:
    choice = choose_parameters(levels, min_slots)
    p = choice.parameters
    n = p.poly_degree
    assert not p.insecure_for_testing
    assert p.total_bits == sum(p.chain_bits) + sum(p.special_bits)
    assert p.total_bits <= _core.max_modulus_bits_128(n)
    assert len(p.chain_bits) == levels + 1
    assert n // 2 >= min_slots
    assert f"using N={n}" in choice.message and f"needs {levels} level" in choice.message
    # The smallest ring that works: every smaller ring lacks the slots or the levels.
    for smaller in (r for r in RING_DEGREES if r < n):
        assert smaller // 2 < min_slots or max_levels(smaller, min(SCALE_BITS)) < levels


def test_choose_parameters_for_zero_levels() -> None:
    p = choose_parameters(0).parameters
    assert len(p.chain_bits) == 1
    assert p.total_bits <= _core.max_modulus_bits_128(p.poly_degree)


def test_counting_parameters_are_secure_where_the_ring_allows() -> None:
    """A program built only to be counted gets exactly its levels on its ring: the secure
    choice where one exists, the same chain marked insecure on a ring too small for it."""
    from fheprune.errors import InputError
    from fheprune.runtime.params import counting_parameters

    secure = counting_parameters(9, 8192)
    assert (secure.poly_degree, len(secure.chain_bits)) == (16384, 10)
    assert not secure.insecure_for_testing
    small = counting_parameters(7, 512)
    assert (small.poly_degree, len(small.chain_bits)) == (1024, 8)
    assert small.insecure_for_testing
    with pytest.raises(InputError, match="power-of-two slot count"):
        counting_parameters(3, 1000)


def test_impossible_depth() -> None:
    with pytest.raises(CompileError, match="40 levels"):
        choose_parameters(40)


def test_compile_chooses_secure_parameters() -> None:
    compiled = compile_model(make_model((12,), "square"), tile=(4, 4))
    p = compiled.parameters
    assert not p.insecure_for_testing
    assert len(p.chain_bits) == compiled.program.levels + 1 == 4
    assert p.total_bits <= _core.max_modulus_bits_128(p.poly_degree)
    assert f"using N={p.poly_degree}" in compiled.choice.message
