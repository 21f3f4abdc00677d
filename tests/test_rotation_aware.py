"""Rotation-aware pruning (fheprune.pruning.rotation_aware) on the multi-channel conv layout.

Tiny LeNetLike networks (12x12 inputs, widths 16 / 8) on a 512-slot ring. conv1 is pooled by
2, so the default (compact) layout splits the input and conv1's output into 2x2 sub-maps of
8x8 blocks, 8 channel blocks per ciphertext (G_base = 8); conv2 reads the compact pooled map
from two ciphertexts and writes its 8 channels (2x2 at dilation 1, unphased) into one, so
every unit kind has real structure. Tests of the phase-packed outputs use the dilated layout
(``compact=False``: 16x16 blocks, 2 per ciphertext). Methods run against a fake harness (no
training, an accuracy that is a known function of the pruned units) so the loops are checked
exactly; one test runs the real trainer for one epoch on random data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping

import numpy as np
import pytest

pytest.importorskip("torch", reason="the models and the trainer need torch")
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from toys import random_image_harness

from fheprune.data import Dataset
from fheprune.layouts import layer_weights
from fheprune.layouts.channels import (
    ChannelPacking,
    LayoutError,
    UnitKind,
    _chain,
    _plan,
    dense_products,
    layer_units,
    plan_layout,
)
from fheprune.models import HEFNet, LeNetLike, TrainablePoly, build_model
from fheprune.pruning.base import Masks, apply_masks, prune_count
from fheprune.pruning.rotation_aware import (
    PTM_COST,
    GroupLasso,
    LayerUnits,
    RotationAwareResult,
    UnitScope,
    alive_unit_counts,
    alive_units,
    artemis_prune,
    channel_masks,
    channel_prune,
    g_base,
    group_weights,
    grouped_builder,
    grouped_from_dense,
    he_group_conv,
    hunter_prune,
    in_group_mask,
    is_unit_aligned,
    magnitude_prune,
    masks_without_units,
    model_units,
    select_units,
    spencnn_prune,
    subblock_prune,
    unit_mask,
    unit_norms,
)
from fheprune.runtime.conv_lowering import MapLinearOp, lower_conv_model, term_units
from fheprune.training import TrainConfig, make_loaders, train
from fheprune.training.trainer import Regularizer

torch.set_num_threads(2)

SLOTS = 512  # 8x8 blocks (12x12 + padding 2, split in 2x2 sub-maps), 8 per ciphertext
SHAPE = (1, 12, 12)


def tiny(groups: int = 1, seed: int = 0) -> LeNetLike:
    """conv1's 16 channels fill two ciphertexts per sub-map, so conv2 reads two."""
    torch.manual_seed(seed)
    return LeNetLike(image_size=12, channels=(16, 8), hidden=8, conv2_groups=groups)


def conv(model: nn.Module, name: str = "conv2") -> nn.Conv2d:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Conv2d)
    return module


def units_of(
    model: nn.Module, kind: UnitKind = "position", layers: UnitScope = "all"
) -> dict[str, LayerUnits]:
    return model_units(model, slots=SLOTS, input_shape=SHAPE, kind=kind, layers=layers)


def dead_units(model: nn.Module, units: Mapping[str, LayerUnits]) -> int:
    """Units whose weights are all zero in the model."""
    return sum(
        int((~alive_units(dict(model.named_modules())[n].weight, u)).sum())
        for n, u in units.items()
    )


class FakeHarness:
    """No training (masks are applied, weights nudged); accuracy = ``score(model)``."""

    def __init__(self, score: Callable[[nn.Module], float], *, moves: bool = True) -> None:
        self.score = score
        self.moves = moves
        self.trained: list[tuple[int, Masks | None, Regularizer | None]] = []

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
        self.trained.append((epochs, masks, regularizer))
        with torch.no_grad():
            if not self.moves:
                return apply_masks(model, masks or {})
            for p in model.parameters():
                p.add_(0.001 * torch.sign(p))  # "training" moves weights; masks must hold
        if masks:
            apply_masks(model, masks)


def unit_counting_harness(model: nn.Module, per_unit: float, *, moves: bool = True) -> FakeHarness:
    units = units_of(model)
    return FakeHarness(lambda m: 1.0 - per_unit * dead_units(m, units), moves=moves)


def bisection(total: int, budget: float, per_fraction: float, steps: int = 5) -> list[float]:
    """Reference: the fractions a bisection probes when accuracy = 1 - per_fraction * (pruned
    items / total) with ``prune_count`` rounding; the last accepted one is the answer."""
    lo, hi, probes = 0.0, 1.0, []
    for _ in range(steps):
        mid = (lo + hi) / 2
        probes.append(mid)
        if per_fraction * prune_count(mid, total) / total <= budget:
            lo = mid
        else:
            hi = mid
    return probes


def best_fraction(history: list[dict[str, object]]) -> float:
    return max(float(h["fraction"]) for h in history if h["accepted"])  # type: ignore[arg-type]


