"""CKKS bootstrapping: our refresh against Lattigo's, same ring, slots and levels left.

    python benchmarks/bootstrapping.py [--quick] [--log-n 14] [--threads 1 2] [--out FILE]

Writes JSON ``{"runs": [{"impl": "ours" | "lattigo", "log_n", "slots", "threads", "seconds",
"levels_left", "precision_bits_mean", "precision_bits_min", "key_bytes", "refresh_slots",
...}], ...}``. ``--sparse-slots 8 256`` adds rows of ours refreshing messages of those periods
(``BootstrapConfig(slots=...)``, docs/bootstrapping.md), with the two halves packed for one
EvalMod and not (``pack_halves``).
``seconds`` is the median refresh time over ``--repeats`` runs after one warm-up (ours encodes
its DFT diagonals on the first call, Lattigo when the bootstrapper is built); every run
refreshes a fresh encryption of uniform random reals in [-1, 1] in every slot, and the
precision is -log2 of the mean and of the largest absolute error after decryption.
``precision_bits_mean_constant`` is one more refresh, of the constant 0.9 in every slot: the
message shape on which the sine's error is largest (one coefficient as large as the message).
``--no-arcsine`` runs ours without the arcsine correction (``ckks.bootstrappable(arcsine=
False)``: two levels more for the user, the message scaled to 2^12 below q0 instead of 2^8).
``--ephemeral-weight`` (default 32, as the presets and Lattigo; 0: off) is the weight of the
ephemeral secret ours encapsulates into. Each of our rows runs in its own process, as
Lattigo's do (``fheprune.reporting.in_fresh_process``).

``desilofhe`` (PyPI, its CPU build) is the second reference, in its own environment too
(``--desilo-python`` or ``FHEPRUNE_DESILO_PYTHON``): its bootstrapping parameters are its own
(the ring, the chain and the levels left are fixed by the library), so its rows say what
they ran at.

Lattigo is reached through the ``orion-fhe`` wheel (it ships a compiled Lattigo library), in its
own environment (see ``benchmarks/orion_reference.py``); pass ``--orion-python`` or set
``FHEPRUNE_ORION_PYTHON``. Without it the Lattigo rows are recorded as skipped. Lattigo builds
its bootstrapping chain from its defaults (secret Hamming weight 192 with a sparse ephemeral
secret, its own CoeffToSlot / EvalMod / SlotToCoeff primes) on top of the levels left we ask
for; ours uses ``ckks.bootstrappable`` (``docs/bootstrapping.md``). At N = 2^13 and 2^14
neither chain is within the 128-bit bound (``secure_128`` says so for our rows): there the
comparison is of the algorithms' speed and precision; at N = 2^16 ours is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ORION_PYTHON = Path("/tmp/orion_venv/bin/python")
DEFAULT_DESILO_PYTHON = Path("/tmp/desilo_venv/bin/python")


def measured(
    times: list[float], level: int | None, mean_error: float, max_error: float, constant: float
) -> dict[str, Any]:
    """The fields every row reports alike: the median time over the repeats, the level left,
    and the precision as -log2 of the mean and largest errors on uniform messages and of the
    mean error on the constant (stdlib only: the reference workers run it too)."""
    return {
        "seconds": statistics.median(times),
        "seconds_all": times,
        "levels_left": level,
        "precision_bits_mean": -math.log2(mean_error),
        "precision_bits_min": -math.log2(max_error),
        "precision_bits_mean_constant": -math.log2(constant),
    }


# --------------------------------------------------------------------------------- ours


def key_bytes(ctx: Any, keys: Any) -> int:
    """The evaluation keys' size: the key data of the rotation, relinearization and
    encapsulation keys plus the serialized public key (``ckks.save`` of the bundle adds a
    header of about 1 KB). Serializing the bundle itself would copy gigabytes at N = 2^16."""
    from fheprune import ckks

    public = len(ckks.save(ctx, keys.public_key))
    switching = int(keys.galois_keys.byte_size) + int(keys.relin_key.byte_size)
    return switching + int(keys.encapsulation.byte_size) + public


def run_ours(
    log_n: int,
    threads: int,
    repeats: int,
    levels_left: int,
    hamming_weight: int,
    seed: int,
    special_primes: int = 4,
    sparse_slots: int = 0,
    pack_halves: bool = True,
    arcsine: bool = True,
    ephemeral_weight: int = 32,
) -> dict[str, Any]:
    import numpy as np

    from fheprune import ckks

    # The package's bootstrappable chain (ckks.bootstrappable, docs/bootstrapping.md); rings
    # too small for it at 128 bits run it anyway, marked insecure.
    try:
        preset = ckks.bootstrappable(
            levels_left,
            log_n=log_n,
            hamming_weight=hamming_weight,
            special_primes=special_primes,
            arcsine=arcsine,
            ephemeral_weight=ephemeral_weight,
        )
        within_bound = True
    except ckks.ParameterError:
        preset = ckks.bootstrappable(
            levels_left,
            log_n=log_n,
            hamming_weight=hamming_weight,
            special_primes=special_primes,
            arcsine=arcsine,
            ephemeral_weight=ephemeral_weight,
            insecure_for_testing=True,
        )
        within_bound = False
    # The HE standard's bound holds for uniform ternary secrets; for sparse ones we follow
    # Lattigo's default (weight 192 at N = 2^16) and call lighter secrets insecure.
    secure = within_bound and hamming_weight >= 192
    params, config = preset.parameters, preset.config
    chain, special, log_qp = list(params.chain_bits), list(params.special_bits), preset.log_qp
    ctx = ckks.Context(params, threads)
    if sparse_slots:
        config = config.with_slots(sparse_slots, pack_halves)
    boot = ckks.Bootstrapper(ctx, config)
    keygen = ckks.KeyGenerator(ctx, hamming_weight)
    keys = keygen.create_evaluation_keys(boot.rotation_steps(), True, config.ephemeral_weight)
    encoder = ckks.Encoder(ctx)
    encryptor = ckks.Encryptor(ctx, keygen.secret_key)
    decryptor = ckks.Decryptor(ctx, keygen.secret_key)
    rng = np.random.default_rng(seed)
    errors: list[Any] = []
    times: list[float] = []
    level = None
    for r in range(repeats + 1):
        # A message of the refresh's period (all slots, or the sparse period repeated).
        z = np.tile(rng.uniform(-1.0, 1.0, boot.slots), ctx.slots // boot.slots)
        ct = encryptor.encrypt(encoder.encode(z, level=0))
        start = time.perf_counter()
        out = boot.refresh(ct, keys)
        elapsed = time.perf_counter() - start
        if r == 0:
            continue  # warm-up: encodes the DFT diagonals
        times.append(elapsed)
        level = out.level
        errors.append(np.abs(encoder.decode(decryptor.decrypt(out)) - z))
    err = np.concatenate(errors)
    # The worst shape for the sine: a constant, one coefficient as large as the message.
    constant = np.full(ctx.slots, 0.9)
    fresh = boot.refresh(encryptor.encrypt(encoder.encode(constant, level=0)), keys)
    constant_err = np.abs(encoder.decode(decryptor.decrypt(fresh)) - constant)
    return {
        "impl": "ours",
        "log_n": log_n,
        "slots": ctx.slots,
        "refresh_slots": int(boot.slots),  # the message period refreshed (slots: all)
        "pack_halves": bool(config.pack_halves) and int(boot.slots) < ctx.slots,
        "threads": threads,
        **measured(times, level, float(err.mean()), float(err.max()), float(constant_err.mean())),
        "key_bytes": key_bytes(ctx, keys),
        "hamming_weight": hamming_weight,
        "chain_bits": chain,
        "special_bits": special,
        "log_qp": log_qp,
        "secure_128": secure,
        "config": {
            "k_bound": config.k_bound,
            "chebyshev_degree": config.chebyshev_degree,
            "double_angles": config.double_angles,
            "cts_levels": config.cts_levels,
            "stc_levels": config.stc_levels,
            "message_ratio_bits": config.message_ratio_bits,
            "arcsine": config.arcsine,
            "ephemeral_weight": config.ephemeral_weight,
        },
    }


# ------------------------------------------------------------------------------ lattigo


def lattigo_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the orion-fhe environment: Lattigo's bootstrapping through Orion."""
    import orion  # type: ignore[import-not-found]
    import torch  # type: ignore[import-not-found]
    from orion_reference import ORION_SETTINGS  # beside this script; stdlib-only at import

    log_n, levels_left = int(spec["log_n"]), int(spec["levels_left"])
    log_q = [55] + [40] * levels_left
    config = {
        "ckks_params": {
            "LogN": log_n,
            "LogQ": log_q,
            "LogP": [61, 61],
            "LogScale": 40,
            "H": 192,
            "RingType": "standard",
        },
        "boot_params": {"LogP": [61, 61, 61, 61]},
        "orion": dict(ORION_SETTINGS),
    }
    scheme = orion.init_scheme(config)
    slots = 1 << (log_n - 1)
    start = time.perf_counter()
    scheme.bootstrapper.generate_bootstrapper(slots)
    setup = time.perf_counter() - start
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    times, errors, level = [], [], None
    for r in range(int(spec["repeats"]) + 1):
        x = torch.rand(slots, generator=gen, dtype=torch.float64) * 2 - 1
        ct = scheme.encryptor.encrypt(scheme.encoder.encode(x, level=0))
        start = time.perf_counter()
        out = ct.bootstrap()
        elapsed = time.perf_counter() - start
        if r == 0:
            continue
        times.append(elapsed)
        level = out.level()
        y = scheme.encoder.decode(out.decrypt()).flatten()[:slots].double()
        errors.append((y - x).abs())
    err = torch.cat(errors)
    constant = torch.full((slots,), 0.9, dtype=torch.float64)
    fresh = scheme.encryptor.encrypt(scheme.encoder.encode(constant, level=0)).bootstrap()
    y = scheme.encoder.decode(fresh.decrypt()).flatten()[:slots].double()
    constant_err = (y - constant).abs()
    return {
        "impl": "lattigo",
        "log_n": log_n,
        "slots": slots,
        "threads": int(spec["threads"]),
        **measured(times, level, float(err.mean()), float(err.max()), float(constant_err.mean())),
        "key_bytes": None,  # Orion does not expose the bootstrapping keys' size
        "hamming_weight": 192,
        "log_q_user": log_q,
        "setup_seconds": setup,
        "secure_128": None,  # Orion does not expose the chain Lattigo appends for the refresh
        "via": "orion-fhe (Lattigo), GOMAXPROCS = threads",
    }


