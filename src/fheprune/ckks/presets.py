"""Named parameter sets used by the demo, benchmarks and tests (all 128-bit secure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fheprune._core import BootstrapConfig, ParameterError, Parameters, max_modulus_bits_128
from fheprune.errors import UnknownNameError

# name -> (N, chain bits with the decryption prime first, special primes, scale bits)
_PRESETS: dict[str, tuple[int, list[int], list[int], int]] = {
    # 2 levels: enough for a linear layer and a square (log2 QP = 200 <= 218).
    "n8192-l2": (8192, [60, 40, 40], [60], 40),
    # 7 levels (log2 QP = 400 <= 438).
    "n16384-l7": (16384, [60, 40, 40, 40, 40, 40, 40, 40], [60], 40),
}


def preset(name: str) -> Parameters:
    """Return the named parameter set; raises KeyError listing the names on a typo."""
    try:
        n, chain, special, scale = _PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(_PRESETS))
        raise UnknownNameError(f"unknown preset {name!r}; known: {known}") from None
    return Parameters(poly_degree=n, chain_bits=chain, special_bits=special, scale_bits=scale)


@dataclass(frozen=True)
class BootstrapPreset:
    """Parameters that can refresh ciphertexts (see docs/bootstrapping.md): the chain, the
    refresh's configuration and the secret's Hamming weight the keys must be made with
    (``KeyGenerator(context, preset.hamming_weight)``)."""

    parameters: Parameters
    config: BootstrapConfig
    hamming_weight: int
    levels_left: int
    log_qp: int


_CONFIG_FIELDS = (
    "k_bound",
    "chebyshev_degree",
    "double_angles",
    "cts_levels",
    "stc_levels",
    "slots",
    "pack_halves",
    "message_ratio_bits",
    "arcsine",
    "cts_lift",
    "ephemeral_weight",
)


def config_with(config: BootstrapConfig, **changes: Any) -> BootstrapConfig:
    """``config`` with the named fields changed and every other one kept."""
    unknown = sorted(set(changes) - set(_CONFIG_FIELDS))
    if unknown:
        raise ParameterError(f"BootstrapConfig has no field(s) {unknown}; fields: {_CONFIG_FIELDS}")
    return BootstrapConfig(**{f: changes.get(f, getattr(config, f)) for f in _CONFIG_FIELDS})


# The ephemeral secret's Hamming weight a refresh switches to (as Lattigo's defaults).
EPHEMERAL_WEIGHT = 32


def overflow_bound(hamming_weight: int) -> float:
    """ModRaise's overflow ``|I|`` is close to a sum of ``h`` uniform values in [-1/2, 1/2]:
    five standard deviations, rounded up (12 for h = 64, 20 for h = 192)."""
    return float(math.ceil(5.0 * math.sqrt(hamming_weight / 12.0)))


def bootstrap_chain(levels_left: int, config: BootstrapConfig) -> list[int]:
    """q0 (55 bits, 2^15 above the 40-bit message scale: room to decrypt large values), the
    levels left after a refresh (40 bits), then what the refresh consumes from the top:
    SlotToCoeff (50-bit), EvalMod and its arcsine (60-bit), CoeffToSlot (60-bit). Chosen at
    N = 2^13 for the mean precision."""
    evalmod = math.ceil(math.log2(config.chebyshev_degree)) + 1 + config.double_angles
    evalmod += 2 if config.arcsine else 0
    return (
        [55]
        + [40] * levels_left
        + [50] * config.stc_levels
        + [60] * evalmod
        + [60] * config.cts_levels
    )


def bootstrappable(
    levels_left: int = 2,
    *,
    log_n: int = 16,
    hamming_weight: int = 192,
    special_primes: int = 4,
    arcsine: bool = True,
    ephemeral_weight: int = EPHEMERAL_WEIGHT,
    insecure_for_testing: bool = False,
) -> BootstrapPreset:
    """A bootstrappable parameter set with ``levels_left`` levels after every refresh.

    At N = 2^16 (the default) it stays inside the 128-bit bound with every prime counted
    (special primes included) up to 11 levels left (14 with ``arcsine=False``); a smaller
    ring or more levels raise ParameterError naming what fits, unless
    ``insecure_for_testing``. Weight 192 follows Lattigo's default for sparse secrets, which
    the HE standard's tables do not cover.

    Each refresh switches its level-0 ciphertext to an ephemeral secret of weight
    ``ephemeral_weight`` (sparse-secret encapsulation; the evaluation keys need
    ``create_evaluation_keys(..., ephemeral_weight=...)``): ModRaise's overflow is then that
    of 32 non-zero coefficients, K = 9 instead of 20, and EvalMod needs one double angle
    less. That key lives modulo q0 times one special prime only (115 bits), where a weight-32
    secret is safe. 0 turns it off (K from ``hamming_weight``).

    The refresh scales the message up to 2^8 below q0 and corrects the sine with an arcsine
    (two 60-bit levels): the most precise choice for every message. ``arcsine=False`` keeps
    those levels and scales the message only to 2^12 below q0, where the sine's error on a
    message concentrated in few coefficients (a constant vector) stays near 2^-21
    (docs/bootstrapping.md, "Precision").
    """
    if levels_left < 1:
        raise ParameterError(f"levels_left must be at least 1, got {levels_left}")
    if hamming_weight < 192 and not insecure_for_testing:
        # Sparser secrets are cheaper to attack than the bound assumes; 192 is the weight
        # this chain's 128-bit claim rests on (as Lattigo's defaults).
        raise ParameterError(
            f"a secret of Hamming weight {hamming_weight} is too sparse for a 128-bit claim; "
            "use hamming_weight >= 192 (or insecure_for_testing=True)"
        )
    if ephemeral_weight < 0:
        raise ParameterError(
            f"ephemeral_weight must be 0 (off) or positive, got {ephemeral_weight}"
        )
    k_bound = overflow_bound(ephemeral_weight or hamming_weight)
    config = BootstrapConfig(
        k_bound=k_bound,
        chebyshev_degree=31,
        # The scaled cosine spans 2 (K + 1) / 2^r periods: about 2.6 for K = 20 and r = 4 and
        # for K = 9 and r = 3, which degree 31 fits to the precision the chain keeps
        # (docs/bootstrapping.md, "Encapsulation").
        double_angles=4 if k_bound > 10 else 3,
        # Four CoeffToSlot groups at the top of the chain (fewer diagonals where key switches
        # cost most), two SlotToCoeff groups near its bottom (where they cost least): at
        # N = 2^16, 9.8 s per refresh against 11.3 s with three and three, same bits
        # (docs/bootstrapping.md, "Parameters").
        cts_levels=4,
        stc_levels=2,
        message_ratio_bits=8.0 if arcsine else 12.0,
        arcsine=arcsine,
        ephemeral_weight=ephemeral_weight,
    )
    chain = bootstrap_chain(levels_left, config)
    special = [60] * special_primes
    log_qp = sum(chain) + sum(special)
    bound = max_modulus_bits_128(1 << log_n)
    if log_qp > bound and not insecure_for_testing:
        fit = levels_left - math.ceil((log_qp - bound) / 40)
        hint = f"at most {fit} levels left fit" if fit >= 1 else "no bootstrappable chain fits"
        if log_n < 16:
            most = max_modulus_bits_128(1 << 16) - sum(bootstrap_chain(0, config)) - sum(special)
            hint += f"; N = 2^16 holds up to {most // 40}"
        raise ParameterError(
            f"a refresh with {levels_left} levels left needs log2(QP) = {log_qp} bits; N = "
            f"2^{log_n} allows {bound} at 128-bit security ({hint})"
        )
    parameters = Parameters(
        1 << log_n, chain, special, 40, insecure_for_testing=insecure_for_testing
    )
    return BootstrapPreset(parameters, config, hamming_weight, levels_left, log_qp)
