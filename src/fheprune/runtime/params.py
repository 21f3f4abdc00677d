"""Automatic CKKS parameter choice from what a program needs (levels and slots).

A chain for ``L`` levels is ``[q0] + [scale] * L`` plus one special prime ``P``: ``q0`` and ``P``
carry ``scale + 20`` bits (at most 60) so that decrypted values keep about 20 bits in front of
the point. The smallest ring degree whose 128-bit bound (HomomorphicEncryption.org, ternary
secret) holds that modulus wins; a smaller scale is tried before a larger ring.
"""

from __future__ import annotations

from dataclasses import dataclass

from fheprune import _core
from fheprune.errors import InputError

__all__ = ["ParameterChoice", "choose_parameters", "max_levels"]

RING_DEGREES = (4096, 8192, 16384, 32768)
SCALE_BITS = (40, 36, 33, 30)  # tried in order: more precision first, on the same ring


@dataclass(frozen=True)
class ParameterChoice:
    parameters: _core.Parameters
    levels: int
    message: str  # the dry-run report: what the model needs and what was chosen


def _chain(levels: int, scale_bits: int) -> tuple[list[int], list[int]]:
    outer = min(60, scale_bits + 20)
    return [outer] + [scale_bits] * levels, [outer]


def max_levels(poly_degree: int, scale_bits: int) -> int:
    """Levels a ring degree gives at 128-bit security with this scale (-1: not even q0 and P)."""
    outer = min(60, scale_bits + 20)
    budget = _core.max_modulus_bits_128(poly_degree) - 2 * outer
    return -1 if budget < 0 else budget // scale_bits


def choose_parameters(
    levels: int,
    min_slots: int = 1,
    *,
    scale_bits: int | None = None,
    poly_degree: int | None = None,
) -> ParameterChoice:
    """The smallest secure parameters with ``levels`` levels and at least ``min_slots`` slots.

    Raises ``CompileError`` when no ring up to 2^15 is enough (the model is too deep for
    bootstrapping-free inference), naming the levels needed and the most any ring gives.
    """
    if levels < 0:
        raise InputError(f"levels must be >= 0, got {levels}")
    scales = (scale_bits,) if scale_bits is not None else SCALE_BITS
    rings = (poly_degree,) if poly_degree is not None else RING_DEGREES
    notes = []
    for n in rings:
        if n // 2 < min_slots:
            notes.append(f"N={n} has {n // 2} slots, the layout needs {min_slots}")
            continue
        for sb in scales:
            have = max_levels(n, sb)
            if have >= levels:
                chain, special = _chain(levels, sb)
                params = _core.Parameters(n, chain, special, sb)
                head = "; ".join(notes)
                message = (
                    f"needs {levels} level{'s' if levels != 1 else ''} and {min_slots} slots; "
                    + (f"{head}; " if head else "")
                    + f"using N={n} (chain {chain}, special {special}, scale 2^{sb}, "
                    f"{params.total_bits} of {_core.max_modulus_bits_128(n)} bits at 128-bit "
                    "security)"
                )
                return ParameterChoice(params, levels, message)
        best = max(0, max(max_levels(n, sb) for sb in scales))
        notes.append(f"N={n} gives {best} at 128-bit security")
    raise _core.CompileError(
        f"the program needs {levels} levels; {'; '.join(notes)}. Reduce the depth (fewer "
        "polynomial activations or layers) or allow a larger ring degree"
    )
