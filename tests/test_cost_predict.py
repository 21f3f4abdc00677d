"""The cost model's operations by level (``Program.cost()``'s ``ops_by_level``) and the
latency prediction built on them (``fheprune.runtime.cost.predict``).

The levels come from the C++ cost model (cpp/tests/test_cost_levels.cpp holds them to the
executor's); here: they add up to the per-layer counts for compiled programs of every layout,
and ``predict`` charges each at its own level, checked against sums worked out by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from toys import small_cnn, toy_model

from fheprune import _core
from fheprune.errors import InputError
from fheprune.runtime.compiler import compile_model
from fheprune.runtime.cost import TIMED_AS, OpTimings, calibrate, predict

# ops_by_level splits two of the counts of "ops": hoisted rotations and fused additions.
FOLDED = {"rotate_hoisted": "rotate", "add_fused": "add"}


def params(n: int, levels: int) -> Any:
    return _core.Parameters(n, [50] + [40] * levels, [50], 40, insecure_for_testing=True)


def folded_totals(layer: dict[str, Any]) -> dict[str, int]:
    totals = dict.fromkeys(layer["ops"], 0)
    for op, by_level in layer["ops_by_level"].items():
        totals[FOLDED.get(op, op)] += sum(by_level.values())
    return totals


def compiled_programs() -> dict[str, Any]:
    mlp = toy_model()
    return {
        "tile": compile_model(mlp, parameters=params(1024, 6), layout="tile", tile=(4, 4)),
        "diagonal": compile_model(mlp, parameters=params(1024, 6), layout="diagonal"),
        "map": compile_model(small_cnn(), parameters=params(2048, 5), layout="map"),
    }


@pytest.mark.parametrize("layout", ["tile", "diagonal", "map"])
def test_ops_by_level_add_up_to_the_counts_and_to_the_simulated_run(layout: str) -> None:
    compiled = compiled_programs()[layout]
    program = compiled.program
    cost = program.cost()
    kinds = {layer["kind"] for layer in cost}
    assert kinds >= {"tile" if layout == "tile" else layout, "square"}
    ctx = _core.Context(compiled.parameters, 1)
    if layout == "map":
        assert "window_sum" in kinds
        packed = np.ascontiguousarray(compiled.map_spec.pack(torch.zeros(1, 1, 8, 8).numpy())[0])
    else:
        packed = program.pack_inputs(np.zeros((1, 20)))
    _, stats = _core.SimulatedExecutor(program, ctx).run(packed)
    hoisted = 0
    for layer, ran in zip(cost, stats["layers"], strict=True):
        assert folded_totals(layer) == layer["ops"] == ran["ops"], layer["name"]
        by_level = layer["ops_by_level"]
        hoisted += sum(by_level.get("rotate_hoisted", {}).values())
        # Every operation runs at the layer's input level or within the levels it consumes.
        levels = {lv for counts in by_level.values() for lv in counts}
        assert all(layer["level"] - 2 <= lv <= layer["level"] for lv in levels), layer["name"]
        if layer["kind"] in ("window_sum", "square", "refresh"):
            # A window sum that relinearizes and rescales the squares before it (their
            # products, unrescaled) then runs its windows one level down.
            finishes_squares = "relinearize" in by_level and layer["kind"] == "window_sum"
            allowed = {layer["level"], layer["level"] - 1} if finishes_squares else {layer["level"]}
            assert levels <= allowed, layer["name"]
    # Diagonal and map layers hoist their baby steps; the tile layout never does.
    assert (hoisted > 0) == (layout != "tile")


# Synthetic timings: (level + 1) x a unit per timing, a different power of ten each, so every
# (operation, level) of a hand sum shows in the total.
UNITS = {
    "mul_plain": 1.0,
    "add": 10.0,
    "add_plain": 100.0,
    "rescale": 1e3,
    "rotate": 1e4,
    "rotate_hoisted": 1e5,
    "multiply": 1e6,
    "constant": 1e7,
    "relinearize": 1e8,
}


def synthetic(levels: int) -> OpTimings:
    return OpTimings(
        1024, {op: {lv: (lv + 1) * unit for lv in range(levels + 1)} for op, unit in UNITS.items()}
    )


def test_predict_charges_each_operation_at_its_level_diagonal() -> None:
    rng = np.random.default_rng(0)
    program = _core.Program.diagonal(params(1024, 3), 8)
    program.add_linear("fc1", rng.uniform(0.1, 0.5, (8, 8)), rng.uniform(0.1, 0.5, 8))
    program.add_square("sq")
    program.add_linear("fc2", rng.uniform(0.1, 0.5, (2, 8)))
    # fc1 at level 3: 8 diagonals, baby step 2: one hoisted rotation and the 8 products (4 of
    # their additions fused) with 4 rescales at 3; 3 giant rotations, their 3 additions and
    # the bias at 2. sq at 2. fc2 at 1: diagonals 0 and 1, 2 products and rescales at 1; one
    # giant rotation and the 8 -> 2 fold (2 rotate-and-adds) at 0.
    fc1 = 1 * 1e5 * 4 + 8 * 1 * 4 + 4 * 1e3 * 4 + 3 * 1e4 * 3 + 3 * 10 * 3 + 1 * 100 * 3
    sq = 1 * 1e6 * 3 + 1 * 1e8 * 3 + 1 * 1e3 * 3
    fc2 = 2 * 1 * 2 + 2 * 1e3 * 2 + 3 * 1e4 * 1 + 3 * 10 * 1
    got = predict(program, synthetic(3), groups=2)
    assert [row["name"] for row in got["layers"]] == ["fc1", "sq", "fc2"]
    assert [row["seconds"] for row in got["layers"]] == pytest.approx([2 * fc1, 2 * sq, 2 * fc2])
    assert got["seconds"] == pytest.approx(2 * (fc1 + sq + fc2))


def test_predict_charges_each_operation_at_its_level_map() -> None:
    # Two inputs, three outputs: outputs 0 and 1 read both inputs at shifts b + 128 g
    # (b < 3, g < 2), split as babies b and giant 128; output 2 is its bias alone. Then the
    # three are folded into one and summed over a window of 3, and squared.
    program = _core.Program.map(params(1024, 2), 2)
    terms = [
        (o, i, b + 128 * g, b) for o in (0, 1) for i in (0, 1) for g in (0, 1) for b in (0, 1, 2)
    ]
    out, inp, shift, baby = (np.array(col) for col in zip(*terms, strict=True))
    values = np.linspace(0.1, 0.3, len(terms)).reshape(-1, 1)
    bias = np.array([[0.5], [0.0], [-0.25]])
    program.add_map_linear(
        "conv",
        3,
        out.astype(np.uint32),
        inp.astype(np.uint32),
        shift.astype(np.uint64),
        values,
        bias=bias,
        baby=baby.astype(np.uint64),
    )
    program.add_rotate_sum("pool", [(3, 2)], 3)
    program.add_square("act")
    cost = {layer["name"]: layer["ops_by_level"] for layer in program.cost()}
    assert cost["pool"] == {"rotate": {1: 2}, "add": {1: 4}}  # no level: all at the input's
    # conv at 2: 2 x 2 hoisted babies and 24 products (4 blocks, 5 fused additions each)
    # with 4 rescales at 2; the 2 giant rotations, the 2 additions across blocks, one bias
    # and one constant output at 1. pool at 1: 2 rotations, 2 fold and 2 window additions.
    conv = 4 * 1e5 * 3 + 24 * 1 * 3 + 4 * 1e3 * 3 + 2 * 1e4 * 2 + 2 * 10 * 2 + 100 * 2 + 1e7 * 2
    pool = 2 * 1e4 * 2 + 4 * 10 * 2
    act = 1e6 * 2 + 1e8 * 2 + 1e3 * 2
    got = predict(program, synthetic(2), groups=1)
    assert [row["seconds"] for row in got["layers"]] == pytest.approx([conv, pool, act])
    assert got["seconds"] == pytest.approx(conv + pool + act)


def test_a_square_before_a_folding_pool_is_relinearized_once_per_sum() -> None:
    # Four inputs, each squared, folded into two and summed over a window of 2: four
    # products at level 1, but two relinearizations and rescales, charged to the pool at the
    # square's level, with the fold's two additions; the window runs at level 0.
    program = _core.Program.map(params(1024, 1), 4)
    program.add_square("act")
    program.add_rotate_sum("pool", [(2, 1)], 2)
    # The pool's inputs are the unrescaled products: at the square's level.
    assert [layer["level"] for layer in program.cost()] == [1, 1]
    cost = {layer["name"]: layer["ops_by_level"] for layer in program.cost()}
    assert cost["act"] == {"multiply": {1: 4}}
    assert cost["pool"] == {
        "add": {1: 2, 0: 2},
        "relinearize": {1: 2},
        "rescale": {1: 2},
        "rotate": {0: 2},
    }
    got = predict(program, synthetic(1), groups=1)
    act = 4 * 1e6 * 2
    pool = 2 * 10 * 2 + 2 * 1e8 * 2 + 2 * 1e3 * 2 + 2 * 1e4 * 1 + 2 * 10 * 1
    assert [row["seconds"] for row in got["layers"]] == pytest.approx([act, pool])


def test_predict_names_a_missing_timing_and_calibrate_times_every_charged_one() -> None:
    program = _core.Program.diagonal(params(1024, 1), 8)
    program.add_linear("fc", np.full((8, 8), 0.1))
    timings = synthetic(1)
    del timings.seconds["rotate_hoisted"]
    with pytest.raises(InputError, match="rotate_hoisted"):
        predict(program, timings, 1)
    measured = calibrate(params(1024, 1), repeats=1, terms=4)
    charged = {t for t in TIMED_AS.values() if t is not None} - {"refresh"}
    assert charged <= set(measured.seconds)
    assert all(measured.seconds[t] for t in charged)
    assert predict(program, measured, 1)["seconds"] > 0
