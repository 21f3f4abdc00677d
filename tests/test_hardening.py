"""Security hardening: randomness independent across fork(), no file can lower the security
level, and every refusal (engine argument types included) is a FhepruneError."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

_core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")

from toys import toy_compiled, toy_model  # noqa: E402

from fheprune.ckks import preset  # noqa: E402
from fheprune.runtime import Client, ClientSpec, Server, compile_model  # noqa: E402


def in_child(work: object) -> bytes:
    """Runs ``work()`` (returning bytes) in a forked child and returns what it produced."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_fd)
            data = work()  # type: ignore[operator]
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as src:
        data = src.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return data


# ---- Randomness across fork() ---------------------------------------------------------------


def test_forked_processes_encrypt_with_independent_masks() -> None:
    client = Client(ClientSpec.from_compiled(toy_compiled()))
    x = np.random.default_rng(0).uniform(-1, 1, (3, 20))
    client.encrypt(x)  # the generator is in use before the fork

    def encrypt() -> bytes:
        return bytes(_core.save(client.context, client.encrypt(x)[0]))

    child = in_child(encrypt)
    parent = encrypt()
    assert len(child) == len(parent)
    assert child != parent

    # Both still decrypt to the same slots.
    def slots(data: bytes) -> np.ndarray:
        ct = _core.load_ciphertext(client.context, data)
        return np.asarray(client._encoder.decode(client._decryptor.decrypt(ct)))

    np.testing.assert_allclose(slots(child), slots(parent), atol=1e-6)


def test_forked_processes_generate_different_keys() -> None:
    client = Client(ClientSpec.from_compiled(toy_compiled()))
    client.evaluation_keys_bytes()
    child = in_child(client.evaluation_keys_bytes)
    parent = client.evaluation_keys_bytes()
    assert len(child) == len(parent)
    assert child != parent


# ---- The security level is the loader's decision, never a file's ----------------------------


@pytest.mark.usefixtures("refuse_insecure_files")
def test_no_file_can_switch_off_the_security_check() -> None:
    assert not _core.insecure_parameter_files_allowed()
    compiled = toy_compiled()  # built in code: a local decision, allowed
    program_bytes = compiled.program.save()
    with pytest.raises(_core.InsecureParametersError, match="cannot lower the security level"):
        _core.Program.load(program_bytes)
    with pytest.raises(_core.InsecureParametersError):
        Server(program_bytes, b"")
    with pytest.raises(_core.InsecureParametersError):
        _core.Parameters.from_bytes(compiled.program.parameters.to_bytes())


def test_a_rewritten_client_spec_cannot_lower_the_security_level() -> None:
    # A genuine spec at 128-bit parameters, rewritten by whoever carried it to N = 1024 with
    # the check switched off (the envelope's checksum is unkeyed, so anyone can re-seal it).
    secure = _core.Parameters(8192, [53, 33, 33, 33], [53], 33)
    spec = ClientSpec.from_compiled(
        compile_model(toy_model(), parameters=secure, layout="tile", tile=(8, 8))
    )
    toy = toy_compiled().program.parameters
    text = spec.to_json().replace(secure.to_bytes().hex(), toy.to_bytes().hex())
    assert text != spec.to_json()
    _core.allow_insecure_parameter_files(False)
    try:
        with pytest.raises(_core.InsecureParametersError):
            ClientSpec.from_json(text)
        assert ClientSpec.from_json(spec.to_json()).parameters.poly_degree == 8192
    finally:
        _core.allow_insecure_parameter_files(True)


def test_run_with_missing_inputs_is_an_error_not_a_crash() -> None:
    compiled = toy_compiled()
    client = Client(ClientSpec.from_compiled(compiled))
    server = Server(compiled.program.save(), client.evaluation_keys_bytes())
    from fheprune.errors import InputTypeError

    with pytest.raises(InputTypeError, match="list of Ciphertext"):
        server.run(None)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="item 0 is NoneType"):
        server.run([None])
    with pytest.raises(InputTypeError, match="item 1 is str"):
        client.decrypt([None, "ct"], 2)


# ---- Resources and object state --------------------------------------------------------------


def test_absurd_thread_counts_are_refused_not_a_hang() -> None:
    params = _core.Parameters(1024, [50, 40], [50], 40, insecure_for_testing=True)
    with pytest.raises(_core.ParameterError, match="hardware threads"):
        _core.Context(params, 1_000_000)
    ctx = _core.Context(params, 2)
    with pytest.raises(_core.ParameterError):
        ctx.set_threads(10**9)
    assert ctx.threads == 2


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_ciphertext_scale_cannot_be_set_to_garbage(bad: float) -> None:
    params = _core.Parameters(1024, [50, 40], [50], 40, insecure_for_testing=True)
    ctx = _core.Context(params)
    keygen = _core.KeyGenerator(ctx)
    encoder = _core.Encoder(ctx)
    ct = _core.Encryptor(ctx, keygen.secret_key).encrypt(encoder.encode(np.ones(4)))
    scale = ct.scale
    with pytest.raises(_core.ScaleError, match="positive finite"):
        ct.scale = bad
    assert ct.scale == scale  # unchanged
    pt = encoder.encode(np.ones(4))
    with pytest.raises(_core.ScaleError):
        pt.scale = bad


