"""HE-PEx pruning suite: methods, expand, prune^pack, schemes and serialization."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from fheprune.layouts import (
    TileShape,
    expand_tile_mask,
    layer_weights,
    tile_grid,
    tile_sparsity,
    zero_tile_mask,
)
from fheprune.pruning import (
    SCHEME_NAMES,
    Criterion,
    Expand,
    MagnitudePruning,
    MaskError,
    PackPruning,
    Permute,
    Prune,
    PruneConfig,
    PrunedModelFormatError,
    PrunePack,
    PruningMethod,
    Retrain,
    Scheme,
    Scope,
    Target,
    TilePruning,
    TileReduction,
    apply_masks,
    build_scheme,
    expand_masks,
    full_masks,
    load_pruned_model,
    read_metadata,
    run_scheme,
    save_pruned_model,
    weight_sparsity,
)
from fheprune.pruning import serialize as serialize_module

# ---------------------------------------------------------------------------------------------
# tiny models following the project conventions
# ---------------------------------------------------------------------------------------------


class TinyMLP(nn.Module):
    """12 -> 10 -> 7 -> 4; layer sizes are not multiples of the test tiles on purpose."""

    def __init__(self, hidden: int = 10, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(12, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 7)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(7, 4)
        self.flatten_after: str | None = None
        self.task = "classification"

    def prunable_layers(self) -> list[str]:
        return ["fc1", "fc2", "fc3"]

    def neuron_chain(self) -> list[tuple[str, str]]:
        return [("fc1", "fc2"), ("fc2", "fc3")]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(1, 5, 3)
        self.conv2 = nn.Conv2d(5, 6, 3)
        self.fc = nn.Linear(6 * 2 * 2, 3)
        self.alpha = nn.Parameter(torch.tensor(0.5))  # 0-d, like a learnable activation coef
        self.flatten_after: str | None = "conv2"
        self.task = "classification"

    def prunable_layers(self) -> list[str]:
        return ["conv1", "conv2", "fc"]

    def neuron_chain(self) -> list[tuple[str, str]]:
        return [("conv1", "conv2"), ("conv2", "fc")]


def build_model(name: str, /, **kwargs: Any) -> nn.Module:
    if name == "tiny-mlp":
        return TinyMLP(**kwargs)
    if name == "tiny-cnn":
        return TinyCNN(**kwargs)
    raise KeyError(name)


def random_masks(weights: Mapping[str, Tensor], density: float, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=gen) < density for n, w in weights.items()}


def pruned_count(mask: Tensor) -> int:
    return int((~mask).sum())


# ---------------------------------------------------------------------------------------------
# the contract
# ---------------------------------------------------------------------------------------------


class _Reviver(PruningMethod):
    def compute_mask(
        self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        return {n: torch.ones_like(m) for n, m in masks.items()}


def test_contract_refuses_unpruning_and_bad_masks() -> None:
    weights = {"a": torch.randn(4, 4)}
    masks = {"a": torch.rand(4, 4) < 0.5}
    with pytest.raises(MaskError, match="un-pruned"):
        _Reviver()(weights, masks)
    with pytest.raises(MaskError, match="unknown layers"):
        MagnitudePruning(0.5)(weights, {"b": torch.ones(4, 4, dtype=torch.bool)})
    with pytest.raises(MaskError, match="shape"):
        MagnitudePruning(0.5)(weights, {"a": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(MaskError, match="bool"):
        MagnitudePruning(0.5)(weights, {"a": torch.ones(4, 4)})
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            MagnitudePruning(bad)
    with pytest.raises(TypeError):
        MagnitudePruning(True)


METHODS: list[PruningMethod] = [
    MagnitudePruning(0.6, scope=Scope.LOCAL),
    MagnitudePruning(0.6, scope=Scope.GLOBAL),
    MagnitudePruning(0.4, criterion=Criterion.RANDOM, seed=3),
    MagnitudePruning(0.4, target=Target.NEURON),
    MagnitudePruning(0.4, target=Target.NEURON, scope=Scope.GLOBAL),
    MagnitudePruning(0.4, target=Target.NEURON, criterion=Criterion.RANDOM),
    TilePruning(0.5, TileShape(3, 2)),
    TilePruning(0.5, TileShape(2, 4), reduction=TileReduction.MAX, scope=Scope.GLOBAL),
    TilePruning(0.5, TileShape(4, 4), reduction=TileReduction.MIN),
    PackPruning(TileShape(2, 3), 0.5),
    PackPruning(TileShape(4, 2), {"fc1": 0.2}, scope=Scope.LOCAL),
]


@settings(max_examples=40, deadline=None)
@given(
    index=st.integers(0, len(METHODS) - 1),
    density=st.sampled_from([0.2, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 1000),
)
def test_methods_never_unprune(index: int, density: float, seed: int) -> None:
    weights = layer_weights(TinyMLP(seed=seed))
    masks = random_masks(weights, density, seed)
    new = METHODS[index].compute_mask(weights, masks)  # the raw contract, unchecked
    for name, mask in masks.items():
        assert new[name].dtype == torch.bool and new[name].shape == mask.shape
        assert not bool((new[name] & ~mask).any()), f"{METHODS[index]!r} revived {name}"


# ---------------------------------------------------------------------------------------------
# P2 prune: magnitude / random, weights / neurons, local / global
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    fraction=st.floats(0.0, 1.0),
    rows=st.integers(1, 17),
    cols=st.integers(1, 17),
    criterion=st.sampled_from(list(Criterion)),
)
def test_local_weight_fraction_is_exact(
    fraction: float, rows: int, cols: int, criterion: Criterion
) -> None:
    weights = {"a": torch.randn(rows, cols), "b": torch.randn(3, 5, 2, 2)}
    rms = {name: torch.rand(w.shape[1]) for name, w in weights.items()}  # for "act"
    masks = MagnitudePruning(fraction, criterion=criterion, input_rms=rms)(weights)
    for name, w in weights.items():
        assert abs(pruned_count(masks[name]) - fraction * w.numel()) <= 1
    glob = MagnitudePruning(fraction, scope=Scope.GLOBAL, criterion=criterion, input_rms=rms)(
        weights
    )
    total = sum(w.numel() for w in weights.values())
    assert abs(sum(pruned_count(m) for m in glob.values()) - fraction * total) <= 1


def test_l1_prunes_the_smallest_weights() -> None:
    w = torch.tensor([[0.5, -3.0, 0.1], [2.0, -0.2, 1.0]])
    mask = MagnitudePruning(0.5)({"a": w})["a"]
    assert mask.tolist() == [[False, True, False], [True, False, True]]


def test_fraction_is_cumulative_and_already_pruned_stays_pruned() -> None:
    weights = {"a": torch.randn(10, 10)}
    first = MagnitudePruning(0.3)(weights)
    # a zeroed-but-live weight is not "already pruned": only masks decide
    again = MagnitudePruning(0.3)(weights, first)
    assert torch.equal(again["a"], first["a"])
    more = MagnitudePruning(0.6)(weights, first)
    assert pruned_count(more["a"]) == 60
    assert not bool((more["a"] & ~first["a"]).any())
    # masked-out large weights keep counting as pruned (scores use weight * mask)
    start = {"a": torch.ones(10, 10, dtype=torch.bool)}
    start["a"][0] = False
    big = {"a": weights["a"].abs() + 100.0}
    out = MagnitudePruning(0.2)(big, start)
    assert not bool(out["a"][0].any()) and pruned_count(out["a"]) == 20


def test_global_prunes_only_the_small_layer_local_prunes_both_equally() -> None:
    gen = torch.Generator().manual_seed(0)
    weights = {
        "big": 100.0 + torch.rand(8, 8, generator=gen),  # very different scales
        "small": 0.01 * torch.rand(8, 8, generator=gen),
    }
    glob = MagnitudePruning(0.5, scope=Scope.GLOBAL)(weights)
    assert pruned_count(glob["big"]) == 0
    assert pruned_count(glob["small"]) == 64
    local = MagnitudePruning(0.5, scope=Scope.LOCAL)(weights)
    assert pruned_count(local["big"]) == 32
    assert pruned_count(local["small"]) == 32


def test_random_is_deterministic_per_seed_and_ignores_values() -> None:
    weights = layer_weights(TinyMLP())
    a = MagnitudePruning(0.5, criterion="random", seed=7)(weights)
    b = MagnitudePruning(0.5, criterion="random", seed=7)(weights)
    c = MagnitudePruning(0.5, criterion="random", seed=8)(weights)
    scaled = {n: w * 1000 + 5 for n, w in weights.items()}
    d = MagnitudePruning(0.5, criterion="random", seed=7)(scaled)
    for name in weights:
        assert torch.equal(a[name], b[name])
        assert torch.equal(a[name], d[name])
    assert any(not torch.equal(a[n], c[n]) for n in weights)
    na = MagnitudePruning(0.5, criterion="random", target="neuron", seed=7)(weights)
    nb = MagnitudePruning(0.5, criterion="random", target="neuron", seed=7)(weights)
    assert all(torch.equal(na[n], nb[n]) for n in weights)


def _rows_pruned(mask: Tensor) -> list[bool]:
    flat = mask.reshape(mask.shape[0], -1)
    return [bool(not flat[i].any()) for i in range(flat.shape[0])]


@pytest.mark.parametrize("criterion", list(Criterion))
def test_neuron_pruning_removes_whole_rows_and_spares_the_output_layer(
    criterion: Criterion,
) -> None:
    weights = layer_weights(TinyMLP())
    rms = {name: torch.rand(w.shape[1]) for name, w in weights.items()}  # for "act"
    masks = MagnitudePruning(0.5, target=Target.NEURON, criterion=criterion, input_rms=rms)(weights)
    for name in ("fc1", "fc2"):
        mask = masks[name]
        rows = _rows_pruned(mask)
        # every row is either fully pruned or fully live
        assert all(bool(mask[i].all()) != rows[i] for i in range(mask.shape[0]))
        assert sum(rows) == math.floor(0.5 * mask.shape[0] + 0.5)
    assert bool(masks["fc3"].all()), "output-layer neurons (classes) must not be pruned"


def test_neuron_l1_scoring_and_explicit_protection() -> None:
    w = torch.tensor([[1.0, 1.0], [5.0, 0.0], [0.1, -0.1], [-3.0, 3.0]])
    out = torch.ones(2, 4)
    masks = MagnitudePruning(0.5, target="neuron")({"h": w, "out": out})
    assert _rows_pruned(masks["h"]) == [True, False, True, False]  # L1 2, 5, 0.2, 6
    free = MagnitudePruning(0.5, target="neuron", protected=())({"h": w, "out": out})
    assert sum(_rows_pruned(free["out"])) == 1


def test_neuron_input_target_also_prunes_whole_input_columns() -> None:
    """neuron+input: hidden rows as with "neuron", plus whole columns of the first layer (the
    network's inputs), ranked together (global) by mean |w|; the output layer stays whole."""
    w1 = torch.tensor(
        [[1.0, 0.01, 2.0, 0.02], [3.0, 0.03, -1.0, 0.01], [0.02, 0.01, 0.03, 0.02]]
    )  # column means: 1.34, 0.017, 1.01, 0.017; row means: 0.76, 1.01, 0.02
    out = torch.ones(2, 3)
    masks = MagnitudePruning(3 / 7, scope="global", target="neuron+input")({"h": w1, "out": out})
    h = masks["h"]
    assert not bool(h[:, 1].any()) and not bool(h[:, 3].any())  # the two weakest inputs
    assert not bool(h[2].any())  # the weakest hidden neuron
    assert bool(h[0, 0]) and bool(h[1, 2])  # everything else stays
    assert bool(masks["out"].all())
    # Local scope: the fraction applies to the hidden rows and to the inputs separately.
    local = MagnitudePruning(0.5, target="neuron+input")({"h": w1, "out": out})
    assert sum(not bool(local["h"][:, c].any()) for c in range(4)) >= 2
    # "neuron" alone never removes a column that still has a live row.
    plain = MagnitudePruning(3 / 7, scope="global", target="neuron")({"h": w1, "out": out})
    assert all(bool(plain["h"][:2, c].any()) for c in range(4))


def test_channel_pruning_removes_whole_output_channels() -> None:
    net = TinyCNN()
    weights = layer_weights(net)
    masks = MagnitudePruning(0.4, target=Target.NEURON)(weights)
    for name in ("conv1", "conv2"):
        mask = masks[name]
        pruned = _rows_pruned(mask)
        assert sum(pruned) == math.floor(0.4 * mask.shape[0] + 0.5)
        for c in range(mask.shape[0]):
            assert bool(mask[c].all()) or not bool(mask[c].any())  # C_in x kh x kw together
        norms = weights[name].abs().reshape(mask.shape[0], -1).sum(1)
        kept = norms[[not p for p in pruned]]
        assert float(norms[pruned].max()) <= float(kept.min())
    assert bool(masks["fc"].all())


# ---------------------------------------------------------------------------------------------
# P2T prune^tile
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    fraction=st.floats(0.0, 1.0),
    t1=st.integers(1, 5),
    t2=st.integers(1, 5),
    reduction=st.sampled_from(list(TileReduction)),
    scope=st.sampled_from(list(Scope)),
    seed=st.integers(0, 1000),
)
def test_tile_pruning_zeroes_only_whole_tiles(
    fraction: float, t1: int, t2: int, reduction: TileReduction, scope: Scope, seed: int
) -> None:
    shape = TileShape(t1, t2)
    weights = layer_weights(TinyCNN()) | layer_weights(TinyMLP(seed=seed))
    masks = TilePruning(fraction, shape, reduction=reduction, scope=scope)(weights)
    total_zero = total = 0
    for name, mask in masks.items():
        grid = tile_grid(mask, shape)
        real = tile_grid(torch.ones_like(mask), shape)
        full_or_empty = (grid | ~real).flatten(-2).all(-1) | ~grid.flatten(-2).any(-1)
        assert bool(full_or_empty.all()), f"{name}: a tile was pruned partially"
        zero = zero_tile_mask(mask, shape)
        if scope is Scope.LOCAL:
            assert abs(int(zero.sum()) - fraction * zero.numel()) <= 0.5 + 1e-9
        total_zero += int(zero.sum())
        total += zero.numel()
    assert abs(total_zero - fraction * total) <= len(masks) * 0.5 + 1e-9


