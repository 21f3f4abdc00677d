"""Tests for fheprune.models: polynomial activations and the HE-friendly model zoo."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the models and the trainer need torch")
import torch
from torch import nn

from fheprune.models import (
    ACTIVATIONS,
    DATASET_SHAPES,
    MODEL_NAMES,
    AutoEncoder,
    CNNClassifier,
    HEModel,
    LeNetLike,
    MLPClassifier,
    Square,
    TanhPoly2,
    TrainablePoly,
    build_model,
    fit_tanh_poly2,
    make_activation,
    model_defaults,
)

torch.set_num_threads(2)

DATASETS = tuple(DATASET_SHAPES)

# Exact layer names and co-permutation pairs the pruning / permutation code relies on.
EXPECTED = {
    ("mlp", "mnist"): (["fc1", "fc2"], None),
    ("mlp", "cifar10"): (["fc1", "fc2", "fc3"], None),
    ("ae-compressor", "mnist"): (["fc1", "fc2"], None),
    ("ae-denoiser", "cifar10"): (["fc1", "fc2", "fc3", "fc4"], None),
    ("cnn", "mnist"): (["conv1", "fc1"], "conv1"),
    ("cnn", "svhn"): (["conv1", "conv2", "fc1"], "conv2"),
    ("lenet", "mnist"): (["conv1", "conv2", "fc1", "fc2"], "conv2"),
}


# --------------------------------------------------------------------------- activations


def test_square_values_and_coefficients() -> None:
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(Square()(x), x * x)
    assert Square().coefficients() == (1.0, 0.0, 0.0)
    assert Square().degree == 2


def test_tanh_poly2_is_the_least_squares_fit_of_reference_15() -> None:
    act = TanhPoly2()
    a, b, c = act.coefficients()
    # tanh is odd: the even terms of a symmetric fit vanish exactly (snapped to 0).
    assert a == 0.0 and c == 0.0
    # Gottemukkula's published degree-2 tanh is 0.29 x (+ ~1e-5 noise terms) on [-5, 5].
    assert b == pytest.approx(0.29, abs=5e-4)
    # Closed form of the L2 fit on [-5, 5]: b = 3/125 * int_0^5 x tanh(x) dx.
    xs = np.linspace(0.0, 5.0, 500_001)
    integral = float(np.sum(xs * np.tanh(xs)) * (xs[1] - xs[0]))
    assert b == pytest.approx(3 / 125 * integral, abs=1e-4)
    assert act.degree == 1


def test_tanh_poly2_close_to_tanh_on_its_interval() -> None:
    x = torch.linspace(-5, 5, 10_001, dtype=torch.float64)
    act = TanhPoly2()
    rms = float(torch.sqrt(torch.mean((act(x.float()).double() - torch.tanh(x)) ** 2)))
    assert rms < 0.32
    # Least squares: any perturbation of a coefficient gives a larger L2 error.
    a, b, c = act.coefficients()
    for da, db, dc in [(0.01, 0, 0), (0, 0.01, 0), (0, -0.01, 0), (0, 0, 0.01)]:
        poly = (a + da) * x * x + (b + db) * x + (c + dc)
        assert float(torch.sqrt(torch.mean((poly - torch.tanh(x)) ** 2))) > rms
    # A narrower interval gives a uniformly close fit there.
    narrow = TanhPoly2(bound=1.0)
    xn = torch.linspace(-1, 1, 2001)
    assert float((narrow(xn) - torch.tanh(xn)).abs().max()) < 0.09


def test_tanh_poly2_coefficients_are_fixed_buffers() -> None:
    act = TanhPoly2()
    assert list(act.parameters()) == []
    assert "coeffs" in act.state_dict()


def test_fit_tanh_poly2_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError, match="interval"):
        fit_tanh_poly2(1.0, -1.0)
    with pytest.raises(ValueError, match="bound"):
        TanhPoly2(bound=0.0)
    # An asymmetric interval keeps a genuine square term.
    a, _, _ = fit_tanh_poly2(0.0, 3.0)
    assert a < 0


def test_trainable_poly_init_and_gradients() -> None:
    act = TrainablePoly()
    assert act.coefficients() == pytest.approx((0.1, 1.0, 0.0))
    x = torch.tensor([-2.0, 0.5, 3.0])
    assert torch.allclose(act(x), 0.1 * x * x + x)
    act(x).sum().backward()
    assert act.a.grad is not None and float(act.a.grad) == pytest.approx(float((x * x).sum()))
    assert act.b.grad is not None and float(act.b.grad) == pytest.approx(float(x.sum()))
    assert act.c.grad is not None and float(act.c.grad) == pytest.approx(3.0)
    assert len(list(act.parameters())) == 3


def test_make_activation() -> None:
    assert set(ACTIVATIONS) == {"square", "tanh2", "poly"}
    assert isinstance(make_activation("square"), Square)
    assert isinstance(make_activation("TANH2"), TanhPoly2)
    assert isinstance(make_activation("poly"), TrainablePoly)
    with pytest.raises(ValueError, match="supported: poly, square, tanh2"):
        make_activation("relu")


# --------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes(name: str, dataset: str) -> None:
    model = build_model(name, dataset, seed=0)
    chans, size, classes = DATASET_SHAPES[dataset]
    flat = name in ("mlp", "ae-compressor", "ae-denoiser")
    assert model.input_shape == ((chans * size * size,) if flat else (chans, size, size))
    x = torch.rand(3, *model.input_shape)
    out = model(x)
    if model.task == "reconstruction":
        assert out.shape == x.shape
    else:
        assert out.shape == (3, classes)
    assert torch.isfinite(out).all()
    assert model.model_name == name and model.dataset == dataset


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_only_he_friendly_modules(name: str) -> None:
    allowed = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten, Square, TanhPoly2, TrainablePoly)
    for dataset in DATASETS:
        model = build_model(name, dataset)
        for child in model.children():
            assert isinstance(child, allowed), type(child)


@pytest.mark.parametrize(("key", "expected"), list(EXPECTED.items()))
def test_prunable_layers_and_chain(key: tuple[str, str], expected: tuple[list[str], str]) -> None:
    name, dataset = key
    layers, flatten_after = expected
    model = build_model(name, dataset)
    assert model.prunable_layers() == layers
    assert model.neuron_chain() == [(layers[i], layers[i + 1]) for i in range(len(layers) - 1)]
    assert model.flatten_after == flatten_after
    modules = dict(model.named_modules())
    for name_ in layers:
        assert isinstance(modules[name_], nn.Linear | nn.Conv2d)
    for producer, consumer in model.neuron_chain():
        p, c = modules[producer], modules[consumer]
        produced = p.out_features if isinstance(p, nn.Linear) else p.out_channels
        if isinstance(c, nn.Conv2d):
            assert c.in_channels == produced
        elif producer == model.flatten_after:
            assert model.flatten_shape is not None
            ch, h, w = model.flatten_shape
            assert ch == produced and c.in_features == ch * h * w
        else:
            assert c.in_features == produced


def test_table2_widths() -> None:
    assert model_defaults("mlp", "mnist")["hidden"] == (128,)
    assert model_defaults("mlp", "cifar10")["hidden"] == (256, 128)
    assert model_defaults("ae-compressor", "svhn")["hidden"] == (256, 128, 256)
    assert model_defaults("ae-denoiser", "mnist")["hidden"] == (128,)
    assert model_defaults("cnn", "mnist")["channels"] == (32,)
    assert model_defaults("cnn", "cifar10")["channels"] == (32, 64)
    for name in ("mlp", "ae-compressor", "ae-denoiser"):
        assert model_defaults(name, "mnist")["activation"] == "tanh2"
    assert model_defaults("cnn", "svhn")["activation"] == "square"
    assert model_defaults("lenet", "mnist")["activation"] == "poly"
    cnn = build_model("cnn", "mnist")
    assert isinstance(cnn, CNNClassifier) and cnn.flatten_shape == (32, 12, 12)
    assert build_model("cnn", "cifar10").flatten_shape == (64, 5, 5)


def test_lenet_matches_spencnn_table2() -> None:
    model = build_model("lenet", "mnist")
    assert isinstance(model, LeNetLike)
    shapes = {n: tuple(m.weight.shape) for n, m in model.prunable_modules().items()}
    assert shapes == {
        "conv1": (32, 1, 5, 5),
        "conv2": (64, 32, 5, 5),
        "fc1": (32, 64),
        "fc2": (10, 32),
    }
    assert model.flatten_shape == (64, 1, 1)
    acts = [m for m in model.modules() if isinstance(m, TrainablePoly)]
    assert len(acts) == 3
    grouped = LeNetLike(conv2_groups=4)
    assert tuple(grouped.prunable_modules()["conv2"].weight.shape) == (64, 8, 5, 5)
    assert grouped(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="divide"):
        LeNetLike(conv2_groups=5)


def _permute_shared_neurons(model: HEModel, seed: int) -> HEModel:
    """Co-permute every neuron set in neuron_chain (rows of the producer, columns of the
    consumer, FC column blocks across a flatten) the way the permutation engine must."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for producer, consumer in model.neuron_chain():
            p, c = modules[producer], modules[consumer]
            n = p.weight.shape[0]
            perm = torch.randperm(n, generator=gen)
            p.weight.copy_(p.weight[perm])
            assert p.bias is not None
            p.bias.copy_(p.bias[perm])
            if producer == model.flatten_after:
                assert model.flatten_shape is not None
                _, h, w = model.flatten_shape
                cols = (perm[:, None] * (h * w) + torch.arange(h * w)[None, :]).reshape(-1)
                c.weight.copy_(c.weight[:, cols])
            else:
                c.weight.copy_(c.weight[:, perm])
    return model


