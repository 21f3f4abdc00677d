"""One unit definition: pruning cuts every layer into the tiles the runtime's program uses.

The tile runtime alternates orientations, so with rectangular ``t1 x t2`` tiles every second
layer has ``t2 x t1`` weight tiles. Pruning reads that rule from the C++ program
(:func:`fheprune.layouts.tile_plan`); these tests compile pruned networks and compare each
layer's live tiles with the program's units, and the compiler's level count with the
program's.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from toys import small_cnn

from fheprune import _core
from fheprune.errors import InputError
from fheprune.layouts import TilePlan, TileShape, layer_weights, tile_plan, tile_sparsity
from fheprune.models.zoo import MLPClassifier
from fheprune.pruning import TilePruning, apply_masks
from fheprune.runtime.compiler import compile_model, map_slots

SIDES = st.sampled_from([1, 2, 4, 8, 16])


def _parameters(levels: int) -> object:
    """Insecure N = 1024 test parameters (tests/conftest.py allows them) with ``levels``."""
    return _core.Parameters(1024, [50] + [40] * levels, [50], 40, insecure_for_testing=True)


def _mlp(widths: list[int], seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(
            in_features=widths[0],
            hidden=tuple(widths[1:-1]),
            classes=widths[-1],
            activation="square",
        )
    return model.double().eval()


def _program_units(model: torch.nn.Module, tile: TileShape) -> dict[str, tuple[int, int]]:
    compiled = compile_model(model, parameters=_parameters(10), tile=(tile.t1, tile.t2))
    return {
        str(c["name"]): (int(c["units"]), int(c["total_units"]))
        for c in compiled.program.cost()
        if c["kind"] == "tile"
    }


def test_plan_alternates_orientation_like_the_program() -> None:
    plan = tile_plan(["a", "b", "c"], TileShape(4, 8))
    assert [plan.of(n) for n in "abc"] == [TileShape(4, 8), TileShape(8, 4), TileShape(4, 8)]
    assert str(plan) == "4x8"
    square = tile_plan(["a", "b"], TileShape(16, 16))
    assert set(square.shapes.values()) == {TileShape(16, 16)}


def test_second_layer_of_a_rectangular_tile_is_transposed() -> None:
    # fc2 is 5 x 12: 8x4 tiles give 1 x 3 of them, 4x8 tiles would give 2 x 2.
    model = _mlp([20, 12, 5], seed=0)
    units = _program_units(model, TileShape(4, 8))
    stats = tile_sparsity(model, tile_plan(model, TileShape(4, 8)))
    assert units["fc2"] == (3, 3)
    assert stats.layers["fc2"].tiles == 3
    assert tile_sparsity(model, TileShape(4, 8)).layers["fc2"].tiles == 4  # the old, wrong unit


def test_unknown_layer_is_a_clear_error() -> None:
    plan = TilePlan(TileShape(2, 4), {"fc1": TileShape(2, 4)})
    with pytest.raises(InputError, match=r"'fc9' is not in this tile plan \(layers: fc1\)"):
        plan.of("fc9")


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 40), min_size=3, max_size=5),
    t1=SIDES,
    t2=SIDES,
    fraction=st.floats(0.0, 0.9),
    density=st.floats(0.02, 1.0),
    seed=st.integers(0, 2**16),
)
def test_pruned_live_tiles_equal_the_programs_units(
    widths: list[int], t1: int, t2: int, fraction: float, density: float, seed: int
) -> None:
    """Random element masks, then Prune^tile on the plan: every layer's live tiles, as
    pruning counts them, are the units the compiled program keeps."""
    tile = TileShape(t1, t2)
    model = _mlp(widths, seed)
    plan = tile_plan(model, tile)
    weights = layer_weights(model)
    gen = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(w.shape, generator=gen) < density for n, w in weights.items()}
    masks = TilePruning(fraction, plan)(weights, masks)
    apply_masks(model, masks)
    stats = tile_sparsity(model, plan)
    units = _program_units(model, tile)
    assert set(units) == set(stats.layers)
    for name, layer in stats.layers.items():
        assert units[name] == (layer.tiles - layer.zero_tiles, layer.tiles), name


@settings(max_examples=30, deadline=None)
@given(kinds=st.lists(st.sampled_from(["linear", "square"]), min_size=1, max_size=9))
def test_layer_levels_sum_to_the_built_programs(kinds: list[str]) -> None:
    if kinds[0] != "linear":
        kinds = ["linear", *kinds]
    for layout in ("tile", "diagonal"):
        params = _parameters(20)
        program = (
            _core.Program.tile(params, 4, 4, 32, 8)
            if layout == "tile"
            else _core.Program.diagonal(params, 8)
        )
        for i, kind in enumerate(kinds):
            if kind == "linear":
                program.add_linear(f"l{i}", torch.ones(8, 8, dtype=torch.float64).numpy(), None)
            else:
                program.add_square(f"s{i}")
        assert sum(_core.layer_levels(layout, kinds)) == program.levels


def test_map_levels_are_the_programs() -> None:
    """The map lowering's level count (what the dry run sizes the chain by) is the C++
    program's; each layer's level is read from the program's cost(), never recounted."""
    model = small_cnn()
    compiled = compile_model(model, layout="map", parameters=_parameters(5))
    spec = compiled.map_spec
    assert spec is not None
    assert spec.levels == compiled.program.levels == 5
    levels = [int(c["level"]) for c in compiled.program.cost()]
    assert [c["name"] for c in compiled.program.cost()] == [op.name for op in spec.ops]
    assert levels[0] == 5 and levels == sorted(levels, reverse=True)
    with pytest.raises(_core.CompileError, match="map layout only"):
        _core.layer_levels("tile", ["linear", "rotate_sum"])
    with pytest.raises(_core.CompileError, match="'linear', 'square' or 'rotate_sum'"):
        _core.layer_levels("map", ["conv"])


@given(windows=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 64)), max_size=4))
def test_window_sums_cost_what_the_program_rotates(windows: list[tuple[int, int]]) -> None:
    """A window sum rotates by doubling steps plus one per extra set bit of each count (none
    for an empty or single window)."""
    expected = sum(max(0, c.bit_length() - 1) + max(0, bin(c).count("1") - 1) for c, _ in windows)
    steps = _core.window_sum_steps(windows)
    assert len(steps) == expected
    assert all(any(s % w == 0 for _, w in windows) for s in steps)  # multiples of a stride


def test_map_slots_are_the_compiled_programs() -> None:
    """What pruning sizes its units by is the ring the compiler then chooses."""
    model = small_cnn()
    compiled = compile_model(model, layout="map")
    assert map_slots(model) == int(compiled.parameters.poly_degree) // 2