def test_tile_reductions_rank_differently() -> None:
    # 2x2 tiles: A = [[10, 0], [0, 0]] (avg 2.5, max 10, min 0), B = all 3 (avg/max/min 3)
    w = torch.tensor([[10.0, 0.0, 3.0, 3.0], [0.0, 0.0, 3.0, 3.0]])
    shape = TileShape(2, 2)
    expected = {TileReduction.AVG: "A", TileReduction.MAX: "B", TileReduction.MIN: "A"}
    for reduction, victim in expected.items():
        mask = TilePruning(0.5, shape, reduction=reduction)({"w": w})["w"]
        pruned_a = not bool(mask[:, :2].any())
        pruned_b = not bool(mask[:, 2:].any())
        assert (pruned_a, pruned_b) == (victim == "A", victim == "B"), reduction


def test_tile_avg_ignores_padding() -> None:
    # 3 columns with 2-wide tiles: the edge tile holds one real column. Its mean |w| is 2.0
    # over real entries (1.0 if the zero padding were averaged in, below the full tile's 1.5).
    w = torch.tensor([[1.5, 1.5, 2.0], [1.5, 1.5, 2.0]])
    mask = TilePruning(0.5, TileShape(2, 2))({"w": w})["w"]
    assert bool(mask[:, 2].all()) and not bool(mask[:, :2].any())