def assert_whole_units(result: RotationAwareResult, units: Mapping[str, LayerUnits]) -> None:
    """Masks prune whole units of ``units`` only, every other layer is untouched, and the
    returned model holds exactly zero on every pruned weight."""
    modules = dict(result.model.named_modules())
    for name, mask in result.masks.items():
        w = modules[name].weight.detach()
        assert torch.all(w[~mask] == 0), name
        if name in units:
            assert is_unit_aligned(mask, units[name]), name
        else:
            assert bool(mask.all()), name


# ------------------------------------------------------------------------------- units


def test_units_are_the_layout_units_relabelled() -> None:
    model = tiny()
    plan = plan_layout(model, SLOTS, SHAPE)
    kinds: tuple[UnitKind, ...] = ("position", "diagonal")
    for kind in kinds:
        for name, u in units_of(model, kind).items():
            raw = layer_units(plan, name, kind)
            assert np.array_equal(u.layout_ids[u.ids.numpy()], raw)
            assert u.count == np.unique(raw).size
            assert u.sizes.tolist() == np.bincount(u.ids.numpy().ravel()).tolist()
            assert u.kind == ("fc" if name.startswith("fc") else kind)
    assert set(units_of(model, layers="conv")) == {"conv1", "conv2"}


@pytest.mark.parametrize(
    ("compact", "conv2_shape", "conv1_shape"),
    [
        # 8x8 blocks: 8 lanes; conv2 reads 16 / 8 = 2 ciphertexts and writes 8 / 8 = 1 at
        # dilation 1 (nothing to phase-pack); conv1 writes 16 / 8 = 2 per sub-map, 2x2 of them
        (True, (2, 1, 8, 1), (2, 4)),
        # 16x16 blocks: 2 lanes; conv2 reads 16 / 2 = 8 ciphertexts and writes its 8 outputs at
        # dilation 2 with 2x2 phases, 2 lanes * 4 phases = 8 per ciphertext: 1
        (False, (8, 1, 2, 4), (8, 1)),
    ],
)
def test_rotation_counts_match_the_layout_formulas(
    compact: bool, conv2_shape: tuple[int, int, int, int], conv1_shape: tuple[int, int]
) -> None:
    """Sum of the rotations over all units = the dense layer's rotations (DESIGN.md):
    inner n_in*(f^2-1) for position units; outer n_out*(lanes*phases-1) for diagonal units
    (in the dilated layout conv2's outputs are phase-packed: one outer rotation per (offset,
    phase)). A split layer (conv1 in the compact layout) repeats every term per sub-map."""
    model = tiny()
    plan = plan_layout(model, SLOTS, SHAPE, compact=compact)
    pos = model_units(model, kind="position", plan=plan)
    diag = model_units(model, kind="diagonal", plan=plan)
    conv2 = plan.layers["conv2"]
    assert isinstance(conv2.inputs, ChannelPacking)
    assert isinstance(conv2.outputs, ChannelPacking)
    n_in, n_out = conv2.inputs.ciphertexts, conv2.outputs.ciphertexts
    lanes, phases = conv2.inputs.lanes, conv2.outputs.phases
    assert (n_in, n_out, lanes, phases) == conv2_shape
    assert float(pos["conv2"].rotations.sum()) == n_in * (25 - 1)
    assert float(diag["conv2"].rotations.sum()) == pytest.approx(n_out * (lanes * phases - 1))
    # position unit (i, p): one inner rotation unless p = 0 (the unrotated input)
    p = pos["conv2"].layout_ids % 25
    assert pos["conv2"].rotations.tolist() == [0.0 if q == 0 else 1.0 for q in p]
    # diagonal unit (o, i, r): 1 / n_in of output o's outer rotations for offset r
    r = diag["conv2"].layout_ids % lanes
    assert diag["conv2"].rotations.tolist() == pytest.approx(
        [(phases - 1 if q == 0 else phases) / n_in for q in r]
    )
    # conv1 reads a replicated one-channel input and writes unphased: no outer rotation
    assert float(diag["conv1"].rotations.sum()) == 0.0
    # plaintexts: a position unit spans every (output ct, channel offset, phase); a diagonal
    # unit every tap and phase
    assert pos["conv2"].plaintexts.tolist() == [n_out * lanes * phases] * n_in * 25
    assert diag["conv2"].plaintexts.tolist() == [25 * phases] * diag["conv2"].count
    # conv1 (replicated input: channel offset 0 only) writes one plaintext per (output base
    # ciphertext, output sub-map): a position unit spans all of them, a diagonal unit (one
    # per output base ciphertext) every tap of every sub-map
    conv1 = plan.layers["conv1"].outputs
    assert isinstance(conv1, ChannelPacking)
    out1, submaps = conv1.base_ciphertexts, conv1.submaps
    assert (out1, submaps) == conv1_shape
    assert pos["conv1"].plaintexts.tolist() == [out1 * submaps] * 25
    assert diag["conv1"].plaintexts.tolist() == [25 * submaps] * out1
    # fc diagonals: rotation unless k = 0, one plaintext each
    k = pos["fc1"].layout_ids % SLOTS
    assert pos["fc1"].rotations.tolist() == [0.0 if q == 0 else 1.0 for q in k]
    assert pos["fc1"].plaintexts.tolist() == [1] * pos["fc1"].count


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_unit_costs_match_the_lowered_program(compact: bool, in_channels: int) -> None:
    """What the units claim is what the compiler builds (dense weights, every term kept): a
    unit's plaintexts are the terms the lowering gives it (on split layers one per output
    sub-map), the diagonal units' rotations add up to the op's outer rotations (distinct
    (output ct, giant step != 0)) and, on unsplit inputs, the position units' rotations to
    its inner ones (distinct (input ct, baby step != 0)). Three input channels do not
    replicate, so conv1 has channel offsets r != 0 on its split outputs too."""
    torch.manual_seed(0)
    model = LeNetLike(image_size=12, in_channels=in_channels, channels=(16, 8), hidden=8)
    shape = (in_channels, 12, 12)
    spec = lower_conv_model(model.double().eval(), SLOTS, shape, drop_unread=False, compact=compact)
    assert spec.plan is not None
    assert spec.plan.layers["conv1"].outputs.split == (2 if compact else 1)  # type: ignore[union-attr]
    kinds: tuple[UnitKind, ...] = ("position", "diagonal")
    for kind in kinds:
        units = model_units(model, kind=kind, layers="conv", plan=spec.plan)
        for op in spec.ops:
            if not isinstance(op, MapLinearOp) or op.name not in units:
                continue
            u = units[op.name]
            owner = np.searchsorted(u.layout_ids, term_units(spec, op, kind))
            terms = np.bincount(owner, minlength=u.count)
            assert u.plaintexts.tolist() == terms.tolist(), (kind, op.name)
            baby = np.zeros_like(op.shift) if op.baby is None else op.baby
            giant = (op.shift - baby) % SLOTS
            if kind == "diagonal":
                outer = {(int(o), int(g)) for o, g in zip(op.out_ct, giant, strict=True) if g}
                assert float(u.rotations.sum()) == pytest.approx(len(outer)), op.name
            elif spec.plan.layers[op.name].inputs.split == 1:  # type: ignore[union-attr]
                inner = {(int(i), int(b)) for i, b in zip(op.in_ct, baby, strict=True) if b}
                assert float(u.rotations.sum()) == pytest.approx(len(inner)), op.name


