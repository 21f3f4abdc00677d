"""Programs deeper than their chain: refreshes placed by the program, read by the cost model,
modelled by the simulator and run by the server (docs/runtime.md, "Refreshes")."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from fheprune import _core, ckks
from fheprune.errors import InputError
from fheprune.runtime.cost import TIMED_AS, OpTimings, predict

LEVELS_LEFT = 5


@pytest.fixture(scope="module")
def preset() -> ckks.BootstrapPreset:
    # N = 1024: fast, and far from secure (tests only).
    return ckks.bootstrappable(LEVELS_LEFT, log_n=10, hamming_weight=64, insecure_for_testing=True)


# The benchmark's program: x -> (W x + b)^2 with row sums of |W| <= 1/2 and |b| <= 1/2, so
# values stay in [-1, 1]; its cleartext reference.
_BENCH = load_benchmark("deep_program")
layers = _BENCH.layers
reference = _BENCH.reference
FEATURES = _BENCH.FEATURES


def deep(preset: ckks.BootstrapPreset, pairs: int = 8, seed: int = 0) -> tuple[object, list]:
    weights = layers(pairs, seed)
    program = _core.Program.diagonal(preset.parameters, FEATURES)
    for k, (w, b) in enumerate(weights):
        program.add_linear(f"fc{k}", w, b)
        program.add_square(f"sq{k}")
    return program, weights


def test_refreshes_are_placed_where_the_levels_run_out_and_survive_save_and_load(
    preset: ckks.BootstrapPreset,
) -> None:
    program, _ = deep(preset, pairs=8)  # 16 levels, 5 per refresh: 3 refreshes
    assert program.depth == 16
    placed = program.place_refreshes(preset.config)
    assert placed == program.refreshes == 3
    assert program.input_level == LEVELS_LEFT and program.levels == LEVELS_LEFT
    assert program.needs_conjugation
    # Diagonal vectors repeat every 8 slots: the refreshes are sparse, with the shortest period
    # that is a multiple of 8 and has a butterfly stage for each of CoeffToSlot's 4 levels.
    assert preset.config.cts_levels == 4 and FEATURES == 8
    assert program.refresh_config.slots == 16
    schedule = program.level_schedule()
    assert schedule[0] == LEVELS_LEFT and min(schedule) == 0
    costs = program.cost()
    refreshes = [c for c in costs if c["kind"] == "refresh"]
    assert len(refreshes) == 3 and all(c["ops"]["refresh"] == 1 for c in refreshes)
    assert [c["level"] for c in costs] == schedule[:-1]
    loaded = _core.Program.load(program.save())
    assert loaded.refreshes == 3 and loaded.level_schedule() == schedule
    assert loaded.refresh_config.ephemeral_weight == preset.config.ephemeral_weight == 32
    assert bytes(loaded.save()) == bytes(program.save())


def test_a_chain_that_cannot_bootstrap_is_refused(preset: ckks.BootstrapPreset) -> None:
    program = _core.Program.diagonal(ckks.preset("n8192-l2"), FEATURES)
    program.add_square("sq")
    with pytest.raises(_core.ParameterError):
        program.place_refreshes(preset.config)


def test_the_simulator_models_refreshes_exactly_or_with_a_measured_error(
    preset: ckks.BootstrapPreset,
) -> None:
    program, weights = deep(preset)
    program.place_refreshes(preset.config)
    ctx = ckks.Context(preset.parameters, 1)
    x = np.random.default_rng(1).uniform(-1, 1, (1, FEATURES))
    packed = program.pack_inputs(x)
    exact, stats = _core.SimulatedExecutor(program, ctx).run(packed)
    np.testing.assert_allclose(program.unpack_outputs(exact, 1), reference(weights, x), atol=1e-12)
    assert stats["ops"]["refresh"] == 3

    def noisy(seed: int) -> np.ndarray:
        sim = _core.SimulatedExecutor(program, ctx, refresh_error=1e-4, refresh_seed=seed)
        return np.asarray(sim.run(packed)[0])

    a, b = noisy(0), noisy(0)
    np.testing.assert_array_equal(a, b)  # seeded
    deviation = np.abs(a - exact)
    assert 0 < deviation.max() < 1e-2  # the error is there, and of the modelled size
    assert not np.array_equal(a, noisy(1))
    with pytest.raises(_core.EncodingError, match="outside the range"):
        _core.SimulatedExecutor(program, ctx, refresh_bound=1e-6).run(packed)


def test_a_deep_program_runs_on_the_server_and_matches_the_simulator(
    preset: ckks.BootstrapPreset,
) -> None:
    program, weights = deep(preset, pairs=6)
    placed = program.place_refreshes(preset.config)
    ctx = ckks.Context(preset.parameters, 1)
    keygen = ckks.KeyGenerator(ctx, preset.hamming_weight)
    with pytest.raises(_core.MissingKeyError, match="conjugation"):
        _core.Server(program, ctx, keygen.create_evaluation_keys(program.rotation_steps()))
    with pytest.raises(_core.MissingKeyError, match="encapsulation"):
        _core.Server(program, ctx, keygen.create_evaluation_keys(program.rotation_steps(), True))
    keys = keygen.create_evaluation_keys(
        program.rotation_steps(), True, program.refresh_config.ephemeral_weight
    )
    server = _core.Server(program, ctx, keys)
    encoder, encryptor = ckks.Encoder(ctx), ckks.Encryptor(ctx, keygen.secret_key)
    decryptor = ckks.Decryptor(ctx, keygen.secret_key)
    x = np.random.default_rng(2).uniform(-1, 1, (1, FEATURES))
    packed = program.pack_inputs(x)
    top = encryptor.encrypt(encoder.encode(np.ascontiguousarray(packed[0])))
    with pytest.raises(_core.LevelError, match="input_level"):
        server.run([top])
    inputs = [
        encryptor.encrypt(encoder.encode(np.ascontiguousarray(v), level=program.input_level))
        for v in packed
    ]
    outputs, stats = server.run(inputs)
    got = program.unpack_outputs(np.array([encoder.decode(decryptor.decrypt(outputs[0]))]), 1)
    np.testing.assert_allclose(got, reference(weights, x), atol=1e-4)
    _, sim_stats = _core.SimulatedExecutor(program, ctx).run(packed)
    assert stats["ops"] == sim_stats["ops"] and stats["ops"]["refresh"] == placed


def test_predicted_time_needs_a_measured_refresh(preset: ckks.BootstrapPreset) -> None:
    program, _ = deep(preset)
    program.place_refreshes(preset.config)
    flat = {level: 1e-3 for level in range(len(preset.parameters.chain_bits))}
    # Every timing predict() charges but the refresh's (cost.TIMED_AS names them).
    ops = {t for t in TIMED_AS.values() if t is not None} - {"refresh"}
    timings = OpTimings(1024, {op: dict(flat) for op in ops})
    with pytest.raises(InputError, match="refresh time"):
        predict(program, timings, 1)
    timings.seconds["refresh"] = {0: 2.0}
    with_refresh = predict(program, timings, 1)
    refresh_rows = [r for r in with_refresh["layers"] if r["name"].startswith("refresh")]
    assert [r["seconds"] for r in refresh_rows] == [2.0, 2.0, 2.0]


def test_the_dry_run_names_the_bootstrappable_preset_with_the_fewest_refreshes() -> None:
    from fheprune.runtime.params import (
        choose_bootstrappable,
        choose_parameters,
        max_bootstrap_levels,
    )

    most = max_bootstrap_levels()
    assert most == 11  # N = 2^16 at 128 bits with the arcsine (docs/bootstrapping.md)
    # 30 one-level layers: 2 refreshes at 10 levels left, and fewer levels need more.
    choice = choose_bootstrappable([1] * 30)
    assert (choice.preset.levels_left, choice.refreshes) == (10, 2)
    assert choice.preset.parameters.poly_degree == 1 << 16
    assert "2 refresh(es)" in choice.message
    # The count is the program's: the same chain placed on the same preset.
    program = _core.Program.diagonal(choice.preset.parameters, FEATURES)
    for k, (w, b) in enumerate(layers(15, 0)):
        program.add_linear(f"fc{k}", w, b)
        program.add_square(f"sq{k}")
    assert program.place_refreshes(choice.preset.config) == choice.refreshes
    # Many live ciphertexts in the middle: a plan around them.
    live = [1] * 11 + [50] * 8 + [1] * 11
    wide = choose_bootstrappable([1] * 30, live)
    assert wide.refreshed_ciphertexts == 2
    with pytest.raises(_core.CompileError, match="split the layer"):
        choose_bootstrappable([1, most + 1])
    with pytest.raises(_core.CompileError, match="bootstrap"):
        choose_parameters(60)


def test_a_deep_model_compiles_with_refreshes_and_serves_through_the_roles(
    preset: ckks.BootstrapPreset,
) -> None:
    import torch

    from fheprune.models.zoo import MLPClassifier
    from fheprune.runtime.compiler import compile_model
    from fheprune.runtime.roles import Client, ClientSpec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLPClassifier(in_features=8, hidden=(8,) * 10, classes=4, activation="square")
    with torch.no_grad():  # small weights keep every value well inside the refresh's range
        for p in model.parameters():
            p.mul_(0.5)
    model = model.double().eval()
    with pytest.raises(_core.LevelError):  # too deep for the preset's chain without refreshes
        compile_model(model, parameters=preset.parameters, tile=(4, 4))
    compiled = compile_model(model, tile=(4, 4), bootstrap=preset)
    program = compiled.program
    assert program.refreshes >= 1 and program.input_level == LEVELS_LEFT
    assert program.refresh_config.slots == 0  # tiles fill every slot
    assert compiled.choice.bootstrap == preset

    spec = ClientSpec.from_json(ClientSpec.from_compiled(compiled).to_json())
    assert (spec.input_level, spec.hamming_weight, spec.conjugation) == (
        LEVELS_LEFT,
        preset.hamming_weight,
        True,
    )
    client = Client(spec)
    server = _core.Server(bytes(program.save()), client.evaluation_keys_bytes())
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (3, 8))  # inside max_input
    outputs, stats = server.run(client.encrypt(x))
    assert stats["ops"]["refresh"] > 0
    got = client.decrypt(outputs, 3)
    np.testing.assert_allclose(got, compiled.plaintext_forward(x), atol=1e-3)


def test_the_deep_program_benchmark_reports_what_it_ran() -> None:
    bench = load_benchmark("deep_program")
    row = bench.run(log_n=10, levels_left=3, pairs=3, threads=1, repeats=1, seed=0)
    assert (row["depth"], row["refreshes"], row["input_level"]) == (6, 1, 3)
    assert row["secure_128"] is False and row["sim_ops_equal"] is True
    assert row["ops"]["refresh"] == 1 and row["level_schedule"][0] == 3
    # The diagonal layout refreshes its period only (8, raised to 16 for 4 CoeffToSlot levels).
    assert row["refresh_slots"] == 16
    assert 0 < row["max_error"] < 1e-3 and row["precision_bits"] > 10
    assert len(row["refresh_seconds_all"]) == 1 and row["first_run_seconds"] > 0
    assert len(row["sim_modelled_max_error"]) == 5 and row["refresh_error_std"] > 0
    args = bench.parse_args(["--quick"])
    assert args.quick and args.pairs == 15 and args.threads == [1]