# ---------------------------------------------------------------------------------------------
# expand
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    density=st.sampled_from([0.02, 0.1, 0.4, 0.9]),
    t1=st.integers(1, 6),
    t2=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_expand_revives_only_inside_nonzero_tiles(
    density: float, t1: int, t2: int, seed: int
) -> None:
    shape = TileShape(t1, t2)
    weights = layer_weights(TinyCNN()) | layer_weights(TinyMLP())
    masks = random_masks(weights, density, seed)
    expanded = expand_masks(masks, shape)
    assert tile_sparsity(expanded, shape).layers == tile_sparsity(masks, shape).layers
    for name, mask in masks.items():
        zero = zero_tile_mask(mask, shape)
        new = expanded[name]
        assert not bool((mask & ~new).any()), "expand must not prune"
        live_tiles = expand_tile_mask(~zero, mask.shape, shape)
        assert torch.equal(new, live_tiles)  # all of a live tile, nothing of a zero tile


def test_expand_example() -> None:
    mask = torch.tensor(
        [[True, False, False, False], [False, False, False, False]], dtype=torch.bool
    )
    out = expand_masks({"w": mask}, TileShape(2, 2))["w"]
    assert out.tolist() == [[True, True, False, False], [True, True, False, False]]


# ---------------------------------------------------------------------------------------------
# prune^pack
# ---------------------------------------------------------------------------------------------