# ---- The CLI checks every argument before any work -------------------------------------------

BAD_ARGUMENTS = [
    (["run", "--tile", "3"], "powers of two"),
    (["run", "--tile", "0"], "must be >= 1"),
    (["run", "--threads", "1000000"], "engine threads on this machine"),
    (["run", "--images", "many"], "whole number"),
    (["run", "--scheme", "P9"], "unknown HE-PEx scheme"),
    (["demo", "--threads", "0"], "must be >= 1"),
    (["prune", "--budget", "-1", "--out", "x.npz"], "positive percentage"),
    (["prune", "--budget", "0", "--out", "x.npz"], "positive percentage"),
    (["prune", "--budget", "nan", "--out", "x.npz"], "finite"),
    (["prune", "--fractions", "0.5", "1.5", "--out", "x.npz"], "fraction in (0, 1)"),
    (["prune", "--input-fraction", "0", "--out", "x.npz"], "fraction in (0, 1)"),
    (["prune", "--tile", "3x4", "--out", "x.npz"], "square tiles"),
    (["prune", "--tile", "big", "--out", "x.npz"], "must look like"),
    (["prune", "--scheme", "P5", "--out", "x.npz"], "unknown HE-PEx scheme"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS)
def test_cli_refuses_bad_arguments_at_once(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fheprune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_unwritable_outputs_before_any_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fheprune.cli import EXIT_DATA, main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    start = time.perf_counter()
    assert main(["run", "--out", str(blocker / "report.json")]) == EXIT_DATA
    assert main(["demo", "--out", str(tmp_path)]) == EXIT_DATA  # a folder, not a file
    assert main(["prune", "--out", str(tmp_path / "x.npz"), "--work-dir", str(blocker)]) == (
        EXIT_DATA
    )
    assert main(["prune", "--fractions", "0.9", "0.5", "--out", str(tmp_path / "y")]) == (EXIT_DATA)
    assert time.perf_counter() - start < 5  # refused before any training or data loading
    text = caplog.text
    assert "--out" in text and "is a file, not a folder" in text
    assert "is a folder, expected a file name" in text
    assert "--work-dir" in text
    assert "must increase strictly" in text


# ---- One root exception ----------------------------------------------------------------------


def test_every_package_exception_is_a_fheprune_error() -> None:
    import importlib
    import inspect
    import pkgutil

    import fheprune
    from fheprune.errors import FhepruneError

    modules = [fheprune]
    for info in pkgutil.walk_packages(fheprune.__path__, "fheprune."):
        modules.append(importlib.import_module(info.name))
    classes = {
        cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__.startswith("fheprune")
    }
    assert _core.FheError in classes and _core.CompileError in classes
    assert len(classes) >= 20
    outside = sorted(c.__qualname__ for c in classes if not issubclass(c, FhepruneError))
    assert outside == []
    # The engine's errors keep their built-in base for existing handlers.
    assert issubclass(_core.SerializationError, ValueError)


def test_the_package_raises_no_bare_builtin_errors() -> None:
    # Bad input is an InputError / InputTypeError (still a ValueError / TypeError), so that
    # `except FhepruneError` catches every refusal.
    root = Path(__file__).resolve().parent.parent / "src" / "fheprune"
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in root.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "raise ValueError(" in line or "raise TypeError(" in line
    ]
    assert offenders == []


def _engine_callables() -> list[tuple[str, object, bool]]:
    """(name, callable, is_method) for every function, method and constructor of the engine."""
    import inspect

    found: list[tuple[str, object, bool]] = []
    seen: set[int] = set()  # aliases (EngineExecutor is Server) once
    for name, value in vars(_core).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        name = getattr(value, "__name__", name)
        kind = type(value).__name__
        if kind == "nb_func" and not name.startswith("_"):
            found.append((name, value, False))
        elif inspect.isclass(value) and not issubclass(value, BaseException):
            found.append((f"{name}()", value, False))
            for member, attr in vars(value).items():
                if member.startswith("__"):
                    continue
                if type(attr).__name__ == "nb_method":
                    found.append((f"{name}.{member}", getattr(value, member), True))
                elif type(attr).__name__ == "nb_func":
                    found.append((f"{name}.{member}", getattr(value, member), False))
    return found


class _Foreign:
    """An argument no binding accepts."""


def test_every_engine_call_with_wrong_types_raises_the_typed_error() -> None:
    from fheprune.errors import FhepruneError, InputTypeError

    callables = _engine_callables()
    assert len(callables) > 80  # the whole engine, not a few names
    untyped = []
    for name, function, is_method in callables:
        args = (_Foreign(), _Foreign()) if is_method else (_Foreign(),)
        try:
            function(*args)  # type: ignore[operator]
        except InputTypeError as error:
            # The message names the call and what it accepts, or, for a type the engine
            # makes (Plaintext, keys, Program), the calls that make it.
            text = str(error)
            assert name.rstrip("()").split(".")[-1] in text, (name, text)
            made_by = re.search(
                r"cannot be constructed directly; they come from the engine: \w", text
            )
            assert ("accepted:" in text and "_Foreign" in text) or made_by, (name, text)
            assert isinstance(error, FhepruneError) and isinstance(error, TypeError)
        except Exception as error:
            untyped.append(f"{name}: {type(error).__name__}: {error}")
        else:
            untyped.append(f"{name}: accepted a foreign object")
    assert untyped == []


def test_typed_argument_errors_keep_implicit_conversions() -> None:
    # The catch-all overload binds only after every real overload had its converting try:
    # an int for a float, a numpy integer for an int still work.
    from fheprune.errors import InputTypeError

    parameters = preset("n8192-l2")
    context = _core.Context(parameters, np.int64(1))
    assert context.threads == 1
    encoder = _core.Encoder(context)
    keys = _core.KeyGenerator(context)
    ciphertext = _core.Encryptor(context, keys.create_public_key()).encrypt(
        encoder.encode(np.array([0.5, -0.25]))
    )
    ciphertext.scale = 2**40  # int for float
    assert ciphertext.scale == 2.0**40
    with pytest.raises(
        InputTypeError, match=r"Ciphertext\.scale: a value of the wrong type \(str\)"
    ):
        ciphertext.scale = "big"
    with pytest.raises(InputTypeError, match=r"Context\(\): arguments of the wrong type"):
        _core.Context(parameters, 1.5)


def test_type_stubs_show_only_the_real_overloads() -> None:
    # The catch-all must not reach the stubs, or mypy would accept any call.
    import fheprune

    stub = Path(fheprune.__file__).with_name("_core.pyi")
    assert stub.is_file()
    text = stub.read_text()
    assert "def __init__(self, parameters: Parameters, threads: int = 1)" in text
    assert "_second_pass" not in text and "**kwargs" not in text


# ---- Inputs the program cannot hold are refused, not decrypted to garbage --------------------


def test_inputs_beyond_the_programs_range_are_refused() -> None:
    compiled = toy_compiled()
    spec = ClientSpec.from_compiled(compiled)
    assert spec.max_input is not None and spec.max_input > 1.0
    assert ClientSpec.from_json(spec.to_json()).max_input == spec.max_input
    client = Client(spec)
    server = Server(compiled.program.save(), client.evaluation_keys_bytes())
    x = np.random.default_rng(2).uniform(-1.0, 1.0, (4, 20))

    from fheprune.runtime import InputRangeError

    with pytest.raises(InputRangeError, match=re.escape(f"{spec.max_input:.4g}")):
        client.encrypt(x * 1e9)
    # At the bound the encrypted result is still right.
    edge = x / np.max(np.abs(x)) * spec.max_input
    with torch.no_grad():
        model = toy_model()
        want = model(torch.from_numpy(edge)).numpy()
    got = client.decrypt(server.run(client.encrypt(edge)), len(edge))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.max(np.abs(want)))


