"""Private training end to end: a data owner (client) and a server, with encrypted data pruning.

The client encrypts features and labels, the server trains a softmax classifier on the
ciphertexts with mini-batch Nesterov SGD, one ciphertext of samples per step. Weights are
refreshed by the client (``refresh="client"``): after every step it decrypts the weight
diagonals, clips each class's column to the logit bound (which is what makes the softmax's
input range hold, see :mod:`.softmax`) and re-encrypts them at the top of the chain.

Data pruning (``keep_fraction < 1``), re-scored every ``rescore_every`` epochs:

- every sample is scored, except before the first step, when the weights are zero and every
  score is equal: the first selection is random, whole ciphertexts drawn at random
  (:func:`initial_selection`). ``score="hefs"``: the server computes HEPrune's HE-friendly
  score (:func:`.kernels.hefs`) and the client decrypts it; ``score="logits"``: the server
  computes only the logits and the client, which decrypts in any case, computes the same L1
  EL2N score exactly (no encrypted softmax, nothing more revealed: the logits are of the
  client's own samples);
- the client picks the top ``keep_fraction`` (client-aided masking);
- ``mode="heprune"``: the client sends the mask, and the server compacts the kept samples
  into as few ciphertexts as it can (ciphertext-wise pruning): it learns which samples were
  kept;
- ``mode="private"``: the client re-encrypts the kept samples, packed, and uploads them; the
  server learns only how many were kept (and the fresh ciphertexts say nothing about which).

Validation (the one interactive step, every epoch): the server computes the validation
samples' logits, the client decrypts them and computes the loss with the exact softmax.

Every number is a wall-clock measurement of the whole run; components are timed in place.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from fheprune.errors import FhepruneError, InputError
from fheprune.private_training import MODES, SCORES, Mode, Score
from fheprune.private_training import kernels as K
from fheprune.private_training.backend import ClientSide, Server, Vector
from fheprune.private_training.layout import SampleLayout
from fheprune.private_training.softmax import SoftmaxApprox, exact_softmax

log = logging.getLogger(__name__)

C = TypeVar("C")


@dataclass(frozen=True)
class PrivateTrainingConfig:
    keep_fraction: float = 1.0
    mode: Mode = "private"
    epochs: int = 7
    learning_rate: float = 4.0  # chosen on validation among 1, 2, 4 (docs/private-training.md)
    momentum: float = 0.5
    rescore_every: int = 5
    logit_bound: float = 3.0
    patience: int = 3
    # "hefs": the server computes HEPrune's score under encryption (softmax, then 2 (1 - p_y))
    # and the client decrypts one score per sample; "logits": the server computes only the
    # logits and the client, which decrypts either way, scores exactly (the same L1 EL2N).
    score: Score = "hefs"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.keep_fraction <= 1:
            raise InputError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.score not in SCORES:
            raise InputError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.epochs < 1 or self.rescore_every < 1 or self.patience < 1:
            raise InputError("epochs, rescore_every and patience must be positive")

    @property
    def prunes(self) -> bool:
        return self.keep_fraction < 1.0


class TrainingDivergedError(FhepruneError, ArithmeticError):
    """The loss stopped being a number: the learning rate is too large for the data."""


@dataclass
class Batch(Generic[C]):
    """One ciphertext of samples: the rotated features X_0..X_(k-1), the labels, and (server
    side, known in HEPrune's mode only) which original samples sit in which block."""

    xs: list[C]
    labels: C | None  # None: uploaded to be scored by logits only (no step reads its labels)
    count: int
    owners: NDArray[np.int64] | None = None  # block -> sample index (-1: empty)

    def label_ct(self) -> C:
        if self.labels is None:
            raise InputError(
                "this batch was uploaded to be scored by logits only and holds no labels; "
                "training, HEFS and compaction need batches encrypted with their labels"
            )
        return self.labels


@dataclass
class Ledger:
    """Seconds by component and bytes each way."""

    seconds: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_up_by: dict[str, int] = field(default_factory=dict)  # data, repack, weights, mask

    def upload(self, kind: str, n: int) -> None:
        self.bytes_up += n
        self.bytes_up_by[kind] = self.bytes_up_by.get(kind, 0) + n

    @contextmanager
    def timed(self, component: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[component] = self.seconds.get(component, 0.0) + time.perf_counter() - start


@dataclass
class PrivateTrainingResult:
    weights: Vector
    train_seconds: float
    seconds_by_component: dict[str, float]
    bytes_up: int
    bytes_up_by: dict[str, int]
    bytes_down: int
    epochs_run: int
    samples_trained: int  # sample-steps: samples in every step, summed
    history: list[dict[str, float]]
    ops: dict[str, int]
    max_logit: float


def project_columns(w: Vector, bound: float) -> Vector:
    """Clip each class's weight column to L2 norm ``bound``."""
    norms = np.linalg.norm(w, axis=0)
    return np.asarray(w * np.minimum(1.0, bound / np.maximum(norms, 1e-300)), dtype=np.float64)


def top_fraction(scores: Vector, fraction: float, seed: int = 0) -> NDArray[np.int64]:
    """Indices of the ceil(fraction * n) highest scores, ascending. Scores are compared
    rounded to 3 decimals (encrypted ones carry ~1e-5 of noise), and ties are broken at
    random."""
    k = max(1, math.ceil(fraction * len(scores)))
    tie_break = np.random.default_rng(seed).permutation(len(scores))
    order = np.lexsort((tie_break, -np.round(scores, 3)))  # encrypted scores carry ~1e-5 noise
    return np.sort(order[:k]).astype(np.int64)


#: What a batch of samples is uploaded for (:meth:`DataOwner.encrypt_samples`).
Use = Literal["train", "mask", "logits"]

#: The level labels are used at: ``E = P - Y`` is formed with two levels left, one for the
#: gradient's products and one for the update.
LABEL_LEVEL = 2


class DataOwner(Generic[C]):
    """The client: features, labels and the secret key never leave it."""

    def __init__(
        self,
        backend: ClientSide[C],
        server: Server[C],
        layout: SampleLayout,
        config: PrivateTrainingConfig,
        ledger: Ledger,
    ) -> None:
        self.backend = backend
        self._sizer = server  # byte sizes only
        self.layout = layout
        self.config = config
        self.ledger = ledger
        self.top = backend.top_level

    def _up(self, ct: C, kind: str) -> C:
        self.ledger.upload(kind, self._sizer.byte_size(ct))
        return ct

    def _down(self, ct: C) -> Vector:
        self.ledger.bytes_down += self._sizer.byte_size(ct)
        return self.backend.decrypt(ct)

    def encrypt_samples(
        self,
        x: Vector,
        y: NDArray[np.int64],
        with_owners: bool,
        kind: str = "data",
        first_index: int = 0,
        use: Use = "train",
    ) -> list[Batch[C]]:
        """Pack samples in order, ``samples_per_ciphertext`` per ciphertext, each encrypted at
        the lowest level its ``use`` needs (a lower level is a smaller, faster encryption):

        - ``"train"``: features at the weights' level (``top - 1``), labels at
          :data:`LABEL_LEVEL`, where a step uses them;
        - ``"mask"``: one level higher, for the server to spend on a mask of blocks
          (:meth:`TrainingServer.pack`: the first selection's cut, compaction);
        - ``"logits"``: features at level 1 and no labels, for the logits the client scores
          from (:meth:`TrainingServer.logits`), about a tenth of the bytes."""
        per = self.layout.samples_per_ciphertext
        feature_level, label_level = {
            "train": (self.top - 1, LABEL_LEVEL),
            "mask": (self.top, LABEL_LEVEL + 1),
            "logits": (1, None),
        }[use]
        batches: list[Batch[C]] = []
        with self.ledger.timed("client_encrypt"):
            for start in range(0, len(x), per):
                xb, yb = x[start : start + per], y[start : start + per]
                xs = [
                    self._up(self.backend.encrypt(v, feature_level), kind)
                    for v in self.layout.rotated_features(xb)
                ]
                labels = None
                if label_level is not None:
                    labels = self._up(
                        self.backend.encrypt(self.layout.labels(yb), label_level), kind
                    )
                owners = None
                if with_owners:
                    owners = np.full(per, -1, dtype=np.int64)
                    owners[: len(xb)] = np.arange(
                        first_index + start, first_index + start + len(xb)
                    )
                batches.append(Batch(xs, labels, len(xb), owners))
        return batches

    def encrypt_weights(self, w: Vector, v: Vector) -> tuple[list[C], list[C]]:
        with self.ledger.timed("client_refresh"):
            d = [
                self._up(self.backend.encrypt(a, self.top - 1), "weights")
                for a in self.layout.weight_diagonals(w)
            ]
            vel = [
                self._up(self.backend.encrypt(a, 1), "weights")
                for a in self.layout.weight_diagonals(v)
            ]
        return d, vel

    def refresh(self, d: list[C], v: list[C]) -> tuple[list[C], list[C], Vector]:
        """Decrypt the weights, clip them to the logit bound, encrypt them afresh."""
        with self.ledger.timed("client_refresh"):
            w = self.layout.weights_from_diagonals([self._down(a) for a in d])
            vel = self.layout.weights_from_diagonals([self._down(a) for a in v])
        w = project_columns(w, self.config.logit_bound)
        d2, v2 = self.encrypt_weights(w, vel)
        return d2, v2, w

    def decrypt_scores(self, scores: list[C], counts: Sequence[int]) -> Vector:
        """Each sample's score (lane 0 of its block)."""
        return self._per_sample(scores, counts, self.layout.lane_zero, "client_select")

    def probabilities(self, logits: list[C], counts: Sequence[int]) -> Vector:
        """Each sample's class probabilities, by the exact softmax of its decrypted logits (the
        client decrypts either logits or probabilities; logits cost the server no softmax)."""
        return self._softmax(logits, counts, "client_validate")

    def scores_from_logits(
        self, logits: list[C], counts: Sequence[int], y: NDArray[np.int64]
    ) -> Vector:
        """The L1 EL2N score ``sum_c |P_c - Y_c| = 2 (1 - P_y)`` of each sample, exactly, from
        its decrypted logits (``y``: the client's own labels, in the ciphertexts' order)."""
        p = self._softmax(logits, counts, "client_select")
        return np.asarray(2.0 * (1.0 - p[np.arange(len(y)), y]), dtype=np.float64)

    def _softmax(self, logits: list[C], counts: Sequence[int], component: str) -> Vector:
        """The exact softmax of the decrypted logits of the occupied blocks, in order."""
        z = self._per_sample(logits, counts, self.layout.class_lanes, component)
        with self.ledger.timed(component):
            return exact_softmax(z)

    def _per_sample(
        self,
        cts: list[C],
        counts: Sequence[int],
        read: Callable[[Vector], Vector],
        component: str,
    ) -> Vector:
        """Decrypt ciphertexts of samples and keep the occupied blocks, in order."""
        with self.ledger.timed(component):
            out = [read(self._down(ct))[:n] for ct, n in zip(cts, counts, strict=True)]
        return np.concatenate(out)


class TrainingServer(Generic[C]):
    """The server: evaluation keys and ciphertexts only."""

    def __init__(
        self, server: Server[C], layout: SampleLayout, approx: SoftmaxApprox, ledger: Ledger
    ) -> None:
        self.server = server
        self.layout = layout
        self.approx = approx
        self.ledger = ledger

    def pack(self, batch: Batch[C], keep: NDArray[np.bool_] | None = None) -> Batch[C]:
        """``batch`` at the working level with only the ``keep`` blocks (default: the occupied
        ones). A batch the client encrypted at the working level is returned as it is (its
        empty blocks are zeros already); one encrypted for masks is multiplied by the mask of
        kept blocks, which spends its extra level."""
        occupied = np.arange(self.layout.samples_per_ciphertext) < batch.count
        if keep is None:
            keep = occupied
        working = self.server.top_level - 1
        level = self.server.level(batch.xs[0])
        if level == working:
            if not np.array_equal(keep, occupied):
                raise InputError(
                    "this batch was encrypted at the working level, so no level is left for a "
                    "mask; encrypt it for masks (use='mask', one level higher) to drop samples"
                )
            return batch
        if level != working + 1:
            raise InputError(f"a batch to pack must be at level {working + 1}, not {level}")
        mask = self.layout.block_mask(keep)
        xs = [self.server.mul_const(a, mask) for a in batch.xs]
        labels = self.server.mul_const(batch.label_ct(), mask)
        return Batch(xs, labels, int(keep.sum()), batch.owners)

    def predict(self, batch: Batch[C], d: list[C]) -> C:
        with self.ledger.timed("forward"):
            z = K.forward(self.server, batch.xs, d)
        with self.ledger.timed("softmax"):
            return K.softmax(self.server, self.layout, self.approx, z)

    def logits(self, batch: Batch[C], d: list[C]) -> C:
        """The logits for the client to decrypt, computed at the bottom level: the client needs
        no level to decrypt, so the products run on two primes (a tenth of the work of the
        training step's forward pass) and the download is a quarter of the bytes at the top."""
        with self.ledger.timed("forward"):
            return self.server.mul_sum_at_bottom(list(zip(batch.xs, d, strict=True)))

    def score(self, batch: Batch[C], d: list[C]) -> C:
        p = self.predict(batch, d)
        with self.ledger.timed("score"):
            return K.hefs(self.server, self.layout, p, batch.label_ct())

    def step(
        self, batch: Batch[C], d: list[C], v: list[C], config: PrivateTrainingConfig
    ) -> tuple[list[C], list[C]]:
        labels = batch.label_ct()
        p = self.predict(batch, d)
        with self.ledger.timed("backward"):
            e = self.server.sub(p, labels)
            level = self.server.level(e)
            xs = [self.server.drop_to(a, level) for a in batch.xs]
            g = K.gradient(self.server, self.layout, [xs], [e])
        with self.ledger.timed("update"):
            eta = config.learning_rate / max(batch.count, 1)
            return K.nesterov(self.server, d, v, g, eta, config.momentum)

    def _rotate_blocks(self, ct: C, blocks: int) -> C:
        """Rotate by ``blocks`` sample blocks: one key per set bit of ``blocks``."""
        bit = 1
        while blocks:
            if blocks & bit:
                ct = self.server.rotate(ct, bit * self.layout.lanes)
                blocks -= bit
            bit *= 2
        return ct

    def compact(
        self, batches: list[Batch[C]], kept: NDArray[np.int64], max_rotations: int = 10
    ) -> list[Batch[C]]:
        """Ciphertext-wise pruning with the mask in the clear. Destinations start as the
        densest ciphertexts; the kept blocks of each other ciphertext move into their holes,
        each move one mask and a rotation by a number of blocks (one Galois key per set bit;
        one-key shifts of a source are hoisted together, :meth:`_move`).
        A ciphertext whose kept blocks would need more than ``max_rotations`` rotations
        becomes a destination itself instead: a rotation here turns all 17 ciphertexts of a
        batch at the top level, about half a training step, and only emptying a ciphertext
        saves work (in every later step until the next re-score)."""
        kept_set = set(int(i) for i in kept)
        with self.ledger.timed("cwp"):
            keeps = []
            for b in batches:
                assert b.owners is not None, "HEPrune's mode needs the block owners"
                keeps.append(np.array([int(o) in kept_set for o in b.owners]))
            order = sorted(range(len(batches)), key=lambda i: -int(keeps[i].sum()))
            out: list[Batch[C]] = []
            holes: list[NDArray[np.bool_]] = []
            for i in order:
                src, remaining = batches[i], keeps[i]
                if not remaining.any():
                    continue  # an empty ciphertext is dropped
                plan = _plan_moves(remaining, holes, max_rotations)
                if plan is None:
                    dest = self.pack(src, remaining)
                    assert src.owners is not None
                    dest.owners = np.where(remaining, src.owners, -1)
                    out.append(dest)
                    holes.append(~remaining)
                    continue
                self._move(src, plan, out)
                for d, m, placed in plan:
                    holes[d] &= ~np.roll(placed, -m)
        return out

    def _move(
        self,
        src: Batch[C],
        plan: list[tuple[int, int, NDArray[np.bool_]]],
        out: list[Batch[C]],
    ) -> None:
        """Carry out one source's moves. Shifts of one Galois key (a power of two blocks, or
        none) rotate the whole source, hoisted (one key-switch decomposition per ciphertext
        for all of them), then mask in the destination's coordinates; other shifts mask
        first and rotate bit by bit."""
        lanes = self.layout.lanes
        one_key = [mv for mv in plan if mv[1] & (mv[1] - 1) == 0]
        steps = sorted({m for _, m, _ in one_key if m})
        rotated: list[dict[int, C]] = []
        if one_key:
            for ct in [*src.xs, src.label_ct()]:
                turned = self.server.rotate_many(ct, [m * lanes for m in steps]) if steps else []
                rotated.append({0: ct, **dict(zip(steps, turned, strict=True))})
        for d, m, placed in plan:
            landed = np.roll(placed, -m)
            if m & (m - 1) == 0:
                mask = self.layout.block_mask(landed)
                moved = [self.server.mul_const(r[m], mask) for r in rotated]
                xs, labels = moved[:-1], moved[-1]
            else:
                packed = self.pack(src, placed)
                xs = [self._rotate_blocks(a, m) for a in packed.xs]
                labels = self._rotate_blocks(packed.label_ct(), m)
            dest = out[d]
            dest.xs = [self.server.add(a, b) for a, b in zip(dest.xs, xs, strict=True)]
            dest.labels = self.server.add(dest.label_ct(), labels)
            dest.count += int(placed.sum())
            assert dest.owners is not None and src.owners is not None
            dest.owners[landed] = np.roll(src.owners, -m)[landed]


def _plan_moves(
    remaining: NDArray[np.bool_], holes: list[NDArray[np.bool_]], budget: int
) -> list[tuple[int, int, NDArray[np.bool_]]] | None:
    """Greedy moves (destination, shift in blocks, blocks moved) placing every remaining block
    into the destinations' holes within ``budget`` rotations, or None. Shifts by a power of
    two (one rotation) first; any shift (one rotation per set bit) when none of those fits."""
    per = len(remaining)
    cheap = [0] + [1 << i for i in range(per.bit_length() - 1)]
    remaining = remaining.copy()
    free = [h.copy() for h in holes]
    plan: list[tuple[int, int, NDArray[np.bool_]]] = []
    spent = 0
    while remaining.any():
        best = (-1, 0, np.zeros_like(remaining))
        for shifts in (cheap, range(per)):
            for d, h in enumerate(free):
                m, placed = _best_shift(remaining, h, shifts)
                if placed.sum() > best[2].sum():
                    best = (d, m, placed)
            if best[0] >= 0:
                break
        d, m, placed = best
        spent += bin(m).count("1")
        if d < 0 or spent > budget:
            return None
        plan.append(best)
        free[d] &= ~np.roll(placed, -m)
        remaining &= ~placed
    return plan


def initial_selection(
    n: int, per: int, config: PrivateTrainingConfig
) -> list[tuple[int, NDArray[np.int64]]]:
    """The first selection (every score equal): ciphertexts in a random order, whole, until
    ``ceil(keep_fraction * n)`` samples, the last one cut short. Returns (ciphertext, sample
    indices) pairs."""
    k = max(1, math.ceil(config.keep_fraction * n))
    out = []
    for i in np.random.default_rng(config.seed).permutation(-(-n // per)):
        take = min(per, n - i * per, k)
        out.append((int(i), np.arange(i * per, i * per + take, dtype=np.int64)))
        k -= take
        if k == 0:
            break
    return out


def _best_shift(
    remaining: NDArray[np.bool_], holes: NDArray[np.bool_], shifts: Iterable[int]
) -> tuple[int, NDArray[np.bool_]]:
    """The block shift placing the most remaining samples into holes (block r lands on r - m);
    ties go to the first shift tried."""
    best, best_placed = 0, np.zeros_like(remaining)
    for m in shifts:
        placed = remaining & np.roll(holes, m)
        if placed.sum() > best_placed.sum():
            best, best_placed = m, placed
    return best, best_placed


def _scores(
    server: TrainingServer[C],
    owner: DataOwner[C],
    batches: list[Batch[C]],
    at_working_level: Callable[[], list[Batch[C]]],
    d: list[C],
    y: NDArray[np.int64],
    config: PrivateTrainingConfig,
) -> Vector:
    """Every sample's score, in order, as the client reads it (``config.score``). HEFS runs a
    step's forward pass and softmax, on the batches at the working level; logits are computed
    at the bottom, from the batches at any level."""
    counts = [b.count for b in batches]
    if config.score == "hefs":
        scores = [server.score(b, d) for b in at_working_level()]
        return owner.decrypt_scores(scores, counts)
    return owner.scores_from_logits([server.logits(b, d) for b in batches], counts, y)


def _cross_entropy(p: Vector, y: NDArray[np.int64]) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def train_private(
    client_backend: ClientSide[C],
    server_backend: Server[C],
    layout: SampleLayout,
    config: PrivateTrainingConfig,
    x: Vector,
    y: NDArray[np.int64],
    x_val: Vector,
    y_val: NDArray[np.int64],
    progress: bool = False,
) -> PrivateTrainingResult:
    """Run the whole protocol; the returned weights are what the client decrypts at the end."""
    if x.shape[1] != layout.features or x_val.shape[1] != layout.features:
        raise InputError(f"features must have {layout.features} columns")
    if len(x) != len(y) or len(x_val) != len(y_val):
        raise InputError(
            f"{len(x)} training rows with {len(y)} labels, {len(x_val)} validation rows with "
            f"{len(y_val)} labels: each row needs exactly one label"
        )
    if len(x) == 0 or len(x_val) == 0:
        raise InputError("training and validation sets must both hold samples")
    for name, rows in (("training", x), ("validation", x_val)):
        if np.any(np.linalg.norm(rows, axis=1) > 1 + 1e-9):
            raise InputError(
                f"every {name} feature vector must have L2 norm <= 1 (the softmax's range "
                "rests on it); normalise them, as FeatureExtractor.extract does"
            )
    if getattr(server_backend, "can_decrypt", True):
        raise InputError(
            "the server's backend can decrypt; give the server only evaluation keys "
            "(EngineBackend.server_view() or SimulatedBackend.server_view())"
        )
    ledger = Ledger()
    approx = SoftmaxApprox(layout.classes, layout.lanes, config.logit_bound)
    owner = DataOwner(client_backend, server_backend, layout, config, ledger)
    server = TrainingServer(server_backend, layout, approx, ledger)
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()

    # The full set at the level its use needs: training (no pruning), masks (HEPrune's mode:
    # the server cuts and compacts it), scores only (our mode: the client uploads the kept
    # samples itself), at level 1 where scores come from logits.
    use: Use = "train"
    if config.mode == "heprune" and config.prunes:
        use = "mask"
    elif config.prunes and config.score == "logits":
        use = "logits"
    full = owner.encrypt_samples(x, y, with_owners=config.mode == "heprune", use=use)
    # Validation is only ever scored by logits, every epoch.
    val = owner.encrypt_samples(x_val, y_val, with_owners=False, use="logits")
    w = np.zeros((layout.features, layout.classes))
    d, v = owner.encrypt_weights(w, w)
    best = (math.inf, w, 0)
    history: list[dict[str, float]] = []
    training = full
    working: list[Batch[C]] = []  # the full set at the working level, packed when first needed

    def full_at_working_level() -> list[Batch[C]]:
        if not working:
            with ledger.timed("pack"):
                working.extend(server.pack(b) for b in full)
        return working

    samples_trained = 0
    max_logit = 0.0
    epochs_run = 0
    bar = tqdm(
        range(config.epochs),
        desc=f"private training p={config.keep_fraction}",
        disable=not progress,
    )
    for epoch in bar:
        epochs_run = epoch + 1
        if config.prunes and epoch % config.rescore_every == 0:
            if epoch == 0:
                # The weights start at zero, so every score is 2 (1 - 1/classes) and the
                # selection is random: whole ciphertexts chosen at random, the last one cut
                # short, are a random selection that needs no scoring and no compaction. Which
                # ciphertexts were drawn says nothing about the data. HEPrune's server masks
                # its copies; in our mode the client uploads the drawn samples, as it does at
                # every selection.
                groups = initial_selection(len(x), layout.samples_per_ciphertext, config)
                per = layout.samples_per_ciphertext
                if config.mode == "heprune":
                    with ledger.timed("pack"):
                        training = [
                            server.pack(full[i], np.arange(per) < len(g)) for i, g in groups
                        ]
                else:
                    drawn = np.concatenate([g for _, g in groups])
                    training = owner.encrypt_samples(x[drawn], y[drawn], False, kind="repack")
                log.info("epoch 0: kept %d random samples", sum(len(g) for _, g in groups))
            elif config.mode == "heprune":
                s = _scores(server, owner, full, full_at_working_level, d, y, config)
                kept = top_fraction(s, config.keep_fraction, config.seed + epoch)
                ledger.upload("mask", (len(s) + 7) // 8)  # one bit per sample
                training = server.compact(full, kept)
            else:
                s = _scores(server, owner, full, full_at_working_level, d, y, config)
                kept = top_fraction(s, config.keep_fraction, config.seed + epoch)
                # Drop the previous selection first: one selection resident, not two, and the
                # new one reuses the old one's memory blocks instead of faulting in fresh pages.
                training = []
                training = owner.encrypt_samples(x[kept], y[kept], False, kind="repack")
            log.info("epoch %d: %d ciphertexts of kept samples", epoch, len(training))
        for i in rng.permutation(len(training)):
            d, v, w = owner.refresh(*server.step(training[i], d, v, config))
            samples_trained += training[i].count
        logits = [server.logits(b, d) for b in val]
        p_val = owner.probabilities(logits, [b.count for b in val])
        max_logit = max(max_logit, float(np.abs(x_val @ w).max()))
        loss = _cross_entropy(p_val, y_val)
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"validation loss is {loss} after epoch {epoch}; lower the learning rate"
            )
        acc = float(np.mean(p_val.argmax(axis=1) == y_val))
        history.append({"epoch": epoch, "val_loss": loss, "val_accuracy": acc})
        bar.set_postfix(val_loss=f"{loss:.4f}", val_acc=f"{acc:.4f}")
        if loss < best[0]:
            best = (loss, w.copy(), epoch)
        elif epoch - best[2] >= config.patience:
            log.info("early stop at epoch %d (best %d)", epoch, best[2])
            break
    train_seconds = time.perf_counter() - start
    return PrivateTrainingResult(
        weights=best[1],
        train_seconds=train_seconds,
        seconds_by_component=dict(ledger.seconds),
        bytes_up=ledger.bytes_up,
        bytes_up_by=dict(ledger.bytes_up_by),
        bytes_down=ledger.bytes_down,
        epochs_run=epochs_run,
        samples_trained=samples_trained,
        history=history,
        ops=server_backend.counts.as_dict(),
        max_logit=max_logit,
    )


def train_plaintext(
    layout: SampleLayout,
    config: PrivateTrainingConfig,
    x: Vector,
    y: NDArray[np.int64],
    x_val: Vector,
    y_val: NDArray[np.int64],
) -> Vector:
    """The same recipe in float64 with the exact softmax and exact scores: the reference the
    encrypted runs are compared with. Batches are consecutive chunks of the kept samples."""
    per = layout.samples_per_ciphertext
    rng = np.random.default_rng(config.seed)
    w = np.zeros((layout.features, layout.classes))
    v = w.copy()
    onehot = np.eye(layout.classes)[y]
    best: tuple[float, Vector, int] = (math.inf, w, 0)
    chunks = [np.arange(s, min(s + per, len(x))) for s in range(0, len(x), per)]
    for epoch in range(config.epochs):
        if config.prunes and epoch == 0:
            chunks = [g for _, g in initial_selection(len(x), per, config)]
        elif config.prunes and epoch % config.rescore_every == 0:
            p = exact_softmax(x @ w)
            scores = np.abs(p - onehot).sum(axis=1)
            idx = top_fraction(scores, config.keep_fraction, config.seed + epoch)
            chunks = [idx[s : s + per] for s in range(0, len(idx), per)]
        for i in rng.permutation(len(chunks)):
            c = chunks[i]
            g = x[c].T @ (exact_softmax(x[c] @ w) - onehot[c])
            v_new = w - config.learning_rate / len(c) * g
            w = project_columns(v_new + config.momentum * (v_new - v), config.logit_bound)
            v = v_new
        loss = _cross_entropy(exact_softmax(x_val @ w), y_val)
        if loss < best[0]:
            best = (loss, w.copy(), epoch)
        elif epoch - best[2] >= config.patience:
            break
    return best[1]


def accuracy(w: Vector, x: Vector, y: NDArray[np.int64]) -> float:
    return float(np.mean((x @ w).argmax(axis=1) == y))


def describe(result: PrivateTrainingResult) -> dict[str, Any]:
    return {
        "train_seconds": result.train_seconds,
        "seconds_by_component": result.seconds_by_component,
        "bytes_up": result.bytes_up,
        "bytes_up_by": result.bytes_up_by,
        "bytes_down": result.bytes_down,
        "epochs_run": result.epochs_run,
        "samples_trained": result.samples_trained,
        "ops": result.ops,
        "max_val_logit": result.max_logit,
    }
