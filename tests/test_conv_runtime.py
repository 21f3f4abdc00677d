"""Conv networks end to end on the map layout: compile, simulate, encrypt, count.

Small insecure parameters (N = 1024 or 2048) keep every encrypted run well under a second; the
layout and lowering are the same as at N = 16384 (LeNet-like), only the grid is smaller.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from toys import small_cnn

from fheprune import _core
from fheprune.models.zoo import HEModel, LeNetLike
from fheprune.runtime.compiler import compile_model
from fheprune.runtime.conv_lowering import term_units
from fheprune.runtime.roles import Client, ClientSpec, Server, SpecError


def params(n: int, levels: int) -> _core.Parameters:
    return _core.Parameters(n, [50] + [40] * levels, [50], 40, insecure_for_testing=True)


@pytest.mark.parametrize("groups", [1, 4])
def test_compiled_conv_net_matches_torch_simulated_and_encrypted(groups: int) -> None:
    model = small_cnn(groups)
    compiled = compile_model(model, layout="map", parameters=params(2048, 5))
    assert compiled.program.layout == "map"
    assert compiled.program.levels == 5  # conv, square, conv, square, fc
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    want = model(x).detach().numpy()
    np.testing.assert_allclose(compiled.plaintext_forward(x.numpy()), want, rtol=1e-9, atol=1e-12)

    # The C++ simulator runs the very program, with counts equal to the cost model's.
    ctx = _core.Context(compiled.parameters, 1)
    sim = _core.SimulatedExecutor(compiled.program, ctx)
    packed = compiled.map_spec.pack(x[:1].numpy())[0]
    slots, stats = sim.run(np.ascontiguousarray(packed))
    got = compiled.program.unpack_outputs(np.ascontiguousarray(slots), 1)
    np.testing.assert_allclose(got, want[:1], rtol=1e-9, atol=1e-12)
    model_ops: dict[str, int] = {}
    for layer in compiled.program.cost():
        for k, v in layer["ops"].items():
            model_ops[k] = model_ops.get(k, 0) + v
    assert stats["ops"] == model_ops

    # Client and server exchange files; the server never holds a secret key.
    spec = ClientSpec.from_json(ClientSpec.from_compiled(compiled).to_json())
    client = Client(spec)
    server = Server(compiled.program.save(), client.evaluation_keys_bytes())
    outputs = server.run(client.encrypt(x[:2].numpy()))
    y = client.decrypt(outputs, 2)
    np.testing.assert_allclose(y, want[:2], atol=1e-4)
    assert server.last_stats["ops"]["rotate"] == model_ops["rotate"] * 2
    assert server.last_stats["ops"]["mul_plain"] == model_ops["mul_plain"] * 2


@pytest.mark.parametrize(
    ("compact", "groups", "channels"),
    [(True, 16, (16, 16)), (False, 4, (4, 8))],  # G = lanes: 16 (8x8 blocks) or 4 (16x16)
)
def test_grouped_conv_at_lanes_has_no_outer_rotations(
    compact: bool, groups: int, channels: tuple[int, int]
) -> None:
    """HE-group convolution with G = channel blocks per ciphertext: no channel rotations, and
    1/G of the dense convolution's plaintext products (one of its G channel offsets)."""
    dense, grouped = (
        compile_model(
            small_cnn(g, channels=channels),
            layout="map",
            parameters=params(2048, 5),
            compact=compact,
        )
        for g in (1, groups)
    )
    lanes = grouped.map_spec.input.lanes
    assert lanes == groups
    for spec, want in ((grouped.map_spec, True), (dense.map_spec, False)):
        op = next(o for o in spec.ops if getattr(o, "name", "") == "conv2")
        # Every term's channel offset r is 0 (the unit id's last digit, base lanes).
        assert bool(np.all(term_units(spec, op, "diagonal") % lanes == 0)) is want
    conv = {c["name"]: c for c in dense.program.cost()}["conv2"]
    gconv = {c["name"]: c for c in grouped.program.cost()}["conv2"]
    assert gconv["ops"]["mul_plain"] * groups == conv["ops"]["mul_plain"]
    assert gconv["ops"]["rotate"] < conv["ops"]["rotate"]