@pytest.mark.parametrize(
    ("samples", "error"),
    [
        (np.zeros((2, 20), dtype=complex), "InputTypeError"),
        (np.array([["a"] * 20]), "InputTypeError"),
        (np.zeros((0, 20)), "InputError"),
        (np.full((1, 20), np.nan), "InputError"),
        (np.full((1, 20), np.inf), "InputError"),
    ],
)
def test_unusable_inputs_are_refused(samples: np.ndarray, error: str) -> None:
    from fheprune import errors

    client = Client(ClientSpec.from_compiled(toy_compiled()))
    with pytest.raises(getattr(errors, error)):
        client.encrypt(samples)


@pytest.mark.parametrize("bad", [-1.0, 0, "big", float("inf"), True])
def test_a_client_spec_with_a_bad_input_range_is_refused(bad: object) -> None:
    import json

    from fheprune.runtime import SpecError

    data = json.loads(ClientSpec.from_compiled(toy_compiled()).to_json())
    data["max_input"] = bad
    with pytest.raises(SpecError, match="max_input"):
        ClientSpec.from_json(json.dumps(data))


# ---- Files from another party are authenticated ----------------------------------------------


def test_a_signed_client_spec_is_checked_against_the_owners_key() -> None:
    from fheprune.errors import InputError
    from fheprune.runtime import SigningKey

    owner = SigningKey.generate()
    text = ClientSpec.from_compiled(toy_compiled()).to_json()
    signature = owner.sign(text.encode())
    spec = ClientSpec.from_json(text, signature=signature, owner_key=owner.verify_key)
    assert spec.in_features == 20

    tampered = text.replace('"in_features": 20', '"in_features": 20 ')
    assert tampered != text  # the same spec to a parser, another text to the signature
    with pytest.raises(_core.MismatchError, match="changed after signing"):
        ClientSpec.from_json(tampered, signature=signature, owner_key=owner.verify_key)
    stranger = SigningKey.generate()
    with pytest.raises(_core.MismatchError):
        ClientSpec.from_json(
            text, signature=stranger.sign(text.encode()), owner_key=owner.verify_key
        )
    with pytest.raises(_core.MismatchError, match="no signature"):
        ClientSpec.from_json(text, owner_key=owner.verify_key)
    with pytest.raises(InputError, match="needs the owner's key"):
        ClientSpec.from_json(text, signature=signature)
    # The key travels as hex and rebuilds from its private seed.
    assert SigningKey.from_seed(owner.seed).verify_key == owner.verify_key
    with pytest.raises(_core.MismatchError):
        ClientSpec.from_json(text, signature=signature, owner_key="00" * 31)


