"""Engine demo: encrypted MNIST inference with a linear classifier and a square activation.

A 784->10 linear model is fitted in the clear by closed-form ridge regression (the model
owner's side, not part of the HE computation). The client packs 4 test images per ciphertext
(one 1024-slot block each) and encrypts them; the server computes ``(x @ W + b) ** 2`` for
every class on ciphertexts only (multiply_plain, rescale, rotate-and-sum over the block, add
the bias, square); the client decrypts slot ``1024 * b`` of each class ciphertext. The same
computation runs on Microsoft SEAL (via :mod:`fheprune.reference.seal`) when ``tenseal`` is
installed, for error and timings.

Randomness: the pipeline is deterministic except for encryption noise, which both engines draw
from their own secure generators (not seedable by design); ``seed`` is recorded in the report.
"""

from __future__ import annotations

import abc
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from fheprune.data import load_mnist, to_float
from fheprune.errors import InputError
from fheprune.reporting import machine_info, write_json_atomic

if TYPE_CHECKING:
    from fheprune import ckks as ckks_t
    from fheprune.reference.seal import SealCKKS, SealParams

__all__ = [
    "DemoConfigError",
    "LinearModel",
    "format_summary",
    "machine_info",
    "pack_images",
    "run_engine_demo",
    "train_ridge",
    "write_json_atomic",
]

LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

PRESET = "n8192-l2"
BLOCK = 1024  # slots per image: the next power of two above 784 pixels
PIXELS = 28 * 28
RIDGE_ALPHA = 0.1  # ridge lambda = RIDGE_ALPHA * n_train, i.e. 0.1 per training sample
TIMING_NOTE = (
    "encrypt_s, eval_s and decrypt_s are mean seconds per ciphertext (4 images); decrypt_s "
    "covers the 10 class ciphertexts of one input ciphertext; keygen_s covers the context and "
    "the secret, public, relinearization and Galois keys (SEAL builds them together); "
    "eval_per_image_s = total server time / images"
)


class DemoConfigError(InputError):
    """An argument of run_engine_demo is out of range (the CLI reports it as a usage error)."""


# --------------------------------------------------------------------------- plaintext model
@dataclass(frozen=True)
class LinearModel:
    """``scores = x @ weights + bias`` with ``weights`` [784, 10] and ``bias`` [10] (float64)."""

    weights: FloatArray
    bias: FloatArray

    def scores(self, x: FloatArray) -> FloatArray:
        return np.asarray(x @ self.weights + self.bias, dtype=np.float64)


def train_ridge(
    x: FloatArray, labels: npt.NDArray[np.int64], classes: int, lam: float
) -> LinearModel:
    """Closed-form ridge regression on one-hot targets; the bias is not penalized.

    Centering X and Y first gives the unpenalized intercept ``b = mean(Y) - mean(X) W``.
    """
    n, d = x.shape
    targets = np.zeros((n, classes), dtype=np.float64)
    targets[np.arange(n), labels] = 1.0
    mean_x = x.mean(axis=0)
    mean_y = targets.mean(axis=0)
    xc = x - mean_x
    gram = xc.T @ xc
    gram[np.diag_indices(d)] += lam
    weights = np.linalg.solve(gram, xc.T @ (targets - mean_y))
    bias = mean_y - mean_x @ weights
    return LinearModel(weights=np.ascontiguousarray(weights), bias=np.asarray(bias))


def accuracy(scores: FloatArray, labels: npt.NDArray[np.int64]) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


# --------------------------------------------------------------------------- packing
def pack_images(x: FloatArray, slots: int) -> FloatArray:
    """Place image ``b`` of ``x`` [k, 784] in slots ``[1024 b, 1024 b + 784)``, zeros elsewhere."""
    per_ct = slots // BLOCK
    if x.ndim != 2 or x.shape[1] != PIXELS or not 0 < len(x) <= per_ct:
        raise InputError(f"expected 1..{per_ct} images of {PIXELS} pixels, got shape {x.shape}")
    out = np.zeros(slots, dtype=np.float64)
    for b, image in enumerate(x):
        out[b * BLOCK : b * BLOCK + PIXELS] = image
    return out


