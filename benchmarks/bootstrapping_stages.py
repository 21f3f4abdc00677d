"""Where a refresh's error comes from: each stage's own error, in the output's slots.

    python benchmarks/bootstrapping_stages.py [--log-n 16] [--cts-lifts 0 0.4] [--out FILE]

One full-slot refresh of uniform reals in [-1, 1] runs stage by stage (the message ratio's
exact product, ModRaise, CoeffToSlot, EvalMod on each half, SlotToCoeff), and the client
decrypts after each. Each stage's error is its decrypted output against the exact stage applied
to its decrypted input, carried to the output's slots by the exact later stages (numpy: the
encoding map as an FFT over the 2N-th roots of unity), so the errors of the stages add up to the
refresh's own (``sum_check_bits``: -log2 of the mean of what is left over, large when they do).
``input`` is the fresh encryption's noise, ``cts`` CoeffToSlot's (measured against the inverse
encoding of the decrypted raised ciphertext), ``evalmod`` against ``2 pi`` times the distance to
the nearest integer, ``stc`` against the encoding map. Precision is -log2 of the mean absolute
error.

Writes JSON ``{"rows": [{"log_n", "cts_lift", "total_bits", "input_bits", "cts_bits",
"evalmod_bits", "stc_bits", "sum_check_bits"}], "hamming_weight", "seed", "machine"}``. Our
chain from ``ckks.bootstrappable`` (insecure below N = 2^16, as in the other bootstrapping
benchmarks); weight-192 secret.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fheprune import ckks
from fheprune.ckks.presets import config_with
from fheprune.reporting import machine_info, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent


class EncodingMap:
    """The slots of sum_i w_i X^i (i < N/2), and the bit-reversed halves CoeffToSlot makes."""

    def __init__(self, poly_degree: int) -> None:
        self.n = poly_degree // 2
        self.two_n = 2 * poly_degree
        bits = int(math.log2(self.n))
        self.reverse = np.array([int(format(r, f"0{bits}b")[::-1], 2) for r in range(self.n)])
        self.roots = np.array([pow(5, j, self.two_n) for j in range(self.n)])

    def forward(self, w: np.ndarray) -> np.ndarray:
        padded = np.concatenate([w, np.zeros(self.two_n - self.n)])
        return np.fft.ifft(padded)[self.roots] * self.two_n

    def inverse(self, z: np.ndarray) -> np.ndarray:
        spread = np.zeros(self.two_n, complex)
        spread[self.roots] = z
        return np.fft.fft(spread)[: self.n] / self.n

    def natural(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        w = np.empty(self.n, complex)
        w[self.reverse] = lo + 1j * hi
        return w


def bits(error: np.ndarray) -> float:
    return -math.log2(float(np.abs(error).mean()))


def run(log_n: int, hamming_weight: int, cts_lift: float, seed: int) -> dict[str, Any]:
    preset = ckks.bootstrappable(
        2, log_n=log_n, hamming_weight=hamming_weight, insecure_for_testing=True
    )
    config = config_with(preset.config, cts_lift=cts_lift)
    ctx = ckks.Context(preset.parameters, 1)
    boot = ckks.Bootstrapper(ctx, config)
    keygen = ckks.KeyGenerator(ctx, hamming_weight)
    keys = keygen.create_evaluation_keys(boot.rotation_steps(), True, config.ephemeral_weight)
    encoder = ckks.Encoder(ctx)
    decryptor = ckks.Decryptor(ctx, keygen.secret_key)
    evaluator = ckks.Evaluator(ctx)
    emap = EncodingMap(ctx.poly_degree)

    def decrypt(ct: Any) -> np.ndarray:
        return np.asarray(encoder.decode_complex(decryptor.decrypt(ct)))

    z = np.random.default_rng(seed).uniform(-1.0, 1.0, ctx.slots)
    ct = ckks.Encryptor(ctx, keygen.secret_key).encrypt(encoder.encode(z, level=0))
    # The message ratio's exact product, as refresh() does it.
    boost = int(boot.message_boost(ct.scale))
    boosted = evaluator.multiply_plain(
        ct, encoder.encode(np.full(ctx.slots, float(boost)), scale=1.0, level=0)
    )
    boosted.scale = ct.scale * boost
    raised = boot.raise_to_top(boosted, keys)
    parts = boot.coeff_to_slot(raised, keys.galois_keys)
    mods = [boot.eval_mod(x, keys.relin_key) for x in parts]
    out = boot.slot_to_coeff(mods, boosted.scale, keys.galois_keys, ct.scale)

    q0 = float(ctx.primes[0])
    k1 = config.k_bound + 1.0
    factor = q0 / (2.0 * math.pi * boosted.scale)
    xs = [decrypt(x).real for x in parts]
    ms = [decrypt(m).real for m in mods]
    final = decrypt(out).real

    def to_slots(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return factor * emap.forward(emap.natural(lo, hi)).real

    def wrapped(x: np.ndarray) -> np.ndarray:  # 2 pi times the distance to the nearest integer
        return 2.0 * math.pi * (x * k1 - np.round(x * k1))

    w = emap.inverse(decrypt(raised))  # the raised coefficients, exactly inverse-encoded
    exact = [
        w[emap.reverse].real * boosted.scale / (q0 * k1),
        w[emap.reverse].imag * boosted.scale / (q0 * k1),
    ]
    errors = {
        # What the exact stages make of the decrypted raised input: the encryption's noise.
        "input": to_slots(*(wrapped(exact[i]) for i in range(2))) - z,
        "cts": to_slots(*(2.0 * math.pi * k1 * (xs[i] - exact[i]) for i in range(2))),
        "evalmod": to_slots(*(ms[i] - wrapped(xs[i]) for i in range(2))),
        "stc": final - to_slots(ms[0], ms[1]),
    }
    left = (final - z) - sum(errors.values())
    return {
        "log_n": log_n,
        "cts_lift": cts_lift,
        "total_bits": bits(final - z),
        **{f"{k}_bits": bits(v) for k, v in errors.items()},
        "sum_check_bits": bits(left),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--log-n", type=int, nargs="+", default=[14, 16])
    p.add_argument("--hamming-weight", type=int, default=192)
    p.add_argument("--cts-lifts", type=float, nargs="+", default=[0.0, 0.4])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/bootstrapping_stages.json"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    for log_n in args.log_n:
        for lift in args.cts_lifts:
            row = run(log_n, args.hamming_weight, lift, args.seed)
            rows.append(row)
            print({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
            write_json_atomic(
                args.out,
                {
                    "rows": rows,
                    "hamming_weight": args.hamming_weight,
                    "seed": args.seed,
                    "machine": machine_info(),
                },
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
