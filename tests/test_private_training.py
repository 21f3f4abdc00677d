"""Encrypted training kernels against numpy, on the simulator and on the engine; the softmax
approximation's error over its claimed range; HE-friendly scores against plaintext EL2N;
ciphertext-wise pruning keeps exactly the kept samples; roles and typed errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.stats import spearmanr

from fheprune import ckks
from fheprune.errors import InputError
from fheprune.private_training import kernels as K
from fheprune.private_training.backend import (
    EngineBackend,
    OutOfLevelsError,
    SimulatedBackend,
    TrainingParameters,
    scale_ladder,
    training_parameters,
)
from fheprune.private_training.layout import SampleLayout
from fheprune.private_training.softmax import SoftmaxApprox, exact_softmax
from fheprune.private_training.trainer import (
    LABEL_LEVEL,
    Batch,
    DataOwner,
    Ledger,
    PrivateTrainingConfig,
    TrainingServer,
    accuracy,
    initial_selection,
    project_columns,
    top_fraction,
    train_plaintext,
    train_private,
)
from fheprune.runtime.cost import OpTimings

LOG_N = 11  # insecure, for speed: 1024 slots, 64 samples per ciphertext
SLOTS = 1 << (LOG_N - 1)
LAYOUT = SampleLayout(SLOTS, 16, 10)
APPROX = SoftmaxApprox(10, 16, 3.0)
TOP = 20


@pytest.fixture(scope="module")
def engine() -> tuple[EngineBackend, EngineBackend]:
    params = TrainingParameters(LOG_N, (58,) + (38,) * TOP, (60,), 38, insecure_for_testing=True)
    return EngineBackend.create(params, K.rotation_steps(LAYOUT))


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 16))
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = LAYOUT.samples_per_ciphertext
    x = _unit_rows(rng, n)
    y = rng.integers(0, 10, n)
    w = project_columns(rng.normal(size=(16, 10)), 3.0)
    return x, y, w, 0.8 * w


def _one_step(client: Any, server: Any) -> dict[str, np.ndarray]:
    """One training step and a score, decrypted stage by stage."""
    x, y, w, v = _problem()
    xs = [server.mul_const(client.encrypt(a, TOP), 1.0) for a in LAYOUT.rotated_features(x)]
    labels = server.mul_const(client.encrypt(LAYOUT.labels(y), 3), 1.0)
    d = [client.encrypt(a, TOP - 1) for a in LAYOUT.weight_diagonals(w)]
    vel = [client.encrypt(a, 1) for a in LAYOUT.weight_diagonals(v)]
    z = K.forward(server, xs, d)
    p = K.softmax(server, LAYOUT, APPROX, z)
    e = server.sub(p, labels)
    g = K.gradient(server, LAYOUT, [[server.drop_to(a, server.level(e)) for a in xs]], [e])
    new_w, new_v = K.nesterov(server, d, vel, g, 0.25, 0.5)
    score = K.hefs(server, LAYOUT, p, labels)
    return {
        "z": LAYOUT.class_lanes(client.decrypt(z)),
        "p": LAYOUT.class_lanes(client.decrypt(p)),
        "g": LAYOUT.weights_from_diagonals([client.decrypt(a) for a in g]),
        "w": LAYOUT.weights_from_diagonals([client.decrypt(a) for a in new_w]),
        "v": LAYOUT.weights_from_diagonals([client.decrypt(a) for a in new_v]),
        "score": LAYOUT.lane_zero(client.decrypt(score)),
        "final_level": np.array(server.level(new_w[0])),
    }


def _reference() -> dict[str, np.ndarray]:
    x, y, w, v = _problem()
    p = exact_softmax(x @ w)
    onehot = np.eye(10)[y]
    g = x.T @ (p - onehot)
    v_new = w - 0.25 * g
    return {
        "z": x @ w,
        "p": p,
        "g": g,
        "w": v_new + 0.5 * (v_new - v),
        "v": v_new,
        "score": np.abs(p - onehot).sum(axis=1),
    }


@pytest.mark.parametrize("kind", ["simulator", "engine"])
def test_a_training_step_matches_numpy(
    kind: str, engine: tuple[EngineBackend, EngineBackend]
) -> None:
    if kind == "engine":
        client, server = engine
    else:
        client = server = SimulatedBackend(SLOTS, TOP)  # type: ignore[assignment]
    got, want = _one_step(client, server), _reference()
    tol = {"z": 1e-6, "p": 1e-4, "g": 1e-3, "w": 1e-3, "v": 1e-3, "score": 1e-4}
    for key, bound in tol.items():
        assert np.abs(got[key] - want[key]).max() < bound, key
    assert int(got["final_level"]) == 0  # the step uses the whole chain, no more


def test_the_simulator_counts_what_the_engine_does(
    engine: tuple[EngineBackend, EngineBackend],
) -> None:
    client, _ = engine
    server = client.server_view()  # fresh counts, no secret key
    _one_step(client, server)
    sim = SimulatedBackend(SLOTS, TOP)
    _one_step(sim, sim)
    assert server.counts.as_dict() == sim.counts.as_dict()
    assert server.counts.by_level == sim.counts.by_level
    # The cost model prices the counts level by level.
    timings = OpTimings(1 << LOG_N)
    levels = range(TOP + 1)
    timings.seconds = {
        op: {lv: (lv + 1) * unit for lv in levels}
        for op, unit in (("square", 1.0), ("rescale", 0.1), ("mul_plain", 0.01), ("rotate", 1.0))
    }
    predicted = sim.counts.predict_seconds(timings)
    by = sim.counts.by_level
    assert predicted["rotations"] == pytest.approx(
        sum((lv + 1) * n for lv, n in by["rotations"].items())
    )
    assert predicted["total"] == pytest.approx(
        predicted["ct_mult"] + predicted["plain_mult"] + predicted["rotations"]
    )


def test_softmax_error_over_the_claimed_range_and_not_beyond() -> None:
    rng = np.random.default_rng(1)
    r = APPROX.logit_bound
    z = np.vstack([rng.uniform(-r, r, (5000, 10)), np.where(rng.random((5000, 10)) < 0.5, r, -r)])
    assert np.abs(APPROX.cleartext(z) - exact_softmax(z)).max() < 1e-4
    outside = rng.uniform(2 * r, 3 * r, (100, 10))
    outside[:, 0] = -2 * r
    with np.errstate(over="ignore", invalid="ignore"):
        far = APPROX.cleartext(outside)
    assert not np.all(np.abs(far - exact_softmax(outside)) < 1e-3)


def test_hefs_ranks_samples_like_plaintext_el2n(
    engine: tuple[EngineBackend, EngineBackend],
) -> None:
    got, want = _one_step(*engine), _reference()
    rho = spearmanr(got["score"], want["score"]).statistic
    assert rho > 0.999


def test_logit_scores_are_exact_el2n_on_the_engine(
    engine: tuple[EngineBackend, EngineBackend],
) -> None:
    """score="logits": the server's logits, decrypted at the bottom level by the client, give
    the plaintext L1 EL2N score (and the softmax the validation loss uses) to 1e-5."""
    client, server = engine
    x, y, w, _ = _problem(3)
    ledger = Ledger()
    owner = DataOwner(client, server, LAYOUT, PrivateTrainingConfig(score="logits"), ledger)
    trainer = TrainingServer(server, LAYOUT, APPROX, ledger)
    (batch,) = owner.encrypt_samples(x, y, with_owners=False)
    d = [client.encrypt(v, TOP - 1) for v in LAYOUT.weight_diagonals(w)]
    z = trainer.logits(batch, d)
    assert server.level(z) == 0  # downloaded at the bottom: the fewest bytes
    p = exact_softmax(x @ w)
    want = np.abs(p - np.eye(10)[y]).sum(axis=1)
    got = owner.scores_from_logits([z], [len(x)], y)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(owner.probabilities([z], [len(x)]), p, atol=1e-5)
    assert ledger.bytes_down == 2 * server.byte_size(z)


def test_logits_at_the_bottom_cost_what_the_simulator_counts(
    engine: tuple[EngineBackend, EngineBackend],
) -> None:
    """The download's products run on two primes whatever the operands' levels (no level
    drop is paid for), on the engine as on the simulator; too low an operand is refused."""
    client, _ = engine
    server = client.server_view()
    sim = SimulatedBackend(SLOTS, TOP)
    x, _, w, _ = _problem(4)
    for backend, enc in ((server, client), (sim, sim)):
        xs = [enc.encrypt(a, TOP) for a in LAYOUT.rotated_features(x)]
        d = [enc.encrypt(a, TOP - 1) for a in LAYOUT.weight_diagonals(w)]
        z = backend.mul_sum_at_bottom(list(zip(xs, d, strict=True)))  # type: ignore[attr-defined]
        assert backend.level(z) == 0  # type: ignore[attr-defined]
        np.testing.assert_allclose(LAYOUT.class_lanes(enc.decrypt(z)), x @ w, atol=1e-6)
    assert server.counts.by_level == sim.counts.by_level == {"ct_mult": {1: 1}}
    for backend, enc in ((server, client), (sim, sim)):
        low = enc.encrypt(np.ones(SLOTS), 0)
        with pytest.raises(OutOfLevelsError, match="level 1 or above"):
            backend.mul_sum_at_bottom([(low, low)])  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["simulator", "engine"])
def test_packing_spends_a_level_only_where_a_mask_is_needed(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """A batch encrypted for masks is packed to the working level (here cut to its first 10
    samples);
    a batch encrypted at the working level passes through untouched, and cutting it is a
    typed error (no level is left for the mask)."""
    client: Any = SimulatedBackend(SLOTS, TOP)
    evaluator: Any = client
    if backend == "engine":
        client, _ = request.getfixturevalue("engine")
        evaluator = client.server_view()
    x, y, _, _ = _problem(5)
    ledger = Ledger()
    owner = DataOwner(client, evaluator, LAYOUT, PrivateTrainingConfig(), ledger)
    trainer = TrainingServer(evaluator, LAYOUT, APPROX, ledger)
    per = LAYOUT.samples_per_ciphertext
    cut = np.arange(per) < 10
    (maskable,) = owner.encrypt_samples(x, y, with_owners=False, use="mask")
    packed = trainer.pack(maskable, cut)
    assert packed.count == 10 and evaluator.level(packed.xs[0]) == TOP - 1
    assert evaluator.level(packed.labels) == LABEL_LEVEL
    rows = LAYOUT.class_lanes(client.decrypt(packed.xs[0]))
    np.testing.assert_allclose(rows[:10], x[:10, :10], atol=1e-5)
    assert np.abs(rows[10:]).max() < 1e-5
    (working,) = owner.encrypt_samples(x, y, with_owners=False)
    assert evaluator.level(working.xs[0]) == TOP - 1
    assert evaluator.level(working.labels) == LABEL_LEVEL
    plain_mults = evaluator.counts.plain_mult
    assert trainer.pack(working) is working
    assert evaluator.counts.plain_mult == plain_mults
    with pytest.raises(InputError, match="no level is left for a mask"):
        trainer.pack(working, cut)


def test_only_a_pruning_run_pays_for_packing() -> None:
    """The full-data run never masks: its data enter at the working level, nothing is packed."""
    per = LAYOUT.samples_per_ciphertext
    x, y = _features(2 * per, 0)
    xv, yv = _features(per, 1)
    cfg = PrivateTrainingConfig(keep_fraction=1.0, epochs=1)
    client = SimulatedBackend(SLOTS, TOP)
    result = train_private(client, client.server_view(), LAYOUT, cfg, x, y, xv, yv)
    assert "pack" not in result.seconds_by_component
    ct = client.ciphertext_bytes
    validation = 16 * ct * 2  # scored by logits only: level 1, no labels
    assert result.bytes_up_by["data"] == 2 * (16 * ct * TOP + ct * (LABEL_LEVEL + 1)) + validation


def test_every_operation_lands_on_the_ladder_scale(
    engine: tuple[EngineBackend, EngineBackend],
) -> None:
    """Products, constant products, level drops and fused sums leave each ciphertext on its
    level's ladder scale exactly (the engine refuses to add mismatched scales otherwise)."""
    client, server = engine
    ladder = scale_ladder([int(q) for q in client.context.primes], 38)
    a = client.encrypt(np.full(SLOTS, 0.5), TOP)
    b = client.encrypt(np.full(SLOTS, 0.25), TOP - 3)
    made = [
        server.mul(a, a),
        server.mul(a, b),
        server.mul_const(a, 3.0),
        server.mul_const(b, np.linspace(0, 1, SLOTS)),
        server.drop_to(a, 4),
        server.drop_to(b, 0),
        server.mul_sum([(a, a), (a, b)]),
        server.add(a, b),
    ]
    for ct in made:
        assert ct.scale == pytest.approx(ladder[ct.level], rel=1e-12)
        assert ct.scale == pytest.approx(client.scale(ct.level), rel=1e-12)
    assert client.decrypt(server.add(a, b))[0] == pytest.approx(0.75, abs=1e-6)


