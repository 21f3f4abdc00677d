"""Reference row: the LeNet-like CNN encrypted with Orion (``orion-fhe``, Lattigo backend).

The network is :class:`fheprune.models.zoo.LeNetLike` rebuilt with ``orion.nn`` layers: conv1
1->32 5x5 padding 2, act1, avgpool 2, conv2 32->64 5x5, act2, global avgpool 10, flatten, fc1
64->32, act3, fc2 32->10, on one 1x28x28 image. The weights are PyTorch's default
initialisation under ``torch.manual_seed(seed)`` (not trained: timing does not depend on the
values) and the activations are ``LeNetLike``'s default ``a*x^2 + b*x + c`` with a=0.1, b=1,
c=0. The error is measured against a plain PyTorch forward pass of that network.

Two ways to run the activations (``--activation``):

* ``quad-folded`` (default): the exact rewrite ``a*x^2 + b*x + c = a*(x + d)^2 + e`` with
  ``d = b / 2a`` and ``e = c - b^2 / 4a``; ``+d`` goes into the bias of the layer before, the
  factor ``a`` and the constant ``e`` into the next linear layer (average pooling keeps
  constants). Every activation is then Orion's ``on.Quad`` and costs one level, as in our
  engine.
* ``poly``: Orion's generic ``on.Activation([a, b, c])`` (Lattigo polynomial evaluator),
  which costs two levels per activation.

The CKKS levels are exactly the circuit depth and every linear layer is pinned to its level,
so Orion's bootstrap placement has nothing to place (``bootstrapping`` records what it did).

Each thread count runs in its own subprocess with ``GOMAXPROCS`` set before Orion's Go library
is loaded (Lattigo's parallelism); torch and BLAS get the same thread count. Server time is
``net(ciphertext)`` in HE mode, a fresh encryption per repeat (not timed), after one warm-up.
Before Orion encodes its plaintext diagonals the script estimates their memory (Lattigo keeps
every diagonal at its layer's level plus the special primes) and refuses a run that would not
fit in the available RAM, recording why.

Without ``orion-fhe`` the script writes a JSON with ``"skipped"`` set and no runs. Orion needs
its own environment (it pulls torchvision, matplotlib, h5py, scipy<=1.14.1)::

    /work/main/.venv/bin/python -m venv /tmp/orion_venv
    /tmp/orion_venv/bin/pip install orion-fhe==1.0.2 torch==2.13.0
    /tmp/orion_venv/bin/python benchmarks/orion_reference.py \\
        [--out benchmarks/results/orion_reference.json] [--repeats 3] [--threads 1 2] \\
        [--log-n 15] [--ring standard] [--activation quad-folded] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "orion_reference.json"
NOT_INSTALLED = "orion-fhe is not installed; pip install orion-fhe to add the Orion reference row"
# HomomorphicEncryption.org 128-bit bounds on log2(QP) for ternary secrets.
MAX_LOG_QP_128 = {13: 218, 14: 438, 15: 881, 16: 1761}
# Peak memory of Orion's compile over the encoded diagonals' size: N=2^14, 8.6 GiB of
# diagonals was killed at 24 GiB resident (float copies Python -> C -> Go during encoding).
PEAK_FACTOR = 3
POLY = (0.1, 1.0, 0.0)  # LeNetLike's default TrainablePoly coefficients (a, b, c)


# --------------------------------------------------------------------------- reporting helpers


def _reporting() -> Any:
    """``fheprune.reporting`` if importable (it needs only numpy), else None."""
    for attempt in range(2):
        try:
            from fheprune import reporting

            return reporting
        except Exception:
            if attempt == 0 and str(ROOT / "src") not in sys.path:
                sys.path.append(str(ROOT / "src"))
    return None


def machine_info(**extra: Any) -> dict[str, Any]:
    reporting = _reporting()
    if reporting is not None:
        with contextlib.suppress(Exception):
            return dict(reporting.machine_info(**extra))
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    info.update(extra)
    return info


def write_json_atomic(path: Path, data: Any) -> None:
    reporting = _reporting()
    if reporting is not None:
        reporting.write_json_atomic(path, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def orion_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("orion-fhe")
    except metadata.PackageNotFoundError:
        return None


def orion_importable() -> str | None:
    """None when ``import orion`` works, else the reason it does not."""
    if orion_version() is None:
        return NOT_INSTALLED
    try:
        import orion  # noqa: F401
    except Exception as exc:
        return f"orion-fhe is installed but cannot be imported ({type(exc).__name__}: {exc})"
    return None


# --------------------------------------------------------------------------- CKKS parameters


# Orion's own settings (Lattigo backend, nothing saved), shared with benchmarks/bootstrapping.py.
ORION_SETTINGS: dict[str, Any] = {
    "margin": 2,
    "embedding_method": "hybrid",
    "backend": "lattigo",
    "fuse_modules": True,
    "debug": False,
    "io_mode": "none",
}


def circuit_depth(activation: str) -> int:
    """Levels the network consumes: six linear transforms (conv1, pool1, conv2, pool2, fc1,
    fc2; Orion rescales once per transform) plus three activations."""
    return 6 + 3 * (1 if activation == "quad-folded" else 2)


def ckks_config(log_n: int, ring: str, activation: str) -> dict[str, Any]:
    """Orion config with exactly ``circuit_depth`` levels within the 128-bit bound."""
    levels = circuit_depth(activation)
    bound = MAX_LOG_QP_128[log_n]  # same bound for the conjugate-invariant ring
    # Largest scale (<= 40 bits) with q0 = scale + 10 and one special prime of 60 bits.
    scale = min(40, (bound - 60 - 10) // (levels + 1))
    if scale < 25:
        raise ValueError(f"N=2^{log_n} cannot hold {levels} levels at 128-bit security")
    log_q = [scale + 10] + [scale] * levels
    log_p = [60] if scale + 10 <= 60 else [scale + 10]
    return {
        "ckks_params": {
            "LogN": log_n,
            "LogQ": log_q,
            "LogP": log_p,
            "LogScale": scale,
            "H": 192,
            "RingType": ring,
        },
        "orion": dict(ORION_SETTINGS),
    }


# --------------------------------------------------------------------------- networks


def build_reference(seed: int) -> Any:
    """Plain PyTorch LeNetLike (same layer order, shapes and default init as the zoo model)."""
    import torch
    from torch import nn

    class Poly(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b, c = POLY
            return (a * x + b) * x + c

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        Poly(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 5),
        Poly(),
        nn.AvgPool2d(10),
        nn.Flatten(),
        nn.Linear(64, 32),
        Poly(),
        nn.Linear(32, 10),
    ).eval()


def build_orion(reference: Any, activation: str, levels: int) -> Any:
    """The Orion network with ``reference``'s weights; linear layers pinned to their levels."""
    import orion.nn as on
    import torch

    act_depth = 1 if activation == "quad-folded" else 2
    # Level at which each linear layer starts (input level = depth of the whole circuit).
    lv: dict[str, int] = {}
    level = levels
    for name in ("conv1", "act1", "pool1", "conv2", "act2", "pool2", "fc1", "act3", "fc2"):
        lv[name] = level
        level -= act_depth if name.startswith("act") else 1
    assert level == 0, level

    def act() -> Any:
        return on.Quad() if activation == "quad-folded" else on.Activation(list(POLY))

    class OrionLeNet(on.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = on.Conv2d(1, 32, 5, padding=2, level=lv["conv1"])
            self.act1 = act()
            self.pool1 = on.AvgPool2d(2, level=lv["pool1"])
            self.conv2 = on.Conv2d(32, 64, 5, level=lv["conv2"])
            self.act2 = act()
            self.pool2 = on.AvgPool2d(10, level=lv["pool2"])
            self.flatten = on.Flatten()
            self.fc1 = on.Linear(64, 32, level=lv["fc1"])
            self.act3 = act()
            self.fc2 = on.Linear(32, 10, level=lv["fc2"])

        def forward(self, x: Any) -> Any:
            x = self.pool1(self.act1(self.conv1(x)))
            x = self.pool2(self.act2(self.conv2(x)))
            x = self.flatten(x)
            return self.fc2(self.act3(self.fc1(x)))

    net = OrionLeNet()
    src = {name: reference[i] for i, name in ((0, "conv1"), (3, "conv2"), (7, "fc1"), (9, "fc2"))}
    weights = {k: m.weight.detach().double().clone() for k, m in src.items()}
    biases = {k: m.bias.detach().double().clone() for k, m in src.items()}
    if activation == "quad-folded":
        a, b, c = POLY
        d, e = b / (2 * a), c - b * b / (4 * a)
        # act after conv1 / conv2 / fc1: shift by d before squaring ...
        for before in ("conv1", "conv2", "fc1"):
            biases[before] += d
        # ... then a*(.)^2 + e feeds conv2 (through an average pool), fc1 (through the global
        # pool and flatten) and fc2: scale the weights by a, add e * sum of the weights.
        for after in ("conv2", "fc1", "fc2"):
            w = weights[after]
            biases[after] += e * w.reshape(w.shape[0], -1).sum(dim=1)
            weights[after] = a * w
    with torch.no_grad():
        for name in src:
            getattr(net, name).weight.copy_(weights[name].float())
            getattr(net, name).bias.copy_(biases[name].float())
    return net


# --------------------------------------------------------------------------- one measurement


def diagonal_bytes(net: Any, log_n: int, n_special: int) -> int:
    """Memory Lattigo needs for the encoded diagonals once levels are assigned."""
    from orion.nn.linear import LinearTransform

    total = 0
    for module in net.modules():
        if isinstance(module, LinearTransform) and module.level is not None:
            count = sum(len(d) for d in module.diagonals.values())
            total += count * (module.level + 1 + n_special) * (1 << log_n) * 8
    return total


def available_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


class MemoryRefused(RuntimeError):
    pass


def measure(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Run inside the worker process (GOMAXPROCS already set by the parent)."""
    import torch

    torch.set_num_threads(threads)
    import orion
    import orion.core.orion as orion_core

    config = ckks_config(args.log_n, args.ring, args.activation)
    ckks = config["ckks_params"]
    levels = len(ckks["LogQ"]) - 1
    run: dict[str, Any] = {
        "impl": "orion",
        "orion_version": orion_version(),
        "model": "lenet",
        "threads": threads,
        "gomaxprocs": os.environ.get("GOMAXPROCS"),
        "activation": args.activation,
        "ring_type": args.ring,
        "poly_degree": 1 << args.log_n,
        "slots": (1 << (args.log_n - 1)) if args.ring == "standard" else (1 << args.log_n),
        "log_q": ckks["LogQ"],
        "log_p": ckks["LogP"],
        "log_scale": ckks["LogScale"],
        "log_qp": sum(ckks["LogQ"]) + sum(ckks["LogP"]),
        "log_qp_bound_128": MAX_LOG_QP_128[args.log_n],
        "levels": levels,
        "hamming_weight": ckks["H"],
        "embedding_method": config["orion"]["embedding_method"],
        "weights": f"random: PyTorch default init under torch.manual_seed({args.seed})",
    }

    reference = build_reference(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    images = torch.rand(4, 1, 28, 28, generator=gen)
    image = images[:1]
    with torch.no_grad():
        clear = reference(image).double()

    start = time.perf_counter()
    scheme = orion.init_scheme(config)
    run["keygen_s"] = time.perf_counter() - start  # sk, pk, relinearisation key + evaluators

    net = build_orion(reference, args.activation, levels)
    net.eval()
    with torch.no_grad():
        orion_clear = net(image).double()
    run["fold_error"] = float((orion_clear - clear).abs().max())

    # Record bootstraps, refuse runs whose diagonals cannot fit, time rotation-key generation.
    info: dict[str, Any] = {"rotation_keygen_s": 0.0}

    class Solver(orion_core.BootstrapSolver):  # type: ignore[misc, name-defined]
        def solve(self) -> Any:
            result = super().solve()
            info["input_level"], info["bootstraps"], info["boot_slots"] = result
            need = diagonal_bytes(net, args.log_n, len(ckks["LogP"]))
            info["diagonal_bytes"] = need
            have = available_bytes()
            if PEAK_FACTOR * need > have and not args.force:
                raise MemoryRefused(
                    f"Orion would encode {need / 2**30:.1f} GiB of plaintext diagonals "
                    f"(levels pinned, one special prime; the encoding peaks near "
                    f"{PEAK_FACTOR}x that) but only {have / 2**30:.1f} GiB of memory is "
                    f"available; run refused (--force overrides)"
                )
            return result

    orion_core.BootstrapSolver = Solver
    lt = scheme.lt_evaluator
    generate_rotation_keys = lt.generate_rotation_keys

    def timed_rotation_keys(transform_id: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return generate_rotation_keys(transform_id)
        finally:
            info["rotation_keygen_s"] += time.perf_counter() - t0

    lt.generate_rotation_keys = timed_rotation_keys

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=1)
    start = time.perf_counter()
    orion.fit(net, loader)
    run["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        input_level = orion.compile(net)
    except MemoryRefused as exc:
        run.update(seconds=[], median_s=None, error=str(exc))
        run["diagonal_bytes"] = info.get("diagonal_bytes")
        run["bootstrapping"] = bool(info.get("bootstraps"))
        return run
    run["compile_s"] = time.perf_counter() - start  # packing, rotation keys, diagonal encoding
    run["rotation_keygen_s"] = info["rotation_keygen_s"]
    run["rotation_keys"] = len(lt.saved_rotation_keys)
    run["input_level"] = input_level
    run["bootstrapping"] = bool(info["bootstraps"])
    run["bootstraps"] = info["bootstraps"]
    run["diagonal_bytes"] = info["diagonal_bytes"]
    run["diagonals"] = {
        name: sum(len(d) for d in getattr(net, name).diagonals.values())
        for name in ("conv1", "pool1", "conv2", "pool2", "fc1", "fc2")
    }

    seconds: list[float] = []
    errors: list[float] = []
    for i in range(args.repeats + 1):  # the first is the warm-up
        net.eval()
        ciphertext = orion.encrypt(orion.encode(image, input_level))
        net.he()
        start = time.perf_counter()
        out = net(ciphertext)
        elapsed = time.perf_counter() - start
        decrypted = out.decrypt().decode().double().reshape(clear.shape)
        errors.append(float((decrypted - clear).abs().max()))
        if i == 0:
            run["warmup_s"] = elapsed
        else:
            seconds.append(elapsed)
        print(f"[orion threads={threads}] run {i} ({'warm-up' if i == 0 else 'timed'}): "
              f"{elapsed:.3f} s, max abs error {errors[-1]:.3g}", flush=True)  # fmt: skip
    run["seconds"] = seconds
    run["median_s"] = statistics.median(seconds) if seconds else None
    run["max_abs_error"] = max(errors)
    run["clear_output_max_abs"] = float(clear.abs().max())
    with contextlib.suppress(Exception):
        import resource

        run["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return run


# --------------------------------------------------------------------------- driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="one timed run per thread count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-n", type=int, default=15, choices=sorted(MAX_LOG_QP_128))
    parser.add_argument("--ring", default="standard", choices=["standard", "conjugateinvariant"])
    parser.add_argument("--activation", default="quad-folded", choices=["quad-folded", "poly"])
    parser.add_argument("--force", action="store_true", help="skip the memory check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per thread count")
    parser.add_argument("--note", default=None, help="free text stored in the JSON")
    parser.add_argument("--_worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 1)
    if args.repeats < 0 or any(t < 1 for t in args.threads):
        parser.error("--repeats must be >= 0 and --threads >= 1")
    return args


def run_worker(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """One subprocess per thread count: GOMAXPROCS must be set before Go starts."""
    env = dict(os.environ)
    for var in ("GOMAXPROCS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(out),
               "--threads", str(threads), "--repeats", str(args.repeats), "--seed",
               str(args.seed), "--log-n", str(args.log_n), "--ring", args.ring,
               "--activation", args.activation] + (["--force"] if args.force else [])  # fmt: skip
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout, check=False)
            code: int | str = proc.returncode
            if proc.returncode == -9:
                code = "-9, SIGKILL: most likely the kernel's out-of-memory killer"
        except subprocess.TimeoutExpired:
            code = f"timed out after {args.timeout:.0f} s"
        if out.exists():
            result: dict[str, Any] = json.loads(out.read_text())
            return result
    return {
        "impl": "orion",
        "orion_version": orion_version(),
        "model": "lenet",
        "threads": threads,
        "seconds": [],
        "median_s": None,
        "error": f"worker failed (exit {code}) after {time.perf_counter() - start:.0f} s",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker is not None:
        run = measure(args, args.threads[0])
        args._worker.write_text(json.dumps(run, indent=2))
        return 0

    reason = orion_importable()
    report: dict[str, Any] = {"runs": [], "seed": args.seed, "skipped": reason}
    if args.note:
        report["note"] = args.note
    if reason is None:
        for threads in args.threads:
            run = run_worker(args, threads)
            report["runs"].append(run)
            print(f"[orion threads={threads}] median {run.get('median_s')} s, "
                  f"error {run.get('max_abs_error', run.get('error'))}", flush=True)  # fmt: skip
    else:
        print(reason, flush=True)
    report["machine"] = machine_info(
        orion_fhe=orion_version(), gomaxprocs_applied=[r.get("gomaxprocs") for r in report["runs"]]
    )
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
