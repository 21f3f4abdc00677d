"""The activation-aware criterion ("act"), its calibration, and inputs at their own fraction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from fheprune.layouts import TileShape, layer_weights
from fheprune.pruning import MagnitudePruning, PruneConfig, build_scheme, run_scheme
from fheprune.pruning.calibration import input_rms


class MLP(nn.Module):
    flatten_after = None
    task = "classification"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x).square())

    def prunable_layers(self) -> list[str]:
        return ["fc1", "fc2"]

    def neuron_chain(self) -> list[tuple[str, str]]:
        return [("fc1", "fc2")]


class CNN(nn.Module):
    flatten_after = "conv"
    task = "classification"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).flatten(1))

    def prunable_layers(self) -> list[str]:
        return ["conv", "fc"]

    def neuron_chain(self) -> list[tuple[str, str]]:
        return []


def test_input_rms_matches_a_direct_computation() -> None:
    model = CNN()
    batches = [torch.randn(4, 2, 6, 6), 3 * torch.randn(2, 2, 6, 6)]
    rms = input_rms(model, batches)
    x = torch.cat(batches).to(torch.float64)
    expect_conv = x.pow(2).mean(dim=(0, 2, 3)).sqrt()  # per input channel
    assert torch.allclose(rms["conv"], expect_conv, rtol=1e-6)
    with torch.no_grad():
        hidden = torch.cat([model.conv(b).flatten(1) for b in batches]).to(torch.float64)
    assert torch.allclose(rms["fc"], hidden.pow(2).mean(dim=0).sqrt(), rtol=1e-5)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="calibration input"):
        input_rms(model, [])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.sampled_from([0.25, 0.5, 0.75]))
def test_act_weight_scores_are_weight_times_input_rms(seed: int, fraction: float) -> None:
    """The selection equals L1 pruning of |w| * rms; a uniform rms gives plain L1's masks."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 7, generator=gen)
    rms = torch.rand(7, generator=gen, dtype=torch.float64) + 0.1
    act = MagnitudePruning(fraction, criterion="act", input_rms={"a": rms})({"a": w})
    scaled = MagnitudePruning(fraction)({"a": w.to(torch.float64) * rms})
    assert torch.equal(act["a"], scaled["a"])
    flat = MagnitudePruning(fraction, criterion="act", input_rms={"a": torch.ones(7)})({"a": w})
    assert torch.equal(flat["a"], MagnitudePruning(fraction)({"a": w})["a"])


def test_act_prunes_weights_on_silent_inputs_first() -> None:
    w = torch.ones(3, 4)  # equal magnitudes: only the inputs tell the weights apart
    rms = torch.tensor([1.0, 0.0, 2.0, 0.5])
    masks = MagnitudePruning(0.5, criterion="act", input_rms={"a": rms})({"a": w})
    assert masks["a"][:, [0, 2]].all() and not masks["a"][:, [1, 3]].any()


def test_act_conv_broadcasts_the_channel_rms_over_kernel_positions() -> None:
    w = torch.ones(2, 3, 2, 2)
    rms = torch.tensor([0.1, 1.0, 0.5])
    masks = MagnitudePruning(1 / 3, criterion="act", input_rms={"c": rms})({"c": w})
    assert not masks["c"][:, 0].any() and masks["c"][:, 1:].all()


def test_act_errors_are_typed_and_say_what_is_needed() -> None:
    with pytest.raises(ValueError, match="input_rms"):
        MagnitudePruning(0.5, criterion="act")
    method = MagnitudePruning(0.5, criterion="act", input_rms={"a": torch.ones(3)})
    with pytest.raises(ValueError, match="has 3 entries"):
        method({"a": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="'b'"):
        method({"b": torch.ones(2, 3)})


def test_input_fraction_prunes_exactly_that_many_inputs() -> None:
    """Neurons at ``fraction``, input columns at ``input_fraction``, ranked separately."""
    gen = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(8, 20, generator=gen), torch.randn(3, 8, generator=gen)
    masks = MagnitudePruning(0.75, target="neuron+input", scope="global", input_fraction=0.4)(
        {"h": w1, "out": w2}
    )
    h = masks["h"]
    live_rows = h.any(dim=1)
    live_cols = h.any(dim=0)
    assert int((~live_rows).sum()) == 6  # 0.75 of 8 hidden neurons
    assert int((~live_cols).sum()) == 8  # 0.4 of 20 inputs
    # the inputs removed are the weakest columns by mean |w| (ranked among themselves)
    weakest = w1.abs().mean(dim=0).argsort()[:8]
    assert not h[:, weakest].any()
    assert masks["out"].all()  # the output layer is never pruned
    with pytest.raises(ValueError, match="neuron\\+input"):
        MagnitudePruning(0.5, target="neuron", input_fraction=0.5)
    with pytest.raises(ValueError, match="neuron\\+input"):
        PruneConfig(0.5, target="neuron", input_fraction=0.5)


def test_run_scheme_calibrates_act_and_refuses_without_data() -> None:
    model = MLP()
    batches = [torch.randn(16, 8)]
    with torch.no_grad():
        batches[0][:, :2] = 0.0  # two silent inputs
    config = PruneConfig(0.5, criterion="act", target="neuron+input", input_fraction=0.25)
    assert config.to_dict()["input_fraction"] == 0.25
    assert PruneConfig.from_mapping(config.to_dict()) == config
    before = {n: w.clone() for n, w in layer_weights(model).items()}
    with pytest.raises(ValueError, match="calibration"):
        run_scheme(
            build_scheme("P2"),
            model,
            TileShape(2, 2),
            prune_config=config,
            retrain_fn=lambda m, masks: None,
        )
    assert all(torch.equal(before[n], w) for n, w in layer_weights(model).items())
    result = run_scheme(
        build_scheme("P2"),
        model,
        TileShape(2, 2),
        prune_config=config,
        retrain_fn=lambda m, masks: None,
        calibration=batches,
    )
    dead_inputs = ~result.masks["fc1"].any(dim=0)
    assert dead_inputs.tolist() == [True, True] + [False] * 6  # the silent ones, exactly


def test_act_on_a_grouped_conv_scales_each_group_by_its_own_inputs() -> None:
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)  # weight [4, 2, 1, 1]
    rms = torch.tensor([1.0, 2.0, 30.0, 40.0])  # group 0 reads channels 0-1, group 1 reads 2-3
    w = torch.ones_like(conv.weight)
    masks = MagnitudePruning(0.5, criterion="act", input_rms={"g": rms})({"g": w})
    # group 0's outputs (rows 0-1) score 1 and 2, group 1's 30 and 40: group 0 goes first
    assert not masks["g"][:2].any() and masks["g"][2:].all()
    with pytest.raises(ValueError, match="has 3 entries"):
        MagnitudePruning(0.5, criterion="act", input_rms={"g": torch.ones(3)})({"g": w})


def test_input_fraction_refuses_a_model_that_starts_with_a_conv() -> None:
    weights = {"conv": torch.randn(3, 2, 3, 3), "fc": torch.randn(2, 48)}
    method = MagnitudePruning(0.5, target="neuron+input", input_fraction=0.5)
    with pytest.raises(ValueError, match="first Linear"):
        method(weights)
