"""How the refresh's message ratio and arcsine trade precision across message shapes.

    python benchmarks/bootstrapping_precision.py [--log-n 14] [--ratios 8 12] [--out FILE]

The sine EvalMod computes is the identity only for coefficients far below ``q0``; a larger
message (a smaller ratio ``q0 / scale``) is a larger share of what CoeffToSlot and EvalMod
compute on, so their noise costs fewer of its bits, but the sine's error grows with it
(docs/bootstrapping.md, "Message ratio and arcsine"). Two message shapes bracket it: uniform
reals in every slot (coefficients about ``sqrt(2 / N)`` of the slot values) and a constant
(0.9 everywhere: one coefficient as large as the message). For every ratio, with and without
the arcsine, the script refreshes ``--repeats`` fresh encryptions of each shape on the chain
``ckks.bootstrappable`` builds for that configuration, and records the precision (-log2 of the
mean and of the largest absolute error) and the median refresh time.

Writes JSON ``{"rows": [{"message_ratio_bits", "arcsine", "boost", "shape",
"precision_bits_mean", "precision_bits_min", "seconds"}], "log_n", "hamming_weight", "seed",
"machine"}``. At N = 2^13 and 2^14 the chain is outside the 128-bit bound (insecure, as the
toy rows of ``benchmarks/bootstrapping.py``): the rows compare configurations, not security.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fheprune import ckks
from fheprune.ckks.presets import bootstrap_chain, config_with
from fheprune.reporting import in_fresh_process, machine_info, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("uniform", "constant")


def message(shape: str, slots: int, rng: np.random.Generator) -> np.ndarray:
    if shape == "uniform":
        return rng.uniform(-1.0, 1.0, slots)
    return np.full(slots, 0.9)


def run_config(
    log_n: int,
    hamming_weight: int,
    ratio: float,
    arcsine: bool,
    repeats: int,
    seed: int,
    degree: int | None = None,
    double_angles: int | None = None,
    dft_levels: tuple[int, int] | None = None,
    cts_lift: float | None = None,
    ephemeral_weight: int | None = None,
) -> list[dict[str, Any]]:
    # The preset for this encapsulation choice sets K (and its double angles) to match.
    extra = {} if ephemeral_weight is None else {"ephemeral_weight": ephemeral_weight}
    base = ckks.bootstrappable(
        2, log_n=log_n, hamming_weight=hamming_weight, insecure_for_testing=True, **extra
    ).config
    changes: dict[str, Any] = {"message_ratio_bits": ratio, "arcsine": arcsine}
    if degree:
        changes["chebyshev_degree"] = degree
    if double_angles is not None:
        changes["double_angles"] = double_angles
    if dft_levels:
        changes["cts_levels"], changes["stc_levels"] = dft_levels
    if cts_lift is not None:
        changes["cts_lift"] = cts_lift
    config = config_with(base, **changes)
    chain = bootstrap_chain(2, config)
    params = ckks.Parameters(1 << log_n, chain, [60] * 4, 40, insecure_for_testing=True)
    ctx = ckks.Context(params, 1)
    boot = ckks.Bootstrapper(ctx, config)
    keygen = ckks.KeyGenerator(ctx, hamming_weight)
    keys = keygen.create_evaluation_keys(boot.rotation_steps(), True, config.ephemeral_weight)
    encoder = ckks.Encoder(ctx)
    encryptor = ckks.Encryptor(ctx, keygen.secret_key)
    decryptor = ckks.Decryptor(ctx, keygen.secret_key)
    rng = np.random.default_rng(seed)
    boot.refresh(encryptor.encrypt(encoder.encode(np.zeros(ctx.slots), level=0)), keys)  # warm-up
    rows = []
    for shape in SHAPES:
        errors, times = [], []
        for _ in range(repeats):
            z = message(shape, ctx.slots, rng)
            ct = encryptor.encrypt(encoder.encode(z, level=0))
            start = time.perf_counter()
            out = boot.refresh(ct, keys)
            times.append(time.perf_counter() - start)
            errors.append(np.abs(np.asarray(encoder.decode(decryptor.decrypt(out))) - z))
        err = np.concatenate(errors)
        rows.append(
            {
                "message_ratio_bits": ratio,
                "arcsine": arcsine,
                "chebyshev_degree": int(config.chebyshev_degree),
                "double_angles": int(config.double_angles),
                "cts_levels": int(config.cts_levels),
                "cts_lift": float(config.cts_lift),
                "stc_levels": int(config.stc_levels),
                "ephemeral_weight": int(config.ephemeral_weight),
                "k_bound": float(config.k_bound),
                "boost": int(boot.message_boost(ctx.default_scale)),
                "shape": shape,
                "precision_bits_mean": -math.log2(float(err.mean())),
                "precision_bits_min": -math.log2(float(err.max())),
                "seconds": statistics.median(times),
                "levels_consumed": int(boot.levels_consumed),
            }
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--log-n", type=int, default=14)
    p.add_argument("--hamming-weight", type=int, default=64)
    p.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[0.0, 7.0, 8.0, 10.0, 12.0],
        help="message_ratio_bits to try (0: the message as it comes)",
    )
    p.add_argument(
        "--eval-mod",
        nargs="+",
        default=[],
        help="EvalMod shapes to try as DEGREE:DOUBLE_ANGLES (default: the preset's)",
    )
    p.add_argument(
        "--dft-levels",
        nargs="+",
        default=[],
        help="CoeffToSlot:SlotToCoeff levels to try (default: the preset's)",
    )
    p.add_argument(
        "--cts-lifts",
        type=float,
        nargs="+",
        default=[],
        help="CoeffToSlot lifts to try (share of the scale gap; default: the preset's)",
    )
    p.add_argument(
        "--ephemeral-weights",
        type=int,
        nargs="+",
        default=[],
        help="encapsulation weights to try (0: off; K and the double angles follow the preset; "
        "default: the preset's)",
    )
    p.add_argument("--arcsine", choices=["both", "on", "off"], default="both")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/bootstrapping_precision.json"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    arcsines = {"both": (False, True), "on": (True,), "off": (False,)}[args.arcsine]
    shapes: list[tuple[int | None, int | None]] = [
        (int(d), int(r)) for d, r in (e.split(":") for e in args.eval_mod)
    ] or [(None, None)]
    dfts: list[tuple[int, int] | None] = [
        (int(c), int(t)) for c, t in (e.split(":") for e in args.dft_levels)
    ] or [None]
    lifts: list[float | None] = list(args.cts_lifts) or [None]
    weights: list[int | None] = list(args.ephemeral_weights) or [None]
    combos = itertools.product(weights, dfts, shapes, lifts, args.ratios, arcsines)
    for weight, dft, (degree, angles), lift, ratio, arcsine in combos:
        config_args = (args.log_n, args.hamming_weight, ratio, arcsine, args.repeats, args.seed)
        config_args += (degree, angles, dft, lift, weight)
        for row in in_fresh_process(run_config, *config_args):
            rows.append(row)
            print(
                f"h' {row['ephemeral_weight']} K {row['k_bound']:g} "
                f"dft {row['cts_levels']}:{row['stc_levels']} d {row['chebyshev_degree']} "
                f"r {row['double_angles']} lift {row['cts_lift']:.2f} ratio {ratio:4.1f} "
                f"arcsine {int(arcsine)} {row['shape']:8s}: "
                f"{row['precision_bits_mean']:.1f} bits mean, "
                f"{row['precision_bits_min']:.1f} worst, {row['seconds']:.2f} s",
                flush=True,
            )
            report = {
                "rows": rows,
                "log_n": args.log_n,
                "hamming_weight": args.hamming_weight,
                "repeats": args.repeats,
                "seed": args.seed,
                "machine": machine_info(),
            }
            write_json_atomic(args.out, report)  # after every configuration
    return 0


if __name__ == "__main__":
    sys.exit(main())
