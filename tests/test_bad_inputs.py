"""Bad input, as a careless user or an attacker would send it, across the files, the engine, the
runtime and the client: every case must end in a refusal that is a ``FhepruneError`` (never a
crash, a hang, a raw library error, or a silently wrong result).

The faults found by the hardening review each have a focused test in ``test_hardening.py``;
this suite sweeps the same surfaces broadly: every file kind corrupted at many offsets and
truncated at many lengths, swapped between kinds, and the API fed wrong shapes, dtypes,
magnitudes and objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch

_core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")

from fheprune.errors import FhepruneError  # noqa: E402
from fheprune.models.zoo import MLPClassifier  # noqa: E402
from fheprune.runtime import Client, ClientSpec, Server, compile_model  # noqa: E402

HEADER = 52  # envelope bytes before the payload (magic, version, kind, fingerprint, length)


@dataclass
class World:
    program: bytes
    keys: bytes
    ciphertext: bytes
    parameters: bytes
    secret: bytes
    spec: str
    client: Client
    context: Any
    model: torch.nn.Module


@cache
def world() -> World:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLPClassifier(in_features=20, hidden=(12,), classes=5, activation="square")
    parameters = _core.Parameters(1024, [50, 40, 40, 40], [50], 40, insecure_for_testing=True)
    compiled = compile_model(model.double().eval(), parameters=parameters, tile=(4, 4))
    spec = ClientSpec.from_compiled(compiled)
    client = Client(spec)
    ct = client.encrypt(np.zeros((2, 20)))[0]
    return World(
        program=bytes(compiled.program.save()),
        keys=client.evaluation_keys_bytes(),
        ciphertext=bytes(_core.save(client.context, ct)),
        parameters=bytes(parameters.to_bytes()),
        secret=bytes(_core.save_secret_key(client.context, client._keygen.secret_key)),
        spec=spec.to_json(),
        client=client,
        context=client.context,
        model=model.double().eval(),
    )


# Every file kind and the call that reads it.
READERS: dict[str, tuple[Callable[[World], bytes], Callable[[World, bytes], Any]]] = {
    "program": (lambda w: w.program, lambda w, b: _core.Program.load(b)),
    "server-program": (lambda w: w.program, lambda w, b: Server(b, w.keys)),
    "server-keys": (lambda w: w.keys, lambda w, b: Server(w.program, b)),
    "ciphertext": (lambda w: w.ciphertext, lambda w, b: _core.load_ciphertext(w.context, b)),
    "parameters": (lambda w: w.parameters, lambda w, b: _core.Parameters.from_bytes(b)),
    "secret-key": (lambda w: w.secret, lambda w, b: _core.load_secret_key(w.context, b)),
    "evaluation-keys": (
        lambda w: w.keys,
        lambda w, b: _core.load_evaluation_keys(w.context, b),
    ),
}


def refused(call: Callable[[], Any]) -> FhepruneError:
    with pytest.raises(FhepruneError) as info:
        call()
    return info.value


def positions(size: int, count: int) -> list[int]:
    """``count`` offsets spread over the header, the payload and the checksum."""
    head = list(range(0, HEADER, 7))
    rest = np.linspace(HEADER, size - 1, count - len(head)).astype(int).tolist()
    return sorted(set(head + rest))


@pytest.mark.parametrize("kind", sorted(READERS))
@pytest.mark.parametrize("slot", range(16))
def test_a_flipped_byte_is_refused(kind: str, slot: int) -> None:
    w = world()
    get, read = READERS[kind]
    data = bytearray(get(w))
    offsets = positions(len(data), 16)
    at = offsets[slot % len(offsets)]
    data[at] ^= 0x5A
    refused(lambda: read(w, bytes(data)))


@pytest.mark.parametrize("kind", sorted(READERS))
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_a_truncated_file_is_refused(kind: str, fraction: float) -> None:
    w = world()
    get, read = READERS[kind]
    data = get(w)
    refused(lambda: read(w, data[: int(len(data) * fraction)]))


@pytest.mark.parametrize("kind", sorted(READERS))
def test_trailing_bytes_are_refused(kind: str) -> None:
    w = world()
    get, read = READERS[kind]
    refused(lambda: read(w, get(w) + b"\x00"))


KINDS = ["program", "ciphertext", "parameters", "evaluation-keys", "secret-key"]


@pytest.mark.parametrize(("reader", "source"), [(r, s) for r in KINDS for s in KINDS if r != s])
def test_a_file_of_another_kind_is_refused(reader: str, source: str) -> None:
    w = world()
    error = refused(lambda: READERS[reader][1](w, READERS[source][0](w)))
    assert str(error)  # says what was expected


def test_a_secret_key_never_passes_for_evaluation_keys() -> None:
    w = world()
    error = refused(lambda: Server(w.program, w.secret))
    assert "secret key" in str(error)


# ---- The client spec ---------------------------------------------------------------------------

SPEC_EDITS: list[tuple[str, Any]] = [
    ("format", "something-else"),
    ("version", 99),
    ("layout", "spiral"),
    ("in_features", -1),
    ("in_features", "twenty"),
    ("tile_shape", [4, 4]),
    ("tile_shape", [3, 4, 100]),
    ("layers", [["conv", 3, 3]]),
    ("layers", "square"),
    ("rotation_steps", ["one"]),
    ("input_perm", [0, 0, 1]),
    ("output_perm", ["x"]),
    ("parameters", "zz"),
    ("parameters", "00" * 60),
    ("max_input", -5),
    ("max_input", "large"),
    ("input_packing", 7),
    ("output_map", [[0], [1, 2]]),
    ("output_ciphertexts", "two"),
]


@pytest.mark.parametrize(("field", "value"), SPEC_EDITS)
def test_an_edited_client_spec_is_refused(field: str, value: Any) -> None:
    import json

    data = json.loads(world().spec)
    data[field] = value
    refused(lambda: ClientSpec.from_json(json.dumps(data)))


@pytest.mark.parametrize("text", ["", "[]", "null", "{", '{"format": 1}', "\x00\xff"])
def test_a_client_spec_that_is_not_one_is_refused(text: str) -> None:
    refused(lambda: ClientSpec.from_json(text))


# ---- The engine and the runtime through the API ------------------------------------------------

BAD_PARAMETERS: list[tuple[Any, ...]] = [
    (1000, [50, 40], [50], 40),  # not a power of two
    (1 << 17, [50, 40], [50], 40),  # too large a ring
    (8192, [60] * 10, [60], 40),  # past the 128-bit bound
    (8192, [], [60], 40),  # no chain
    (8192, [60, 40], [], 40),  # no special prime
    (8192, [61, 40], [60], 40),  # primes above 60 bits
    (8192, [60, 10], [60], 40),  # primes below 20 bits
    (8192, [60, 40], [60], 0),  # no scale
    (8192, [60, 40], [60], 70),  # a scale above the primes
]


@pytest.mark.parametrize("args", BAD_PARAMETERS)
def test_bad_parameters_are_refused(args: tuple[Any, ...]) -> None:
    refused(lambda: _core.Context(_core.Parameters(*args)))


BAD_SAMPLES: list[Any] = [
    np.zeros((2, 19)),
    np.zeros((2, 21)),
    np.zeros(20),
    np.zeros((2, 20, 1)),
    np.zeros((0, 20)),
    np.full((2, 20), np.nan),
    np.full((2, 20), -np.inf),
    np.zeros((2, 20), dtype=np.complex128),
    np.array([[None] * 20]),
    np.full((2, 20), 1e12),
    np.full((2, 20), -1e300),
]


@pytest.mark.parametrize("index", range(len(BAD_SAMPLES)))
def test_bad_samples_are_refused_by_the_client(index: int) -> None:
    refused(lambda: world().client.encrypt(BAD_SAMPLES[index]))


def test_bad_runs_are_refused_by_the_server() -> None:
    w = world()
    server = Server(w.program, w.keys)
    cts = w.client.encrypt(np.zeros((2, 20)))
    stranger = Client(ClientSpec.from_json(w.spec))
    refused(lambda: server.run([]))  # no group
    refused(lambda: server.run(stranger.encrypt(np.zeros((2, 20)))))  # another client's key
    low = _core.Evaluator(w.context).mod_switch_to(cts[0], cts[0].level - 1)
    refused(lambda: server.run([low, *cts[1:]]))  # below the input level
    refused(lambda: server.load_ciphertext(b"\x00" * 100))
    if len(cts) > 1:
        refused(lambda: server.run(cts[:-1]))  # not a whole group


@pytest.mark.parametrize("threads", [0, 10**6, 2**40])
def test_bad_thread_counts_are_refused(threads: int) -> None:
    w = world()
    if threads == 0:
        refused(lambda: Server(w.program, w.keys, threads=0))
    else:
        refused(lambda: Server(w.program, w.keys, threads=threads))


# ---- Property-based: anything in, a result or a FhepruneError out ------------------------------

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

DTYPES = st.sampled_from(
    [np.float64, np.float32, np.int64, np.int8, np.uint8, np.bool_, np.complex128, np.float16]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    array=hnp.arrays(
        dtype=DTYPES, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=24)
    )
)
def test_any_array_is_computed_correctly_or_refused(array: np.ndarray) -> None:
    w = world()
    try:
        cts = w.client.encrypt(array)
    except FhepruneError:
        return
    # Accepted: real, finite, [count, 20], within the range; the result must be right.
    x = array.astype(np.float64)
    assert x.ndim == 2 and x.shape[1] == 20 and len(x) >= 1
    assert np.all(np.isfinite(x)) and np.max(np.abs(x)) <= (w.client.spec.max_input or np.inf)
    y = w.client.decrypt(Server(w.program, w.keys).run(cts), len(x))
    with torch.no_grad():
        want = w.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-3 * (1 + np.max(np.abs(want))))


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(sorted(READERS)), data=st.binary(min_size=0, max_size=512))
def test_random_bytes_are_refused_by_every_reader(kind: str, data: bytes) -> None:
    w = world()
    refused(lambda: READERS[kind][1](w, data))


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(sorted(READERS)),
    edits=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=8),
)
def test_randomly_edited_files_are_refused(kind: str, edits: list[tuple[int, int]]) -> None:
    w = world()
    get, read = READERS[kind]
    data = bytearray(get(w))
    for at, mask in edits:
        data[at % len(data)] ^= mask
    assume(bytes(data) != get(w))  # edits at one offset can cancel out
    refused(lambda: read(w, bytes(data)))