def test_group_weights_are_rotations_plus_plaintext_cost() -> None:
    """conv2 (compact layout): 2 input cts, 1 output ct, 8 lanes, no phases; conv1: 2 output
    base cts, each in 2x2 sub-maps."""
    pos, diag = units_of(tiny(), "position"), units_of(tiny(), "diagonal")
    w = group_weights(pos["conv2"]).tolist()
    p = pos["conv2"].layout_ids % 25
    # (i, p): one inner rotation unless p = 0; a plaintext per (output ct, offset): 1 * 8
    assert w == pytest.approx([(0.0 if q == 0 else 1.0) + PTM_COST * 8 for q in p])
    w = group_weights(diag["conv2"], ptm_cost=0.1).tolist()
    r = diag["conv2"].layout_ids % 8
    # (o, i, r): half (2 inputs share it) of o's outer rotation r (none for r = 0); 25 taps
    assert w == pytest.approx([(0.0 if q == 0 else 0.5) + 0.1 * 25 for q in r])
    w = group_weights(pos["conv1"], ptm_cost=0.1).tolist()
    p = pos["conv1"].layout_ids % 25
    # (0, p): a plaintext per (output base ct, output sub-map): 2 * 4
    assert w == pytest.approx([(0.0 if q == 0 else 1.0) + 0.1 * 2 * 4 for q in p])
    assert group_weights(pos["fc2"], ptm_cost=0.0).tolist() == pos["fc2"].rotations.tolist()
    with pytest.raises(ValueError, match="ptm_cost"):
        group_weights(pos["fc2"], ptm_cost=-1.0)


