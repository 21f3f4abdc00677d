"""Named parameter sets used by the demo, benchmarks and tests (all 128-bit secure)."""

from __future__ import annotations

from fheprune._core import Parameters
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
