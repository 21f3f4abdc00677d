"""Small seeded models and programs several test modules share (insecure N = 1024 rings:
tests/conftest.py lets this process load them)."""

from __future__ import annotations

import torch

from fheprune import _core
from fheprune.models.zoo import MLPClassifier
from fheprune.runtime.compiler import CompiledModel, compile_model


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
