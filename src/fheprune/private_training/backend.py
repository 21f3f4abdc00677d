"""Two backends for encrypted training, one interface: the CKKS engine and a cleartext simulator.

The training kernels (:mod:`fheprune.private_training.kernels`) are written once against
:class:`Server`. :class:`EngineBackend` runs them on the engine; :class:`SimulatedBackend`
runs the same calls on numpy vectors with the same levels, the same typed errors and the same
operation counts, so a schedule can be checked (and costed) in seconds before it runs
encrypted.

Scales. Every ciphertext at level ``l`` carries the ladder scale ``D_l``, defined from the
bottom up by ``D_0 = 2^scale_bits`` and ``D_l = sqrt(D_(l-1) * q_l)``. Then a product of two
level-``l`` ciphertexts, rescaled by ``q_l``, lands exactly on ``D_(l-1)``, and so does a
product with a constant encoded at ``D_l``. Defined from the top down the ladder would double
each prime's distance from ``2^scale_bits`` at every level; from the bottom up it halves it.

Roles: :class:`ClientSide` holds the secret key (encrypt, decrypt); :class:`Server` holds only
evaluation keys.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from fheprune import ckks
from fheprune.errors import FhepruneError, InputError
from fheprune.runtime.cost import OpTimings

Vector = NDArray[np.float64]
C = TypeVar("C")

#: Encoded slot vectors kept per backend (a step uses about ten; each is up to ~5 MB at N = 2^15).
MASK_CACHE = 32


class OutOfLevelsError(FhepruneError, RuntimeError):
    """A kernel needs a level below 0: the schedule asks for more depth than the chain has."""


@dataclass
class OpCounts:
    """Operations a schedule performed, in total and by the level they ran at (a key switch
    at level l costs roughly (l + 1)^2: the level matters as much as the count)."""

    ct_mult: int = 0  # relinearized products (a fused sum of products counts once)
    plain_mult: int = 0  # ciphertext x plaintext or constant, rescaled
    rotations: int = 0
    adds: int = 0
    by_level: dict[str, dict[int, int]] = field(default_factory=dict)

    def count(self, kind: str, level: int, n: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        per = self.by_level.setdefault(kind, {})
        per[level] = per.get(level, 0) + n

    def as_dict(self) -> dict[str, int]:
        return {
            "ct_mult": self.ct_mult,
            "plain_mult": self.plain_mult,
            "rotations": self.rotations,
            "adds": self.adds,
        }

    def predict_seconds(self, timings: OpTimings) -> dict[str, float]:
        """Seconds these operations take by the engine's per-level timings
        (:func:`fheprune.runtime.cost.calibrate`): products as a relinearized product plus a
        rescale, plaintext products as a plaintext product plus a rescale."""

        def total(kind: str, *ops: str) -> float:
            return sum(
                n * sum(timings.get(op, level) for op in ops)
                for level, n in self.by_level.get(kind, {}).items()
            )

        out = {
            "ct_mult": total("ct_mult", "square", "rescale"),
            "plain_mult": total("plain_mult", "mul_plain", "rescale"),
            "rotations": total("rotations", "rotate"),
        }
        out["total"] = sum(out.values())
        return out


class Server(Protocol[C]):
    """What the server may do: evaluate, never decrypt."""

    slots: int
    top_level: int
    counts: OpCounts
    can_decrypt: bool  # False for every server the protocol runs with

    def level(self, ct: C) -> int: ...
    def add(self, a: C, b: C) -> C: ...
    def sub(self, a: C, b: C) -> C: ...
    def add_const(self, a: C, value: float | Vector) -> C: ...
    def mul(self, a: C, b: C) -> C: ...
    def mul_sum(self, pairs: list[tuple[C, C]]) -> C: ...
    def mul_sum_at_bottom(self, pairs: list[tuple[C, C]]) -> C: ...
    def mul_const(self, a: C, value: float | Vector) -> C: ...
    def rotate(self, a: C, step: int) -> C: ...
    def rotate_many(self, a: C, steps: list[int]) -> list[C]: ...
    def drop_to(self, a: C, level: int) -> C: ...
    def byte_size(self, ct: C) -> int: ...


class ClientSide(Protocol[C]):
    """What only the key owner may do."""

    slots: int
    top_level: int

    def encrypt(self, values: Vector, level: int) -> C: ...
    def decrypt(self, ct: C) -> Vector: ...


def check_bottom_operands(levels: list[int]) -> None:
    """:meth:`Server.mul_sum_at_bottom` multiplies at level 1: every operand must reach it."""
    if min(levels) < 1:
        raise OutOfLevelsError("a product at the bottom needs operands at level 1 or above")


def check_level(level: int, top_level: int, current: int | None = None) -> None:
    """A level an operation may produce: not below 0 (the chain is too short), not above the
    top, and (for a drop from ``current``) not above where the ciphertext already is."""
    if level < 0:
        raise OutOfLevelsError("the schedule needs a level below 0; use a longer chain")
    if level > top_level:
        raise InputError(f"level {level} is above the chain's top level {top_level}")
    if current is not None and level > current:
        raise InputError(f"cannot raise a ciphertext from level {current} to {level}")


def _as_slots(value: float | Vector, slots: int) -> Vector:
    if np.isscalar(value):
        return np.full(slots, float(value))  # type: ignore[arg-type]
    v = np.asarray(value, dtype=np.float64)
    if v.shape != (slots,):
        raise InputError(f"a slot vector must have shape ({slots},), got {v.shape}")
    return v


# ---------------------------------------------------------------------------------------------
# Simulator


@dataclass
class SimCiphertext:
    values: Vector
    level: int


class SimulatedBackend:
    """Cleartext vectors with levels. ``noise_std`` adds Gaussian noise after every rescale
    (the engine's measured error is about 2^-30 of the scale for 38-bit primes)."""

    def __init__(self, slots: int, top_level: int, noise_std: float = 0.0, seed: int = 0) -> None:
        self.slots = slots
        self.top_level = top_level
        self.noise_std = noise_std
        self.counts = OpCounts()
        self._rng = np.random.default_rng(seed)
        # Bytes per level of a ciphertext of the same ring (2 polynomials of N = 2 * slots
        # 64-bit words per prime), so byte accounting means the same as on the engine.
        self.ciphertext_bytes = 2 * (2 * slots) * 8
        self.can_decrypt = True

    def server_view(self) -> SimulatedBackend:
        """A simulator for the server's side: same ring and levels, its own counts, and no
        decryption (as the engine's server holds no secret key)."""
        view = SimulatedBackend(self.slots, self.top_level, self.noise_std)
        view.can_decrypt = False
        return view

    # client side
    def encrypt(self, values: Vector, level: int) -> SimCiphertext:
        if not self.can_decrypt:
            raise InputError("this backend is the server's: only the client encrypts")
        self._check_level(level)
        return SimCiphertext(_as_slots(values, self.slots).copy(), level)

    def decrypt(self, ct: SimCiphertext) -> Vector:
        if not self.can_decrypt:
            raise InputError("this backend is the server's: only the client decrypts")
        return ct.values.copy()

    # server side
    def level(self, ct: SimCiphertext) -> int:
        return ct.level

    def byte_size(self, ct: SimCiphertext) -> int:
        return self.ciphertext_bytes * (ct.level + 1)

    def _check_level(self, level: int) -> None:
        check_level(level, self.top_level)

    def _noisy(self, v: Vector) -> Vector:
        if self.noise_std:
            return v + self._rng.normal(0.0, self.noise_std, v.shape)
        return v

    def _align(self, a: SimCiphertext, b: SimCiphertext) -> int:
        # The engine brings the higher operand down with one plaintext product; count it.
        if a.level != b.level:
            self.counts.count("plain_mult", min(a.level, b.level) + 1)
        return min(a.level, b.level)

    def add(self, a: SimCiphertext, b: SimCiphertext) -> SimCiphertext:
        level = self._align(a, b)
        self.counts.count("adds", level)
        return SimCiphertext(a.values + b.values, level)

    def sub(self, a: SimCiphertext, b: SimCiphertext) -> SimCiphertext:
        level = self._align(a, b)
        self.counts.count("adds", level)
        return SimCiphertext(a.values - b.values, level)

    def add_const(self, a: SimCiphertext, value: float | Vector) -> SimCiphertext:
        return SimCiphertext(a.values + _as_slots(value, self.slots), a.level)

    def mul(self, a: SimCiphertext, b: SimCiphertext) -> SimCiphertext:
        level = self._align(a, b) - 1
        self._check_level(level)
        self.counts.count("ct_mult", level + 1)
        return SimCiphertext(self._noisy(a.values * b.values), level)

    def mul_sum(self, pairs: list[tuple[SimCiphertext, SimCiphertext]]) -> SimCiphertext:
        level = min(min(a.level, b.level) for a, b in pairs) - 1
        self._check_level(level)
        drops = sum((a.level > level + 1) + (b.level > level + 1) for a, b in pairs)
        if drops:  # the engine drops each to level + 1 with a product at level + 2
            self.counts.count("plain_mult", level + 2, drops)
        self.counts.count("ct_mult", level + 1)  # one relinearization for the whole sum
        total = sum((a.values * b.values for a, b in pairs), np.zeros(self.slots))
        return SimCiphertext(self._noisy(total), level)

    def mul_sum_at_bottom(self, pairs: list[tuple[SimCiphertext, SimCiphertext]]) -> SimCiphertext:
        check_bottom_operands([min(a.level, b.level) for a, b in pairs])
        at_one = [(SimCiphertext(a.values, 1), SimCiphertext(b.values, 1)) for a, b in pairs]
        return self.mul_sum(at_one)

    def mul_const(self, a: SimCiphertext, value: float | Vector) -> SimCiphertext:
        self._check_level(a.level - 1)
        self.counts.count("plain_mult", a.level)
        return SimCiphertext(self._noisy(a.values * _as_slots(value, self.slots)), a.level - 1)

    def rotate(self, a: SimCiphertext, step: int) -> SimCiphertext:
        self.counts.count("rotations", a.level)
        return SimCiphertext(np.roll(a.values, -step), a.level)

    def rotate_many(self, a: SimCiphertext, steps: list[int]) -> list[SimCiphertext]:
        return [self.rotate(a, step) for step in steps]

    def drop_to(self, a: SimCiphertext, level: int) -> SimCiphertext:
        check_level(level, self.top_level, a.level)
        if level == a.level:
            return a
        self.counts.count("plain_mult", level + 1)
        return SimCiphertext(a.values.copy(), level)


# ---------------------------------------------------------------------------------------------
# Engine


def scale_ladder(primes: list[int], scale_bits: int) -> list[float]:
    """``D_l`` for every level (see the module docstring)."""
    scales = [float(2**scale_bits)]
    for q in primes[1:]:
        scales.append(math.sqrt(scales[-1] * float(q)))
    return scales


@dataclass(frozen=True)
class TrainingParameters:
    """A CKKS chain for training: N, the chain's bit sizes (decryption prime first), the
    key-switching prime and the scale."""

    log_n: int
    chain_bits: tuple[int, ...]
    special_bits: tuple[int, ...]
    scale_bits: int
    insecure_for_testing: bool = False

    @property
    def top_level(self) -> int:
        return len(self.chain_bits) - 1

    def to_engine(self) -> ckks.Parameters:
        return ckks.Parameters(
            poly_degree=1 << self.log_n,
            chain_bits=list(self.chain_bits),
            special_bits=list(self.special_bits),
            scale_bits=self.scale_bits,
            insecure_for_testing=self.insecure_for_testing,
        )


def training_parameters(
    levels: int, *, log_n: int = 15, scale_bits: int = 38
) -> TrainingParameters:
    """The 128-bit chain with ``levels`` levels above a (scale_bits + 20)-bit decryption prime
    and one 60-bit key-switching prime; a typed error names the most that fits."""
    chain = (scale_bits + 20,) + (scale_bits,) * levels
    special = (60,)
    total = sum(chain) + sum(special)
    bound = ckks.max_modulus_bits_128(1 << log_n)
    if total > bound:
        fit = (bound - scale_bits - 20 - 60) // scale_bits
        raise ckks.ParameterError(
            f"{levels} levels of {scale_bits} bits need log2(QP) = {total} > {bound}, the "
            f"128-bit bound at N = 2^{log_n}; at most {fit} levels fit (or raise N)"
        )
    return TrainingParameters(log_n, chain, special, scale_bits)


class EngineBackend:
    """The CKKS engine behind :class:`Server` (and, for the key owner, :class:`ClientSide`).

    Build the client with :meth:`client`, then give the server its evaluation keys only
    (:meth:`server`)."""

    def __init__(
        self,
        context: ckks.Context,
        keys: ckks.EvaluationKeys,
        scale_bits: int,
        secret_key: ckks.SecretKey | None = None,
    ) -> None:
        self.context = context
        self.slots = int(context.slots)
        self.top_level = int(context.max_level)
        self.counts = OpCounts()
        self._primes = [int(q) for q in context.primes]
        self._scale_bits = scale_bits
        self._scales = scale_ladder(self._primes, scale_bits)
        self._encoder = ckks.Encoder(context)
        self._evaluator = ckks.Evaluator(context)
        self._keys = keys
        self._encryptor = ckks.Encryptor(context, secret_key) if secret_key else None
        self._decryptor = ckks.Decryptor(context, secret_key) if secret_key else None
        self.can_decrypt = secret_key is not None
        self._plaintexts: dict[tuple[object, ...], ckks.Plaintext] = {}
        self._masks: OrderedDict[tuple[object, ...], ckks.Plaintext] = OrderedDict()

    @classmethod
    def create(
        cls,
        params: TrainingParameters,
        rotation_steps: list[int],
        threads: int = 1,
    ) -> tuple[EngineBackend, EngineBackend]:
        """(client, server): the client holds the secret key, the server evaluation keys."""
        ctx = ckks.Context(params.to_engine(), threads)
        keygen = ckks.KeyGenerator(ctx)
        keys = keygen.create_evaluation_keys(sorted(set(rotation_steps)), False)
        client = cls(ctx, keys, params.scale_bits, keygen.secret_key)
        return client, client.server_view()

    def server_view(self) -> EngineBackend:
        """What the server gets: the same context and evaluation keys, no secret key, its own
        operation counts."""
        return EngineBackend(self.context, self._keys, self._scale_bits)

    def scale(self, level: int) -> float:
        return self._scales[level]

    # client side
    def encrypt(self, values: Vector, level: int) -> ckks.Ciphertext:
        if self._encryptor is None:
            raise InputError("this backend has no secret key: only the client encrypts")
        self._check_level(level)
        pt = self._encoder.encode(
            _as_slots(values, self.slots), scale=self._scales[level], level=level
        )
        return self._encryptor.encrypt(pt)

    def decrypt(self, ct: ckks.Ciphertext) -> Vector:
        if self._decryptor is None:
            raise InputError("this backend has no secret key: only the client decrypts")
        return np.asarray(self._encoder.decode(self._decryptor.decrypt(ct)), dtype=np.float64)

    # server side
    def level(self, ct: ckks.Ciphertext) -> int:
        return int(ct.level)

    def byte_size(self, ct: ckks.Ciphertext) -> int:
        return int(ct.byte_size)

    def _check_level(self, level: int) -> None:
        check_level(level, self.top_level)

    def _pair(
        self, a: ckks.Ciphertext, b: ckks.Ciphertext
    ) -> tuple[ckks.Ciphertext, ckks.Ciphertext]:
        level = min(a.level, b.level)
        return self.drop_to(a, level), self.drop_to(b, level)

    def add(self, a: ckks.Ciphertext, b: ckks.Ciphertext) -> ckks.Ciphertext:
        a, b = self._pair(a, b)
        self.counts.count("adds", a.level)
        return self._evaluator.add(a, b)

    def sub(self, a: ckks.Ciphertext, b: ckks.Ciphertext) -> ckks.Ciphertext:
        a, b = self._pair(a, b)
        self.counts.count("adds", a.level)
        return self._evaluator.sub(a, b)

    def _encode(self, value: float | Vector, scale: float, level: int) -> ckks.Plaintext:
        """Encoded constants and masks, cached: a training step multiplies by the same few
        hundred constants every time, and encoding one costs as much as the product. Slot
        vectors (masks) are kept in a bounded cache: compaction makes a new one per move."""
        if np.isscalar(value):
            key: tuple[object, ...] = (float(value), scale, level)  # type: ignore[arg-type]
            cached = self._plaintexts.get(key)
            if cached is None:
                cached = self._encoder.encode_constant(float(value), scale=scale, level=level)  # type: ignore[arg-type]
                self._plaintexts[key] = cached
            return cached
        v = _as_slots(value, self.slots)
        key = (hashlib.blake2b(v.tobytes(), digest_size=16).digest(), scale, level)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._encoder.encode(v, scale=scale, level=level)
            self._masks[key] = mask
            if len(self._masks) > MASK_CACHE:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(key)
        return mask

    def add_const(self, a: ckks.Ciphertext, value: float | Vector) -> ckks.Ciphertext:
        return self._evaluator.add_plain(a, self._encode(value, a.scale, a.level))

    def mul(self, a: ckks.Ciphertext, b: ckks.Ciphertext) -> ckks.Ciphertext:
        a, b = self._pair(a, b)
        self._check_level(a.level - 1)
        self.counts.count("ct_mult", a.level)
        return self._evaluator.rescale(self._evaluator.multiply_relin(a, b, self._keys.relin_key))

    def mul_sum(self, pairs: list[tuple[ckks.Ciphertext, ckks.Ciphertext]]) -> ckks.Ciphertext:
        """sum_i a_i * b_i with a single relinearization and rescale."""
        level = min(min(a.level, b.level) for a, b in pairs)
        self._check_level(level - 1)
        self.counts.count("ct_mult", level)
        total: ckks.Ciphertext | None = None
        for a, b in pairs:
            prod = self._evaluator.multiply(self.drop_to(a, level), self.drop_to(b, level))
            if total is None:
                total = prod
            else:
                self._evaluator.add_inplace(total, prod)  # total is this loop's own product
        assert total is not None
        return self._evaluator.rescale(self._evaluator.relinearize(total, self._keys.relin_key))

    def mul_sum_at_bottom(
        self, pairs: list[tuple[ckks.Ciphertext, ckks.Ciphertext]]
    ) -> ckks.Ciphertext:
        """sum_i a_i * b_i at level 0, for a result the client decrypts next (logits):
        every operand is cut to level 1 by dropping primes (a copy of two residues; value and
        scale unchanged), the products run on two primes instead of twenty, and the rescale
        leaves scale ``s_a s_b / q_1`` instead of a ladder scale, which only decryption sees.
        Requires ``s_a s_b`` well below ``q_0 q_1`` (two ladder scales: 2^76 against 2^96)."""
        check_bottom_operands([min(a.level, b.level) for a, b in pairs])
        cut = self._evaluator.mod_switch_to
        return self.mul_sum([(cut(a, 1), cut(b, 1)) for a, b in pairs])

    def mul_const(self, a: ckks.Ciphertext, value: float | Vector) -> ckks.Ciphertext:
        self._check_level(a.level - 1)
        self.counts.count("plain_mult", a.level)
        # Encoded at D_l, the product rescales onto D_(l-1) exactly.
        pt = self._encode(value, self._scales[a.level] * self._scales[a.level] / a.scale, a.level)
        return self._evaluator.rescale(self._evaluator.multiply_plain(a, pt))

    def rotate(self, a: ckks.Ciphertext, step: int) -> ckks.Ciphertext:
        self.counts.count("rotations", a.level)
        return self._evaluator.rotate(a, step, self._keys.galois_keys)

    def rotate_many(self, a: ckks.Ciphertext, steps: list[int]) -> list[ckks.Ciphertext]:
        """Several rotations of one ciphertext, hoisted: the key-switch decomposition, most
        of a rotation's cost, is computed once for all of them."""
        self.counts.count("rotations", a.level, len(steps))
        return list(self._evaluator.rotate_hoisted(a, steps, self._keys.galois_keys))

    def drop_to(self, a: ckks.Ciphertext, level: int) -> ckks.Ciphertext:
        """``a`` at a lower level with that level's ladder scale: switch to ``level + 1``,
        multiply by a 1 encoded so that the rescale lands on ``D_level``."""
        check_level(level, self.top_level, a.level)
        if level == a.level:
            return a
        self.counts.count("plain_mult", level + 1)
        up = self._evaluator.mod_switch_to(a, level + 1)
        one_scale = self._scales[level] * self._primes[level + 1] / a.scale
        one = self._encode(1.0, one_scale, level + 1)
        return self._evaluator.rescale(self._evaluator.multiply_plain(up, one))
