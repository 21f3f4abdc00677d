"""Small seeded models and programs several test modules share (insecure N = 1024 rings:
tests/conftest.py lets this process load them)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from fheprune import _core
from fheprune.data import Dataset
from fheprune.models.activations import TrainablePoly
from fheprune.models.zoo import HEModel, MLPClassifier
from fheprune.pruning.rotation_aware import TrainerHarness
from fheprune.runtime.compiler import CompiledModel, compile_model
from fheprune.training import TrainConfig, make_loaders


def toy_model() -> torch.nn.Module:
    """A seeded float64 MLP 20 -> 12 (square) -> 5."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLPClassifier(in_features=20, hidden=(12,), classes=5, activation="square")
    return model.double().eval()


def toy_parameters(poly_degree: int = 1024, special_bits: int = 50) -> object:
    return _core.Parameters(
        poly_degree, [50] + [40] * 4, [special_bits], 40, insecure_for_testing=True
    )


def toy_compiled(poly_degree: int = 1024, special_bits: int = 50) -> CompiledModel:
    """The toy model in the tile layout (insecure parameters); another ``special_bits`` gives
    other parameters with ciphertexts of the same size."""
    parameters = toy_parameters(poly_degree, special_bits)
    return compile_model(toy_model(), parameters=parameters, layout="tile", tile=(4, 4))


def random_image_harness(config: TrainConfig, count: int = 96) -> TrainerHarness:
    """The real trainer on ``count`` seeded random 12x12 images with random labels (the
    LeNet-like data pipeline, no dataset on disk)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count).astype(np.int64)
    ds = Dataset(images=images, labels=labels, name="random", classes=10, split="train")
    return TrainerHarness(make_loaders(ds, None, "lenet", config), config, progress=False)


def small_cnn(groups: int = 1, seed: int = 0, channels: tuple[int, int] = (4, 8)) -> HEModel:
    """1x8x8 -> conv 3x3 pad 1 (4 ch) -> poly -> pool 2 -> conv 3x3 (8 ch, groups) -> poly ->
    global pool -> flatten -> fc 8 -> 3 (``channels``: the two conv widths).

    Map layout at N = 2048: the padded 10x10 input, pooled by 2 after conv1, is split into
    2x2 sub-maps of 8x8 blocks, 16 per ciphertext (``compact=False``: 16x16 blocks, 4)."""
    torch.manual_seed(seed)
    c1, c2 = channels
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv1", nn.Conv2d(1, c1, 3, padding=1)),
            ("act1", TrainablePoly(0.3, 0.8, 0.1)),
            ("pool1", nn.AvgPool2d(2)),
            ("conv2", nn.Conv2d(c1, c2, 3, groups=groups)),
            ("act2", TrainablePoly(-0.2, 1.1, 0.05)),
            ("pool2", nn.AvgPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(c2, 3)),
        ]
    )
    model = HEModel(layers, (1, 8, 8))
    return model.double().eval()