def test_zero_kernel_positions_drop_inner_rotations() -> None:
    model = small_cnn(1)
    base = {
        c["name"]: c
        for c in compile_model(model, layout="map", parameters=params(2048, 5)).program.cost()
    }
    with torch.no_grad():
        conv2 = model.get_submodule("conv2")
        assert isinstance(conv2, nn.Conv2d)
        conv2.weight[:, :, 0, 0] = 0.0  # kernel position 0 is the unrotated input: no saving
        conv2.weight[:, :, 2, 2] = 0.0  # every input ciphertext at position (2, 2)
    pruned = {
        c["name"]: c
        for c in compile_model(model, layout="map", parameters=params(2048, 5)).program.cost()
    }
    inputs = compile_model(model, layout="map", parameters=params(2048, 5)).map_spec
    n_in = next(op for op in inputs.ops if getattr(op, "name", "") == "conv2").in_ct.max() + 1
    assert pruned["conv2"]["ops"]["rotate"] <= base["conv2"]["ops"]["rotate"] - n_in
    assert pruned["conv2"]["ops"]["mul_plain"] < base["conv2"]["ops"]["mul_plain"]
    for name in ("conv1", "fc1"):
        assert pruned[name]["ops"] == base[name]["ops"]


@pytest.mark.parametrize("name", ["lenet", "hefnet-mnist", "vgg5-mnist"])
def test_dense_conv_layers_stay_within_1_2x_of_their_rotation_bound(name: str) -> None:
    """The dense conv models in the layout the compiler picks, with client shifts as the conv
    benchmarks run them: every layer's rotations within 1.2x of the true lower bound (HEFNet's
    and VGG-5's conv2 pair four inputs with four outputs in 64 to 256 shifts; only the
    per-pair bound sees that 120 is the least)."""
    from fheprune.models import build_model

    model = build_model(name, "mnist", seed=0).eval()
    compiled = compile_model(model, layout="map", client_shifts=True)
    for layer in compiled.program.cost():
        rotations, bound = layer["ops"]["rotate"], layer["rotation_lower_bound"]
        assert bound <= rotations, layer["name"]
        assert rotations <= 1.2 * bound + 1e-9, (layer["name"], rotations, bound)


def test_lenet_like_plans_seven_levels_on_n16384() -> None:
    compiled = compile_model(LeNetLike(conv2_groups=8).double().eval(), layout="map")
    assert compiled.parameters.poly_degree == 16384
    assert compiled.program.levels == 7
    cost = {c["name"]: c for c in compiled.program.cost()}
    # Per-layer rotations stay within 1.2x of the layer's lower bound.
    for name, layer in cost.items():
        if layer["ops"]["rotate"]:
            assert layer["ops"]["rotate"] <= 1.2 * layer["rotation_lower_bound"] + 1e-9, name
    # One term per (output ct, input ct, channel offset, kernel position): C_in * C_out * f^2
    # weights, lanes = 32 per term (the pooled map is compact: 16x16 blocks), and 1/G of
    # the channel offsets
    assert compiled.map_spec.input.lanes == 32
    assert cost["conv2"]["ops"]["mul_plain"] == 32 * 64 * 25 // 32 // 8


def test_dense_lenet_conv2_takes_the_kernel_position_split() -> None:
    """Dilated layout (``compact=False``: only there are conv2's outputs phase-packed): with
    phase-packed outputs no modulus splits conv2 into kernel positions (babies) and channel
    offsets (giants); the lowering's hint does, and it is cheaper: 4 inputs x 24 inner
    rotations + 2 outputs x (8 offsets x 4 phases - 1) outer ones. Zeroing one position unit
    then removes exactly its inner rotation."""
    torch.manual_seed(1)
    model = LeNetLike().double().eval()
    compiled = compile_model(model, layout="map", compact=False)
    conv2 = next(m for m in compiled.program.map_layers() if m["name"] == "conv2")
    assert conv2["hinted"]
    cost = {c["name"]: c for c in compiled.program.cost()}
    assert cost["conv2"]["ops"]["rotate"] == 4 * 24 + 2 * 31
    unit = compiled.map_spec.plan.layers["conv2"]  # position unit (input ct 1, p = (1, 2))
    assert unit.inputs.ciphertexts == 4
    with torch.no_grad():
        conv = model.get_submodule("conv2")
        assert isinstance(conv, nn.Conv2d)
        ct_in, _ = unit.inputs.place(np.arange(32))
        conv.weight[:, torch.as_tensor(ct_in == 1), 1, 2] = 0.0
    pruned = {
        c["name"]: c for c in compile_model(model, layout="map", compact=False).program.cost()
    }
    assert pruned["conv2"]["ops"]["rotate"] == cost["conv2"]["ops"]["rotate"] - 1