def test_outer_rotations_vanish_at_g_base() -> None:
    # G_base = lanes: 8 of the 8x8 blocks of the compact layout (2 of 16x16 dilated); LeNet
    # (28x28, padding 2: 32x32 -> 16x16 sub-map blocks) at 8192 slots: 32 (8 dilated)
    assert g_base(tiny(), SLOTS, SHAPE) == 8
    assert g_base(LeNetLike(), 8192) == 32
    assert plan_layout(LeNetLike(), 8192, (1, 28, 28), compact=False).input.lanes == 8
    grouped = tiny(groups=8)
    diag = units_of(grouped, "diagonal")
    # every channel offset is r = 0 and the outputs are unphased: no outer rotation at all
    conv2_diag = diag["conv2"]
    assert bool(np.all(conv2_diag.layout_ids % 8 == 0))
    assert float(conv2_diag.rotations.sum()) == 0.0
    assert conv2_diag.count == units_of(tiny(), "diagonal")["conv2"].count // 8
    # dilated layout at its G_base = 2: only the phase shifts of the packed outputs remain
    dilated = tiny(groups=2)
    plan = plan_layout(dilated, SLOTS, SHAPE, compact=False)
    assert plan.input.lanes == 2
    phases = plan.layers["conv2"].outputs.phases  # type: ignore[union-attr]
    assert phases == 4
    conv2_diag = model_units(dilated, kind="diagonal", plan=plan)["conv2"]
    assert float(conv2_diag.rotations.sum()) == pytest.approx(phases - 1)
    dense_plan = plan_layout(tiny(), SLOTS, SHAPE, compact=False)
    dense_count = model_units(tiny(), kind="diagonal", plan=dense_plan)["conv2"].count
    assert conv2_diag.count == dense_count // 2


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), zero_units=st.lists(st.integers(0, 49), max_size=5))
def test_unit_norms_match_the_definitions(seed: int, zero_units: list[int]) -> None:
    u = units_of(tiny())["conv2"]
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(u.ids.shape, generator=gen, dtype=torch.float64)
    for j in zero_units:
        w[u.ids == j] = 0
    got = {n: unit_norms(w, u, n) for n in ("l1", "l2", "avg_l2", "mean_abs", "rms")}
    for j in range(u.count):
        entries = w[u.ids == j]
        l2 = math.sqrt(float((entries**2).sum()))
        size = entries.numel()
        assert float(got["l1"][j]) == pytest.approx(float(entries.abs().sum()))
        assert float(got["l2"][j]) == pytest.approx(l2)
        assert float(got["avg_l2"][j]) == pytest.approx(l2 / size)  # SpENCNN importance
        assert float(got["mean_abs"][j]) == pytest.approx(float(entries.abs().sum()) / size)
        assert float(got["rms"][j]) == pytest.approx(l2 / math.sqrt(size))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_unit_masks_round_trip(data: st.DataObject) -> None:
    for name, u in units_of(tiny(), "diagonal").items():
        alive = torch.tensor(data.draw(st.lists(st.booleans(), min_size=u.count, max_size=u.count)))
        mask = unit_mask(u, alive)
        assert mask.shape == u.ids.shape and mask.dtype == torch.bool
        assert torch.equal(alive_units(mask, u), alive), name
        assert is_unit_aligned(mask, u)
        assert int(mask.sum()) == int(u.sizes[alive].sum())
        # weights: a unit is alive iff one of its weights is non-zero
        assert torch.equal(alive_units(mask.to(torch.float32) * 3.0, u), alive)
        # one flipped entry of a multi-weight unit breaks the alignment
        j = int(torch.argmax(u.sizes))
        if u.sizes[j] > 1:
            broken = mask.clone()
            first = torch.nonzero(u.ids == j)[0]
            broken[tuple(first.tolist())] = ~broken[tuple(first.tolist())]
            assert not is_unit_aligned(broken, u)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_select_units_is_a_global_lowest_k_with_a_floor(data: st.DataObject) -> None:
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    scores = {
        f"l{i}": torch.tensor(data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))).to(
            torch.float64
        )
        for i, n in enumerate(sizes)
    }
    alive = {
        n: torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s))))
        for n, s in scores.items()
    }
    k = data.draw(st.integers(0, sum(sizes)))
    floor = data.draw(st.integers(1, 2))
    chosen = select_units(scores, alive, k, min_alive=floor)
    # reference: walk (score, layer, index) ascending, respecting the floor
    left = {n: int(a.sum()) for n, a in alive.items()}
    expected = {n: torch.zeros(len(s), dtype=torch.bool) for n, s in scores.items()}
    order = sorted(
        (float(s[j]), li, j)
        for li, (n, s) in enumerate(scores.items())
        for j in range(len(s))
        if alive[n][j]
    )
    names = list(scores)
    taken = 0
    for _, li, j in order:
        if taken == k:
            break
        if left[names[li]] > floor:
            expected[names[li]][j] = True
            left[names[li]] -= 1
            taken += 1
    for n in scores:
        assert torch.equal(chosen[n], expected[n]), n
        assert not bool((chosen[n] & ~alive[n]).any())


def test_masks_without_units_only_ands() -> None:
    model = tiny()
    units = units_of(model)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in layer_weights(model).items()}
    masks["fc2"][0, 0] = False
    dead = {"conv2": torch.zeros(50, dtype=torch.bool)}
    dead["conv2"][[3, 30]] = True
    out = masks_without_units(masks, units, dead)
    assert not bool(out["fc2"][0, 0]) and int((~out["fc2"]).sum()) == 1
    assert torch.equal(alive_units(out["conv2"], units["conv2"]), ~dead["conv2"])
    assert alive_unit_counts(out, units)["conv2"] == (48, 50)


# -------------------------------------------------------------------------- sub-block


def lowest_avg_l2(
    model: nn.Module, units: Mapping[str, LayerUnits], k: int
) -> set[tuple[str, int]]:
    """The k (layer, unit) pairs of lowest ||w_p|| / dim(w_p), by brute force."""
    modules = dict(model.named_modules())
    found = []
    for name, u in units.items():
        w = modules[name].weight.detach()
        for j in range(u.count):
            entries = w[u.ids == j]
            found.append((float(entries.norm()) / entries.numel(), name, j))
    return {(n, j) for _, n, j in sorted(found)[:k]}


def dead_set(masks: Mapping[str, Tensor], units: Mapping[str, LayerUnits]) -> set[tuple[str, int]]:
    return {
        (n, int(j))
        for n, u in units.items()
        for j in torch.nonzero(~alive_units(masks[n], u)).reshape(-1)
    }


