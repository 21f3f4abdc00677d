"""What a server-side (bootstrapped) weight refresh would cost private training in keys.

    python benchmarks/training_refresh_keys.py [--log-n 16] [--period 512] [--out FILE]

Private training refreshes its weights on the client today (docs/private-training.md). A
non-interactive server would bootstrap them instead: the 16 weight and 16 momentum diagonals
packed into one ciphertext of period ``--period`` (2 x 16 x 16 lanes), refreshed by the
engine's sparse-slot bootstrapping, unpacked for the next step. This script measures what the
128-bit bound leaves for that design: the training step's levels (read from the kernels, plus
one to unpack), the refresh's levels on top, and the key-switching primes that still fit. It
then builds the context and the refresh, generates one rotation key and the relinearization
key, and reports their measured sizes and how many rotation keys the step and the refresh
need (the kernels' steps and the bootstrapper's, counted once each, plus conjugation).

Writes JSON ``{"log_qp", "bound", "special_primes", "primes", "step_levels",
"refresh_levels", "rotation_keys", "bytes_per_key", "relin_bytes", "total_key_bytes",
"memory_bytes", "fits_in_memory", "machine", ...}``. Keys are generated, not estimated; the
total is the measured size of one key times the number of keys.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fheprune import ckks
from fheprune.ckks.presets import overflow_bound
from fheprune.private_training import kernels as K
from fheprune.private_training.experiment import levels_needed
from fheprune.private_training.layout import SampleLayout
from fheprune.private_training.softmax import SoftmaxApprox
from fheprune.reporting import machine_info, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
SCALE_BITS = 38
HAMMING_WEIGHT = 192  # the sparse secret the 128-bit claim of a bootstrappable chain rests on


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--log-n", type=int, default=16)
    p.add_argument("--period", type=int, default=512, help="slots of the packed weights")
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/training_refresh_keys.json"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = 1 << args.log_n
    layout = SampleLayout(n // 2, 16, 10)
    approx = SoftmaxApprox(layout.classes, layout.lanes, 3.0)
    # Today's step (packing mask, forward, softmax, gradient, update) minus the data's packing
    # level, plus one level to unpack the refreshed weights: what the weights spend per step.
    step_levels = levels_needed(approx)
    config = ckks.BootstrapConfig(
        k_bound=overflow_bound(HAMMING_WEIGHT),
        chebyshev_degree=31,
        double_angles=4,
        cts_levels=2,
        stc_levels=2,
        slots=args.period,
        # The lean refresh (no arcsine: two levels fewer); the keys only get larger with it.
        message_ratio_bits=12.0,
        arcsine=False,
    )
    evalmod = 5 + 1 + config.double_angles  # ceil(log2 31) + 1 + double angles
    chain = (
        [SCALE_BITS + 15]
        + [SCALE_BITS] * step_levels
        + [50] * config.stc_levels
        + [60] * evalmod
        + [60] * config.cts_levels
    )
    bound = ckks.max_modulus_bits_128(n)
    special = (bound - sum(chain)) // 60
    if special < 1:
        print(f"no key-switching prime fits: the chain alone needs {sum(chain)} > {bound} bits")
        return 1
    params = ckks.Parameters(
        poly_degree=n, chain_bits=chain, special_bits=[60] * special, scale_bits=SCALE_BITS
    )
    start = time.perf_counter()
    ctx = ckks.Context(params, 1)
    refresh = ckks.Bootstrapper(ctx, config)
    steps = sorted(set(K.rotation_steps(layout)) | set(refresh.rotation_steps()))
    steps = [s for s in steps if s % (n // 2)]
    unpack = [layout.lanes << i for i in range((args.period // layout.lanes).bit_length() - 1)]
    steps = sorted(set(steps) | set(unpack))
    keygen = ckks.KeyGenerator(ctx, HAMMING_WEIGHT)
    one = keygen.create_evaluation_keys([steps[0]], False)
    per_key = int(one.galois_keys.byte_size)
    relin = int(one.relin_key.byte_size)
    rotation_keys = len(steps) + 1  # and conjugation
    total = rotation_keys * per_key + relin
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    result = {
        "log_n": args.log_n,
        "period": args.period,
        "scale_bits": SCALE_BITS,
        "hamming_weight": HAMMING_WEIGHT,
        "chain_bits": chain,
        "log_qp": sum(chain) + 60 * special,
        "bound": bound,
        "special_primes": special,
        "primes": len(chain),
        "step_levels": step_levels,
        "refresh_levels": int(refresh.levels_consumed),
        "rotation_steps": steps,
        "rotation_keys": rotation_keys,
        "bytes_per_key": per_key,
        "relin_bytes": relin,
        "total_key_bytes": total,
        "memory_bytes": memory,
        "fits_in_memory": total < memory,
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
    }
    write_json_atomic(args.out, result)
    print(
        f"N = 2^{args.log_n}: {step_levels} step levels + {result['refresh_levels']} refresh "
        f"levels, log2 QP = {result['log_qp']} <= {bound} with {special} key-switching "
        f"prime(s); {rotation_keys} rotation keys of {per_key / 2**30:.2f} GiB = "
        f"{total / 2**30:.1f} GiB of keys (memory {memory / 2**30:.1f} GiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