def test_too_short_a_chain_is_a_typed_error() -> None:
    sim = SimulatedBackend(SLOTS, 12)
    with pytest.raises(OutOfLevelsError, match="longer chain"):
        _one_step_at(sim, 12)
    with pytest.raises(ckks.ParameterError, match="at most 20 levels fit"):
        training_parameters(21)
    assert training_parameters(20).top_level == 20


def _one_step_at(sim: SimulatedBackend, top: int) -> None:
    x, _, w, _ = _problem()
    xs = [sim.encrypt(a, top) for a in LAYOUT.rotated_features(x)]
    d = [sim.encrypt(a, top) for a in LAYOUT.weight_diagonals(w)]
    K.softmax(sim, LAYOUT, APPROX, K.forward(sim, xs, d))


def test_the_server_cannot_decrypt(engine: tuple[EngineBackend, EngineBackend]) -> None:
    client, server = engine
    ct = client.encrypt(np.zeros(SLOTS), 1)
    with pytest.raises(InputError, match="only the client"):
        server.decrypt(ct)
    with pytest.raises(InputError, match="only the client"):
        server.encrypt(np.zeros(SLOTS), 1)


@pytest.mark.parametrize("backend", ["simulator", "engine"])
def test_ciphertext_wise_pruning_keeps_exactly_the_kept_samples(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Moves by hoisted one-key shifts and by bit-by-bit shifts both land every kept sample
    (features and label) in a hole, on the simulator and encrypted."""
    rng = np.random.default_rng(3)
    sim: Any = SimulatedBackend(SLOTS, TOP)
    evaluator: Any = sim
    if backend == "engine":
        sim, evaluator = request.getfixturevalue("engine")
    per = LAYOUT.samples_per_ciphertext
    n = 4 * per - 5
    x, y = _unit_rows(rng, n), rng.integers(0, 10, n)
    batches = []
    for i, start in enumerate(range(0, n, per)):
        xb, yb = x[start : start + per], y[start : start + per]
        owners = np.full(per, -1)
        owners[: len(xb)] = np.arange(start, start + len(xb))
        xs = [sim.encrypt(a, TOP) for a in LAYOUT.rotated_features(xb)]
        batches.append(Batch(xs, sim.encrypt(LAYOUT.labels(yb), 3), len(xb), owners))
        del i
    kept = np.sort(rng.choice(n, size=n // 5, replace=False))
    server = TrainingServer(evaluator, LAYOUT, APPROX, Ledger())
    out = server.compact(batches, kept)
    assert len(out) <= int(np.ceil(len(kept) / per)) + 1 < len(batches)
    seen = []
    for b in out:
        assert b.owners is not None
        rows = LAYOUT.class_lanes(sim.decrypt(b.xs[0]))  # X_0: lane j holds feature j
        labels = LAYOUT.class_lanes(sim.decrypt(b.labels)).argmax(axis=1)
        for block, owner in enumerate(b.owners):
            if owner < 0:
                assert np.abs(rows[block]).max() < 1e-5
                continue
            np.testing.assert_allclose(rows[block], x[owner, :10], atol=1e-5)
            assert labels[block] == y[owner]
            seen.append(int(owner))
        assert b.count == int((b.owners >= 0).sum())
    assert sorted(seen) == kept.tolist()


def test_a_full_set_of_kept_samples_fills_one_ciphertext_given_the_moves() -> None:
    """Two ciphertexts whose kept samples add up to exactly one: with enough moves the
    planner fills every hole; with the default budget it keeps both rather than overspend."""
    rng = np.random.default_rng(5)
    sim = SimulatedBackend(SLOTS, TOP)
    per = LAYOUT.samples_per_ciphertext
    batches = []
    for c in range(2):
        x = _unit_rows(rng, per)
        xs = [sim.encrypt(a, TOP) for a in LAYOUT.rotated_features(x)]
        labels = sim.encrypt(LAYOUT.labels(rng.integers(0, 10, per)), 3)
        batches.append(Batch(xs, labels, per, np.arange(c * per, (c + 1) * per)))
    kept = np.sort(rng.choice(2 * per, size=per, replace=False))
    server = TrainingServer(sim, LAYOUT, APPROX, Ledger())
    out = server.compact(batches, kept, max_rotations=10**6)
    assert len(out) == 1 and out[0].count == per
    assert out[0].owners is not None and sorted(out[0].owners.tolist()) == kept.tolist()
    rotations = sim.counts.rotations
    assert len(server.compact(batches, kept, max_rotations=2)) == 2
    assert sim.counts.rotations == rotations  # a plan over budget moves nothing


def test_the_first_selection_is_random_whole_ciphertexts_cut_to_the_fraction() -> None:
    per = 10
    groups = initial_selection(95, per, PrivateTrainingConfig(keep_fraction=0.25, seed=3))
    assert sum(len(g) for _, g in groups) == 24  # ceil(0.25 * 95)
    for i, g in groups[:-1]:  # whole ciphertexts (the data's last one holds 5)
        assert g.tolist() == list(range(i * per, min((i + 1) * per, 95)))
    i, g = groups[-1]  # the last one cut short
    assert g.tolist() == list(range(i * per, i * per + len(g)))
    other = initial_selection(95, per, PrivateTrainingConfig(keep_fraction=0.25, seed=4))
    assert [i for i, _ in groups] != [i for i, _ in other]


def test_top_fraction_breaks_ties_at_random_and_keeps_the_best() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    assert top_fraction(scores, 0.4).tolist() == [1, 3]
    flat = np.full(100, 1.8)
    assert top_fraction(flat, 0.1, seed=0).tolist() != list(range(10))


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(10, 15))
    y = rng.integers(0, 10, n)
    f = centers[y] + 0.5 * rng.normal(size=(n, 15))
    f /= np.linalg.norm(f, axis=1, keepdims=True) * np.sqrt(2)
    return np.hstack([f, np.full((n, 1), 1 / np.sqrt(2))]), y


@pytest.mark.parametrize("mode", ["heprune", "private"])
def test_simulated_training_follows_the_plaintext_recipe(mode: str) -> None:
    per = LAYOUT.samples_per_ciphertext
    x, y = _features(4 * per, 0)
    xv, yv = _features(per, 1)
    for keep, rescore in ((1.0, 5), (0.5, 2), (0.5, 99)):
        cfg = PrivateTrainingConfig(
            keep_fraction=keep,
            mode=mode,  # type: ignore[arg-type]
            epochs=4,
            rescore_every=rescore,
        )
        client = SimulatedBackend(SLOTS, TOP)
        result = train_private(client, client.server_view(), LAYOUT, cfg, x, y, xv, yv)
        reference = train_plaintext(LAYOUT, cfg, x, y, xv, yv)
        same_batches = keep == 1.0 or (mode == "private" and rescore > cfg.epochs)
        if same_batches:  # same samples, same batches, same order: only the approximations differ
            np.testing.assert_allclose(result.weights, reference, atol=1e-3)
        else:  # HEPrune's compaction puts the kept samples in other batches
            assert accuracy(result.weights, xv, yv) > accuracy(reference, xv, yv) - 0.15
        assert result.samples_trained <= 4 * len(x) * keep + per


def test_logit_scores_select_what_the_plaintext_recipe_selects() -> None:
    """With exact scores the client's selection is the plaintext recipe's, and in our mode the
    re-packed batches are its batches too: the weights agree after every re-score."""
    per = LAYOUT.samples_per_ciphertext
    x, y = _features(4 * per, 0)
    xv, yv = _features(per, 1)
    cfg = PrivateTrainingConfig(keep_fraction=0.3, epochs=4, rescore_every=2, score="logits")
    client = SimulatedBackend(SLOTS, TOP)
    result = train_private(client, client.server_view(), LAYOUT, cfg, x, y, xv, yv)
    np.testing.assert_allclose(
        result.weights, train_plaintext(LAYOUT, cfg, x, y, xv, yv), atol=1e-3
    )


def test_early_stopping_returns_the_best_weights_not_the_last() -> None:
    per = LAYOUT.samples_per_ciphertext
    x, y = _features(4 * per, 0)
    xv, yv = _features(per, 1)
    cfg = PrivateTrainingConfig(epochs=8, learning_rate=60.0, patience=2)  # overshoots
    client = SimulatedBackend(SLOTS, TOP)
    result = train_private(client, client.server_view(), LAYOUT, cfg, x, y, xv, yv)
    losses = [h["val_loss"] for h in result.history]
    best = int(np.argmin(losses))
    assert best < len(losses) - 1  # the run went on past its best epoch...
    assert result.epochs_run == len(losses) <= best + 1 + cfg.patience  # ...and stopped
    p = exact_softmax(xv @ result.weights)
    returned = float(-np.mean(np.log(p[np.arange(len(yv)), yv])))
    assert returned == pytest.approx(losses[best], abs=1e-3)


def test_private_mode_sends_no_mask_and_heprune_mode_does() -> None:
    per = LAYOUT.samples_per_ciphertext
    x, y = _features(4 * per, 0)
    xv, yv = _features(per, 1)
    sizes = {}
    for mode in ("heprune", "private"):
        cfg = PrivateTrainingConfig(keep_fraction=0.25, mode=mode, epochs=2, rescore_every=1)  # type: ignore[arg-type]
        client = SimulatedBackend(SLOTS, TOP)
        result = train_private(client, client.server_view(), LAYOUT, cfg, x, y, xv, yv)
        sizes[mode] = result.bytes_up_by
        assert ("cwp" in result.seconds_by_component) == (mode == "heprune")
    ct = SimulatedBackend(SLOTS, TOP).ciphertext_bytes
    # HEPrune's server masks the training set: one level above the working level, labels at
    # level 3. Our mode's (scored by HEFS here) enters at the working level, labels at 2, as
    # re-packed samples do; validation, only scored by logits, at level 1 without labels.
    maskable = 16 * ct * (TOP + 1) + ct * 4
    working = 16 * ct * TOP + ct * 3
    validation = 16 * ct * 2
    assert sizes["heprune"]["mask"] == (len(x) + 7) // 8 and "repack" not in sizes["heprune"]
    assert "mask" not in sizes["private"]
    # Both selections send one ciphertext of kept samples in our mode: the random first one
    # and the scored second one.
    assert sizes["private"]["repack"] == 2 * working
    assert sizes["heprune"]["data"] == 4 * maskable + validation
    assert sizes["private"]["data"] == 4 * working + validation


def test_scoring_by_logits_uploads_the_set_at_level_one_without_labels() -> None:
    """Our mode with logit scores: the full set is only ever scored, so it goes up at level 1
    and without labels (a tenth of the bytes); the kept samples follow at the working level.
    The run still selects and trains exactly as the plaintext recipe does."""
    per = LAYOUT.samples_per_ciphertext
    x, y = _features(4 * per, 0)
    xv, yv = _features(per, 1)
    cfg = PrivateTrainingConfig(
        keep_fraction=0.25, mode="private", score="logits", epochs=2, rescore_every=1
    )
    client = SimulatedBackend(SLOTS, TOP)
    result = train_private(client, client.server_view(), LAYOUT, cfg, x, y, xv, yv)
    ct = client.ciphertext_bytes
    working = 16 * ct * TOP + ct * 3
    assert result.bytes_up_by["data"] == 5 * 16 * ct * 2  # and validation the same way
    assert result.bytes_up_by["repack"] == 2 * working
    reference = train_plaintext(LAYOUT, cfg, x, y, xv, yv)
    np.testing.assert_allclose(result.weights, reference, atol=1e-3)


def test_a_batch_without_labels_cannot_train() -> None:
    sim = SimulatedBackend(SLOTS, TOP)
    x, y, _, _ = _problem(6)
    ledger = Ledger()
    owner = DataOwner(sim, sim, LAYOUT, PrivateTrainingConfig(), ledger)
    (batch,) = owner.encrypt_samples(x, y, with_owners=False, use="logits")
    assert batch.labels is None and sim.level(batch.xs[0]) == 1
    trainer = TrainingServer(sim, LAYOUT, APPROX, ledger)
    d = [sim.encrypt(a, TOP - 1) for a in LAYOUT.weight_diagonals(np.zeros((16, 10)))]
    v = [sim.encrypt(a, 1) for a in LAYOUT.weight_diagonals(np.zeros((16, 10)))]
    with pytest.raises(InputError, match="holds no labels"):
        trainer.step(batch, d, v, PrivateTrainingConfig())


def test_the_server_side_must_not_decrypt() -> None:
    x, y = _features(10, 0)
    sim = SimulatedBackend(SLOTS, TOP)
    with pytest.raises(InputError, match="server's backend can decrypt"):
        train_private(sim, sim, LAYOUT, PrivateTrainingConfig(), x, y, x, y)
    with pytest.raises(InputError, match="only the client"):
        sim.server_view().decrypt(sim.encrypt(np.zeros(SLOTS), 1))


def test_softmax_ranges_beyond_what_the_degrees_hold_are_refused() -> None:
    assert SoftmaxApprox(10, 16, 2.0).worst_error() < 1e-5
    with pytest.raises(InputError, match="lower logit_bound"):
        SoftmaxApprox(10, 16, 4.0)


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError, match="keep_fraction"):
        PrivateTrainingConfig(keep_fraction=0.0)
    with pytest.raises(InputError, match="mode"):
        PrivateTrainingConfig(mode="leaky")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="score must be one of"):
        PrivateTrainingConfig(score="entropy")  # type: ignore[arg-type]
    x, y = _features(10, 0)
    sim = SimulatedBackend(SLOTS, TOP)
    server = sim.server_view()
    with pytest.raises(InputError, match="norm"):
        train_private(sim, server, LAYOUT, PrivateTrainingConfig(), 2 * x, y, x, y)
    with pytest.raises(InputError, match="validation feature"):
        train_private(sim, server, LAYOUT, PrivateTrainingConfig(), x, y, 2 * x, y)
    with pytest.raises(InputError, match="exactly one label"):
        train_private(sim, server, LAYOUT, PrivateTrainingConfig(), x, y[:5], x, y)
    with pytest.raises(InputError, match="both hold samples"):
        train_private(sim, server, LAYOUT, PrivateTrainingConfig(), x, y, x[:0], y[:0])
    with pytest.raises(InputError, match="do not fit"):
        LAYOUT.rotated_features(np.zeros((LAYOUT.samples_per_ciphertext + 1, 16)))