def test_map_layout_errors_are_typed() -> None:
    model = small_cnn(1)
    with pytest.raises(_core.CompileError, match="permutations"):
        compile_model(model, layout="map", input_perm=[0], parameters=params(2048, 5))
    with pytest.raises(_core.LevelError, match="needs 5 levels"):
        compile_model(model, layout="map", parameters=params(2048, 3))
    relu = HEModel(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 2, 3)),
                ("relu", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(72, 2)),
            ]
        ),
        (1, 8, 8),
    )
    with pytest.raises(_core.CompileError, match="ReLU"):
        compile_model(relu, layout="map", parameters=params(2048, 3))
    compiled = compile_model(model, layout="map", parameters=params(2048, 5))
    client = Client(ClientSpec.from_compiled(compiled))
    with pytest.raises(_core.CompileError, match="images"):
        client.encrypt(np.zeros((2, 10)))
    for bad in (np.zeros((1, 2, 8, 8)), np.zeros((2, 1, 4, 8)), np.zeros((0, 1, 8, 8))):
        with pytest.raises(_core.CompileError, match="images"):
            client.encrypt(bad)  # right size, wrong shape (or no image): never re-cut
    pooled = small_cnn(1)
    pooled.pool1 = nn.AvgPool2d(2, divisor_override=1)
    with pytest.raises(_core.CompileError, match="divisor_override"):
        compile_model(pooled, layout="map", parameters=params(2048, 5))
    d = json.loads(ClientSpec.from_compiled(compiled).to_json())
    for field, value in (("output_map", [["0"], ["1"]]), ("output_ciphertexts", "1")):
        strict = json.loads(ClientSpec.from_compiled(compiled).to_json())
        strict[field] = value  # strings where integers belong are refused, not coerced
        with pytest.raises(SpecError, match="integer"):
            ClientSpec.from_json(json.dumps(strict))
    d["input_packing"]["lanes"] = 3  # not a power of two
    with pytest.raises(SpecError, match="powers of two"):
        ClientSpec.from_json(json.dumps(d))
    d["input_packing"]["lanes"] = compiled.map_spec.input.lanes * 2  # another ring's layout
    d["input_packing"]["replicas"] = compiled.map_spec.input.replicas * 2
    with pytest.raises(SpecError, match="does not match"):
        ClientSpec.from_json(json.dumps(d))


