"""Cost-aware sub-block pruning: prices from the lowered program, measured damages,
ciphertext units, and the Algorithm 1 loop."""

from __future__ import annotations

import collections
import copy
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fheprune.errors import InputError
from fheprune.layouts.channels import ChannelPacking
from fheprune.models.zoo import LeNetLike
from fheprune.pruning import apply_masks
from fheprune.pruning.base import Masks
from fheprune.pruning.cost_aware import (
    CiphertextUnit,
    _masks_without_cts,
    _savings,
    _score,
    _select,
    cost_aware_prune,
    unit_scores,
)
from fheprune.pruning.rotation_aware import (
    LayerUnits,
    RotationAwareResult,
    _start_masks,
    alive_units,
    is_unit_aligned,
    model_units,
)
from fheprune.runtime.conv_lowering import (
    MapLinearOp,
    build_program,
    lower_conv_model,
    term_units,
)
from fheprune.runtime.cost import layer_seconds, reference_timings
from fheprune.runtime.params import counting_parameters
from fheprune.training.trainer import Regularizer

torch.set_num_threads(2)

SLOTS = 512  # 8x8 blocks (12x12 + padding 2, split in 2x2 sub-maps): 8 per ciphertext
SHAPE = (1, 12, 12)


def tiny(groups: int = 1, seed: int = 0) -> LeNetLike:
    """conv1 writes 16 channels into 2 ciphertexts (per sub-map; pool1 adds the four), so
    conv2 has two ciphertext units."""
    torch.manual_seed(seed)
    return LeNetLike(image_size=12, channels=(16, 8), hidden=8, conv2_groups=groups)