# ---------------------------------------------------------------------------- desilofhe


def desilo_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside an environment with ``desilofhe`` (its CPU build): its own bootstrapping
    parameters (the ring and the levels left after a refresh are fixed by the library), all
    slots, ``thread_count`` threads."""
    import importlib.metadata

    import desilofhe  # type: ignore[import-not-found]
    import numpy as np

    threads = int(spec["threads"])
    start = time.perf_counter()
    engine = desilofhe.Engine(mode="cpu", bootstrap=True, thread_count=threads)
    secret = engine.create_secret_key()
    public = engine.create_public_key(secret)
    relin = engine.create_relinearization_key(secret)
    conj = engine.create_conjugation_key(secret)
    boot_key = engine.create_bootstrap_key(secret)
    setup = time.perf_counter() - start
    slots = int(engine.slot_count)
    rng = np.random.default_rng(int(spec["seed"]))
    times: list[float] = []
    errors: list[Any] = []
    level = None
    for r in range(int(spec["repeats"]) + 1):
        z = rng.uniform(-1.0, 1.0, slots)
        ct = engine.encrypt(z, public, 0)
        start = time.perf_counter()
        out = engine.bootstrap(ct, relin, conj, boot_key)
        elapsed = time.perf_counter() - start
        if r == 0:
            continue
        times.append(elapsed)
        level = int(out.level)
        errors.append(np.abs(np.asarray(engine.decrypt(out, secret)) - z))
    err = np.concatenate(errors)
    constant = np.full(slots, 0.9)
    fresh = engine.bootstrap(engine.encrypt(constant, public, 0), relin, conj, boot_key)
    constant_err = np.abs(np.asarray(engine.decrypt(fresh, secret)) - constant)
    return {
        "impl": "desilofhe",
        "log_n": int(math.log2(2 * slots)),
        "slots": slots,
        "threads": threads,
        **measured(times, level, float(err.mean()), float(err.max()), float(constant_err.mean())),
        "key_bytes": None,  # the library does not report its keys' size
        "setup_seconds": setup,
        "secure_128": None,  # the library does not expose its chain
        "via": f"desilofhe {importlib.metadata.version('desilofhe')} (CPU), thread_count",
    }


def run_reference(impl: str, python: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """A reference implementation's row, from its worker in its own environment."""
    env = dict(os.environ, GOMAXPROCS=str(spec["threads"]))  # Lattigo's Go runtime
    try:
        proc = subprocess.run(
            [str(python), __file__, f"--{impl}-worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
            check=False,
        )
    except OSError as e:
        return {"impl": impl, **spec, "skipped": f"worker did not start: {e}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-800:]
        return {"impl": impl, **spec, "skipped": f"worker failed: {tail}"}
    return dict(json.loads(lines[-1]))


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 2^13, 2 repeats, 1 thread")
    p.add_argument("--log-n", type=int, default=None, help="default 14 (13 with --quick)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="default 1 2")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (2 with --quick)")
    p.add_argument("--levels-left", type=int, default=2)
    p.add_argument("--hamming-weight", type=int, default=64)
    p.add_argument("--special-primes", type=int, default=4)
    p.add_argument(
        "--no-arcsine",
        action="store_true",
        help="ours without the arcsine (two levels more for the user, message ratio 2^12)",
    )
    p.add_argument(
        "--ephemeral-weight",
        type=int,
        default=32,
        help="sparse-secret encapsulation through an ephemeral secret of this weight (0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sparse-slots",
        type=int,
        nargs="*",
        default=[],
        help="also refresh messages of these periods (sparse slots; ours only)",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        choices=["ours", "lattigo", "desilofhe"],
        default=["ours", "lattigo", "desilofhe"],
        help="which implementations to run (default: all three)",
    )
    p.add_argument("--orion-python", type=Path, default=None)
    p.add_argument(
        "--desilo-python",
        type=Path,
        default=None,
        help="a Python with desilofhe installed (or FHEPRUNE_DESILO_PYTHON); rows skipped without",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--lattigo-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--desilofhe-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.log_n = args.log_n or (13 if args.quick else 14)
    args.threads = args.threads or ([1] if args.quick else [1, 2])
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.orion_python = args.orion_python or _python_for("ORION", DEFAULT_ORION_PYTHON)
    args.desilo_python = args.desilo_python or _python_for("DESILO", DEFAULT_DESILO_PYTHON)
    return args


def _python_for(name: str, default: Path) -> Path | None:
    """A reference's interpreter: FHEPRUNE_<name>_PYTHON, else the default where it exists."""
    env = os.environ.get(f"FHEPRUNE_{name}_PYTHON")
    if env:
        return Path(env)
    return default if default.exists() else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.lattigo_worker is not None:
        print(json.dumps(lattigo_worker(json.loads(args.lattigo_worker))))
        return 0
    if args.desilofhe_worker is not None:
        print(json.dumps(desilo_worker(json.loads(args.desilofhe_worker))))
        return 0
    from fheprune.reporting import in_fresh_process, machine_info, write_json_atomic

    runs: list[dict[str, Any]] = []
    for threads in args.threads:
        spec = {
            "log_n": args.log_n,
            "threads": threads,
            "repeats": args.repeats,
            "levels_left": args.levels_left,
            "seed": args.seed,
        }
        # All slots, then each sparse period packed and with two EvalMods.
        variants = [(0, True)] + [(n, p) for n in args.sparse_slots for p in (True, False)]
        for n, pack in variants if "ours" in args.impls else []:
            # Each in its own process (fheprune.reporting.in_fresh_process), as Lattigo's are.
            row = in_fresh_process(
                run_ours,
                args.log_n,
                threads,
                args.repeats,
                args.levels_left,
                args.hamming_weight,
                args.seed,
                args.special_primes,
                sparse_slots=n,
                pack_halves=pack,
                arcsine=not args.no_arcsine,
                ephemeral_weight=args.ephemeral_weight,
            )
            runs.append(row)
            keys = ("impl", "threads", "refresh_slots", "pack_halves", "seconds")
            extra = ("precision_bits_mean", "precision_bits_mean_constant")
            print(json.dumps({k: row[k] for k in (*keys, *extra)}))
        references = (
            ("lattigo", args.orion_python, "orion-fhe"),
            ("desilofhe", args.desilo_python, "desilofhe"),
        )
        for impl, python, package in references:
            if impl not in args.impls:
                continue
            if python is None:
                runs.append({"impl": impl, **spec, "skipped": f"{package} not found"})
                continue
            row = run_reference(impl, python, spec)
            runs.append(row)
            extra = ("precision_bits_mean", "precision_bits_mean_constant", "skipped")
            print(json.dumps({k: row.get(k) for k in ("impl", "threads", "seconds", *extra)}))
    report = {
        "runs": runs,
        "quick": args.quick,
        "seed": args.seed,
        "machine": machine_info(),
        "ratio_ours_over_lattigo": {str(t): _ratio(runs, t) for t in args.threads},
        "thread_speedup": thread_speedup(runs),
    }
    if args.out is not None:
        write_json_atomic(args.out, report)
    return 0


def thread_speedup(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each implementation's full-slot median on one thread over its median on each other
    thread count: ``{impl: {str(threads): speedup}}``."""
    medians: dict[str, dict[int, float]] = {}
    for r in runs:
        if "seconds" in r and r.get("refresh_slots", r["slots"]) == r["slots"]:
            medians.setdefault(r["impl"], {})[int(r["threads"])] = float(r["seconds"])
    return {
        impl: {str(t): by[1] / s for t, s in sorted(by.items()) if t != 1}
        for impl, by in medians.items()
        if 1 in by
    }


def _ratio(runs: list[dict[str, Any]], threads: int) -> float | None:
    ours = [
        r
        for r in runs
        if r["impl"] == "ours" and r["threads"] == threads and r["refresh_slots"] == r["slots"]
    ]
    theirs = [r for r in runs if r["impl"] == "lattigo" and r.get("threads") == threads]
    if not ours or not theirs or "seconds" not in theirs[0]:
        return None
    return float(ours[0]["seconds"]) / float(theirs[0]["seconds"])


if __name__ == "__main__":
    sys.exit(main())