def test_a_signed_program_is_checked_by_the_server() -> None:
    from fheprune.runtime import SigningKey

    compiled = toy_compiled()
    owner = SigningKey.generate()
    program = bytes(compiled.program.save())
    keys = Client(ClientSpec.from_compiled(compiled)).evaluation_keys_bytes()
    signature = owner.sign(program)
    Server(program, keys, signature=signature, owner_key=owner.verify_key)
    changed = bytearray(program)
    changed[len(changed) // 2] ^= 1
    with pytest.raises(_core.MismatchError):
        Server(bytes(changed), keys, signature=signature, owner_key=owner.verify_key)


# ---- Decryptions that leave the client are flooded --------------------------------------------


def test_decrypt_for_sharing_floods_each_output_at_a_known_precision_cost() -> None:
    compiled = toy_compiled()
    client = Client(ClientSpec.from_compiled(compiled))
    server = Server(compiled.program.save(), client.evaluation_keys_bytes())
    x = np.random.default_rng(4).uniform(-1.0, 1.0, (6, 20))
    outputs = server.run(client.encrypt(x))
    private = client.decrypt(outputs, len(x))
    shared = client.decrypt_for_sharing(outputs, len(x), statistical_security=32)
    reports = client.last_flooding
    factor = 2**16 * np.sqrt(1024 * 1) * 6  # 2^(s/2) * sqrt(N * k) * 6
    assert reports and all(
        r["flooding_std"] == pytest.approx(factor * r["noise_std"]) for r in reports
    )
    sigma = max(r["flooding_std"] for r in reports)
    difference = np.abs(shared - private)
    assert np.all(difference < 8 * sigma)  # Gaussian: beyond 8 sigma is impossible in practice
    assert np.max(difference) > 0.05 * sigma  # and it was added
    with pytest.raises(_core.ParameterError):
        client.decrypt_for_sharing(outputs, len(x), statistical_security=2)
    # k shared decryptions of the same outputs: sqrt(k) times the flooding.
    client.decrypt_for_sharing(outputs, len(x), shared_decryptions=16)
    assert client.last_flooding[0]["flooding_std"] == pytest.approx(
        4 * factor * client.last_flooding[0]["noise_std"]
    )


def test_unreadable_pruned_model_files_are_typed_errors(tmp_path: Path) -> None:
    from fheprune.errors import FhepruneError, MissingFileError
    from fheprune.models import build_model
    from fheprune.pruning import load_pruned_model

    with pytest.raises(MissingFileError, match="no pruned-model file"):
        load_pruned_model(tmp_path / "missing.npz", build_model)
    for name, data in {
        "garbage": b"\x00garbage",
        "empty": b"",
        "zip": b"PK\x03\x04" + bytes(40),
    }.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        with pytest.raises(FhepruneError, match="not a pruned-model file"):
            load_pruned_model(path, build_model)


def test_a_conv_networks_input_range_is_proven_and_holds_mnist_pixels() -> None:
    # LeNet-like at its dry-run parameters: per-slot bounds and the coefficient test give a
    # range above normalized MNIST pixels ((1 - 0.1307) / 0.3081 = 2.82).
    from fheprune.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lenet = build_model("lenet", "mnist").double().eval()
    spec = ClientSpec.from_compiled(compile_model(lenet, layout="map"))
    assert spec.max_input is not None and spec.max_input > 2.82