def batch(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def dead_units(model: nn.Module, units: dict[str, LayerUnits]) -> int:
    """Units whose weights are all zero, over every layer."""
    return sum(
        int((~alive_units(model.get_submodule(n).weight, u)).sum()) for n, u in units.items()
    )


class Harness:
    """No training (masks applied); accuracy = ``score(model)``."""

    def __init__(self, score: Callable[[nn.Module], float]) -> None:
        self.score = score
        self.epochs: list[int] = []

    def evaluate(self, model: nn.Module) -> float:
        return self.score(model)

    def train(
        self,
        model: nn.Module,
        *,
        epochs: int,
        masks: Masks | None = None,
        regularizer: Regularizer | None = None,
    ) -> None:
        del regularizer
        self.epochs.append(epochs)
        if masks:
            apply_masks(model, masks)


def test_reference_prices_grow_with_the_level_and_hoisting_is_cheaper() -> None:
    timings = reference_timings(8)
    for op in ("mul_plain", "rotate", "rotate_hoisted", "multiply", "relinearize", "rescale"):
        by_level = [timings.get(op, level) for level in range(9)]
        assert all(b > a for a, b in itertools.pairwise(by_level)), op
    for level in range(9):
        mulp, hoisted, rotate = (
            timings.get(op, level) for op in ("mul_plain", "rotate_hoisted", "rotate")
        )
        assert mulp < hoisted < rotate
    # N log N between rings; the same inputs give the same prices (no measurement).
    small = reference_timings(8, 8192)
    assert small.get("rotate", 3) == pytest.approx(timings.get("rotate", 3) * 13 / 28)
    assert reference_timings(8).seconds == timings.seconds
    with pytest.raises(InputError, match="power-of-two"):
        reference_timings(3, 1000)


def _program(model: nn.Module) -> Any:
    spec = lower_conv_model(copy.deepcopy(model).double().eval(), SLOTS, SHAPE)
    return spec, build_program(spec, counting_parameters(spec.levels, SLOTS))


def test_unit_prices_are_the_programs_terms_and_rotations() -> None:
    """Every term of the C++ program's split carries one product and an equal share of each
    rotation it uses, at the program's levels: a layer's unit prices add up to its products
    and rotations, and one unit's price is its terms' by hand."""
    model = tiny()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")
    prices, ct_prices = _savings(model, units, SLOTS, SHAPE)
    spec, program = _program(model)
    timings = reference_timings(int(program.levels), 2 * SLOTS)
    cost = {c["name"]: c for c in program.cost()}
    splits = {d["name"]: d for d in program.map_layers()}
    for name in units:
        seconds = layer_seconds(cost[name], timings)
        paid = sum(seconds.get(op, 0.0) for op in ("mul_plain", "rotate", "rotate_hoisted"))
        assert float(prices[name].sum()) == pytest.approx(paid, rel=1e-9)
    # conv2's position unit (i, p): the terms reading input i at kernel position p. By hand,
    # from the program's split: each term one product, plus 1/k of a rotation k terms share.
    op = next(o for o in spec.ops if isinstance(o, MapLinearOp) and o.name == "conv2")
    owner = dict(
        zip(zip(op.out_ct, op.in_ct, op.shift, strict=True), term_units(spec, op), strict=True)
    )
    split = splits["conv2"]["split"]
    count = {op_name: sum(by.values()) for op_name, by in cost["conv2"]["ops_by_level"].items()}
    each = {k: v / count[k] for k, v in layer_seconds(cost["conv2"], timings).items()}
    babies = collections.Counter((i, b) for _, i, _, b, _ in split if b)
    giants = collections.Counter((o, g) for o, _, _, _, g in split if g)
    u = units["conv2"]
    for j in (0, 1, 26):
        mine = [t for t in split if owner[t[:3]] == u.layout_ids[j]]
        assert mine
        expected = sum(
            each["mul_plain"]
            + (each["rotate_hoisted"] / babies[(i, b)] if b else 0.0)
            + (each["rotate"] / giants[(o, g)] if g else 0.0)
            for o, i, _, b, g in mine
        )
        assert float(prices["conv2"][j]) == pytest.approx(expected, rel=1e-9)
    # conv2 reads two ciphertexts of conv1, fc1 one of conv2 (a ciphertext unit that can
    # never go: a layer keeps one input); each costs more than all its units together.
    assert set(ct_prices) == {
        CiphertextUnit("conv2", "conv1", 0),
        CiphertextUnit("conv2", "conv1", 1),
        CiphertextUnit("fc1", "conv2", 0),
    }
    for cu, price in ct_prices.items():
        per_ct = 25 if cu.consumer == "conv2" else SLOTS
        own = torch.from_numpy(units[cu.consumer].layout_ids // per_ct == cu.ct)
        assert price > float(prices[cu.consumer][own].sum())
    # The two inputs of conv2 are alike: the whole program's non-linear work (squares, pools)
    # before conv2 is split between them.
    between = sum(sum(layer_seconds(cost[n], timings).values()) for n in ("act1", "pool1"))
    both = sum(p for cu, p in ct_prices.items() if cu.consumer == "conv2")
    conv1 = sum(layer_seconds(cost["conv1"], timings).get(k, 0.0) for k in ("mul_plain", "rotate"))
    assert both > between + conv1


def test_scores_are_measured_damage_per_price() -> None:
    model = tiny().eval()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")
    masks = _start_masks(model, None)
    x, y = batch()
    scores, ct_scores = unit_scores(model, masks, units, (x, y), slots=SLOTS, input_shape=SHAPE)
    prices, ct_prices = _savings(model, units, SLOTS, SHAPE)
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
        for name, j in (("conv1", 3), ("conv2", 7), ("fc1", 2)):
            probe = copy.deepcopy(model)
            w = probe.get_submodule(name).weight
            w.masked_fill_(units[name].ids == j, 0.0)
            damage = float(F.cross_entropy(probe(x), y)) - base
            assert float(scores[name][j]) == pytest.approx(_score(damage, float(prices[name][j])))
        cu = CiphertextUnit("conv2", "conv1", 1)
        probe = copy.deepcopy(model)
        w = probe.get_submodule("conv2").weight
        w.masked_fill_(
            torch.from_numpy(units["conv2"].layout_ids // 25 == 1)[units["conv2"].ids], 0
        )
        damage = float(F.cross_entropy(probe(x), y)) - base
        assert ct_scores[cu] == pytest.approx(_score(damage, ct_prices[cu]))
    # A dead unit is never a candidate.
    masks["fc1"] &= units["fc1"].ids != 2
    scores, _ = unit_scores(model, masks, units, (x, y), slots=SLOTS, input_shape=SHAPE)
    assert scores["fc1"][2] == float("inf")


def test_a_pruned_ciphertext_unit_removes_its_producer_work() -> None:
    model = tiny()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")
    masks = _masks_without_cts(
        model,
        _start_masks(model, None),
        units,
        [CiphertextUnit("conv2", "conv1", 0)],
        SLOTS,
        SHAPE,
    )
    # conv2 no longer reads input ciphertext 0 (all its positions), conv1 no longer writes
    # the channels that live there (channels 0 to 7: eight lanes per ciphertext).
    assert not bool(alive_units(masks["conv2"], units["conv2"])[:25].any())
    assert bool(alive_units(masks["conv2"], units["conv2"])[25:].all())
    assert not bool(masks["conv1"][:8].any()) and bool(masks["conv1"][8:].all())
    assert is_unit_aligned(masks["conv2"], units["conv2"])
    apply_masks(model, masks)
    spec = lower_conv_model(copy.deepcopy(model).double(), SLOTS, SHAPE)
    conv1 = next(op for op in spec.ops if op.name == "conv1")
    # Ciphertext 1 of each of the four sub-maps that pool1 adds into conv2's input 1.
    assert isinstance(conv1, MapLinearOp) and set(conv1.out_ct.tolist()) == {1, 3, 5, 7}


def test_the_loop_prunes_whole_units_until_the_budget() -> None:
    model = tiny()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")
    total = sum(u.count for u in units.values())

    def score(m: nn.Module) -> float:  # one point per ten dead units
        return 1.0 - 0.001 * dead_units(m, units)

    harness = Harness(score)
    result = cost_aware_prune(
        model,
        harness,
        batch(),
        budget=0.02,
        per_iteration=8,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    dead = sum(int((~alive_units(result.masks[n], u)).sum()) for n, u in units.items())
    assert 0 < dead <= 20 < total  # the budget allows 20 dead units, never more
    assert harness.epochs and set(harness.epochs) == {1}  # one fine-tuning epoch a step
    for name, u in units.items():
        assert is_unit_aligned(result.masks[name], u), name
        w = result.model.get_submodule(name).weight.detach()
        assert torch.all(w[~result.masks[name]] == 0), name
    assert not result.history[-1]["accepted"]  # the budget ended it, not a lack of units
    assert np.all(np.diff([h["accuracy"] for h in result.history[1:] if h["accepted"]]) <= 0)


def test_an_over_budget_start_prunes_nothing() -> None:
    model = tiny()
    result = cost_aware_prune(
        model, Harness(lambda m: 0.5), batch(), baseline=0.9, slots=SLOTS, input_shape=SHAPE
    )
    assert all(bool(m.all()) for m in result.masks.values())
    assert len(result.history) == 1


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    """With the whole loss on the teacher (weight 1), training moves the student's outputs
    towards the teacher's, whatever the labels say."""
    from fheprune.data import Dataset
    from fheprune.training import Distillation, TrainConfig, make_loaders, train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(128, 12, 12), dtype=np.uint8)
    ds = Dataset(
        images=images,
        labels=rng.integers(0, 10, 128).astype(np.int64),
        name="r",
        classes=10,
        split="train",
    )
    config = TrainConfig(
        epochs=6, lr=0.01, batch_size=32, val_fraction=0.0, optimizer="adam", scheduler="constant"
    )
    loaders = make_loaders(ds, None, "lenet", config)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    teacher, student = tiny(seed=1).eval(), tiny(seed=2)

    def gap(m: nn.Module) -> float:
        with torch.no_grad():
            return float(
                F.kl_div(F.log_softmax(m(x), 1), F.softmax(teacher(x), 1), reduction="sum")
            )

    before = gap(student)
    train(student, loaders, config, progress=False, distill=Distillation(teacher, weight=1.0))
    assert gap(student) < 0.5 * before
    with pytest.raises(ValueError, match="weight"):
        Distillation(teacher, weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distillation(teacher, temperature=0.0)


def test_coarse_first_takes_a_whole_ciphertext_before_any_small_unit() -> None:
    model = tiny()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")
    harness = Harness(lambda m: 1.0)  # never over budget
    result = cost_aware_prune(
        model,
        harness,
        batch(),
        budget=0.0,
        per_iteration=4,
        max_iterations=2,
        coarse_epochs=3,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    first, second = result.history[1], result.history[2]
    assert first["accepted"] and len(first["ciphertexts"]) == 1 and first["pruned"] == {}
    assert harness.epochs[0] == 3  # the coarse step's own fine-tuning
    ct = int(str(first["ciphertexts"][0]).split(":")[1])
    conv2_alive = alive_units(result.masks["conv2"], units["conv2"])
    own = torch.from_numpy(units["conv2"].layout_ids // 25 == ct)
    assert not bool(conv2_alive[own].any()) and bool(conv2_alive[~own].any())
    # Only one of conv2's two input ciphertexts can go; the fine loop follows.
    assert second["ciphertexts"] == [] and sum(second["pruned"].values()) == 4
    plain = cost_aware_prune(
        model,
        Harness(lambda m: 1.0),
        batch(),
        budget=0.0,
        per_iteration=4,
        max_iterations=1,
        coarse_first=False,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    assert plain.history[1]["pruned"]


def test_a_linear_layer_can_drop_a_whole_input_ciphertext() -> None:
    """conv2's 16 channels fill two phase-packed ciphertexts; dropping fc1's input
    ciphertext 1 masks the fc1 columns of the channels there and those conv2 outputs, and
    the compiled program no longer computes that ciphertext (conv2, act2, pool2)."""
    torch.manual_seed(0)
    model = LeNetLike(image_size=12, channels=(4, 16), hidden=8)
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")
    _, ct_prices = _savings(model, units, SLOTS, SHAPE)
    cu = CiphertextUnit("fc1", "conv2", 1)
    assert cu in ct_prices
    masks = _masks_without_cts(model, _start_masks(model, None), units, [cu], SLOTS, SHAPE)
    spec = lower_conv_model(copy.deepcopy(model).double(), SLOTS, SHAPE)
    assert spec.plan is not None
    conv2_out = spec.plan.layers["conv2"].outputs
    assert isinstance(conv2_out, ChannelPacking) and conv2_out.ciphertexts == 2
    ct, _ = conv2_out.place(np.arange(16))
    in_ct1 = torch.from_numpy(np.asarray(ct) == 1)
    assert not bool(masks["conv2"][in_ct1].any()) and bool(masks["conv2"][~in_ct1].all())
    assert not bool(masks["fc1"][:, in_ct1].any()) and bool(masks["fc1"][:, ~in_ct1].all())
    apply_masks(model, masks)
    pruned = lower_conv_model(copy.deepcopy(model).double(), SLOTS, SHAPE)
    conv2 = next(op for op in pruned.ops if op.name == "conv2")
    assert isinstance(conv2, MapLinearOp) and set(conv2.out_ct.tolist()) == {0}
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    from fheprune.runtime.conv_lowering import simulate

    got = pruned.unpack(simulate(pruned, pruned.pack(x.numpy())))
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)


def test_with_client_shifts_a_first_layer_position_saves_products_only() -> None:
    model = tiny()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")
    plain, _ = _savings(model, units, SLOTS, SHAPE)
    shifted, _ = _savings(model, units, SLOTS, SHAPE, client_shifts=True)
    mulp = reference_timings(7, 2 * SLOTS).get("mul_plain", 7)
    # One product per output ciphertext (2 per sub-map, 4 sub-maps), no server rotation.
    torch.testing.assert_close(shifted["conv1"], torch.full((25,), 8 * mulp, dtype=torch.float64))
    # On the server, every position but (0, 0) shares in conv1's rotations.
    assert float(plain["conv1"][0]) == pytest.approx(8 * mulp)
    assert bool((plain["conv1"][1:] > shifted["conv1"][1:]).all())
    torch.testing.assert_close(plain["conv2"], shifted["conv2"])


def test_select_counts_a_taken_ciphertext_against_the_layer() -> None:
    """A step that takes a whole ciphertext cannot also take the rest of the layer: conv2's
    2 ciphertexts x 9 positions, ciphertext 0 scoring lowest and every position of
    ciphertext 1 next, leave min_alive units of ciphertext 1."""
    alive = {"conv2": torch.ones(18, dtype=torch.bool)}
    scores = {"conv2": torch.zeros(18, dtype=torch.float64)}
    scores["conv2"][:9] = 5.0  # ciphertext 0's own positions: last
    cu0, cu1 = CiphertextUnit("conv2", "conv1", 0), CiphertextUnit("conv2", "conv1", 1)
    members = {cu0: torch.arange(18) < 9, cu1: torch.arange(18) >= 9}
    dead, cts = _select(scores, {cu0: -1.0, cu1: 3.0}, alive, 12, 2, members)
    assert cts == [cu0]
    assert int(dead["conv2"].sum()) == 7  # 18 - 9 (ciphertext 0) - 2 (the floor)
    assert not bool(dead["conv2"][:9].any())  # never counted twice


def test_scores_rank_harmless_units_first_by_saving() -> None:
    assert _score(-0.1, 3.0) < _score(-0.1, 1.0) < _score(0.0, 0.5) < _score(0.01, 100.0)
    assert _score(float("nan"), 1.0) == float("inf")
    assert _score(0.2, 2.0) == pytest.approx(0.1)


def test_a_rejected_ciphertext_is_not_proposed_again() -> None:
    """Accuracy drops only when conv2 loses a whole input ciphertext: the coarse phase tries
    each once, and the fine loop, which could propose one again, never does."""
    model = tiny()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")

    def score(m: nn.Module) -> float:
        alive = alive_units(m.get_submodule("conv2").weight, units["conv2"])
        return 0.0 if not bool(alive[:25].any()) or not bool(alive[25:].any()) else 1.0

    result = cost_aware_prune(
        model,
        Harness(score),
        batch(),
        budget=0.01,
        per_iteration=4,
        max_iterations=12,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    proposed = [c for h in result.history[1:] for c in h["ciphertexts"]]
    assert len(proposed) == len(set(proposed)) >= 1
    assert all(h["accepted"] for h in result.history[1:] if not h["ciphertexts"])


def test_polish_keeps_a_final_fine_tuning_only_if_it_does_not_hurt() -> None:
    from fheprune.pruning.cost_aware import polish

    model = tiny()
    base = cost_aware_prune(
        model,
        Harness(lambda m: 1.0),
        batch(),
        budget=0.0,
        max_iterations=1,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    better = Harness(lambda m: 1.0)
    kept = polish(base, better, 2)
    assert better.epochs == [2] and kept.model is not base.model
    assert kept.history[-1] == {"polish_epochs": 2, "accuracy": 1.0, "accepted": True}
    for name, mask in kept.masks.items():
        assert torch.all(kept.model.get_submodule(name).weight.detach()[~mask] == 0)
    worse = polish(base, Harness(lambda m: 0.5), 2)
    assert worse.model is base.model and worse.accuracy == base.accuracy
    assert not worse.history[-1]["accepted"]
    assert polish(base, Harness(lambda m: 0.0), 0) is base

    class Diverging(Harness):
        """A training run that blows up, as TrainerHarness reports it (weights all NaN)."""

        def train(self, model: nn.Module, **kwargs: object) -> None:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    # Scored no worse than the result (a tie), the diverged run is still not kept.
    diverged = polish(base, Diverging(lambda m: base.accuracy), 2)
    assert diverged.model is base.model and not diverged.history[-1]["accepted"]


def test_rounds_spend_the_budget_a_recovery_frees() -> None:
    from fheprune.pruning.cost_aware import prune_in_rounds

    model = tiny()
    units = model_units(model, slots=SLOTS, input_shape=SHAPE, layers="all")

    def dead(m: nn.Module) -> int:
        return dead_units(m, units)

    def score(m: nn.Module) -> float:  # a point per ten dead units, less what recovery won
        return 1.0 - 0.001 * (dead(m) - getattr(m, "credit", 0))

    class Recovery(Harness):
        """A long fine-tuning that wins back half of the damage done so far."""

        def __init__(self, share: float) -> None:
            super().__init__(score)
            self.share = share

        def train(self, model: nn.Module, **kwargs: Any) -> None:
            super().train(model, **kwargs)
            model.credit = int(self.share * dead(model))

    saved: dict[int, RotationAwareResult] = {}
    options = {"budget": 0.02, "baseline": 1.0, "per_iteration": 4}
    one = prune_in_rounds(
        model,
        Harness(score),
        Recovery(0.5),
        batch(),
        rounds=1,
        recovery_epochs=5,
        slots=SLOTS,
        input_shape=SHAPE,
        **options,
    )
    tune, recovery = Harness(score), Recovery(0.5)
    two = prune_in_rounds(
        model,
        tune,
        recovery,
        batch(),
        rounds=2,
        recovery_epochs=5,
        save_round=lambda r, p: saved.__setitem__(r, p),
        slots=SLOTS,
        input_shape=SHAPE,
        **options,
    )
    assert 0 < dead(one.model) <= 20 < dead(two.model) <= 30  # the recovery freed ten more
    assert recovery.epochs == [5, 5] and set(saved) == {1, 2}
    first = saved[1].masks
    for name, mask in first.items():
        assert not bool((~mask & two.masks[name]).any()), name  # round 2 kept round 1's zeros
    assert two.history[0] == {"round": 2} and two.history[-1]["accepted"]  # recovery kept
    assert dead(model) == 0  # the caller's model is untouched

    # A rerun resumes from the saved stages (no pruning), and a round that cannot prune
    # anything more (no recovery credit) ends the rounds early.
    again, again_recovery = Harness(score), Recovery(0.5)
    resumed = prune_in_rounds(
        model,
        again,
        again_recovery,
        batch(),
        rounds=2,
        recovery_epochs=5,
        load_round=saved.get,
        slots=SLOTS,
        input_shape=SHAPE,
        **options,
    )
    assert again.epochs == [] and again_recovery.epochs == [5]  # only the last recovery
    assert dead(resumed.model) == dead(two.model)
    stalled: dict[int, RotationAwareResult] = {}
    prune_in_rounds(
        model,
        Harness(score),
        Recovery(0.0),
        batch(),
        rounds=3,
        recovery_epochs=5,
        save_round=lambda r, p: stalled.__setitem__(r, p),
        slots=SLOTS,
        input_shape=SHAPE,
        **options,
    )
    assert set(stalled) == {1, 2}
    with pytest.raises(ValueError, match="rounds"):
        prune_in_rounds(model, tune, recovery, batch(), rounds=0)


def test_the_combined_recipe_halves_g_until_the_warm_model_fits_and_caches_rounds() -> None:
    """``combined_cost_aware`` (our conv method, in the package): with a budget no warmed-up
    model meets, G halves from its start down to 2 and that network is pruned anyway; a
    cached first round skips the warm-up and keeps its G."""
    from toys import random_image_harness

    from fheprune.pruning.cost_aware import CostAwareRecipe, combined_cost_aware
    from fheprune.training import TrainConfig

    config = TrainConfig(epochs=1, lr=0.01, batch_size=32, val_fraction=0.25, scheduler="constant")
    harness = random_image_harness(config)
    asked: list[int] = []

    def group_model(g: int) -> nn.Module:
        asked.append(g)
        return tiny(groups=g)

    recipe = CostAwareRecipe(warmup_epochs=1, rounds=1, recovery_epochs=1, max_iterations=1)
    assert recipe.extra_epochs == 2
    saved: dict[int, RotationAwareResult] = {}
    kwargs: dict[str, Any] = {
        "g_start": 8,
        "budget": 0.0,  # nothing fits (no accuracy reaches 2): G goes 8 -> 4 -> 2
        "baseline": 2.0,
        "slots": SLOTS,
        "recipe": recipe,
    }
    result = combined_cost_aware(
        tiny(),
        group_model,
        harness,
        harness,
        batch(),
        save_round=lambda r, p: saved.__setitem__(r, p),
        **kwargs,
    )
    assert asked == [8, 4, 2] and result.groups == 2
    assert result.method == "combined-cost-aware"
    assert result.history[0] == {"base": "group-2", "warmup_epochs": 1}
    assert set(saved) == {1}
    asked.clear()
    again = combined_cost_aware(
        tiny(), group_model, harness, harness, batch(), load_round=saved.get, **kwargs
    )
    assert asked == [2] and again.groups == 2  # from the cached stage: no warm-up search