def test_pack_threshold_is_strict() -> None:
    shape = TileShape(2, 2)
    # tile A: 3 of 4 zeros (exactly 0.75), tile B: 2 of 4 zeros
    mask = torch.tensor([[True, False, True, True], [False, False, False, True]])
    weights = {"w": torch.ones(2, 4)}
    at = PackPruning(shape, 0.75)(weights, {"w": mask})["w"]
    assert torch.equal(at, mask), "zero fraction equal to the threshold must not prune"
    below = PackPruning(shape, 0.74)(weights, {"w": mask})["w"]
    assert not bool(below[:, :2].any()) and torch.equal(below[:, 2:], mask[:, 2:])
    assert torch.equal(PackPruning(shape, 1.0)(weights, {"w": mask})["w"], mask)


def test_pack_threshold_decimal_boundary_and_default() -> None:
    # 0.57 * 100 is 56.99999999999999 in floats; 57 zeros of 100 is not above 0.57.
    shape = TileShape(10, 10)
    mask = torch.ones(10, 10, dtype=torch.bool)
    mask.view(-1)[:57] = False
    assert torch.equal(PackPruning(shape, 0.57)({"w": torch.ones(10, 10)}, {"w": mask})["w"], mask)
    mask.view(-1)[57] = False
    assert not bool(PackPruning(shape, 0.57)({"w": torch.ones(10, 10)}, {"w": mask})["w"].any())
    # default 0.938 in 16x16 tiles: 16 live entries (93.75% zeros) stay, 15 go
    shape16 = TileShape(16, 16)
    keep16 = torch.zeros(16, 16, dtype=torch.bool)
    keep16.view(-1)[:16] = True
    method = PackPruning(shape16)
    assert method.threshold == 0.938
    assert torch.equal(method({"w": torch.ones(16, 16)}, {"w": keep16})["w"], keep16)
    keep16.view(-1)[15] = False
    assert not bool(method({"w": torch.ones(16, 16)}, {"w": keep16})["w"].any())