@pytest.mark.parametrize(
    ("per_iteration", "backoff", "expected"),
    [(1, True, 3), (2, True, 3), (2, False, 2), (5, False, 0)],
)
def test_subblock_stops_at_the_budget(per_iteration: int, backoff: bool, expected: int) -> None:
    model = tiny()
    units = units_of(model)
    harness = unit_counting_harness(model, 0.01)  # each dead unit costs one point
    result = subblock_prune(
        model,
        harness,
        budget=0.035,
        per_iteration=per_iteration,
        backoff=backoff,
        finetune_epochs=3,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    assert dead_units(result.model, units) == expected
    assert result.baseline_accuracy == 1.0
    assert result.accuracy == pytest.approx(1.0 - 0.01 * expected)
    assert result.degradation <= 0.035
    assert not result.history[-1]["accepted"]  # it stopped on a step over the budget
    assert all(epochs == 3 and masks is not None for epochs, masks, _ in harness.trained)
    assert_whole_units(result, units)
    assert (
        sum(a for a, _ in result.alive_units.values())
        == sum(u.count for u in units.values()) - expected
    )


def test_subblock_prunes_the_least_important_sub_blocks() -> None:
    model = tiny()
    units = units_of(model)
    expected = lowest_avg_l2(model, units, 3)
    # fake training that does not move weights: the ranking is the initial one
    harness = unit_counting_harness(model, 0.01, moves=False)
    result = subblock_prune(model, harness, budget=0.035, slots=SLOTS, input_shape=SHAPE)
    assert dead_set(result.masks, units) == expected


def test_subblock_importance_is_the_average_l2_norm() -> None:
    """All weights equal: ||w_p|| / dim(w_p) = 1/sqrt(size) is lowest for the largest units
    (conv2: 8 outputs x 8 inputs per ciphertext = 64 weights) -- a plain L2 or mean-|w|
    ranking would pick another layer."""
    model = tiny()
    with torch.no_grad():
        for w in layer_weights(model).values():
            w.fill_(1.0)
    units = units_of(model)
    harness = unit_counting_harness(model, 0.01)
    result = subblock_prune(
        model, harness, budget=0.015, max_iterations=1, slots=SLOTS, input_shape=SHAPE
    )
    dead = dead_set(result.masks, units)
    assert len(dead) == 1 and next(iter(dead))[0] == "conv2"


def test_subblock_conv_only_keeps_fc_dense_and_respects_the_floor() -> None:
    model = tiny()
    units = units_of(model, layers="conv")
    harness = FakeHarness(lambda m: 1.0)  # never over budget: prune until the floor
    result = subblock_prune(
        model, harness, budget=0.0, per_iteration=64, layers="conv", slots=SLOTS, input_shape=SHAPE
    )
    assert_whole_units(result, units)
    assert result.alive_units["conv1"][0] == 1 and result.alive_units["conv2"][0] == 1
    assert bool(result.masks["fc1"].all()) and bool(result.masks["fc2"].all())


def test_subblock_with_the_real_trainer() -> None:
    config = TrainConfig(epochs=1, lr=0.01, batch_size=32, val_fraction=0.25, scheduler="constant")
    harness = random_image_harness(config)
    model = tiny()
    units = units_of(model)
    result = subblock_prune(
        model,
        harness,
        budget=1.0,
        per_iteration=7,
        max_iterations=2,
        finetune_epochs=1,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    assert dead_units(result.model, units) == 14
    assert_whole_units(result, units)
    assert 0.0 < result.weight_sparsity < 1.0
    assert len(result.to_dict()["history"]) == 2


# -------------------------------------------------------------------------- HE-group


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_grouped_conversion_keeps_exactly_the_in_group_weights(groups: int) -> None:
    dense, grouped = tiny(seed=1), tiny(groups, seed=2)
    grouped_from_dense(dense, grouped)
    keep = in_group_mask(conv(dense).weight.shape, groups)
    wd, wg = conv(dense).weight.detach(), conv(grouped).weight.detach()
    per_out, per_in = 8 // groups, 16 // groups
    for o in range(8):
        for c in range(16):
            same = o // per_out == c // per_in
            assert bool(keep[o, c].all()) == same and bool(keep[o, c].any()) == same
            if same:
                assert torch.equal(wg[o, c % per_in], wd[o, c])
    assert int(keep.sum()) == wg.numel()
    for name in ("conv1", "fc1", "fc2", "act1"):
        for (_, a), (_, b) in zip(
            getattr(dense, name).state_dict().items(),
            getattr(grouped, name).state_dict().items(),
            strict=True,
        ):
            assert torch.equal(a, b)
    # the grouped model computes the dense one with its out-of-group weights zeroed
    with torch.no_grad():
        conv(dense).weight.mul_(keep)
    x = torch.rand(5, *SHAPE)
    torch.testing.assert_close(grouped(x), dense(x), rtol=1e-5, atol=1e-6)


def test_he_group_conv_trains_the_grouped_model() -> None:
    dense = tiny()
    harness = FakeHarness(lambda m: 0.9 if conv(m).groups == 1 else 0.8)
    build = lambda g: tiny(g)  # noqa: E731
    result = he_group_conv(build, 2, harness, epochs=4, dense=dense, slots=SLOTS, input_shape=SHAPE)
    assert result.groups == 2 and conv(result.model).groups == 2
    assert (result.accuracy, result.baseline_accuracy) == (0.8, 0.9)
    assert harness.trained[-1][0] == 4
    assert all(bool(m.all()) for m in result.masks.values())
    # cross-group weights count as pruned against the dense network
    dense_total = sum(w.numel() for w in layer_weights(dense).values())
    assert result.weight_sparsity == pytest.approx((8 * 16 * 25 / 2) / dense_total)
    # at 64 slots only the split layout fits (8x8 blocks for the 16x16 padded input split by
    # pool1): 1 per ciphertext, G = 8 > G_base = 1
    with pytest.raises(LayoutError, match="G_base"):
        he_group_conv(build, 8, harness, epochs=1, slots=64, input_shape=SHAPE)


def test_grouped_builder_uses_the_zoo_group_option() -> None:
    assert conv(build_model("lenet")).groups == 1
    assert conv(grouped_builder("lenet")(4)).groups == 4
    vgg = grouped_builder("vgg5-mnist", channels=(8, 16, 16), hidden=(16, 16))(8)
    assert [m.groups for m in vgg.modules() if isinstance(m, nn.Conv2d)] == [1, 8, 8]


# -------------------------------------------------------------------------- Artemis


def test_group_lasso_penalty_is_the_hand_computation() -> None:
    model = tiny()
    units = units_of(model, "diagonal", layers="all")
    lasso = GroupLasso(units, 0.01)
    modules = dict(model.named_modules())
    by_hand = 0.0
    for name, u in units.items():
        w = modules[name].weight.detach().double()
        gw = group_weights(u)
        for j in range(u.count):
            by_hand += float(gw[j]) * math.sqrt(float((w[u.ids == j] ** 2).sum()))
    assert float(lasso.penalty(model).detach()) == pytest.approx(by_hand, rel=1e-5)
    assert float(lasso(model).detach()) == pytest.approx(0.01 * by_hand, rel=1e-5)


def test_group_lasso_gradient_pushes_groups_to_zero() -> None:
    model = tiny()
    units = {"conv2": units_of(model, "position")["conv2"]}
    u = units["conv2"]
    lasso = GroupLasso(units, 1.0, ptm_cost=0.0)  # p = 0 units weigh 0: they must not move
    w = conv(model).weight
    # the gradient of a group is w_g * theta_g / ||theta_g||
    torch.autograd.backward(lasso(model))
    assert w.grad is not None
    g0 = w.detach() / unit_norms(w.detach(), u, "l2")[u.ids]
    expected = group_weights(u, 0.0).to(w.dtype)[u.ids] * g0
    torch.testing.assert_close(w.grad, expected)
    start = unit_norms(w.detach(), u, "l2")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        torch.autograd.backward(lasso(model))
        opt.step()
    end = unit_norms(w.detach(), u, "l2")
    costly = u.rotations > 0
    # plain SGD ends oscillating within lr * w_g = 0.01 of zero
    assert float(end[costly].max()) < 0.06 * float(start[costly].min())
    torch.testing.assert_close(end[~costly], start[~costly])
    # a zero group has a zero (not NaN) gradient
    with torch.no_grad():
        w[u.ids == 1] = 0.0
    opt.zero_grad()
    torch.autograd.backward(lasso(model))
    assert (
        w.grad is not None
        and torch.isfinite(w.grad).all()
        and bool((w.grad[u.ids == 1] == 0).all())
    )


@pytest.mark.parametrize("variant", ["position", "diagonal"])
def test_artemis_prunes_whole_groups_within_the_budget(variant: UnitKind) -> None:
    model = tiny()
    units = units_of(model, variant, layers="conv")
    total = sum(u.count for u in units.values())
    # accuracy falls by 0.1 per pruned fraction of the groups: budget 0.031 -> <= 31%
    harness = FakeHarness(lambda m: 1.0 - 0.1 * dead_units(m, units) / total)
    result = artemis_prune(
        model,
        harness,
        budget=0.031,
        variant=variant,
        lam=0.1,
        reg_epochs=2,
        search_steps=5,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    assert isinstance(harness.trained[0][2], GroupLasso) and harness.trained[0][0] == 2
    assert result.method == f"artemis-{variant}" and result.unit_kind == variant
    assert_whole_units(result, units)
    dead = dead_units(result.model, units)
    assert [h["fraction"] for h in result.history] == bisection(total, 0.031, 0.1)
    assert dead == prune_count(best_fraction(result.history), total)
    assert result.degradation <= 0.031


# -------------------------------------------------------------------------- Hunter, baselines


def test_hunter_prunes_each_layers_lowest_mean_magnitude_units_in_one_shot() -> None:
    model = tiny()
    units = units_of(model)
    total = sum(u.count for u in units.values())
    harness = FakeHarness(lambda m: 1.0 - 0.1 * dead_units(m, units) / total)
    result = hunter_prune(model, harness, budget=0.031, slots=SLOTS, input_shape=SHAPE)
    assert_whole_units(result, units)
    fraction = best_fraction(result.history)
    assert fraction > 0
    modules = dict(model.named_modules())
    want = set()
    for n, u in units.items():
        # The same fraction of every layer (one unit always left), its lowest mean |w| first.
        k = min(prune_count(fraction, u.count), u.count - 1)
        ranked = sorted(
            (float(modules[n].weight.detach()[u.ids == j].abs().mean()), j) for j in range(u.count)
        )
        want |= {(n, j) for _, j in ranked[:k]}
    assert dead_set(result.masks, units) == want
    assert all(r is None for _, _, r in harness.trained)  # no regularization


def test_hunter_does_not_rank_magnitudes_across_layers() -> None:
    """A layer of small weights is not emptied first: every layer loses the same fraction."""
    model = tiny()
    units = units_of(model)
    first = next(iter(units))
    with torch.no_grad():
        dict(model.named_modules())[first].weight.mul_(1e-3)
    total = sum(u.count for u in units.values())
    harness = FakeHarness(lambda m: 1.0 - 0.1 * dead_units(m, units) / total)
    result = hunter_prune(model, harness, budget=0.031, slots=SLOTS, input_shape=SHAPE)
    fraction = best_fraction(result.history)
    assert 0 < fraction < 1
    for n, u in units.items():
        dead = len({j for m, j in dead_set(result.masks, units) if m == n})
        assert dead == min(prune_count(fraction, u.count), u.count - 1), n


def test_magnitude_baseline_is_unstructured() -> None:
    model = tiny()
    weights = layer_weights(model)
    total = sum(w.numel() for w in weights.values())
    harness = FakeHarness(
        lambda m: 1.0 - 0.1 * sum(int((w == 0).sum()) for w in layer_weights(m).values()) / total
    )
    result = magnitude_prune(model, harness, budget=0.031, slots=SLOTS, input_shape=SHAPE)
    threshold = torch.cat([w.abs().reshape(-1) for w in weights.values()]).sort().values
    k = prune_count(best_fraction(result.history), total)
    for name, mask in result.masks.items():
        assert bool((weights[name].abs()[~mask] <= threshold[k - 1]).all())
    assert result.weight_sparsity == pytest.approx(k / total)
    units = units_of(model)
    assert not all(is_unit_aligned(result.masks[n], u) for n, u in units.items())


@pytest.mark.parametrize("groups", [1, 2])
def test_channel_masks_remove_channels_and_their_consumer_inputs(groups: int) -> None:
    model = tiny(groups)
    dead = {
        "conv1": torch.arange(16) == 10,
        "conv2": torch.tensor([True] + [False] * 7),
        "fc1": torch.tensor([False] * 7 + [True]),
    }
    masks = channel_masks(model, dead)
    assert torch.equal(masks["conv1"].reshape(16, -1).all(1), ~dead["conv1"])
    assert not bool(masks["conv1"][10].any()) and bool(masks["conv1"][~dead["conv1"]].all())
    # conv2 reads input channel 10: (ungrouped) column 10 of every output; (G = 2, 8 inputs
    # per group) column 2 of the outputs of group 1
    expect = torch.ones_like(masks["conv2"])
    expect[0] = False
    if groups == 1:
        expect[:, 10] = False
    else:
        expect[4:, 2] = False
    assert torch.equal(masks["conv2"], expect)
    expect_fc1 = torch.ones(8, 8, dtype=torch.bool)
    expect_fc1[7] = False
    expect_fc1[:, 0] = False  # conv2 channel 0 = flattened feature 0 (1x1 map)
    assert torch.equal(masks["fc1"], expect_fc1)
    expect_fc2 = torch.ones(10, 8, dtype=torch.bool)
    expect_fc2[:, 7] = False
    assert torch.equal(masks["fc2"], expect_fc2)


def test_channel_prune_removes_whole_channels() -> None:
    model = tiny()
    total = sum(w.numel() for w in layer_weights(model).values())  # 3744
    # budget 0.02: at most 20% of the weights zero (a conv1 channel costs 25 + 8*25 weights,
    # a conv2 channel 16*25 + 8)
    harness = FakeHarness(
        lambda m: 1.0 - 0.1 * sum(int((w == 0).sum()) for w in layer_weights(m).values()) / total
    )
    result = channel_prune(model, harness, budget=0.02, slots=SLOTS, input_shape=SHAPE)
    m = result.masks
    c1_dead = ~m["conv1"].reshape(16, -1).any(1)
    c2_dead = ~m["conv2"].reshape(8, -1).any(1)
    assert bool(c1_dead.any() or c2_dead.any())
    assert torch.equal(m["conv1"].reshape(16, -1).all(1), ~c1_dead)  # whole rows only
    for c in torch.nonzero(c1_dead).reshape(-1).tolist():
        assert not bool(m["conv2"][:, c].any())
    for c in torch.nonzero(c2_dead).reshape(-1).tolist():
        assert not bool(m["fc1"][:, c].any())
    assert bool(m["fc2"].all())  # the output layer is never pruned


# -------------------------------------------------------------------------- SpENCNN


def test_spencnn_groups_at_g_base_then_prunes_sub_blocks() -> None:
    dense = tiny()
    grouped_units = units_of(tiny(8))  # G_base = 8 lanes
    harness = FakeHarness(lambda m: 1.0 - 0.01 * dead_units(m, units_of(m)))
    result = spencnn_prune(
        dense,
        lambda g: tiny(g),
        harness,
        budget=0.025,
        group_epochs=1,
        per_iteration=1,
        finetune_epochs=1,
        slots=SLOTS,
        input_shape=SHAPE,
    )
    assert result.method == "spencnn" and result.groups == 8
    assert result.history[0]["g_base"] == 8 and result.history[0]["warm_start"]
    assert dead_units(result.model, grouped_units) == 2
    assert_whole_units(result, grouped_units)


# -------------------------------------------------------------------------- models, trainer


@pytest.mark.parametrize("name", ["hefnet-mnist", "vgg5-mnist"])
def test_new_models_build_run_and_fit_the_layout(name: str) -> None:
    model = build_model(name, "mnist", seed=0)
    assert model.model_name == name
    out = model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(1, 1)] + [(0, 0)] * (len(convs) - 1)
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in model.modules())
    assert sum(isinstance(m, TrainablePoly) for m in model.modules()) == (
        4 if name == "hefnet-mnist" else 5
    )
    widths = [(c.in_channels, c.out_channels) for c in convs]
    assert widths == (
        [(1, 64), (64, 128), (128, 256), (256, 256)]
        if name == "hefnet-mnist"
        else [(1, 64), (64, 128), (128, 128)]
    )
    for slots in (8192, 16384):
        # 28x28 + padding 1 = 30: conv1 and conv2 are pooled by 2, so the input can split
        # into 2x2 sub-maps of 16x16 blocks or 4x4 of 8x8 (32x32 without splitting); the plan
        # takes the one with the fewest dense products: at 8192 slots (N = 16384, where the
        # models compile) both pools add sub-maps
        plan = plan_layout(model, slots, (1, 28, 28))
        side = {(): 32, (2,): 16, (2, 2): 8}[plan.input.factors]
        assert plan.input.lanes == slots // side**2
        # (and conv1's 64 outputs copied into the free blocks when that pays)
        costs = []
        for f, copy in itertools.product([(), (2,), (2, 2)], (False, True)):
            try:
                costs.append(
                    dense_products(_plan(_chain(model), slots, (1, 28, 28), True, f, copy))
                )
            except LayoutError:  # nothing to copy: 64 channels fill a ciphertext's blocks
                assert copy
        cheapest = min(costs)
        assert dense_products(plan) == cheapest
        if slots == 8192:
            assert plan.input.factors == (2, 2)
        dilated = plan_layout(model, slots, (1, 28, 28), compact=False)
        assert dilated.input.lanes == slots // 1024
    gb = g_base(model, 8192)
    assert gb == 64  # 128 lanes, capped by the first grouped width (64 channels)
    grouped = build_model(name, "mnist", seed=0, groups=gb)
    assert [c.groups for c in grouped.modules() if isinstance(c, nn.Conv2d)][1:] == [gb] * (
        len(convs) - 1
    )
    plan_layout(grouped, 8192, (1, 28, 28))
    assert grouped(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="groups"):
        build_model(name, "mnist", groups=3)


def test_hefnet_units_cover_every_weight() -> None:
    model = HEFNet(channels=(8, 8, 16, 16))
    units = model_units(model, slots=8192)
    assert set(units) == {"conv1", "conv2", "conv3", "conv4", "fc1"}
    for name, u in units.items():
        assert tuple(u.ids.shape) == tuple(dict(model.named_modules())[name].weight.shape)


def test_trainer_adds_the_regularizer_to_the_loss() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 12, 12), dtype=np.uint8)
    ds = Dataset(
        images=images,
        labels=rng.integers(0, 10, 40).astype(np.int64),
        name="r",
        classes=10,
        split="train",
    )
    config = TrainConfig(epochs=1, lr=1e-9, batch_size=40, val_fraction=0.0, scheduler="constant")
    loaders = make_loaders(ds, None, "lenet", config)
    calls: list[int] = []

    def reg(m: nn.Module) -> Tensor:
        calls.append(1)
        return torch.tensor(7.0)

    plain = train(tiny(), loaders, config, progress=False).history[0].train_loss
    regularized = train(tiny(), loaders, config, progress=False, regularizer=reg)
    assert calls == [1]
    assert regularized.history[0].train_loss == pytest.approx(plain + 7.0, rel=1e-4)


def test_diverging_fine_tune_rejects_the_candidate_instead_of_failing() -> None:
    """A fine-tuning run that blows up (NaN loss) must score as over budget, not crash."""
    config = TrainConfig(
        epochs=1, lr=1e6, batch_size=16, val_fraction=0.25, scheduler="constant", optimizer="sgd"
    )
    harness = random_image_harness(config, count=64)
    model = tiny()
    harness.train(model, epochs=1)  # would raise TrainingDivergedError without the guard
    assert all(bool(torch.isnan(p).all()) for p in model.parameters())
    assert harness.evaluate(model) <= 0.5
