"""The encrypted softmax: exp by a polynomial and squarings, a class sum, 1/sum by a
Chebyshev polynomial refined by Newton steps.

The claimed input range is ``|z_c| <= logit_bound`` for every class. It holds by construction
in our training: features have L2 norm 1 and the client clips every class's weight column to
norm ``logit_bound`` when it refreshes the weights, so ``|z_c| <= ||x|| ||w_c||``. Inside that
range the class sum ``S = sum_c exp(z_c)`` lies in ``[c e^-R, c e^R]``, a ratio of ``e^(2R)``,
which a degree-31 polynomial (fitted for relative error) and two Newton steps invert without a
maximum: no comparison polynomials, which are what make the usual approximate-max softmax
deep.

:meth:`SoftmaxApprox.cleartext` evaluates the very same polynomials in float64, so the
approximation's error can be tested apart from the encryption's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev as cheb
from numpy.polynomial import polynomial as poly
from numpy.typing import NDArray

from fheprune.errors import InputError

Vector = NDArray[np.float64]

#: The largest error against the exact softmax an approximation may have over its range.
MAX_ERROR = 1e-3


@dataclass(frozen=True)
class SoftmaxApprox:
    classes: int
    lanes: int
    logit_bound: float = 3.0
    exp_degree: int = 6
    squarings: int = 1
    inverse_degree: int = 31
    newton_steps: int = 2
    margin: float = 1.1  # slack on the class sum's range for the approximations' own error
    exp_coeffs: tuple[float, ...] = field(init=False)
    inverse_coeffs: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.classes > self.lanes:
            raise InputError(f"{self.classes} classes do not fit {self.lanes} lanes")
        if not 0 < self.logit_bound <= 8:
            raise InputError(f"logit_bound must be in (0, 8], got {self.logit_bound}")
        if self.exp_degree not in range(1, 8):
            raise InputError("exp_degree must be 1..7 (its terms are evaluated at depth 3)")
        r, e = self.logit_bound, 2**self.squarings
        nodes = r * np.cos(np.pi * (np.arange(64) + 0.5) / 64)
        exp_c = poly.polyfit(nodes, np.exp(nodes / e), self.exp_degree)
        object.__setattr__(self, "exp_coeffs", tuple(float(a) for a in exp_c))
        t = np.cos(np.pi * (np.arange(256) + 0.5) / 256)
        s = self._from_unit(t)
        # Least squares on relative error: residuals weighted by s.
        inv_c = cheb.chebfit(t, 1.0 / s, self.inverse_degree, w=s)
        object.__setattr__(self, "inverse_coeffs", tuple(float(a) for a in inv_c))
        err = self.worst_error()
        if err > MAX_ERROR:
            raise InputError(
                f"the softmax approximation errs by up to {err:.2g} over |z| <= "
                f"{self.logit_bound} (more than {MAX_ERROR:g}); lower logit_bound (3 works with "
                "the default degrees) or raise inverse_degree / newton_steps"
            )

    # --- ranges ------------------------------------------------------------------------------

    @property
    def pad_value(self) -> float:
        """What a padding lane (logit exactly 0) contributes to the class sum."""
        return float(poly.polyval(0.0, self.exp_coeffs) ** (2**self.squarings))

    @property
    def sum_range(self) -> tuple[float, float]:
        c, r = self.classes, self.logit_bound
        return c * math.exp(-r) / self.margin, c * math.exp(r) * self.margin

    @property
    def unit_map(self) -> tuple[float, float]:
        """(alpha, beta) with t = alpha * S + beta mapping the sum's range onto [-1, 1]."""
        lo, hi = self.sum_range
        alpha = 2.0 / (hi - lo)
        return alpha, -1.0 - alpha * lo

    def _from_unit(self, t: Vector) -> Vector:
        alpha, beta = self.unit_map
        return (t - beta) / alpha

    @property
    def depth(self) -> int:
        """Levels from the logits to the probabilities: read off the kernel itself, run once on
        the simulator (one source of truth; a formula drifts from the code)."""
        from fheprune.private_training.kernels import softmax_depth

        return softmax_depth(self)

    def worst_error(self) -> float:
        """Largest error against the exact softmax over the claimed range, on the points
        where it peaks: every logit at +R or -R, and random points inside."""
        r, c = self.logit_bound, self.classes
        signs = (np.arange(2 ** min(c, 12))[:, None] >> np.arange(c)) & 1
        corners = np.where(signs == 1, r, -r).astype(np.float64)
        inside = np.random.default_rng(0).uniform(-r, r, (2000, c))
        z = np.vstack([corners, inside])
        with np.errstate(all="ignore"):
            err = np.abs(self.cleartext(z) - exact_softmax(z)).max()
        return float(err) if np.isfinite(err) else math.inf

    # --- cleartext twin ----------------------------------------------------------------------

    def cleartext(self, z: Vector) -> Vector:
        """The approximation on ``[n, classes]`` logits, evaluated as the kernel does."""
        z = np.asarray(z, dtype=np.float64)
        u = poly.polyval(z, self.exp_coeffs) ** (2**self.squarings)
        s = u.sum(axis=1, keepdims=True)
        alpha, beta = self.unit_map
        y = cheb.chebval(alpha * s + beta, self.inverse_coeffs)
        for _ in range(self.newton_steps):
            y = 2 * y - y * (s * y)
        return np.asarray(u * y, dtype=np.float64)


def exact_softmax(z: Vector) -> Vector:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)
