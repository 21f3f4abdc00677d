"""A program deeper than its modulus chain, run end to end with refreshes the program places.

    python benchmarks/deep_program.py [--quick] [--log-n 16] [--levels-left 10] [--pairs 15]
                                      [--threads 1] [--repeats 1] [--out FILE]

The program is ``--pairs`` times x -> (W x + b)^2 on 8 features in the diagonal layout (two
levels a pair: 30 levels by default). Each thread count gets two rows: the refreshes the
program chooses (sparse: its vectors repeat every 8 slots, so only that period is refreshed)
and refreshes of all N/2 slots. Row sums of |W| <= 1/2 and |b| <= 1/2 keep every value in
[-1, 1] (the range the refresh's error is measured on) and the map non-expanding, so the
refreshes' errors do not grow. ``Program.place_refreshes`` puts the fewest refreshes in the
chain ``ckks.bootstrappable(levels_left)`` gives; the server runs it on our engine, the
simulator runs it twice: with exact refreshes (same levels, scales and counts) and with the
refresh error measured here on one refresh of random values (the model a user plans with).

Each row runs in its own process; a row whose process dies (at N = 2^16 with all slots and
10 levels left, the keys outgrow a 24 GiB machine) is recorded with ``failed``.

``seconds`` is the median over ``--repeats`` server runs after one warm-up run (in which the
server's bootstrapper encodes its DFT plaintexts; ``first_run_seconds``).

Writes JSON ``{"runs": [{"log_n", "slots", "threads", "levels_left", "depth", "refreshes",
"seconds", "refresh_seconds", "max_error", "precision_bits", "sim_modelled_max_error", ...}],
"machine", "seed", ...}``. The default (N = 2^16, weight-192 secret) is inside the 128-bit
bound; ``--quick`` (N = 2^13, 6 levels left) is not and says so in ``secure_128``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 8


def layers(pairs: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.uniform(-1.0, 1.0, (FEATURES, FEATURES)) * 0.5 / FEATURES,
            rng.uniform(-0.5, 0.5, FEATURES),
        )
        for _ in range(pairs)
    ]


def reference(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    for w, b in weights:
        x = (x @ w.T + b) ** 2
    return x


def run(
    log_n: int,
    levels_left: int,
    pairs: int,
    threads: int,
    repeats: int,
    seed: int,
    sparse: bool = True,
) -> dict[str, Any]:
    """One row. ``sparse``: the program's own choice, refreshes of period-8 slots (the
    diagonal layout's vectors repeat with their width); otherwise all N/2 slots."""
    from fheprune import _core, ckks

    secure = log_n >= 16
    preset = ckks.bootstrappable(
        levels_left, log_n=log_n, hamming_weight=192, insecure_for_testing=not secure
    )
    weights = layers(pairs, seed)
    program = _core.Program.diagonal(preset.parameters, FEATURES)
    for k, (w, b) in enumerate(weights):
        program.add_linear(f"fc{k + 1}", w, b)
        program.add_square(f"sq{k + 1}")
    depth = int(program.depth)
    # slots = 0 lets the program choose (sparse); N/2 names all slots.
    config = preset.config.with_slots(0 if sparse else (1 << log_n) // 2)
    placed = int(program.place_refreshes(config))
    refresh_config = program.refresh_config

    ctx = ckks.Context(preset.parameters, threads)
    start = time.perf_counter()
    keygen = ckks.KeyGenerator(ctx, preset.hamming_weight)
    keys = keygen.create_evaluation_keys(
        program.rotation_steps(), True, refresh_config.ephemeral_weight
    )
    keygen_seconds = time.perf_counter() - start
    key_bytes = int(keys.galois_keys.byte_size)  # in memory; a serialized copy would double it
    encoder = ckks.Encoder(ctx)
    encryptor = ckks.Encryptor(ctx, keygen.secret_key)
    decryptor = ckks.Decryptor(ctx, keygen.secret_key)
    rng = np.random.default_rng(seed + 1)

    # The refresh error a user plans with: one refresh of uniform values in [-1, 1]. (Its
    # bootstrapper is dropped before the server builds its own: at N = 2^16 each holds
    # gigabytes of DFT plaintexts.)
    boot = ckks.Bootstrapper(ctx, refresh_config)
    z = np.tile(rng.uniform(-1.0, 1.0, boot.slots), ctx.slots // boot.slots)
    fresh = boot.refresh(encryptor.encrypt(encoder.encode(z, level=0)), keys)
    refresh_error = float(np.std(encoder.decode(decryptor.decrypt(fresh)) - z))
    boot_slots = int(boot.slots)
    del boot, fresh

    start = time.perf_counter()
    server = _core.Server(program, ctx, keys)
    setup_seconds = time.perf_counter() - start

    x = rng.uniform(-1.0, 1.0, (1, FEATURES))
    want = reference(weights, x)
    packed = program.pack_inputs(x)
    seconds: list[float] = []
    refresh_seconds: list[float] = []
    errors: list[float] = []
    stats: dict[str, Any] = {}
    first_seconds = 0.0
    for r in range(repeats + 1):
        inputs = [
            encryptor.encrypt(encoder.encode(np.ascontiguousarray(v), level=program.input_level))
            for v in packed
        ]
        start = time.perf_counter()
        outputs, stats = server.run(inputs)
        if r == 0:  # warm-up: the server's bootstrapper encodes its DFT plaintexts on first use
            first_seconds = time.perf_counter() - start
            continue
        seconds.append(time.perf_counter() - start)
        refresh_seconds += [
            layer["seconds"] / max(int(layer["ops"]["refresh"]), 1)
            for layer in stats["layers"]
            if layer["name"].startswith("refresh")
        ]
        slots = np.array([encoder.decode(decryptor.decrypt(outputs[0]))])
        got = program.unpack_outputs(slots, 1)
        errors.append(float(np.max(np.abs(got - want))))

    sim_exact = _core.SimulatedExecutor(program, ctx)
    exact_slots, sim_stats = sim_exact.run(packed)
    exact = program.unpack_outputs(exact_slots, 1)
    modelled = []
    for s in range(5):
        sim = _core.SimulatedExecutor(program, ctx, refresh_error=refresh_error, refresh_seed=s)
        out, _ = sim.run(packed)
        modelled.append(float(np.max(np.abs(program.unpack_outputs(out, 1) - want))))

    return {
        "log_n": log_n,
        "slots": int(ctx.slots),
        "refresh_slots": int(boot_slots),
        "threads": threads,
        "levels_left": levels_left,
        "depth": depth,
        "refreshes": placed,
        "input_level": int(program.input_level),
        "level_schedule": [int(v) for v in program.level_schedule()],
        "chain_bits": list(preset.parameters.chain_bits),
        "log_qp": preset.log_qp,
        "secure_128": secure,
        "hamming_weight": preset.hamming_weight,
        "seconds": statistics.median(seconds),
        "seconds_all": seconds,
        "refresh_seconds": statistics.median(refresh_seconds),
        "refresh_seconds_all": refresh_seconds,
        "first_run_seconds": first_seconds,
        "keygen_seconds": keygen_seconds,
        "server_setup_seconds": setup_seconds,
        "key_bytes": key_bytes,
        "max_error": max(errors),
        "precision_bits": -math.log2(max(errors)),
        "ops": stats["ops"],
        "sim_ops_equal": sim_stats["ops"] == stats["ops"],
        "sim_exact_max_error": float(np.max(np.abs(exact - want))),
        "refresh_error_std": refresh_error,
        "sim_modelled_max_error": modelled,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 2^13, 6 levels left (insecure)")
    ap.add_argument("--log-n", type=int, default=None)
    ap.add_argument("--levels-left", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=15, help="linear + square pairs (2 levels each)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from fheprune.reporting import in_fresh_process, machine_info, write_json_atomic

    args = parse_args(argv)
    log_n = args.log_n or (13 if args.quick else 16)
    levels_left = args.levels_left or (6 if args.quick else 10)
    out = args.out or Path(__file__).resolve().parent / "results" / (
        "deep_program_quick.json" if args.quick else "deep_program.json"
    )
    runs: list[dict[str, Any]] = []
    report = {
        "benchmark": "deep_program",
        "seed": args.seed,
        "pairs": args.pairs,
        "features": FEATURES,
        "repeats": args.repeats,
        "machine": machine_info(),
        "runs": runs,
    }
    for threads, sparse in [(t, s) for t in args.threads for s in (True, False)]:
        # Each row in its own process: at N = 2^16 a row holds gigabytes of keys and
        # plaintexts, and a row the machine cannot hold is recorded instead of ending the run.
        try:
            row = in_fresh_process(
                run, log_n, levels_left, args.pairs, threads, args.repeats, args.seed, sparse
            )
        except BrokenProcessPool:
            row = {
                "log_n": log_n,
                "threads": threads,
                "refresh_slots": "program" if sparse else (1 << log_n) // 2,
                "failed": "the row's process was killed (out of memory on this machine?)",
            }
            print(f"N = 2^{log_n}, {threads} thread(s), sparse={sparse}: {row['failed']}")
            runs.append(row)
            write_json_atomic(out, report)
            continue
        runs.append(row)
        write_json_atomic(out, report)  # what is measured is kept
        print(
            f"N = 2^{log_n}, {threads} thread(s), refreshes of {row['refresh_slots']} slots: "
            f"depth {row['depth']} with {row['refreshes']} "
            f"refreshes in {row['seconds']:.1f} s ({row['refresh_seconds']:.1f} s per refresh), "
            f"max error {row['max_error']:.2e} ({row['precision_bits']:.1f} bits); simulator: "
            f"same counts {row['sim_ops_equal']}, modelled max error "
            f"{statistics.median(row['sim_modelled_max_error']):.2e}",
            flush=True,
        )
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
