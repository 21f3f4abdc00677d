"""Benchmark our CKKS engine against Microsoft SEAL (via ``tenseal.sealapi``), same process/machine.

For N = 8192 and 16384, with the same modulus bit sizes on both sides, it times: encode, encrypt,
add, multiply_plain, multiply+relinearize, rescale, rotate (one step), decrypt, decode, and 16
rotations of one ciphertext (ours: one hoisted call; SEAL: 16 separate ``rotate_vector`` calls).
Ours runs on 1 and on 2 threads, and on 1 thread with its AVX-512 IFMA kernels switched off
(``ours_scalar``: the portable path, the fair row against a SEAL build without AVX-512 or
Intel HEXL, which is what the TenSEAL wheel ships; ``builds`` in the JSON says what each
side's library holds). SEAL's evaluator is single-threaded. Measurements of the variants are
interleaved round-robin, after a warm-up, and each reported figure is the median over
``--repeats`` samples of ``time.perf_counter``.

It also cross-checks numerics: a random 64x64 matrix-vector product by the diagonal
(Halevi-Shoup) method followed by a square, in both engines, against numpy.

Usage::

    python benchmarks/engine_vs_seal.py [--quick] [--only-seal] [--out results/engine_vs_seal.json]
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import dataclasses
import gc
import importlib
import importlib.util
import logging
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fheprune.reference.seal import SealCKKS, SealParams
from fheprune.reporting import machine_info, write_json_atomic

LOG = logging.getLogger("engine_vs_seal")

FloatArray = npt.NDArray[np.float64]

SCALE_BITS = 40
# N -> (chain_bits, special_bits). SEAL gets CoeffModulus.Create(N, chain + special).
PARAM_SETS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    8192: ((60, 40, 40), (60,)),
    16384: ((60, 40, 40, 40, 40, 40, 40, 40), (60,)),
}
HOIST_STEPS: tuple[int, ...] = tuple(range(1, 17))
CROSSCHECK_N = 8192
CROSSCHECK_DIM = 64
CROSSCHECK_W_SCALE = 1.0 / 8.0
CROSSCHECK_TOL = 1e-4
SANITY_TOL = 1e-4

DEFAULT_REPEATS = 15
QUICK_REPEATS = 3
# Each timing sample loops an op `inner` times so that one sample lasts at least this long.
MIN_SAMPLE_S = 0.05
QUICK_MIN_SAMPLE_S = 0.005
MAX_INNER = 2000

EXIT_CHECK_FAILED = 1
EXIT_NO_ENGINE = 2


@dataclasses.dataclass(frozen=True)
class BenchParams:
    poly_degree: int
    chain_bits: tuple[int, ...]
    special_bits: tuple[int, ...]
    scale_bits: int
    galois_steps: tuple[int, ...]

    @classmethod
    def for_n(cls, n: int, galois_steps: Iterable[int]) -> BenchParams:
        chain, special = PARAM_SETS[n]
        return cls(n, chain, special, SCALE_BITS, tuple(galois_steps))

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    def seal_params(self) -> SealParams:
        return SealParams(self.poly_degree, self.chain_bits, self.special_bits, self.scale_bits)

    def describe(self) -> dict[str, Any]:
        return {
            "poly_degree": self.poly_degree,
            "chain_bits": list(self.chain_bits),
            "special_bits": list(self.special_bits),
            "scale_bits": self.scale_bits,
            "seal_coeff_bits": [*self.chain_bits, *self.special_bits],
            "galois_steps": list(self.galois_steps),
        }


# --------------------------------------------------------------------------- backends
class Backend(abc.ABC):
    """What the shared benchmark loop needs from an engine. Handles are opaque (``Any``).

    Every evaluation method returns a NEW object and leaves its inputs untouched, so timings
    include the output allocation on both sides.
    """

    name: str = "backend"
    thread_counts: tuple[int, ...] = (1,)

    @abc.abstractmethod
    def setup(self, params: BenchParams) -> None:
        """Build the context and keys (secret, public, relinearization, Galois for the steps)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop context and keys (frees memory before the next parameter set)."""

    def set_threads(self, threads: int) -> None:
        if threads != 1:
            raise ValueError(f"{self.name} runs single-threaded only")

    def enter(self) -> None:  # noqa: B027 - most backends have no process-wide state
        """Put process-wide engine state the way this backend measures it (not timed)."""

    @property
    @abc.abstractmethod
    def slots(self) -> int: ...

    def prepare(self, values: FloatArray) -> Any:
        """Convert a numpy vector into the input ``encode`` takes natively (not timed)."""
        return values

    @abc.abstractmethod
    def encode(self, values: Any) -> Any:
        """Plaintext at the top level, default scale 2**scale_bits."""

    @abc.abstractmethod
    def decode(self, pt: Any) -> FloatArray: ...

    @abc.abstractmethod
    def encrypt(self, pt: Any) -> Any:
        """Public-key encryption."""

    @abc.abstractmethod
    def decrypt(self, ct: Any) -> Any:
        """Ciphertext -> plaintext (no decoding)."""

    @abc.abstractmethod
    def add(self, a: Any, b: Any) -> Any: ...

    @abc.abstractmethod
    def multiply_plain(self, ct: Any, pt: Any) -> Any:
        """ct * pt at the same level, no rescale."""

    @abc.abstractmethod
    def multiply_relin(self, a: Any, b: Any) -> Any:
        """a * b then relinearization to size 2, no rescale."""

    @abc.abstractmethod
    def rescale(self, ct: Any) -> Any: ...

    @abc.abstractmethod
    def rotate(self, ct: Any, step: int) -> Any:
        """Left rotation: slot i receives slot i + step."""

    @abc.abstractmethod
    def rotate_many(self, ct: Any, steps: Sequence[int]) -> list[Any]:
        """Several rotations of one ciphertext (hoisted where the engine can)."""

    def rotate16(self, ct: Any) -> list[Any]:
        return self.rotate_many(ct, HOIST_STEPS)

    def matvec_square(self, w: FloatArray, x: FloatArray) -> FloatArray:
        """Decrypt((W x)^2) by the diagonal method; x and the diagonals are tiled over all slots.

        Rotating the tiled x left by k gives, in slot i, x[(i + k) mod d] (d divides the slot
        count, so the wrap-around at the end of the slot vector stays consistent), and
        ``diag_k[i] = W[i mod d, (i + k) mod d]``; so sum_k diag_k * rot(x, k) holds (W x)[i mod d].
        """
        d = w.shape[0]
        if w.shape != (d, d) or x.shape != (d,) or self.slots % d:
            raise ValueError(f"need a square W and d | slots, got W {w.shape}, x {x.shape}")
        reps = self.slots // d
        rows = np.arange(d)
        ct_x = self.encrypt(self.encode(self.prepare(np.tile(x, reps))))
        rotated = [ct_x, *self.rotate_many(ct_x, list(range(1, d)))]
        acc: Any = None
        for k, ct_k in enumerate(rotated):
            diag = np.ascontiguousarray(w[rows, (rows + k) % d], dtype=np.float64)
            term = self.multiply_plain(ct_k, self.encode(self.prepare(np.tile(diag, reps))))
            acc = term if acc is None else self.add(acc, term)
        y = self.rescale(acc)
        y2 = self.rescale(self.multiply_relin(y, y))
        return self.decode(self.decrypt(y2))


class OursBackend(Backend):
    """Adapter over ``fheprune.ckks``; keep every engine API name in this class.

    ``vector=False`` measures the engine's portable scalar path (the AVX-512 IFMA kernels
    switched off for the whole process while it runs, and its NTT tables built scalar): the
    row to compare with a SEAL build that has neither AVX-512 nor Intel HEXL.
    """

    ctx: Any
    relin_key: Any
    galois_keys: Any
    encoder: Any
    encryptor: Any
    decryptor: Any
    evaluator: Any

    def __init__(self, ckks: Any, vector: bool = True) -> None:
        self._ck = ckks
        self._threads = 1
        self.vector = vector
        self.name = "ours" if vector else "ours_scalar"
        self.thread_counts = (1, 2) if vector else (1,)
        self.close()

    def enter(self) -> None:
        self._ck.set_vector_kernels(self.vector)

    def setup(self, params: BenchParams) -> None:
        ck = self._ck
        parameters = ck.Parameters(
            poly_degree=params.poly_degree,
            chain_bits=list(params.chain_bits),
            special_bits=list(params.special_bits),
            scale_bits=params.scale_bits,
        )
        self.enter()  # the NTT tables follow the switch at context creation
        self.ctx = ck.Context(parameters, threads=1)
        self._threads = 1
        keygen = ck.KeyGenerator(self.ctx)
        public_key = keygen.create_public_key()
        self.relin_key = keygen.create_relin_key()
        self.galois_keys = keygen.create_galois_keys(list(params.galois_steps))
        self.encoder = ck.Encoder(self.ctx)
        self.encryptor = ck.Encryptor(self.ctx, public_key)
        self.decryptor = ck.Decryptor(self.ctx, keygen.secret_key)
        self.evaluator = ck.Evaluator(self.ctx)
        if int(self.ctx.slots) != params.slots:
            raise RuntimeError(f"engine reports {self.ctx.slots} slots, expected {params.slots}")

    def close(self) -> None:
        self.ctx = None
        self.relin_key = None
        self.galois_keys = None
        self.encoder = None
        self.encryptor = None
        self.decryptor = None
        self.evaluator = None

    def set_threads(self, threads: int) -> None:
        if threads != self._threads:
            self.ctx.set_threads(threads)
            self._threads = threads

    @property
    def slots(self) -> int:
        return int(self.ctx.slots)

    def prepare(self, values: FloatArray) -> Any:
        return np.ascontiguousarray(values, dtype=np.float64)

    def encode(self, values: Any) -> Any:
        return self.encoder.encode(values)

    def decode(self, pt: Any) -> FloatArray:
        return np.asarray(self.encoder.decode(pt), dtype=np.float64)

    def encrypt(self, pt: Any) -> Any:
        return self.encryptor.encrypt(pt)

    def decrypt(self, ct: Any) -> Any:
        return self.decryptor.decrypt(ct)

    def add(self, a: Any, b: Any) -> Any:
        return self.evaluator.add(a, b)

    def multiply_plain(self, ct: Any, pt: Any) -> Any:
        return self.evaluator.multiply_plain(ct, pt)

    def multiply_relin(self, a: Any, b: Any) -> Any:
        return self.evaluator.multiply_relin(a, b, self.relin_key)

    def rescale(self, ct: Any) -> Any:
        return self.evaluator.rescale(ct)

    def rotate(self, ct: Any, step: int) -> Any:
        return self.evaluator.rotate(ct, step, self.galois_keys)

    def rotate_many(self, ct: Any, steps: Sequence[int]) -> list[Any]:
        # One hoisted call: the key-switch decomposition of ct is shared by all steps.
        return list(self.evaluator.rotate_hoisted(ct, list(steps), self.galois_keys))


class SealBackend(Backend):
    """SEAL through :class:`fheprune.reference.seal.SealCKKS` (non-inplace ``op(...)`` forms)."""

    name = "seal"
    thread_counts = (1,)

    def __init__(self) -> None:
        self.seal: SealCKKS | None = None

    def setup(self, params: BenchParams) -> None:
        self.seal = SealCKKS(params.seal_params(), params.galois_steps)
        if self.seal.slots != params.slots:
            raise RuntimeError(f"SEAL reports {self.seal.slots} slots, expected {params.slots}")

    def close(self) -> None:
        self.seal = None

    @property
    def s(self) -> SealCKKS:
        if self.seal is None:
            raise RuntimeError("SealBackend.setup() was not called")
        return self.seal

    @property
    def slots(self) -> int:
        return self.s.slots

    def prepare(self, values: FloatArray) -> Any:
        # sealapi's encode takes list[float]; convert outside the timed region (ours takes the
        # ndarray directly), so both sides time only the binding call + the encoding itself.
        return np.asarray(values, dtype=np.float64).tolist()

    def encode(self, values: Any) -> Any:
        return self.s.encode(values)

    def decode(self, pt: Any) -> FloatArray:
        return self.s.decode(pt)

    def encrypt(self, pt: Any) -> Any:
        return self.s.encrypt(pt)

    def decrypt(self, ct: Any) -> Any:
        return self.s.decrypt(ct)

    def add(self, a: Any, b: Any) -> Any:
        return self.s.add(a, b)

    def multiply_plain(self, ct: Any, pt: Any) -> Any:
        return self.s.multiply_plain(ct, pt)

    def multiply_relin(self, a: Any, b: Any) -> Any:
        # multiply(a, b, out) + relinearize_inplace(out): one fresh output, like ours.
        return self.s.multiply_relin(a, b)

    def rescale(self, ct: Any) -> Any:
        return self.s.rescale(ct)

    def rotate(self, ct: Any, step: int) -> Any:
        return self.s.rotate(ct, step)

    def rotate_many(self, ct: Any, steps: Sequence[int]) -> list[Any]:
        # SEAL has no hoisted rotation: one rotate_vector (full key switch) per step.
        return self.s.rotate_many(ct, steps)


def load_engine() -> Any:
    """Import ``fheprune.ckks`` (compiled bindings); raises ImportError with the reason."""
    return importlib.import_module("fheprune.ckks")


def engine_version() -> str | None:
    try:
        module = importlib.import_module("fheprune")
    except Exception:
        return None
    version = getattr(module, "__version__", None)
    return None if version is None else str(version)


def _seal_library() -> Path | None:
    spec = importlib.util.find_spec("_sealapi_cpp")
    return None if spec is None or spec.origin is None else Path(spec.origin)


def describe_builds(backends: Sequence[Backend]) -> dict[str, Any]:
    """What each side's machine code can use, so a ratio says which builds it compares.

    SEAL comes compiled inside the TenSEAL wheel; whether that build links Intel HEXL or
    holds AVX-512 instructions is read from the library itself (``objdump``, when installed).
    """
    out: dict[str, Any] = {}
    for b in backends:
        if isinstance(b, OursBackend):
            ck = b._ck
            kernel_set = str(ck.vector_kernel_set()) if b.vector else "none"
            out[b.name] = {
                "vector_kernels": kernel_set,
                "avx512_ifma_kernels": kernel_set == "avx512-ifma",
                "summary": "ours, "
                + {
                    "avx512-ifma": "AVX-512 IFMA kernels (NTT, key-switch inner products, "
                    "products)",
                    "avx2-fma": "AVX2 kernels (this CPU has no AVX-512): NTT in doubles with "
                    "FMA below 2^50 and in 64-bit integer lanes above, inner products in "
                    "doubles with FMA below 2^40 and scalar above",
                    "none": "portable scalar kernels only (vector kernels switched off or absent)",
                }[kernel_set],
            }
    lib = _seal_library()
    seal: dict[str, Any] = {"library": None if lib is None else lib.name}
    try:
        import tenseal

        seal["tenseal"] = tenseal.__version__
    except ImportError:
        pass
    if lib is not None:
        data = lib.read_bytes()
        seal["links_intel_hexl"] = b"hexl" in data.lower()
        if shutil.which("objdump"):
            dump = subprocess.run(
                ["objdump", "-d", "--no-show-raw-insn", str(lib)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            seal["avx512_instructions"] = dump.count("%zmm")
            seal["avx2_instructions"] = dump.count("%ymm")
    seal["summary"] = (
        f"SEAL from the TenSEAL {seal.get('tenseal', '?')} wheel: "
        f"Intel HEXL {'linked' if seal.get('links_intel_hexl') else 'not linked'}, "
        + (
            f"{seal['avx512_instructions']} AVX-512 (zmm) and {seal['avx2_instructions']} AVX2 "
            "(ymm) instructions in its library"
            if "avx512_instructions" in seal
            else "instruction set not inspected (no objdump)"
        )
    )
    out["seal"] = seal
    return out


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass(frozen=True)
class Variant:
    key: str  # JSON field: "ours_s", "seal_s", "ours_2t_s"
    backend: Backend
    threads: int
    fn: Callable[[], object]

    def activate(self) -> None:
        self.backend.enter()
        self.backend.set_threads(self.threads)


@contextlib.contextmanager
def _gc_paused() -> Any:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def measure(
    variants: Sequence[Variant], repeats: int, min_sample_s: float
) -> tuple[dict[str, float], int]:
    """Median seconds per call for each variant, sampled round-robin (rotating the order).

    Warm-up: each variant runs twice first; the second run calibrates ``inner``, the number of
    calls per sample (the same for all variants of an op) so the fastest variant's samples last
    at least ``min_sample_s``. Thread switching happens outside the timed region.
    """
    per_call: list[float] = []
    for v in variants:
        v.activate()
        v.fn()
        t0 = time.perf_counter()
        v.fn()
        per_call.append(time.perf_counter() - t0)
    inner = max(1, min(MAX_INNER, math.ceil(min_sample_s / max(min(per_call), 1e-9))))
    samples: dict[str, list[float]] = {v.key: [] for v in variants}
    order = list(variants)
    for r in range(repeats):
        shift = r % len(order)
        for v in order[shift:] + order[:shift]:
            v.activate()
            fn = v.fn
            with _gc_paused():
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                elapsed = time.perf_counter() - t0
            samples[v.key].append(elapsed / inner)
    for v in variants:
        v.backend.set_threads(1)  # leave every backend in its default single-thread state
    return {k: statistics.median(s) for k, s in samples.items()}, inner


@dataclasses.dataclass
class OpInputs:
    """Per-backend inputs, built once per N, outside any timed region."""

    v1: Any
    v2: Any
    pt1: Any
    pt2: Any
    ct1: Any
    ct2: Any
    prod: Any  # ct1 * ct2 relinearized: scale 2^80 at the top level, the input of `rescale`


def make_inputs(b: Backend, x1: FloatArray, x2: FloatArray) -> OpInputs:
    v1, v2 = b.prepare(x1), b.prepare(x2)
    pt1, pt2 = b.encode(v1), b.encode(v2)
    ct1, ct2 = b.encrypt(pt1), b.encrypt(pt2)
    return OpInputs(v1, v2, pt1, pt2, ct1, ct2, b.multiply_relin(ct1, ct2))


# What each entry times, identically on both sides (all return fresh objects):
OPS: dict[str, Callable[[Backend, OpInputs], Callable[[], object]]] = {
    # values (native input form) -> plaintext at top level, scale 2^40
    "encode": lambda b, s: partial(b.encode, s.v1),
    # plaintext -> ciphertext, public-key encryption
    "encrypt": lambda b, s: partial(b.encrypt, s.pt1),
    # ciphertext + ciphertext
    "add": lambda b, s: partial(b.add, s.ct1, s.ct2),
    # ciphertext * plaintext, same level, no rescale
    "multiply_plain": lambda b, s: partial(b.multiply_plain, s.ct1, s.pt2),
    # ciphertext * ciphertext + relinearization, no rescale
    "multiply_relin": lambda b, s: partial(b.multiply_relin, s.ct1, s.ct2),
    # rescale of a relinearized product (top level -> one level down)
    "rescale": lambda b, s: partial(b.rescale, s.prod),
    # one rotation by 1 slot (one key switch)
    "rotate": lambda b, s: partial(b.rotate, s.ct1, 1),
    # ciphertext -> plaintext
    "decrypt": lambda b, s: partial(b.decrypt, s.ct1),
    # plaintext -> numpy float64 vector
    "decode": lambda b, s: partial(b.decode, s.pt1),
}
HOISTED_KEY = "hoisted16"


def variants_for(
    backends: Sequence[Backend],
    inputs: dict[str, OpInputs],
    make: Callable[[Backend, OpInputs], Callable[[], object]],
) -> list[Variant]:
    out: list[Variant] = []
    for b in backends:
        for threads in b.thread_counts:
            key = f"{b.name}_s" if threads == 1 else f"{b.name}_{threads}t_s"
            out.append(Variant(key, b, threads, make(b, inputs[b.name])))
    return out


def sanity_errors(b: Backend, s: OpInputs, x1: FloatArray, x2: FloatArray) -> dict[str, float]:
    """Decrypt the outputs of the timed ops and compare with numpy (guards the timings)."""

    def err(ct: Any, want: FloatArray) -> float:
        return float(np.max(np.abs(b.decode(b.decrypt(ct)) - want)))

    return {
        "encode_decode": float(np.max(np.abs(b.decode(s.pt1) - x1))),
        "encrypt_decrypt": err(s.ct1, x1),
        "add": err(b.add(s.ct1, s.ct2), x1 + x2),
        "multiply_plain": err(b.rescale(b.multiply_plain(s.ct1, s.pt2)), x1 * x2),
        "multiply_relin": err(b.rescale(s.prod), x1 * x2),
        "rotate": err(b.rotate(s.ct1, 1), np.roll(x1, -1)),
        HOISTED_KEY: max(
            err(ct, np.roll(x1, -k)) for k, ct in zip(HOIST_STEPS, b.rotate16(s.ct1), strict=True)
        ),
    }


# --------------------------------------------------------------------------- driver
def _ratio(ours: float | None, seal: float | None) -> float | None:
    return None if ours is None or seal is None or seal <= 0 else ours / seal


def run_size(
    n: int,
    backends: Sequence[Backend],
    seed: int,
    repeats: int,
    min_sample_s: float,
    results: dict[str, Any],
) -> bool:
    params = BenchParams.for_n(n, HOIST_STEPS)
    results["params"]["sizes"][str(n)] = params.describe()
    for b in backends:
        t0 = time.perf_counter()
        b.setup(params)
        LOG.info("N=%d: %s context + keys in %.2f s", n, b.name, time.perf_counter() - t0)
    rng = np.random.default_rng([seed, n])  # inputs depend on (seed, N) only, not on --sizes
    x1 = rng.uniform(-1.0, 1.0, params.slots)
    x2 = rng.uniform(-1.0, 1.0, params.slots)
    inputs = {}
    for b in backends:
        b.enter()
        inputs[b.name] = make_inputs(b, x1, x2)

    ok = True
    results["sanity"][str(n)] = {}
    for b in backends:
        b.enter()
        errs = sanity_errors(b, inputs[b.name], x1, x2)
        worst = max(errs.values())
        results["sanity"][str(n)][b.name] = errs
        if not worst < SANITY_TOL:
            LOG.error("N=%d: %s sanity check failed: %s", n, b.name, errs)
            ok = False
        else:
            LOG.info("N=%d: %s outputs check out (max err %.2e)", n, b.name, worst)

    jobs: list[tuple[str, Callable[[Backend, OpInputs], Callable[[], object]]]] = [
        *OPS.items(),
        (HOISTED_KEY, lambda b, s: partial(b.rotate16, s.ct1)),
    ]
    for op, make in jobs:
        variants = variants_for(backends, inputs, make)
        medians, inner = measure(variants, repeats, min_sample_s)
        ours, seal = medians.get("ours_s"), medians.get("seal_s")
        scalar = medians.get("ours_scalar_s")
        entry: dict[str, Any] = {
            "ours_s": ours,
            "seal_s": seal,
            "ratio": _ratio(ours, seal),
            "ours_2t_s": medians.get("ours_2t_s"),
            "ours_scalar_s": scalar,
            "scalar_ratio": _ratio(scalar, seal),
            "simd_speedup": _ratio(scalar, ours),
            "threads_speedup": _ratio(ours, medians.get("ours_2t_s")),
            "inner": inner,
            "repeats": repeats,
        }
        if op == HOISTED_KEY:
            results[f"{HOISTED_KEY}@{n}"] = entry
        else:
            results["ops"][f"{op}@{n}"] = entry
        LOG.info(
            "%s@%d: %s (inner=%d)",
            op,
            n,
            ", ".join(f"{k}={v * 1e3:.3f} ms" for k, v in medians.items()),
            inner,
        )
    del inputs
    for b in backends:
        b.close()
    gc.collect()
    return ok


def run_crosscheck(backends: Sequence[Backend], seed: int, results: dict[str, Any]) -> bool:
    d = CROSSCHECK_DIM
    rng = np.random.default_rng([seed, 0])
    params = BenchParams.for_n(CROSSCHECK_N, range(1, d))
    w = rng.uniform(-1.0, 1.0, (d, d)) * CROSSCHECK_W_SCALE
    x = rng.uniform(-1.0, 1.0, d)
    want = np.tile((w @ x) ** 2, params.slots // d)
    entry: dict[str, Any] = {
        "poly_degree": CROSSCHECK_N,
        "dim": d,
        "w_scale": CROSSCHECK_W_SCALE,
        "tolerance": CROSSCHECK_TOL,
        "ours_max_err": None,
        "seal_max_err": None,
        "max_abs_expected": float(np.max(np.abs(want))),
    }
    ok = True
    for b in backends:
        t0 = time.perf_counter()
        b.setup(params)
        b.enter()
        got = b.matvec_square(w, x)
        b.close()
        max_err = float(np.max(np.abs(got[: want.size] - want)))
        entry[f"{b.name}_max_err"] = max_err
        good = max_err < CROSSCHECK_TOL
        ok = ok and good
        LOG.log(
            logging.INFO if good else logging.ERROR,
            "crosscheck %dx%d matvec+square, %s: max err %.3e (%s, %.2f s)",
            d,
            d,
            b.name,
            max_err,
            "ok" if good else f"FAILS tolerance {CROSSCHECK_TOL:g}",
            time.perf_counter() - t0,
        )
    gc.collect()
    results["crosscheck"] = entry
    return ok


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def format_table(results: dict[str, Any]) -> str:
    header = (
        f"{'op':<16}{'N':>7}{'ours 1t':>14}{'ours 2t':>14}{'ours scalar':>14}{'SEAL':>14}"
        f"{'ours/SEAL':>11}{'scalar/SEAL':>13}"
    )
    lines = [header, "-" * len(header)]
    rows: list[tuple[str, dict[str, Any]]] = list(results["ops"].items())
    rows += [(k, v) for k, v in results.items() if k.startswith(f"{HOISTED_KEY}@")]
    rows.sort(key=lambda kv: int(kv[0].rsplit("@", 1)[1]))  # stable: keeps op order within N
    for key, e in rows:
        op, n = key.rsplit("@", 1)
        ratio, scalar = e.get("ratio"), e.get("scalar_ratio")
        lines.append(
            f"{op:<16}{n:>7}{_fmt_time(e.get('ours_s')):>14}{_fmt_time(e.get('ours_2t_s')):>14}"
            f"{_fmt_time(e.get('ours_scalar_s')):>14}{_fmt_time(e.get('seal_s')):>14}"
            f"{'-' if ratio is None else f'{ratio:.2g}x':>11}"
            f"{'-' if scalar is None else f'{scalar:.2g}x':>13}"
        )
    cc = results.get("crosscheck") or {}

    def _err(v: float | None) -> str:
        return "-" if v is None else f"{v:.2e}"

    lines.append("")
    lines.append(
        f"crosscheck ({cc.get('dim')}x{cc.get('dim')} diagonal matvec + square, "
        f"N={cc.get('poly_degree')}): ours max err {_err(cc.get('ours_max_err'))}, "
        f"SEAL max err {_err(cc.get('seal_max_err'))} (tolerance {cc.get('tolerance')})"
    )
    lines.append(
        "hoisted16 = 16 rotations (steps 1..16) of one ciphertext: "
        "ours one hoisted call, SEAL 16 rotate_vector calls"
    )
    builds = results.get("builds") or {}
    for name, info in builds.items():
        lines.append(f"{name}: {info.get('summary', info)}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=sorted(PARAM_SETS), choices=sorted(PARAM_SETS)
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"samples per op (default {DEFAULT_REPEATS}; with --quick {QUICK_REPEATS})",
    )
    ap.add_argument("--quick", action="store_true", help="fewer/shorter samples (under a minute)")
    ap.add_argument("--only-seal", action="store_true", help="run only the SEAL side")
    ap.add_argument(
        "--no-scalar",
        action="store_true",
        help="skip the row of our engine with its vector kernels switched off",
    )
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON (atomically)")
    ap.add_argument("--seed", type=int, default=0, help="numpy RNG seed for the inputs")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    backends: list[Backend] = []
    if args.only_seal:
        LOG.info("--only-seal: benchmarking SEAL alone")
    else:
        try:
            ckks = load_engine()
        except Exception as exc:
            LOG.error(
                "cannot import fheprune.ckks, our engine's Python bindings (%s: %s). Build and "
                "install them first (e.g. `pip install -v .` in the repository root), or rerun "
                "with --only-seal to benchmark SEAL alone.",
                type(exc).__name__,
                exc,
            )
            return EXIT_NO_ENGINE
        backends.append(OursBackend(ckks))
        if ckks.vector_kernels_available() and not args.no_scalar:
            backends.append(OursBackend(ckks, vector=False))
    backends.append(SealBackend())

    min_sample_s = QUICK_MIN_SAMPLE_S if args.quick else MIN_SAMPLE_S
    results: dict[str, Any] = {
        "params": {
            "sizes": {},
            "scale_bits": SCALE_BITS,
            "repeats": args.repeats,
            "quick": args.quick,
            "min_sample_s": min_sample_s,
            "only_seal": args.only_seal,
            "hoisted_steps": list(HOIST_STEPS),
            "statistic": "median seconds per call",
        },
        "machine": machine_info(engine_version=engine_version()),
        "builds": describe_builds(backends),
        "seed": args.seed,
        "ops": {},
        "sanity": {},
    }
    t_start = time.perf_counter()
    ok = True
    for n in args.sizes:
        ok = run_size(n, backends, args.seed, args.repeats, min_sample_s, results) and ok
    ok = run_crosscheck(backends, args.seed, results) and ok
    LOG.info("done in %.1f s", time.perf_counter() - t_start)

    if args.out is not None:
        write_json_atomic(args.out, results)
        LOG.info("wrote %s", args.out)
    print(format_table(results))
    if not ok:
        LOG.error("numerical checks failed (see above)")
        return EXIT_CHECK_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
