"""Folding dead neurons into the next layer's bias: exact, and it prunes the reading columns."""

from __future__ import annotations

import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fheprune.layouts import TileShape, layer_weights
from fheprune.models import build_model
from fheprune.pruning import PruneConfig, apply_masks, build_scheme, full_masks, run_scheme
from fheprune.pruning.fold import fold_dead_neurons


def _masked_output(model: torch.nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor):  # type: ignore[no-untyped-def]
    m = copy.deepcopy(model)
    apply_masks(m, masks)
    m.eval()
    with torch.no_grad():
        return m(x)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), dead=st.integers(1, 120))
def test_folding_dead_mlp_neurons_keeps_the_function(seed: int, dead: int) -> None:
    model = build_model("mlp", "mnist", seed=seed)
    with torch.no_grad():  # non-zero biases, so the dead neurons' constants matter
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    masks = full_masks(layer_weights(model))
    rows = torch.randperm(128, generator=torch.Generator().manual_seed(seed))[:dead]
    masks["fc1"][rows] = False
    x = torch.rand(6, *model.input_shape)
    before = _masked_output(model, masks, x)
    folded = fold_dead_neurons(model, masks)
    after = _masked_output(model, folded, x)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)
    # The folded columns are zero in the model itself, not only in the masks.
    fc2 = model.get_submodule("fc2").weight.detach()
    assert not bool(fc2[:, rows].any())
    dead_cols = ~folded["fc2"].any(dim=0)
    assert sorted(dead_cols.nonzero().flatten().tolist()) == sorted(rows.tolist())
    assert torch.equal(folded["fc1"], masks["fc1"])  # producers untouched


def test_folding_a_dead_conv_channel_into_the_fc_layer() -> None:
    model = build_model("cnn", "mnist", seed=3)
    with torch.no_grad():
        model.get_submodule(model.prunable_layers()[0]).bias.uniform_(-0.5, 0.5)
    names = model.prunable_layers()
    masks = full_masks(layer_weights(model))
    masks[names[0]][[2, 7]] = False  # two dead output channels
    x = torch.rand(3, *model.input_shape)
    before = _masked_output(model, masks, x)
    folded = fold_dead_neurons(model, masks)
    assert torch.allclose(before, _masked_output(model, folded, x), atol=1e-5, rtol=1e-4)
    fc = folded[names[-1]]
    per_channel = fc.shape[1] // masks[names[0]].shape[0]
    dead = (~fc.any(dim=0)).nonzero().flatten()
    assert len(dead) == 2 * per_channel  # each dead channel's whole block of features
    assert set((dead // per_channel).tolist()) == {2, 7}


def test_nothing_to_fold() -> None:
    model = build_model("mlp", "mnist", seed=0)
    masks = full_masks(layer_weights(model))
    bias = model.get_submodule("fc2").bias.detach().clone()
    folded = fold_dead_neurons(model, masks)  # no dead neuron
    assert all(torch.equal(folded[n], masks[n]) for n in masks)
    assert torch.equal(model.get_submodule("fc2").bias, bias)
    # Without an input shape there is nothing to probe with: masks come back unchanged.
    plain = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    dead = {"0": torch.zeros(3, 4, dtype=torch.bool), "1": torch.ones(2, 3, dtype=torch.bool)}
    same = fold_dead_neurons(plain, dead)
    assert all(torch.equal(same[n], dead[n]) for n in dead)
    # ... and with one given, the dead neurons' columns are folded.
    folded_plain = fold_dead_neurons(plain, dead, input_shape=(4,))
    assert not bool(folded_plain["1"].any())


def test_neuron_schemes_prune_the_consumer_columns() -> None:
    model = build_model("mlp", "mnist", seed=1)
    result = run_scheme(
        build_scheme("P2"),
        model,
        TileShape(16, 16),
        prune_config=PruneConfig(0.75, target="neuron"),
        retrain_fn=lambda m, masks: None,
    )
    dead_rows = ~result.masks["fc1"].any(dim=1)
    dead_cols = ~result.masks["fc2"].any(dim=0)
    assert int(dead_rows.sum()) == 96
    assert torch.equal(dead_rows, dead_cols)


def test_a_live_neuron_that_looks_constant_is_not_folded() -> None:
    """A ReLU neuron that is 0 on the random probes is not dead: only pruned rows fold."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.1, 0.1, 0.1]]))
        net[0].bias.copy_(torch.tensor([0.0, -100.0]))  # neuron 1: ReLU gives 0 on probes
    masks = {"0": torch.ones(2, 3, dtype=torch.bool), "2": torch.ones(1, 2, dtype=torch.bool)}
    folded = fold_dead_neurons(net, masks, input_shape=(3,))
    assert bool(folded["2"].all())  # neuron 1 is live (large inputs switch it on)
    masks["0"][0] = False  # now neuron 0 is pruned: its constant ReLU(0) = 0 folds
    folded = fold_dead_neurons(net, masks, input_shape=(3,))
    assert folded["2"].tolist() == [[False, True]]