def test_pack_counts_zero_fraction_over_real_entries_only() -> None:
    # 2x3 matrix, 2x2 tiles: the edge tile has 2 real entries, one pruned -> 0.5 zeros
    # (0.75 if the padding counted).
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out = PackPruning(TileShape(2, 2), 0.6)({"w": torch.ones(2, 3)}, {"w": mask})["w"]
    assert torch.equal(out, mask)


def test_pack_scope_semantics() -> None:
    shape = TileShape(2, 2)
    weights = {"fc": torch.ones(2, 2), "conv": torch.ones(2, 2, 1, 1)}
    masks = {
        "fc": torch.tensor([[True, False], [False, False]]),
        "conv": torch.tensor([[True, False], [False, False]]).view(2, 2, 1, 1),
    }
    glob = PackPruning(shape, 0.5, scope="global")(weights, masks)
    local_same = PackPruning(shape, 0.5, scope="local")(weights, masks)
    for name in masks:  # one shared threshold: scope cannot change a per-tile test
        assert torch.equal(glob[name], local_same[name])
        assert not bool(glob[name].any())
    # local scope allows per-layer thresholds: P4E for FC, P3E (no second prune) for conv
    per_layer = PackPruning(shape, {"conv": 1.0}, scope="local", default_threshold=0.5)
    out = per_layer(weights, masks)
    assert not bool(out["fc"].any()) and torch.equal(out["conv"], masks["conv"])
    with pytest.raises(ValueError, match="local"):
        PackPruning(shape, {"conv": 1.0}, scope="global")
    with pytest.raises(KeyError):
        PackPruning(shape, {"nope": 0.5}, scope="local")(weights, masks)
    with pytest.raises(ValueError):
        PackPruning(shape, 1.5)


# ---------------------------------------------------------------------------------------------
# schemes
# ---------------------------------------------------------------------------------------------

EXPECTED_ORDERS = {
    "P2": ["prune", "retrain"],
    "P2T": ["prune", "retrain"],
    "P3": ["prune", "permute", "retrain"],
    "P3E": ["prune", "permute", "expand", "retrain"],
    "P4": ["prune", "permute", "prune_pack", "retrain"],
    "P4E": ["prune", "permute", "prune_pack", "expand", "retrain"],
}


