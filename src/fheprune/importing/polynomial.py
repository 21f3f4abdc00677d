"""Symbolic polynomials of one tensor, so that any chain of element-wise arithmetic with scalar
constants (``0.5*x*x + 0.25*x + 1``, ``(x - 1)**2 / 4``, ``-x``, ...) becomes one
``a*x^2 + b*x + c`` activation.

Each traced tensor between two layers is a :class:`PolyValue`: the output of some layer (its
``base``, an integer id handed out by the chain builder) seen through a polynomial. Arithmetic on
values of the same base stays a polynomial as long as its degree stays <= 2; anything else
raises :class:`PolyError`, which the front-ends turn into an error naming the graph node.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from fheprune.errors import InputError

__all__ = ["Poly", "PolyError", "PolyValue", "binary", "negate", "power"]

MAX_DEGREE = 2

PolyErrorKind = Literal["degree", "two-tensors", "not-polynomial"]
BinaryOp = Literal["add", "sub", "mul", "div"]


class PolyError(InputError):
    """Arithmetic that leaves the degree-2 polynomials of one tensor (``kind`` says how); the
    front-ends turn it into an error naming the graph node."""

    def __init__(self, kind: PolyErrorKind, problem: str, bases: tuple[int, ...] = ()) -> None:
        super().__init__(problem)
        self.kind: PolyErrorKind = kind
        self.problem = problem
        self.bases = bases  # the tensors involved ("two-tensors")


@dataclass(frozen=True)
class Poly:
    """``c0 + c1*x + c2*x^2`` (``coeffs = (c0, c1, c2)``)."""

    coeffs: tuple[float, float, float]

    @classmethod
    def identity(cls) -> Poly:
        return cls((0.0, 1.0, 0.0))

    @classmethod
    def constant(cls, c: float) -> Poly:
        return cls((float(c), 0.0, 0.0))

    @classmethod
    def from_abc(cls, a: float, b: float, c: float) -> Poly:
        """From the activation convention ``a*x^2 + b*x + c``."""
        return cls((float(c), float(b), float(a)))

    @property
    def abc(self) -> tuple[float, float, float]:
        """``(a, b, c)`` of ``a*x^2 + b*x + c``."""
        c0, c1, c2 = self.coeffs
        return c2, c1, c0

    @property
    def is_identity(self) -> bool:
        return self.coeffs == (0.0, 1.0, 0.0)

    def __add__(self, other: Poly) -> Poly:
        return Poly(_triple(x + y for x, y in zip(self.coeffs, other.coeffs, strict=True)))

    def scale(self, k: float) -> Poly:
        return Poly(_triple(k * x for x in self.coeffs))

    def shift(self, k: float) -> Poly:
        c0, c1, c2 = self.coeffs
        return Poly((c0 + k, c1, c2))

    def __mul__(self, other: Poly) -> Poly:
        full = [0.0] * (2 * MAX_DEGREE + 1)
        for i, x in enumerate(self.coeffs):
            for j, y in enumerate(other.coeffs):
                full[i + j] += x * y
        return _truncate(full)

    def compose(self, inner: Poly) -> Poly:
        """``self(inner(x))``."""
        c0, c1, c2 = self.coeffs
        out = Poly.constant(c0) + inner.scale(c1)
        if c2 != 0.0:
            out = out + (inner * inner).scale(c2)
        return out


def _triple(values: Iterable[float]) -> tuple[float, float, float]:
    c0, c1, c2 = (float(v) for v in values)
    return c0, c1, c2


def _truncate(full: list[float]) -> Poly:
    degree = max((i for i, v in enumerate(full) if v != 0.0), default=0)
    if degree > MAX_DEGREE:
        raise PolyError(
            "degree",
            f"makes a polynomial of degree {degree} (at most {MAX_DEGREE} is supported: one "
            "ciphertext multiplication per activation)",
        )
    return Poly((full[0], full[1], full[2]))


@dataclass(frozen=True)
class PolyValue:
    """A tensor of the chain: ``poly`` applied to the output of layer ``base``.

    ``origin`` is the PolyActivation module (and its name) when the value is exactly that
    module applied to a layer output, so the importer can keep the module itself (trainable
    coefficients, its name) instead of a fixed-coefficient copy.
    """

    base: int
    poly: Poly
    origin: tuple[str, nn.Module] | None = None

    def with_poly(self, poly: Poly) -> PolyValue:
        return PolyValue(self.base, poly)


Operand = PolyValue | float


def _as_poly(x: Operand) -> Poly:
    return x.poly if isinstance(x, PolyValue) else Poly.constant(x)


def binary(op: BinaryOp, left: Operand, right: Operand) -> Operand:
    """``left <op> right`` where at least one side may be a scalar constant."""
    if not isinstance(left, PolyValue) and not isinstance(right, PolyValue):
        return _scalar(op, left, right)
    if isinstance(left, PolyValue) and isinstance(right, PolyValue) and left.base != right.base:
        what = {"add": "adds", "sub": "subtracts", "mul": "multiplies", "div": "divides"}[op]
        raise PolyError("two-tensors", f"{what} two different tensors", (left.base, right.base))
    tensor = left if isinstance(left, PolyValue) else right
    assert isinstance(tensor, PolyValue)
    base = tensor.base
    p, q = _as_poly(left), _as_poly(right)
    if op == "add":
        result = p + q
    elif op == "sub":
        result = p + q.scale(-1.0)
    elif op == "mul":
        result = p * q
    else:
        if isinstance(right, PolyValue):
            raise PolyError("not-polynomial", "divides by a tensor, which is not a polynomial")
        if right == 0.0:
            raise PolyError("not-polynomial", "divides by zero")
        result = p.scale(1.0 / right)
    return PolyValue(base, result)


def _scalar(op: BinaryOp, x: float, y: float) -> float:
    if op == "add":
        return x + y
    if op == "sub":
        return x - y
    if op == "mul":
        return x * y
    if y == 0.0:
        raise PolyError("not-polynomial", "divides by zero")
    return x / y


def negate(x: Operand) -> Operand:
    return binary("mul", x, -1.0)


def power(x: Operand, exponent: Operand) -> Operand:
    """``x ** exponent`` for a constant exponent 0, 1 or 2 (any exponent between scalars)."""
    if isinstance(exponent, PolyValue):
        raise PolyError("not-polynomial", "raises to a tensor power, which is not a polynomial")
    if not isinstance(x, PolyValue):
        value = x**exponent
        if isinstance(value, complex):
            raise PolyError("not-polynomial", f"raises {x:g} to the power {exponent:g}")
        return float(value)
    if not (math.isfinite(exponent) and exponent == int(exponent) and exponent >= 0):
        raise PolyError(
            "not-polynomial", f"raises to the power {exponent:g}, which is not a polynomial"
        )
    c0, c1, c2 = x.poly.coeffs
    if c1 == 0.0 and c2 == 0.0:  # a constant tensor: any power stays a constant
        return PolyValue(x.base, Poly.constant(float(c0 ** int(exponent))))
    result = Poly.constant(1.0)
    for _ in range(min(int(exponent), MAX_DEGREE + 1)):
        result = result * x.poly  # raises once the degree passes 2
    return PolyValue(x.base, result)