@pytest.mark.parametrize(
    ("compact", "pruned", "shifts"),
    [(False, False, 9), (False, True, 7), (True, False, 4), (True, True, 2)],
)
def test_client_shifts_move_the_first_convolutions_rotations_to_the_client(
    compact: bool, pruned: bool, shifts: int
) -> None:
    """With client shifts the client sends one pre-rotated copy of its image per inner
    rotation of conv1 (per ciphertext); conv1 then has no rotation, the rest of the program is
    unchanged, the result is the same (simulated and encrypted through client and server
    files), and every term keeps its unit.

    Dilated layout: one copy per live kernel position (9; kernel positions 0 and 4 zero: 7).
    Compact layout (2x2 sub-maps): output sub-map row a at kernel row dy reads input row
    a + dy, i.e. block row (a + dy) div 2 of a sub-map, so the 3x3 kernel needs block offsets
    {0, 1} per side: 4 copies of each sub-map; with kernel rows 1 and 2 zero only block row 0
    is read (a + 0 < 2): offsets (0, 0) and (0, 1), 2 copies. (16 -> 8 channels: the plan
    splits that network; at 4 -> 8 the dilated layout needs fewer dense products.)"""
    model = small_cnn(1, channels=(16, 8) if compact else (4, 8))
    conv1 = model.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    if pruned:
        with torch.no_grad():
            if compact:
                conv1.weight[:, :, 1:, :] = 0.0
            else:
                conv1.weight[:, :, 0, 0] = 0.0
                conv1.weight[:, :, 1, 1] = 0.0
    plain, shifted = (
        compile_model(
            model,
            layout="map",
            parameters=params(2048, 5),
            client_shifts=client,
            compact=compact,
        )
        for client in (False, True)
    )
    packing = shifted.map_spec.input
    assert packing.split == (2 if compact else 1)
    assert len(packing.shifts) == shifts
    if compact:
        grid_w = packing.grid_w
        assert packing.shifts == ((0, 1) if pruned else (0, 1, grid_w, grid_w + 1))
    assert packing.client_ciphertexts == len(packing.shifts) * plain.map_spec.input.ciphertexts
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    packed = shifted.map_spec.pack(x.numpy())
    base = plain.map_spec.pack(x.numpy())
    for j, k in enumerate(packing.shifts):
        np.testing.assert_array_equal(packed[:, j], np.roll(base[:, 0], -k, axis=1))
    want = model(x).detach().numpy()
    np.testing.assert_allclose(shifted.plaintext_forward(x.numpy()), want, rtol=1e-9, atol=1e-12)
    cost = {lay["name"]: lay["ops"] for lay in shifted.program.cost()}
    before = {lay["name"]: lay["ops"] for lay in plain.program.cost()}
    assert cost["conv1"]["rotate"] == 0 < before["conv1"]["rotate"]
    assert cost["conv1"]["mul_plain"] == before["conv1"]["mul_plain"]
    for name in ("act1", "pool1", "conv2", "fc1"):
        assert cost[name] == before[name], name
    for a, b in ((plain.map_spec, shifted.map_spec),):
        op_a, op_b = a.ops[0], b.ops[0]
        assert sorted(term_units(a, op_a).tolist()) == sorted(term_units(b, op_b).tolist())
    spec = ClientSpec.from_json(ClientSpec.from_compiled(shifted).to_json())
    assert spec.packing().shifts == packing.shifts
    client = Client(spec)
    server = Server(shifted.program.save(), client.evaluation_keys_bytes())
    y = client.decrypt(server.run(client.encrypt(x.numpy())), 2)
    np.testing.assert_allclose(y, want, atol=1e-4)


def test_client_shifts_need_a_convolution_first() -> None:
    model = HEModel(
        OrderedDict(
            [
                ("pool", nn.AvgPool2d(2)),
                ("conv", nn.Conv2d(1, 2, 3)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(8, 2)),
            ]
        ),
        (1, 8, 8),
    ).double()
    with pytest.raises(_core.CompileError, match="convolution as the first layer"):
        compile_model(model, layout="map", parameters=params(2048, 2), client_shifts=True)
    with pytest.raises(_core.CompileError, match="map layout only"):
        compile_model(small_cnn(1), layout="tile", client_shifts=True)


def test_encoding_on_demand_gives_the_same_ciphertexts_with_fewer_stored_plaintexts() -> None:
    """A server that encodes map-term plaintexts in every run (programs too big to hold them)
    performs the same operations on the same plaintexts: bit-identical output ciphertexts."""
    model = small_cnn(1)
    compiled = compile_model(model, layout="map", parameters=params(2048, 5))
    spec = ClientSpec.from_compiled(compiled)
    client = Client(spec)
    program, keys = compiled.program.save(), client.evaluation_keys_bytes()
    stored, on_demand = Server(program, keys), Server(program, keys, encode_on_demand=True)
    inputs = client.encrypt(torch.rand(1, 1, 8, 8, dtype=torch.float64).numpy())
    want, got = stored.run(inputs), on_demand.run(inputs)
    assert len(want) == len(got)
    for a, b in zip(want, got, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert _core.save(stored.context, a) == _core.save(on_demand.context, b)
    assert on_demand.last_stats["ops"] == stored.last_stats["ops"]
    terms = stored.last_stats["ops"]["mul_plain"]  # one product per live term
    assert (stored.last_stats["encoded"], on_demand.last_stats["encoded"]) == (0, terms)
    assert on_demand.last_stats["encode_seconds"] > 0
    assert on_demand.plaintext_count < stored.plaintext_count
    assert on_demand.plaintext_bytes < stored.plaintext_bytes / 2
