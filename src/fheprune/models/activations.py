"""HE-friendly activations: low-degree polynomials only (CKKS evaluates + and x, nothing else).

Every activation here is ``a*x^2 + b*x + c`` for some (a, b, c), which the HE compiler reads
through :meth:`PolyActivation.coefficients`. With ``a != 0`` one activation costs one
ciphertext-ciphertext multiplication (one level); with ``a == 0`` it is affine and can be
folded into the neighbouring linear layer for free.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.polynomial import polynomial as npoly
from torch import nn

from fheprune.errors import InputError

__all__ = [
    "ACTIVATIONS",
    "PolyActivation",
    "Square",
    "TanhPoly2",
    "TrainablePoly",
    "fit_tanh_poly2",
    "make_activation",
]

# Fit coefficients smaller than this are floating-point noise of an exactly-zero term (tanh is
# odd, so on a symmetric interval the x^2 and constant terms vanish); snapping them to 0 lets
# the HE program skip the ciphertext square entirely.
_FIT_NOISE = 1e-9


class PolyActivation(nn.Module):
    """Base class: an element-wise polynomial ``a*x^2 + b*x + c``."""

    def coefficients(self) -> tuple[float, float, float]:
        """Current ``(a, b, c)`` of ``a*x^2 + b*x + c`` as Python floats."""
        raise NotImplementedError

    @property
    def degree(self) -> int:
        """Degree of the polynomial as evaluated (2 unless the square term is exactly 0)."""
        a, b, _ = self.coefficients()
        if a != 0.0:
            return 2
        return 1 if b != 0.0 else 0


class Square(PolyActivation):
    """``x^2`` (CryptoNets-style square activation; HE-PEx's CNN-Classifier)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x

    def coefficients(self) -> tuple[float, float, float]:
        return (1.0, 0.0, 0.0)


def fit_tanh_poly2(low: float = -5.0, high: float = 5.0) -> tuple[float, float, float]:
    """Least-squares fit of ``tanh`` by ``a*x^2 + b*x + c`` on ``[low, high]``.

    Uniform weight on the interval (a dense uniform grid, which converges to the continuous
    L2 fit). Returns ``(a, b, c)``; coefficients below 1e-9 in magnitude are set to exactly 0.
    """
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"need a finite interval low < high, got [{low}, {high}]")
    grid = np.linspace(low, high, 200_001)
    c, b, a = (float(v) for v in npoly.polyfit(grid, np.tanh(grid), 2))
    a, b, c = (0.0 if abs(v) < _FIT_NOISE else v for v in (a, b, c))
    return a, b, c


class TanhPoly2(PolyActivation):
    """Degree-2 polynomial approximation of ``tanh`` (HE-PEx Table 2, "2nd degree tanh [15]").

    HE-PEx cites Gottemukkula, "Polynomial activation functions" (OpenReview 2019), whose
    degree-2 tanh is ``-2.46e-5 x^2 + 0.29 x + 1.54e-5``, published as suitable for inputs in
    [-5, 5]. That is the least-squares fit of tanh on [-5, 5]: tanh is odd, so the even
    coefficients of the exact fit are 0 (the published ones are fitting noise) and the linear
    one is ``3/125 * integral_0^5 x tanh(x) dx = 0.29014``. We recompute the fit on
    ``[-bound, bound]`` (default 5) instead of hard-coding rounded values. RMS error of the
    default fit on [-5, 5] is 0.314; on [-1, 1] (``bound=1``) the fit is ``0.8436 x`` with max
    error 0.082. Note that on any symmetric interval this "degree-2" activation is in
    fact linear; the coefficients are fixed (buffers, not trained).
    """

    coeffs: torch.Tensor

    def __init__(self, bound: float = 5.0) -> None:
        super().__init__()
        if not (math.isfinite(bound) and bound > 0):
            raise InputError(f"bound must be a positive finite number, got {bound}")
        self.bound = float(bound)
        a, b, c = fit_tanh_poly2(-self.bound, self.bound)
        # A buffer, so the coefficients travel in state_dict to the HE compiler.
        self.register_buffer("coeffs", torch.tensor([a, b, c], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.coeffs[0], self.coeffs[1], self.coeffs[2]
        return (a * x + b) * x + c

    def coefficients(self) -> tuple[float, float, float]:
        a, b, c = (float(v) for v in self.coeffs.tolist())
        return a, b, c

    def extra_repr(self) -> str:
        a, b, c = self.coefficients()
        return f"bound={self.bound}, a={a:.6g}, b={b:.6g}, c={c:.6g}"


class TrainablePoly(PolyActivation):
    """``a*x^2 + b*x + c`` with learnable scalars a, b, c (SpENCNN / Peng et al. 2022).

    Initialised to ``a=0.1, b=1, c=0``: the identity plus a small square term, so a fresh
    network starts close to a linear one (stable signal scale through stacked activations)
    while still receiving a gradient for the non-linear term. One scalar triple per layer,
    as in SpENCNN's release (per-channel coefficients would cost the same under HE).
    """

    def __init__(self, a: float = 0.1, b: float = 1.0, c: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a * x + self.b) * x + self.c

    def coefficients(self) -> tuple[float, float, float]:
        return float(self.a.item()), float(self.b.item()), float(self.c.item())

    def extra_repr(self) -> str:
        a, b, c = self.coefficients()
        return f"a={a:.6g}, b={b:.6g}, c={c:.6g}"


ACTIVATIONS: dict[str, type[PolyActivation]] = {
    "square": Square,
    "tanh2": TanhPoly2,
    "poly": TrainablePoly,
}


def make_activation(name: str) -> PolyActivation:
    """A fresh activation module by name: "square", "tanh2" or "poly" (case-insensitive)."""
    cls = ACTIVATIONS.get(name.lower())
    if cls is None:
        raise InputError(
            f"unknown activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}"
        )
    return cls()