@pytest.mark.parametrize(
    ("name", "dataset"),
    [("mlp", "cifar10"), ("cnn", "cifar10"), ("lenet", "mnist"), ("ae-compressor", "svhn")],
)
def test_neuron_chain_co_permutation_preserves_function(name: str, dataset: str) -> None:
    model = build_model(name, dataset, seed=1).double()
    x = torch.rand(4, *model.input_shape, dtype=torch.float64)
    before = model(x)
    after = _permute_shared_neurons(model, seed=2)(x)
    assert torch.allclose(before, after, atol=1e-9)


def test_build_model_overrides_seed_and_errors() -> None:
    model = build_model("mlp", "mnist", hidden=(64, 32))
    assert isinstance(model, MLPClassifier) and model.prunable_layers() == ["fc1", "fc2", "fc3"]
    assert model.arch["hidden"] == (64, 32)
    a = build_model("cnn", "CIFAR-10", seed=3)
    b = build_model("cnn", "cifar10", seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    state = torch.get_rng_state()
    build_model("lenet", seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_model("mlp", "imagenet")
    with pytest.raises(TypeError, match="bad arguments"):
        build_model("mlp", width=3)
    with pytest.raises(ValueError, match="unknown activation"):
        build_model("mlp", activation="relu")
    with pytest.raises(ValueError, match="too small"):
        CNNClassifier(image_size=8, channels=(8, 8))


def test_autoencoder_output_is_linear() -> None:
    ae = AutoEncoder(in_features=12, hidden=(5,), activation="square")
    names = [n for n, _ in ae.named_children()]
    assert names == ["fc1", "act1", "fc2"]
    assert ae.task == "reconstruction"
    assert torch.isfinite(ae(torch.rand(2, 12))).all()