class Recorder:
    """Fake retrain/permute: log calls, check the masks are held, and really permute."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.retrain_masks: list[dict[str, Tensor]] = []

    def retrain(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        self.events.append("retrain")
        for name, w in layer_weights(model).items():
            assert not bool(w[~masks[name]].any()), "masks must be applied before retraining"
        self.retrain_masks.append(dict(masks))
        with torch.no_grad():  # a sloppy trainer that lets pruned weights drift
            for w in layer_weights(model).values():
                w.add_(0.01)

    def permute(
        self, model: nn.Module, masks: Mapping[str, Tensor], tile_shape: TileShape
    ) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
        self.events.append("permute")
        assert isinstance(model, TinyMLP)
        perm = torch.arange(model.fc1.out_features - 1, -1, -1)  # reverse hidden layer 1
        with torch.no_grad():
            model.fc1.weight.copy_(model.fc1.weight[perm])
            model.fc1.bias.copy_(model.fc1.bias[perm])
            model.fc2.weight.copy_(model.fc2.weight[:, perm])
        out = dict(masks)
        out["fc1"] = masks["fc1"][perm]
        out["fc2"] = masks["fc2"][:, perm]
        return out, {"fc1": perm.tolist()}


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_run_scheme_step_order_and_bookkeeping(name: str) -> None:
    scheme = build_scheme(name)
    assert list(scheme.kinds) == EXPECTED_ORDERS[name]
    model = TinyMLP()
    x = torch.randn(5, 12)
    recorder = Recorder()
    shape = TileShape(4, 4)
    result = run_scheme(
        scheme,
        model,
        shape,
        prune_config={"fraction": 0.85},
        retrain_fn=recorder.retrain,
        permute_fn=recorder.permute,
    )
    calls = [k for k in EXPECTED_ORDERS[name] if k in ("retrain", "permute")]
    assert recorder.events == calls
    assert [r.kind for r in result.log] == EXPECTED_ORDERS[name]
    assert len(result.permutations) == calls.count("permute")
    # the tile stats chain: each step starts where the previous ended
    assert result.log[0].tiles_before == result.initial_tiles
    for prev, cur in zip(result.log, result.log[1:], strict=False):
        assert cur.tiles_before == prev.tiles_after
    assert result.tile_stats == result.log[-1].tiles_after
    assert result.tile_stats == tile_sparsity(result.masks, shape)
    for record in result.log:
        if record.kind in ("expand", "retrain"):  # (a permutation may change tile sparsity)
            assert record.tiles_after.zero_tiles == record.tiles_before.zero_tiles
        if record.kind == "permute":  # ... but never the number of live entries
            assert record.weights_after.pruned == result.log[0].weights_after.pruned
        if record.kind == "prune_pack":
            assert record.tiles_after.zero_tiles >= record.tiles_before.zero_tiles
    if name == "P2T":
        for mask in result.masks.values():  # P2T prunes whole tiles only
            assert torch.equal(mask, expand_masks({"m": mask}, shape)["m"])
    if name.endswith("E"):
        assert result.weight_sparsity.pruned < result.log[0].weights_after.pruned
    # masks applied to the model at the end; retrain saw the final masks
    for layer, w in layer_weights(model).items():
        assert not bool(w[~result.masks[layer]].any())
    assert recorder.retrain_masks[-1].keys() == result.masks.keys()
    assert all(torch.equal(recorder.retrain_masks[-1][n], m) for n, m in result.masks.items())
    assert model(x).shape == (5, 4)
    json.dumps(result.to_dict())  # a JSON-ready summary


def test_expand_restores_trained_values_not_zeros() -> None:
    model = TinyMLP()
    before = {n: w.clone() for n, w in layer_weights(model).items()}
    shape = TileShape(4, 4)
    result = run_scheme(
        Scheme("prune+expand", [Prune(), Expand()]),
        model,
        shape,
        prune_config=PruneConfig(0.5),
        retrain_fn=Recorder().retrain,
    )
    for name, w in layer_weights(model).items():
        live = result.masks[name]
        assert torch.equal(w[live], before[name][live])


def test_scheme_options() -> None:
    assert build_scheme("p4e", permute=False).kinds == ("prune", "prune_pack", "expand", "retrain")
    assert build_scheme("P4", permute=False).kinds == ("prune", "prune_pack", "retrain")
    demo = build_scheme("P4E", retrain_after_prune=True)
    assert demo.kinds == ("prune", "retrain", "permute", "prune_pack", "expand", "retrain")
    pack = build_scheme("P4E", pack_threshold={"fc1": 1.0}, pack_scope="local").steps[2]
    assert isinstance(pack, PrunePack) and pack.scope is Scope.LOCAL
    p2t = build_scheme("P2T").steps[0]
    assert isinstance(p2t, Prune) and p2t.tiled
    with pytest.raises(ValueError, match="unknown scheme"):
        build_scheme("P5")
    with pytest.raises(ValueError, match="always permutes"):
        build_scheme("P3", permute=False)
    with pytest.raises(ValueError, match="only apply"):
        build_scheme("P3E", pack_threshold=0.5)
    with pytest.raises(ValueError, match="permutes"):
        build_scheme("P2", retrain_after_prune=True)
    with pytest.raises(ValueError, match="local"):
        build_scheme("P4E", pack_threshold={"fc1": 1.0})


def test_run_scheme_refuses_before_touching_the_model() -> None:
    model = TinyMLP()
    before = {n: w.clone() for n, w in layer_weights(model).items()}
    with pytest.raises(ValueError, match="permute_fn"):
        run_scheme(
            build_scheme("P3E"),
            model,
            TileShape(4, 4),
            prune_config={"fraction": 0.5},
            retrain_fn=Recorder().retrain,
        )
    with pytest.raises(ValueError, match="prune_config"):
        run_scheme(
            build_scheme("P2"),
            model,
            TileShape(4, 4),
            prune_config=None,
            retrain_fn=Recorder().retrain,
        )
    with pytest.raises(ValueError, match="unknown prune config"):
        run_scheme(
            build_scheme("P2"),
            model,
            TileShape(4, 4),
            prune_config={"fraction": 0.5, "scpoe": "global"},
            retrain_fn=Recorder().retrain,
        )
    assert all(torch.equal(before[n], w) for n, w in layer_weights(model).items())


def test_run_scheme_rejects_a_permute_that_prunes() -> None:
    def bad_permute(
        model: nn.Module, masks: Mapping[str, Tensor], tile_shape: TileShape
    ) -> tuple[dict[str, Tensor], None]:
        out = dict(masks)
        out["fc1"] = torch.zeros_like(masks["fc1"])
        return out, None

    with pytest.raises(MaskError, match="only reorder"):
        run_scheme(
            build_scheme("P3"),
            TinyMLP(),
            TileShape(4, 4),
            prune_config={"fraction": 0.5},
            retrain_fn=Recorder().retrain,
            permute_fn=bad_permute,
        )


def test_run_scheme_neuron_and_custom_steps() -> None:
    model = TinyMLP()
    config = PruneConfig(0.5, target=Target.NEURON, criterion=Criterion.RANDOM, seed=3)
    result = run_scheme(
        build_scheme("P2"),
        model,
        TileShape(2, 2),
        prune_config=config,
        retrain_fn=Recorder().retrain,
    )
    assert bool(result.masks["fc3"].all())  # output layer spared (from neuron_chain)
    assert sum(_rows_pruned(result.masks["fc1"])) == 5
    assert result.log[0].label == "Lc/Rnd/Neu"
    custom = Scheme(
        "custom",
        [Prune(MagnitudePruning(0.9, scope="global")), PrunePack(0.5), Expand(), Retrain()],
    )
    out = run_scheme(
        custom, TinyMLP(), TileShape(2, 2), prune_config=None, retrain_fn=Recorder().retrain
    )
    assert [r.label for r in out.log] == ["Gl/L1/Wei", "Gl/pack>0.5", "expand", "retrain"]
    with pytest.raises(ValueError, match="permute_fn"):
        run_scheme(
            Scheme("p", [Permute()]),
            TinyMLP(),
            TileShape(2, 2),
            prune_config=None,
            retrain_fn=Recorder().retrain,
        )
    with pytest.raises(TypeError):
        Scheme("bad", [Prune(), "retrain"])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# serialization
# ---------------------------------------------------------------------------------------------


def _pruned_mlp() -> tuple[TinyMLP, dict[str, Tensor]]:
    model = TinyMLP(hidden=10, seed=4)
    masks = MagnitudePruning(0.7)(layer_weights(model))
    apply_masks(model, masks)
    return model, masks


def _save(path: Path, model: nn.Module, masks: Mapping[str, Tensor]) -> Path:
    return save_pruned_model(
        path,
        model,
        masks,
        model_name="tiny-mlp",
        model_kwargs={"hidden": 10, "seed": 4},
        tile_shape=TileShape(4, 8),
        scheme="P3E",
        config={"prune": PruneConfig(0.7), "scope": Scope.LOCAL},
        metrics={"accuracy": 0.9, "tile_sparsity": np.float64(0.5)},
        permutations={"fc1": torch.arange(9, -1, -1), "input": list(range(12))},
    )


def _rewrite(path: Path, edit: Any) -> None:
    """Load every member, let ``edit(arrays, meta)`` change them, write back (no checks)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    edit(arrays, meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, allow_pickle=True, **arrays)


