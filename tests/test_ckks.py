"""The engine through its Python bindings: numerics against numpy, typed errors, roles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ckks = pytest.importorskip("fheprune.ckks", reason="the C++ engine is not built")

TOL = 1e-6  # scale 2^40: fresh errors are ~1e-9, after a multiply ~1e-7


@pytest.fixture(scope="module")
def client() -> dict[str, object]:
    params = ckks.Parameters(
        poly_degree=2048, chain_bits=[50, 40, 40], special_bits=[50], insecure_for_testing=True
    )
    ctx = ckks.Context(params)
    keygen = ckks.KeyGenerator(ctx)
    keys = keygen.create_evaluation_keys(steps=[1, 2, -3, 100])
    return {
        "ctx": ctx,
        "keygen": keygen,
        "keys": keys,
        "enc": ckks.Encoder(ctx),
        "encryptor": ckks.Encryptor(ctx, keys.public_key),
        "dec": ckks.Decryptor(ctx, keygen.secret_key),
        "ev": ckks.Evaluator(ctx),
    }


def roundtrip(c: dict[str, object], ct: object) -> np.ndarray:
    return c["enc"].decode(c["dec"].decrypt(ct))  # type: ignore[attr-defined, no-any-return]


def encrypt(c: dict[str, object], x: np.ndarray) -> object:
    return c["encryptor"].encrypt(c["enc"].encode(x))  # type: ignore[attr-defined]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 1024), st.floats(0.01, 100.0), st.integers(0, 2**32 - 1))
def test_encode_decode_roundtrip(
    client: dict[str, object], count: int, bound: float, seed: int
) -> None:
    x = np.random.default_rng(seed).uniform(-bound, bound, count)
    out = client["enc"].decode(client["enc"].encode(x))  # type: ignore[attr-defined]
    assert out.shape == (1024,)
    np.testing.assert_allclose(out[:count], x, atol=1e-9 * max(1.0, bound))
    np.testing.assert_allclose(out[count:], 0.0, atol=1e-9 * max(1.0, bound))


def test_complex_roundtrip(client: dict[str, object]) -> None:
    z = np.exp(1j * np.linspace(0, 3, 1024))
    out = client["enc"].decode_complex(client["enc"].encode(z))  # type: ignore[attr-defined]
    assert out.dtype == np.complex128
    np.testing.assert_allclose(out, z, atol=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, -3, 100]))
def test_operations_match_numpy(client: dict[str, object], seed: int, step: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1, 1, 1024), rng.uniform(-1, 1, 1024)
    ev, keys = client["ev"], client["keys"]
    cx, cy = encrypt(client, x), encrypt(client, y)
    np.testing.assert_allclose(roundtrip(client, ev.add(cx, cy)), x + y, atol=TOL)  # type: ignore[attr-defined]
    np.testing.assert_allclose(roundtrip(client, ev.sub(cx, cy)), x - y, atol=TOL)  # type: ignore[attr-defined]
    prod = ev.rescale(ev.multiply_relin(cx, cy, keys.relin_key))  # type: ignore[attr-defined]
    np.testing.assert_allclose(roundtrip(client, prod), x * y, atol=TOL)
    pt = client["enc"].encode(y)  # type: ignore[attr-defined]
    mp = ev.rescale(ev.multiply_plain(cx, pt))  # type: ignore[attr-defined]
    np.testing.assert_allclose(roundtrip(client, mp), x * y, atol=TOL)
    rot = ev.rotate(cx, step, keys.galois_keys)  # type: ignore[attr-defined]
    np.testing.assert_allclose(roundtrip(client, rot), np.roll(x, -step), atol=TOL)


def test_hoisted_equals_one_by_one(client: dict[str, object]) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, 1024)
    ev, gk = client["ev"], client["keys"].galois_keys  # type: ignore[attr-defined]
    ct = encrypt(client, x)
    steps = [1, 2, -3, 100]
    hoisted = ev.rotate_hoisted(ct, steps, gk)  # type: ignore[attr-defined]
    for step, h in zip(steps, hoisted, strict=True):
        single = ev.rotate(ct, step, gk)  # type: ignore[attr-defined]
        assert ckks.save(client["ctx"], single) == ckks.save(client["ctx"], h)


def test_typed_errors(client: dict[str, object]) -> None:
    ev, enc, keys = client["ev"], client["enc"], client["keys"]
    x = np.zeros(4)
    ct = encrypt(client, x)
    with pytest.raises(ckks.MissingKeyError, match="rotation step 5"):
        ev.rotate(ct, 5, keys.galois_keys)  # type: ignore[attr-defined]
    low = ev.mod_switch_to(ct, 0)  # type: ignore[attr-defined]
    with pytest.raises(ckks.LevelError, match="mod_switch_to"):
        ev.add(ct, low)  # type: ignore[attr-defined]
    with pytest.raises(ckks.EncodingError, match="slots"):
        enc.encode(np.zeros(2000))  # type: ignore[attr-defined]
    with pytest.raises(ckks.EncodingError):
        enc.encode(np.array([np.nan]))  # type: ignore[attr-defined]
    with pytest.raises(ckks.LevelError, match="level 0"):
        ev.rescale(ev.rescale(ev.rescale(ev.multiply_plain(ct, enc.encode(x)))))  # type: ignore[attr-defined]
    with pytest.raises(ckks.InsecureParametersError, match="128-bit"):
        ckks.Parameters(poly_degree=8192, chain_bits=[60, 60, 60], special_bits=[60])
    with pytest.raises(ckks.ParameterError):
        ckks.Parameters(poly_degree=1000, chain_bits=[40], special_bits=[40])
    # Every engine error is a FheError and a ValueError.
    assert issubclass(ckks.MissingKeyError, ckks.FheError)
    assert issubclass(ckks.FheError, ValueError)


def test_other_clients_objects_are_rejected(client: dict[str, object]) -> None:
    ctx = client["ctx"]
    other = ckks.KeyGenerator(ctx)
    other_keys = other.create_evaluation_keys(steps=[1])
    ct = encrypt(client, np.ones(4))
    with pytest.raises(ckks.MismatchError, match="different secret key"):
        client["ev"].rotate(ct, 1, other_keys.galois_keys)  # type: ignore[attr-defined]
    with pytest.raises(ckks.MismatchError):
        ckks.Decryptor(ctx, other.secret_key).decrypt(ct)


def test_serialization_and_server_bundle(client: dict[str, object]) -> None:
    ctx, keys, keygen = client["ctx"], client["keys"], client["keygen"]
    x = np.random.default_rng(2).uniform(-1, 1, 1024)
    ct = encrypt(client, x)
    blob = ckks.save(ctx, ct)
    assert ckks.peek_kind(blob) == "ciphertext"
    np.testing.assert_allclose(roundtrip(client, ckks.load_ciphertext(ctx, blob)), x, atol=TOL)
    with pytest.raises(ckks.SerializationError, match="truncated"):
        ckks.load_ciphertext(ctx, blob[:-1])
    corrupted = bytearray(blob)
    corrupted[len(blob) // 2] ^= 1
    with pytest.raises(ckks.SerializationError, match="checksum"):
        ckks.load_ciphertext(ctx, bytes(corrupted))

    bundle = ckks.save(ctx, keys)
    secret = ckks.save_secret_key(ctx, keygen.secret_key)  # type: ignore[attr-defined]
    assert ckks.peek_kind(secret) == "secret_key"
    # No 32-byte window of the secret key's residues appears in the server bundle.
    for offset in range(76, len(secret) - 64, 4096):
        assert secret[offset : offset + 32] not in bundle
    with pytest.raises(ckks.SerializationError, match="secret key"):
        ckks.load_evaluation_keys(ctx, secret)
    server = ckks.load_evaluation_keys(ctx, bundle)
    rot = client["ev"].rotate(ct, 2, server.galois_keys)  # type: ignore[attr-defined]
    np.testing.assert_allclose(roundtrip(client, rot), np.roll(x, -2), atol=TOL)

    other_ctx = ckks.Context(
        ckks.Parameters(
            poly_degree=2048, chain_bits=[50, 40], special_bits=[50], insecure_for_testing=True
        )
    )
    with pytest.raises(ckks.MismatchError, match="different parameters"):
        ckks.load_ciphertext(other_ctx, blob)


def test_parameters_roundtrip_and_presets() -> None:
    p = ckks.preset("n16384-l7")
    assert p.total_bits <= ckks.max_modulus_bits_128(16384)
    q = ckks.Parameters.from_bytes(p.to_bytes())
    assert (q.poly_degree, q.chain_bits, q.special_bits) == (16384, p.chain_bits, p.special_bits)
    with pytest.raises(KeyError, match="known"):
        ckks.preset("nope")


def test_thread_count_does_not_change_results() -> None:
    params = ckks.Parameters(
        poly_degree=4096, chain_bits=[50, 40, 40], special_bits=[50], insecure_for_testing=True
    )
    ctx = ckks.Context(params, threads=1)
    keygen = ckks.KeyGenerator(ctx)
    keys = keygen.create_evaluation_keys(steps=[1, 5])
    ev = ckks.Evaluator(ctx)
    enc = ckks.Encoder(ctx)
    ct = ckks.Encryptor(ctx, keys.public_key).encrypt(enc.encode(np.linspace(-1, 1, 2048)))

    def run() -> bytes:
        sq = ev.rescale(ev.multiply_relin(ct, ct, keys.relin_key))
        return ckks.save(ctx, ev.add(*ev.rotate_hoisted(sq, [1, 5], keys.galois_keys)))

    one = run()
    ctx.set_threads(2)
    assert ctx.threads == 2
    assert run() == one