def tile_weights(weights: FloatArray, slots: int) -> FloatArray:
    """[classes, slots]: each class's 784 weights repeated in every block (zero padded)."""
    padded = np.zeros((weights.shape[1], BLOCK), dtype=np.float64)
    padded[:, :PIXELS] = weights.T
    return np.tile(padded, (1, slots // BLOCK))


def bias_at_block_starts(bias: FloatArray, slots: int) -> FloatArray:
    """[classes, slots]: the class bias at slot ``1024 b`` (where the block sum lands)."""
    out = np.zeros((bias.size, slots), dtype=np.float64)
    out[:, ::BLOCK] = bias[:, None]
    return out


def sum_steps() -> list[int]:
    """Rotation steps 1, 2, 4, ..., 512: after them slot 1024 b holds block b's sum."""
    return [1 << k for k in range(BLOCK.bit_length() - 1)]


# --------------------------------------------------------------------------- engines
class _Runner(abc.ABC):
    """One engine running the demo computation; keys are made in ``__init__`` (timed)."""

    name: str
    keygen_s: float  # context + all keys: SealCKKS makes both in one constructor

    @abc.abstractmethod
    def prepare(self, w_tiled: FloatArray, b_tiled: FloatArray) -> None:
        """Encode the model plaintexts once (the server's model, before any query)."""

    @abc.abstractmethod
    def encrypt(self, packed: FloatArray) -> Any: ...

    @abc.abstractmethod
    def evaluate(self, ct: Any) -> list[Any]:
        """One output ciphertext per class: (x.w_c + b_c)^2 at each block start."""

    @abc.abstractmethod
    def decrypt(self, cts: Sequence[Any]) -> FloatArray:
        """[classes, slots] decoded values."""


class _OursRunner(_Runner):
    name = "ours"

    def __init__(self, ck: Any, params: ckks_t.Parameters, steps: list[int], threads: int) -> None:
        t0 = time.perf_counter()
        self.ctx: ckks_t.Context = ck.Context(params, threads=threads)
        keygen = ck.KeyGenerator(self.ctx)
        public_key = keygen.create_public_key()
        self.relin_key: ckks_t.RelinKey = keygen.create_relin_key()
        self.galois_keys: ckks_t.GaloisKeys = keygen.create_galois_keys(steps)
        self.keygen_s = time.perf_counter() - t0
        self.steps = steps
        self.encoder: ckks_t.Encoder = ck.Encoder(self.ctx)
        self.encryptor: ckks_t.Encryptor = ck.Encryptor(self.ctx, public_key)
        self.decryptor: ckks_t.Decryptor = ck.Decryptor(self.ctx, keygen.secret_key)
        self.evaluator: ckks_t.Evaluator = ck.Evaluator(self.ctx)
        self._w: list[ckks_t.Plaintext] = []
        self._b_values: FloatArray = np.zeros(0)
        self._b: dict[tuple[int, float], list[ckks_t.Plaintext]] = {}

    def _bias(self, level: int, scale: float) -> list[ckks_t.Plaintext]:
        # Keyed by the exact (level, scale): add_plain needs both to match the ciphertext.
        key = (level, scale)
        if key not in self._b:
            LOG.debug("ours: encoding bias plaintexts at level %d, scale %r", level, scale)
            self._b[key] = [
                self.encoder.encode(v, scale=scale, level=level) for v in self._b_values
            ]
        return self._b[key]

    def prepare(self, w_tiled: FloatArray, b_tiled: FloatArray) -> None:
        top = self.ctx.max_level
        # Weights at the scale of the prime the next rescale divides by: the product then
        # returns to exactly the default scale, so the bias plaintexts can be made up front.
        q_top = float(self.ctx.primes[top])
        self._w = [self.encoder.encode(np.ascontiguousarray(w), scale=q_top) for w in w_tiled]
        self._b_values = np.ascontiguousarray(b_tiled)
        self._b = {}
        self._bias(top - 1, self.ctx.default_scale)

    def encrypt(self, packed: FloatArray) -> Any:
        return self.encryptor.encrypt(self.encoder.encode(packed))

    def evaluate(self, ct: Any) -> list[Any]:
        ev = self.evaluator
        outs: list[Any] = []
        for c, w_pt in enumerate(self._w):
            y = ev.rescale(ev.multiply_plain(ct, w_pt))
            for step in self.steps:
                y = ev.add(y, ev.rotate(y, step, self.galois_keys))
            y = ev.add_plain(y, self._bias(y.level, y.scale)[c])
            outs.append(ev.rescale(ev.multiply_relin(y, y, self.relin_key)))
        return outs

    def decrypt(self, cts: Sequence[Any]) -> FloatArray:
        return np.stack([self.encoder.decode(self.decryptor.decrypt(ct)) for ct in cts])


class _SealRunner(_Runner):
    name = "seal"

    def __init__(self, seal_cls: type[SealCKKS], params: SealParams, steps: list[int]) -> None:
        t0 = time.perf_counter()
        # SealCKKS builds the context and every key in one go; Galois keys for `steps` only.
        self.seal = seal_cls(params, steps)
        self.keygen_s = time.perf_counter() - t0
        self.steps = steps
        self._w: list[Any] = []
        self._b_values: FloatArray = np.zeros(0)
        self._b: dict[tuple[int, float], list[Any]] = {}

    def _bias(self, level: int, scale: float) -> list[Any]:
        key = (level, scale)
        if key not in self._b:
            LOG.debug("seal: encoding bias plaintexts at level %d, scale %r", level, scale)
            self._b[key] = [self.seal.encode(v, scale=scale, level=level) for v in self._b_values]
        return self._b[key]

    def prepare(self, w_tiled: FloatArray, b_tiled: FloatArray) -> None:
        s = self.seal
        top = s.max_level
        q_top = float(s.rescale_prime(top))  # same reason as in _OursRunner.prepare
        self._w = [s.encode(w, scale=q_top, level=top) for w in w_tiled]
        self._b_values = b_tiled
        self._b = {}
        self._bias(top - 1, s.default_scale)

    def encrypt(self, packed: FloatArray) -> Any:
        return self.seal.encrypt(self.seal.encode(packed))

    def evaluate(self, ct: Any) -> list[Any]:
        s = self.seal
        outs: list[Any] = []
        for c, w_pt in enumerate(self._w):
            y = s.rescale(s.multiply_plain(ct, w_pt))
            for step in self.steps:
                y = s.add(y, s.rotate(y, step))
            y = s.add_plain(y, self._bias(s.level(y), s.scale_of(y))[c])
            outs.append(s.rescale(s.multiply_relin(y, y)))
        return outs

    def decrypt(self, cts: Sequence[Any]) -> FloatArray:
        return np.stack([self.seal.decrypt_values(ct) for ct in cts])


def _run_encrypted(
    runner: _Runner, x: FloatArray, expected: FloatArray, slots: int, model: LinearModel
) -> dict[str, Any]:
    """Encrypt, evaluate and decrypt all images with ``runner``; errors and timings."""
    per_ct = slots // BLOCK
    t0 = time.perf_counter()
    runner.prepare(tile_weights(model.weights, slots), bias_at_block_starts(model.bias, slots))
    prepare_s = time.perf_counter() - t0
    n_ct = -(-len(x) // per_ct)
    got = np.zeros_like(expected)
    t_enc = t_eval = t_dec = 0.0
    bar = tqdm(
        range(n_ct),
        desc=f"{runner.name}: ciphertexts",
        unit="ct",
        disable=not sys.stderr.isatty(),
        leave=False,
    )
    for i in bar:
        batch = x[i * per_ct : (i + 1) * per_ct]
        t0 = time.perf_counter()
        ct = runner.encrypt(pack_images(batch, slots))
        t1 = time.perf_counter()
        outs = runner.evaluate(ct)
        t2 = time.perf_counter()
        values = runner.decrypt(outs)
        t3 = time.perf_counter()
        t_enc, t_eval, t_dec = t_enc + t1 - t0, t_eval + t2 - t1, t_dec + t3 - t2
        # values[c, 1024 b] is class c of image b of this ciphertext.
        got[i * per_ct : i * per_ct + len(batch)] = values[:, ::BLOCK][:, : len(batch)].T
    err = np.abs(got - expected)
    return {
        "max_abs_error": float(err.max()),
        "max_rel_error": float(err.max() / max(float(np.abs(expected).max()), 1e-300)),
        "agreement": float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1))),
        "ciphertexts": n_ct,
        "keygen_s": runner.keygen_s,
        "prepare_model_s": prepare_s,
        "encrypt_s": t_enc / n_ct,
        "eval_s": t_eval / n_ct,
        "eval_total_s": t_eval,
        "eval_per_image_s": t_eval / len(x),
        "decrypt_s": t_dec / n_ct,
    }