def test_serialization_round_trip(tmp_path: Path) -> None:
    model, masks = _pruned_mlp()
    path = _save(tmp_path / "model.npz", model, masks)
    loaded = load_pruned_model(path, build_model)
    assert isinstance(loaded.model, TinyMLP)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.masks.keys() == masks.keys()
    assert all(torch.equal(loaded.masks[n], m) for n, m in masks.items())
    assert loaded.permutations["fc1"].tolist() == list(range(9, -1, -1))
    assert loaded.permutations["input"].dtype == torch.int64
    meta = loaded.metadata
    assert (meta.model_name, meta.model_kwargs) == ("tiny-mlp", {"hidden": 10, "seed": 4})
    assert meta.tile_shape == TileShape(4, 8) and meta.scheme == "P3E"
    assert meta.config["prune"]["fraction"] == 0.7 and meta.config["scope"] == "local"
    assert meta.metrics == {"accuracy": 0.9, "tile_sparsity": 0.5}
    assert read_metadata(path) == meta
    assert weight_sparsity(loaded.masks).pruned == weight_sparsity(masks).pruned
    assert not list(tmp_path.glob("*.tmp")), "no temporary files left behind"


def test_serialization_accepts_partial_masks_and_cnn(tmp_path: Path) -> None:
    net = TinyCNN()
    masks = MagnitudePruning(0.5, target="neuron")(layer_weights(net), None)
    apply_masks(net, masks)
    path = save_pruned_model(
        tmp_path / "cnn.npz", net, {"conv1": masks["conv1"]}, model_name="tiny-cnn"
    )
    loaded = load_pruned_model(path, build_model)
    for key, value in net.state_dict().items():
        assert loaded.model.state_dict()[key].shape == value.shape
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert torch.equal(loaded.masks["conv1"], masks["conv1"])
    assert bool(loaded.masks["fc"].all())
    assert loaded.metadata.tile_shape is None and loaded.permutations == {}


