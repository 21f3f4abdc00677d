"""Automatic CKKS parameter choice from what a program needs (levels and slots).

A chain for ``L`` levels is ``[q0] + [scale] * L`` plus one special prime ``P``: ``q0`` and ``P``
carry ``scale + 20`` bits (at most 60) so that decrypted values keep about 20 bits in front of
the point. The smallest ring degree whose 128-bit bound (HomomorphicEncryption.org, ternary
secret) holds that modulus wins; a smaller scale is tried before a larger ring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fheprune import _core
from fheprune.ckks.presets import BootstrapPreset, bootstrappable
from fheprune.errors import InputError

__all__ = [
    "BootstrapChoice",
    "ParameterChoice",
    "choose_bootstrappable",
    "choose_parameters",
    "counting_parameters",
    "max_levels",
]

RING_DEGREES = (4096, 8192, 16384, 32768)
SCALE_BITS = (40, 36, 33, 30)  # tried in order: more precision first, on the same ring


@dataclass(frozen=True)
class ParameterChoice:
    parameters: _core.Parameters
    levels: int
    message: str  # the dry-run report: what the model needs and what was chosen
    # Set when the program bootstraps: the preset its refreshes are placed with.
    bootstrap: BootstrapPreset | None = None


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
    hint = ""
    if poly_degree is None:
        left = max_bootstrap_levels()
        hint = (
            f", or bootstrap: N=2^{BOOTSTRAP_LOG_N} with {left} levels left per refresh runs "
            f"{levels} levels of one-level layers with {math.ceil(levels / left) - 1} "
            "refresh(es) (choose_bootstrappable, Program.place_refreshes)"
        )
    raise _core.CompileError(
        f"the program needs {levels} levels; {'; '.join(notes)}. Reduce the depth (fewer "
        f"polynomial activations or layers), allow a larger ring degree{hint}"
    )


BOOTSTRAP_LOG_N = 16  # the only ring whose 128-bit bound holds a refresh and levels after it


@dataclass(frozen=True)
class BootstrapChoice:
    preset: BootstrapPreset
    refreshes: int  # refresh points Program.place_refreshes will place
    refreshed_ciphertexts: int  # what they refresh in all, per group of samples
    message: str  # the dry-run report


def max_bootstrap_levels(log_n: int = BOOTSTRAP_LOG_N, hamming_weight: int = 192) -> int:
    """The most levels a secure bootstrappable chain leaves after a refresh (0: none)."""
    left = 0
    while True:
        try:
            bootstrappable(left + 1, log_n=log_n, hamming_weight=hamming_weight)
        except _core.ParameterError:
            return left
        left += 1


def choose_bootstrappable(
    layer_levels: Sequence[int],
    live: Sequence[int] | None = None,
    *,
    hamming_weight: int = 192,
) -> BootstrapChoice:
    """The dry run for a program deeper than any chain: the secure bootstrappable preset
    (``ckks.bootstrappable``) under which its layers run with the fewest refreshes, and among
    those the fewest levels left per refresh (cheaper operations, smaller keys).

    ``layer_levels``: the levels each layer consumes (``_core.layer_levels``); ``live``: the
    ciphertexts live in front of each (default one). The count is ``plan_refreshes``', the
    one ``Program.place_refreshes`` uses. ``CompileError`` when a layer needs more levels than
    any refresh leaves.
    """
    levels = [int(v) for v in layer_levels]
    counts = [1] * len(levels) if live is None else [int(v) for v in live]
    most = max_bootstrap_levels(BOOTSTRAP_LOG_N, hamming_weight)
    best: tuple[tuple[int, int], int, int] | None = None  # (cost, levels left, refreshes)
    for left in range(1, most + 1):
        try:
            at = _core.plan_refreshes(levels, counts, left, left)
        except _core.LevelError:
            continue
        cost = (sum(counts[i] for i in at), len(at))
        if best is None or cost < best[0]:
            best = (cost, left, len(at))
    if best is None:
        raise _core.CompileError(
            f"a layer needs {max(levels, default=0)} levels but a refresh at N=2^"
            f"{BOOTSTRAP_LOG_N} leaves at most {most} at 128-bit security; split the layer"
        )
    (refreshed, _), left, refreshes = best
    preset = bootstrappable(left, log_n=BOOTSTRAP_LOG_N, hamming_weight=hamming_weight)
    message = (
        f"needs {sum(levels)} levels; bootstrapping at N=2^{BOOTSTRAP_LOG_N} with {left} levels "
        f"left per refresh (log2 QP = {preset.log_qp}, secret weight {hamming_weight}) runs it "
        f"with {refreshes} refresh(es) of {refreshed} ciphertext(s) per group"
    )
    return BootstrapChoice(preset, refreshes, refreshed, message)


def counting_parameters(levels: int, slots: int) -> _core.Parameters:
    """Parameters with exactly ``levels`` levels on the ring of ``slots`` slots, for a program
    that is built only to be counted (``Program.cost()``, ``map_layers()``: its operations,
    their levels, its split), never keyed or run. The secure choice when that ring holds the
    levels at 128-bit; otherwise (the small rings of unit tests) the same chain marked
    insecure, since no key is ever made for it."""
    if levels < 0 or slots < 1 or slots & (slots - 1):
        raise InputError(
            f"counting needs levels >= 0 and a power-of-two slot count, got {levels} and {slots}"
        )
    try:
        return choose_parameters(levels, slots, poly_degree=2 * slots).parameters
    except _core.CompileError:
        chain, special = _chain(levels, SCALE_BITS[0])
        return _core.Parameters(2 * slots, chain, special, SCALE_BITS[0], insecure_for_testing=True)
