"""Bootstrapping through the Python API, and the bootstrapping benchmark's own logic.

The stages are tested against their cleartext definitions in C++ (cpp/tests/test_bootstrap.cpp);
here: a refresh round trip, 100 refreshes in a row without drift, identical results on 1 and 2
threads, typed errors, and the benchmark's rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from fheprune import ckks

# The package's bootstrappable chain at N = 1024 (insecure, for speed), weight-64 secrets.
PRESET = ckks.bootstrappable(
    2, log_n=10, hamming_weight=64, special_primes=2, insecure_for_testing=True
)
BITS = list(PRESET.parameters.chain_bits)


Setup = tuple[ckks.Context, ckks.Bootstrapper, ckks.KeyGenerator, ckks.EvaluationKeys]


def _setup(threads: int = 1, secret: ckks.SecretKey | None = None) -> Setup:
    ctx = ckks.Context(PRESET.parameters, threads)
    boot = ckks.Bootstrapper(ctx, PRESET.config)
    keygen = ckks.KeyGenerator(ctx, 64) if secret is None else ckks.KeyGenerator(ctx, secret)
    keys = keygen.create_evaluation_keys(
        boot.rotation_steps(), True, PRESET.config.ephemeral_weight
    )
    return ctx, boot, keygen, keys


def _decrypt(ctx: ckks.Context, keygen: ckks.KeyGenerator, ct: ckks.Ciphertext) -> np.ndarray:
    return np.asarray(ckks.Encoder(ctx).decode(ckks.Decryptor(ctx, keygen.secret_key).decrypt(ct)))


def _encrypt(ctx: ckks.Context, keygen: ckks.KeyGenerator, z: np.ndarray) -> ckks.Ciphertext:
    return ckks.Encryptor(ctx, keygen.secret_key).encrypt(ckks.Encoder(ctx).encode(z, level=0))


def test_refresh_keeps_the_message_and_restores_levels() -> None:
    ctx, boot, keygen, keys = _setup()
    z = np.random.default_rng(0).uniform(-1, 1, ctx.slots)
    ct = _encrypt(ctx, keygen, z)
    out = boot.refresh(ct, keys)
    assert out.level == boot.output_level == len(BITS) - 1 - boot.levels_consumed
    assert out.level == 2 and out.scale == ct.scale
    # CtS (4 groups), Chebyshev (d = 31), 3 double angles (K = 9: the ephemeral weight-32
    # secret's overflow), the arcsine, StC (2 groups)
    assert PRESET.config.ephemeral_weight == 32 and PRESET.config.k_bound == 9.0
    assert boot.levels_consumed == 4 + 6 + 3 + 2 + 2
    err = np.abs(_decrypt(ctx, keygen, out) - z)
    assert -math.log2(err.mean()) > 26  # measured about 31 bits at N = 1024


def test_a_hundred_refreshes_stay_within_a_linear_drift() -> None:
    """Refresh, then back to level 0, 100 times. Each refresh adds an error of about 2^-29
    (worst slot) of which most is the same from one refresh to the next (the increments
    correlate at about 0.9), so errors add up linearly: 100 refreshes hold about 22 bits
    (docs/bootstrapping.md). The test pins that: no faster than linear growth, and 20 bits."""
    ctx, boot, keygen, keys = _setup()
    evaluator = ckks.Evaluator(ctx)
    z = np.random.default_rng(1).uniform(-1, 1, ctx.slots)
    ct = _encrypt(ctx, keygen, z)
    errors = []
    for _ in range(100):
        ct = boot.refresh(ct, keys)
        errors.append(float(np.abs(_decrypt(ctx, keygen, ct) - z).max()))
        ct = evaluator.mod_switch_to(ct, 0)
    assert max(errors) < 2.0**-20
    assert errors[-1] < 1.5 * 100 * errors[0]
    assert errors[49] < 1.5 * 50 * errors[0]


def test_threads_give_identical_results() -> None:
    ctx1, boot1, keygen, keys1 = _setup(threads=1)
    z = np.random.default_rng(2).uniform(-1, 1, ctx1.slots)
    ct = _encrypt(ctx1, keygen, z)
    want = _decrypt(ctx1, keygen, boot1.refresh(ct, keys1)).tolist()
    # 2 and 3 threads run the two EvalMod halves side by side, 4 splits each product instead;
    # giant steps run side by side in all. The refresh is exact arithmetic on the same keys,
    # so the decryptions agree bit for bit.
    for threads in (2, 3, 4):
        ctx, boot, _, keys = _setup(threads=threads, secret=keygen.secret_key)
        assert _decrypt(ctx1, keygen, boot.refresh(ct, keys1)).tolist() == want, threads
        del ctx, keys


def test_bootstrappable_preset_is_128_bit_and_says_what_fits() -> None:
    preset = ckks.bootstrappable(2)
    assert preset.parameters.poly_degree == 65536 and preset.hamming_weight == 192
    # Five standard deviations of the overflow: for the ephemeral weight-32 secret, or
    # without encapsulation for the weight-192 one (then one more double angle and level).
    assert preset.config.k_bound == 9.0 and preset.config.ephemeral_weight == 32
    plain = ckks.bootstrappable(2, ephemeral_weight=0)
    assert plain.config.k_bound == 20.0 and plain.config.ephemeral_weight == 0
    assert plain.config.double_angles == preset.config.double_angles + 1
    assert plain.log_qp == preset.log_qp + 60
    bits = sum(preset.parameters.chain_bits) + sum(preset.parameters.special_bits)
    assert bits == preset.log_qp <= ckks.max_modulus_bits_128(65536)
    assert ckks.bootstrappable(11).log_qp <= ckks.max_modulus_bits_128(65536)
    with pytest.raises(ckks.ParameterError, match="at most 11 levels left fit"):
        ckks.bootstrappable(12)
    # Without the arcsine: its two 60-bit levels go to the user, the message ratio drops.
    lean = ckks.bootstrappable(14, arcsine=False)
    assert lean.log_qp <= ckks.max_modulus_bits_128(65536)
    assert not lean.config.arcsine and lean.config.message_ratio_bits == 12.0
    assert preset.config.arcsine and preset.config.message_ratio_bits == 8.0
    with pytest.raises(ckks.ParameterError, match="at most 14 levels left fit"):
        ckks.bootstrappable(15, arcsine=False)
    with pytest.raises(ckks.ParameterError, match=r"no bootstrappable chain fits.*up to 11"):
        ckks.bootstrappable(2, log_n=14)
    with pytest.raises(ckks.ParameterError, match="at least 1"):
        ckks.bootstrappable(0)
    with pytest.raises(ckks.ParameterError, match="ephemeral_weight"):
        ckks.bootstrappable(2, ephemeral_weight=-1)
    with pytest.raises(ckks.ParameterError, match="too sparse"):
        ckks.bootstrappable(2, hamming_weight=64)
    # What a refresh leaves is what was asked for.
    assert (
        len(preset.parameters.chain_bits)
        - 1
        - ckks.Bootstrapper(ckks.Context(PRESET.parameters, 1), preset.config).levels_consumed
        == 2
    )


def test_typed_errors() -> None:
    short = ckks.Parameters(1024, [55, 40, 40], [60], 40, insecure_for_testing=True)
    with pytest.raises(ckks.ParameterError, match="consumes"):
        ckks.Bootstrapper(ckks.Context(short, 1))
    with pytest.raises(ckks.ParameterError, match="Hamming weight"):
        ckks.KeyGenerator(ckks.Context(short, 1), 0)
    ctx, boot, keygen, _ = _setup()
    ct = ckks.Encryptor(ctx, keygen.secret_key).encrypt(
        ckks.Encoder(ctx).encode(np.full(4, 0.5), level=3)
    )
    with pytest.raises(ckks.LevelError, match="level 0"):
        boot.mod_raise(ct)
    no_keys = keygen.create_evaluation_keys([], False)
    with pytest.raises(ckks.MissingKeyError):
        boot.refresh(ct, no_keys)


def test_benchmark_rows_and_defaults() -> None:
    bench = load_benchmark("bootstrapping")
    args = bench.parse_args(["--quick"])
    assert (args.log_n, args.threads, args.repeats) == (13, [1], 2)
    args = bench.parse_args([])
    assert (args.log_n, args.threads, args.repeats) == (14, [1, 2], 3)
    row = bench.run_ours(10, 1, 1, 2, 64, 0)
    for field in (
        "impl",
        "log_n",
        "slots",
        "threads",
        "seconds",
        "levels_left",
        "precision_bits_mean",
        "precision_bits_min",
        "key_bytes",
    ):
        assert field in row
    assert row["impl"] == "ours" and row["slots"] == 512 and row["levels_left"] == 2
    assert row["precision_bits_mean"] > 18 and row["key_bytes"] > 0
    assert row["secure_128"] is False  # N = 1024 holds no such chain
    assert row["config"]["arcsine"] and row["config"]["message_ratio_bits"] == 8.0
    assert row["precision_bits_mean_constant"] > 18
    lean = bench.run_ours(10, 1, 1, 2, 64, 0, arcsine=False)
    assert not lean["config"]["arcsine"] and lean["config"]["message_ratio_bits"] == 12.0
    assert bench.parse_args(["--no-arcsine"]).no_arcsine
    # The keys' size without serializing them: the bundle's size up to its header.
    ctx, _, _, keys = _setup()
    assert 0 <= len(ckks.save(ctx, keys)) - bench.key_bytes(ctx, keys) <= 4096
    runs = [row, {"impl": "lattigo", "threads": 1, "seconds": row["seconds"] / 2}]
    assert bench._ratio(runs, 1) == pytest.approx(2.0)
    assert bench._ratio([row, {"impl": "lattigo", "threads": 1, "skipped": "x"}], 1) is None
    assert row["refresh_slots"] == 512
    # Sparse rows refresh a shorter period, and are never compared with Lattigo's.
    sparse = bench.run_ours(10, 1, 1, 2, 64, 0, sparse_slots=16)  # 4 stages: 4 CtS levels
    assert sparse["refresh_slots"] == 16 and sparse["precision_bits_mean"] > 18
    assert bench._ratio([sparse, {"impl": "lattigo", "threads": 1, "seconds": 1.0}], 1) is None
    assert bench.parse_args(["--sparse-slots", "8", "64"]).sparse_slots == [8, 64]


def test_precision_benchmark_rows() -> None:
    bench = load_benchmark("bootstrapping_precision")
    assert bench.parse_args([]).ratios == [0.0, 7.0, 8.0, 10.0, 12.0]
    assert bench.parse_args(["--cts-lifts", "0", "1"]).cts_lifts == [0.0, 1.0]
    rows = {
        (r["arcsine"], r["shape"]): r
        for a in (False, True)
        for r in bench.run_config(10, 64, 8.0, a, 1, 0)
    }
    assert set(rows) == {(a, s) for a in (False, True) for s in bench.SHAPES}
    for row in rows.values():
        assert row["boost"] == 128 and row["seconds"] > 0  # 2^55 / 2^40 down to 2^8
        assert row["cts_lift"] == 0.4  # the preset's
        assert row["ephemeral_weight"] == 32 and row["k_bound"] == 9.0  # the preset's
    # Without encapsulation K follows the secret's weight (64: K = 12) and r goes back to 4.
    (plain, _) = bench.run_config(10, 64, 8.0, True, 1, 0, ephemeral_weight=0)
    assert plain["ephemeral_weight"] == 0 and plain["k_bound"] == 12.0
    assert plain["double_angles"] == 4 and plain["precision_bits_mean"] > 26
    assert bench.parse_args(["--ephemeral-weights", "0", "32"]).ephemeral_weights == [0, 32]
    # The arcsine costs two levels and is what keeps a constant message precise.
    assert rows[True, "uniform"]["levels_consumed"] == rows[False, "uniform"]["levels_consumed"] + 2
    assert (
        rows[True, "constant"]["precision_bits_mean"]
        > rows[False, "constant"]["precision_bits_mean"] + 4
    )


def test_stage_errors_add_up_to_the_refresh() -> None:
    bench = load_benchmark("bootstrapping_stages")
    row = bench.run(10, 64, 0.4, 0)
    assert row["total_bits"] > 26
    # Each stage's error is at most the total (up to noise), and together they are the total.
    for stage in ("input", "cts", "evalmod", "stc"):
        assert row[f"{stage}_bits"] > row["total_bits"] - 1, stage
    assert row["sum_check_bits"] > row["total_bits"] + 5
    assert bench.parse_args([]).cts_lifts == [0.0, 0.4]


def test_config_with_changes_only_the_named_fields() -> None:
    from fheprune.ckks.presets import config_with

    changed = config_with(PRESET.config, cts_lift=0.1, slots=8)
    assert (changed.cts_lift, changed.slots) == (0.1, 8)
    for field in ("k_bound", "chebyshev_degree", "double_angles", "message_ratio_bits", "arcsine"):
        assert getattr(changed, field) == getattr(PRESET.config, field), field
    with pytest.raises(ckks.ParameterError, match="no field"):
        config_with(PRESET.config, lift=0.1)