CORRUPTIONS = {
    "newer version": lambda a, m: m.update(format_version=99),
    "format": lambda a, m: m.update(format="something-else"),
    "model name": lambda a, m: m["model"].update(name="unknown-model"),
    "architecture": lambda a, m: m["model"]["kwargs"].update(hidden=11),
    "sha": lambda a, m: a["state/fc1.weight"].__setitem__((0, 0), 123.0),
    "missing member": lambda a, m: a.pop("mask/fc2"),
    "extra member": lambda a, m: a.__setitem__("state/extra", np.zeros(3, np.float32)),
    "dtype": lambda a, m: (
        a.__setitem__("mask/fc1", a["mask/fc1"].astype(np.uint8)),
        m["arrays"]["mask/fc1"].update(dtype="uint8"),
    ),
    "tile shape": lambda a, m: m.update(tile_shape=[0, 8]),
    "layers": lambda a, m: m.update(layers=["fc1", "fc2"]),
}


@pytest.mark.parametrize("problem", sorted(CORRUPTIONS))
def test_serialization_rejects_corrupted_or_mismatched(tmp_path: Path, problem: str) -> None:
    model, masks = _pruned_mlp()
    path = _save(tmp_path / "model.npz", model, masks)
    _rewrite(path, CORRUPTIONS[problem])
    with pytest.raises(PrunedModelFormatError):
        load_pruned_model(path, build_model)


def _resign(arrays: dict[str, Any], meta: dict[str, Any], key: str) -> None:
    meta["arrays"][key]["sha256"] = serialize_module._digest(arrays[key])


def test_serialization_rejects_consistent_but_wrong_content(tmp_path: Path) -> None:
    model, masks = _pruned_mlp()
    path = _save(tmp_path / "model.npz", model, masks)

    def unmasked(arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        arrays["state/fc1.weight"] = np.ones_like(arrays["state/fc1.weight"])
        _resign(arrays, meta, "state/fc1.weight")

    _rewrite(path, unmasked)
    with pytest.raises(PrunedModelFormatError, match="non-zero weights"):
        load_pruned_model(path, build_model)

    _save(path, model, masks)

    def bad_perm(arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        arrays["perm/fc1"] = np.zeros(10, dtype=np.int64)
        _resign(arrays, meta, "perm/fc1")

    _rewrite(path, bad_perm)
    with pytest.raises(PrunedModelFormatError, match="permutation"):
        load_pruned_model(path, build_model)


_EXECUTED: list[str] = []


def _payload() -> str:
    _EXECUTED.append("pickle ran")
    return "boom"


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _payload, ()


def test_serialization_never_unpickles(tmp_path: Path) -> None:
    model, masks = _pruned_mlp()
    path = _save(tmp_path / "model.npz", model, masks)

    def evil(arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        payload = np.empty(1, dtype=object)
        payload[0] = _Evil()
        arrays["state/fc1.bias"] = payload

    _rewrite(path, evil)
    with pytest.raises(PrunedModelFormatError):
        load_pruned_model(path, build_model)
    assert _EXECUTED == []


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_serialization_rejects_garbage_and_truncation(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(PrunedModelFormatError):
        load_pruned_model(path, build_model)
    model, masks = _pruned_mlp()
    good = _save(tmp_path / "good.npz", model, masks)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunedModelFormatError):
        load_pruned_model(good, build_model)
    with pytest.raises(FileNotFoundError):
        load_pruned_model(tmp_path / "absent.npz", build_model)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, masks = _pruned_mlp()
    path = _save(tmp_path / "model.npz", model, masks)
    original = path.read_bytes()
    with pytest.raises(ValueError, match="JSON"):
        save_pruned_model(path, model, masks, model_name="tiny-mlp", metrics={"x": float("nan")})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)  # the module serialize uses
    with pytest.raises(OSError, match="disk full"):
        _save(path, model, masks)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    model, masks = _pruned_mlp()
    with pytest.raises(ValueError, match="permutation"):
        save_pruned_model(
            tmp_path / "m.npz", model, masks, model_name="tiny-mlp", permutations={"p": [0, 0, 1]}
        )
    with pytest.raises(MaskError):
        save_pruned_model(tmp_path / "m.npz", model, {"fc9": masks["fc1"]}, model_name="tiny-mlp")
    assert full_masks(layer_weights(model)).keys() == masks.keys()