# --------------------------------------------------------------------------- report
def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def format_summary(result: dict[str, Any]) -> str:
    """A plain-text table of the demo's result dict (as returned by run_engine_demo)."""
    p, ours, seal = result["params"], result["ours"], result.get("seal")
    ratio = result.get("eval_ratio_ours_over_seal")
    threads = p["threads"]
    head = f"ours ({threads} thread{'s' if threads != 1 else ''})"
    lines = [
        f"Encrypted MNIST: linear 784->10 + square, preset {p['preset']} (N={p['poly_degree']}, "
        f"{p['slots']} slots, chain {p['chain_bits']} + special {p['special_bits']}, "
        f"scale 2^{p['scale_bits']})",
        f"{result['images']} test images, {p['images_per_ciphertext']} per ciphertext, "
        f"{ours['ciphertexts']} ciphertexts; plaintext accuracy: full test set "
        f"{result['plaintext_accuracy_full_test']:.2%}, these images "
        f"{result['plaintext_accuracy_subset']:.2%}",
        "",
        f"{'':<24}{head:>18}{'SEAL':>14}{'ours/SEAL':>11}",
    ]

    def row(
        label: str, key: str, fmt: Callable[[float], str] = _fmt_s, with_ratio: bool = False
    ) -> None:
        theirs = None if seal is None else seal.get(key)
        r = "-"
        if with_ratio and theirs:
            r = f"{ours[key] / theirs:.2f}x"
        lines.append(
            f"{label:<24}{fmt(ours[key]):>18}{'-' if theirs is None else fmt(theirs):>14}{r:>11}"
        )

    lines.append("-" * len(lines[-1]))
    row("key generation", "keygen_s", with_ratio=True)
    row("encode+encrypt / ct", "encrypt_s", with_ratio=True)
    row("server eval / ct", "eval_s", with_ratio=True)
    row("server eval / image", "eval_per_image_s", with_ratio=True)
    row("decrypt+decode / ct", "decrypt_s", with_ratio=True)
    row("max abs error", "max_abs_error", lambda v: f"{v:.2e}")
    row("argmax agreement", "agreement", lambda v: f"{v:.2%}")
    lines.append("")
    lines.append(
        f"max |expected| = {result['max_abs_expected']:.3g}; server eval ours/SEAL = "
        + ("-" if ratio is None else f"{ratio:.2f}x")
        + ("" if seal is not None else f" (SEAL skipped: {result.get('seal_skipped')})")
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver
def _load_seal() -> tuple[type[SealCKKS], type[SealParams], str] | str:
    """(SealCKKS, SealParams, tenseal version), or the reason SEAL cannot be used."""
    try:
        from fheprune.reference.seal import SealCKKS, SealParams, tenseal_version
    except ImportError as exc:
        return str(exc)
    return SealCKKS, SealParams, tenseal_version()


def run_engine_demo(
    data_dir: str | None,
    images: int = 64,
    threads: int = 1,
    seed: int = 0,
    compare_seal: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """Run the demo (see the module docstring) and return a JSON-able report.

    Raises :class:`fheprune.data.DatasetNotFoundError` when MNIST cannot be found (before any
    expensive work) and ImportError when the compiled engine is missing.
    """
    if images < 1:
        raise DemoConfigError(f"images must be >= 1, got {images}")
    if threads < 1:
        raise DemoConfigError(f"threads must be >= 1, got {threads}")
    t_start = time.perf_counter()
    test = load_mnist(data_dir, "test")
    train = load_mnist(data_dir, "train")
    if images > len(test):
        raise DemoConfigError(
            f"images must be <= {len(test)} (the MNIST test set size), got {images}"
        )
    # Imported after the data check, so a missing dataset is reported even without the engine.
    from fheprune import ckks  # first: its ImportError says how to build the engine

    engine_version = str(getattr(importlib.import_module("fheprune._core"), "__version__", "?"))

    x_train = to_float(train.images).reshape(len(train), -1).astype(np.float64)
    x_test = to_float(test.images).reshape(len(test), -1).astype(np.float64)
    lam = RIDGE_ALPHA * len(x_train)
    t0 = time.perf_counter()
    model = train_ridge(x_train, train.labels, train.classes, lam)
    LOG.info("ridge regression (lambda=%g) fitted in %.2f s", lam, time.perf_counter() - t0)
    acc_full = accuracy(model.scores(x_test), test.labels)
    x = x_test[:images]
    scores = model.scores(x)
    acc_subset = accuracy(scores, test.labels[:images])
    expected = scores**2
    LOG.info(
        "plaintext accuracy: %.2f%% (test set), %.2f%% (first %d)",
        100 * acc_full,
        100 * acc_subset,
        images,
    )

    params = ckks.preset(PRESET)
    slots = params.poly_degree // 2
    steps = sum_steps()
    report: dict[str, Any] = {
        "params": {
            "preset": PRESET,
            "poly_degree": params.poly_degree,
            "chain_bits": list(params.chain_bits),
            "special_bits": list(params.special_bits),
            "scale_bits": params.scale_bits,
            "slots": slots,
            "block": BLOCK,
            "images_per_ciphertext": slots // BLOCK,
            "rotation_steps": steps,
            "ridge_lambda": lam,
            "train_size": len(train),
            "test_size": len(test),
            "threads": threads,
            "engine_version": engine_version,
            "timing_note": TIMING_NOTE,
        },
        "machine": machine_info(),
        "seed": seed,
        "images": images,
        "plaintext_accuracy_full_test": acc_full,
        "plaintext_accuracy_subset": acc_subset,
        "max_abs_expected": float(np.abs(expected).max()),
        "ours": None,
        "seal": None,
        "seal_skipped": None,
        "eval_ratio_ours_over_seal": None,
    }

    LOG.info("ours: %s, %d thread(s), %d images", PRESET, threads, images)
    ours = _run_encrypted(_OursRunner(ckks, params, steps, threads), x, expected, slots, model)
    report["ours"] = ours
    LOG.info(
        "ours: max abs error %.2e, agreement %.2f%%, eval %.3f s/ct",
        ours["max_abs_error"],
        100 * ours["agreement"],
        ours["eval_s"],
    )

    if compare_seal:
        loaded = _load_seal()
        if isinstance(loaded, str):
            LOG.warning("SEAL comparison skipped: %s", loaded)
            report["seal_skipped"] = loaded
        else:
            seal_cls, seal_params_cls, tenseal_ver = loaded
            report["machine"]["tenseal"] = tenseal_ver
            seal_params = seal_params_cls(
                params.poly_degree,
                tuple(params.chain_bits),
                tuple(params.special_bits),
                params.scale_bits,
            )
            LOG.info("seal: same parameters, 1 thread (SEAL's evaluator is single-threaded)")
            seal = _run_encrypted(
                _SealRunner(seal_cls, seal_params, steps), x, expected, slots, model
            )
            report["seal"] = seal
            report["eval_ratio_ours_over_seal"] = ours["eval_s"] / seal["eval_s"]
            LOG.info(
                "seal: max abs error %.2e, agreement %.2f%%, eval %.3f s/ct",
                seal["max_abs_error"],
                100 * seal["agreement"],
                seal["eval_s"],
            )
    else:
        report["seal_skipped"] = "disabled (compare_seal=False)"
    report["total_s"] = time.perf_counter() - t_start

    if out is not None:
        write_json_atomic(out, report)
        LOG.info("wrote %s", out)
    LOG.info("summary\n%s", format_summary(report))
    return report
