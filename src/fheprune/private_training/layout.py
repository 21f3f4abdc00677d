"""How samples, labels and weights sit in CKKS slots for encrypted softmax training.

A ciphertext holds ``slots / k`` samples, one block of ``k`` lanes each (``k`` a power of two,
at least the feature count and the class count). Lane ``j < classes`` of a sample's block
carries class ``j``'s logit once the forward pass has run.

Forward pass without rotations. For each ``t < k`` the client uploads ``X_t``, the features
rotated by ``t`` inside every block: lane ``j`` holds ``x[(j + t) % k]`` (zero on lanes
``j >= classes``). The weights ``W`` (``k x classes``) are kept as ``k`` diagonals, replicated
in every block: ``D_t`` holds ``W[(j + t) % k, j]`` on lane ``j``. Then

    z[j] = sum_t X_t[j] * D_t[j] = sum_f x[f] * W[f, j]

costs ``k`` products and one relinearization, and the gradient's diagonal ``t`` is the sum over
blocks of ``X_t * (P - Y)``: the same rotated copies serve the backward pass. Lanes at or
above ``classes`` carry zero logits, so their values never reach a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fheprune.errors import InputError

Vector = NDArray[np.float64]


@dataclass(frozen=True)
class SampleLayout:
    slots: int
    features: int
    classes: int

    def __post_init__(self) -> None:
        if self.features < 1 or self.classes < 2:
            raise InputError(
                f"need at least 1 feature and 2 classes, got {self.features} and {self.classes}"
            )
        if self.slots % self.lanes or self.slots < self.lanes:
            raise InputError(
                f"{self.slots} slots cannot hold blocks of {self.lanes} lanes; "
                "use more slots or fewer features/classes"
            )

    @property
    def lanes(self) -> int:
        """k: the block width, a power of two >= features and classes."""
        k = 1
        while k < max(self.features, self.classes):
            k *= 2
        return k

    @property
    def samples_per_ciphertext(self) -> int:
        return self.slots // self.lanes

    # --- client-side encodings -------------------------------------------------------------

    def _check_batch(self, x: Vector) -> None:
        if x.ndim != 2 or x.shape[1] != self.features:
            raise InputError(f"features must be [n, {self.features}], got {x.shape}")
        if len(x) > self.samples_per_ciphertext:
            raise InputError(
                f"{len(x)} samples do not fit one ciphertext of "
                f"{self.samples_per_ciphertext} samples"
            )

    def rotated_features(self, x: Vector) -> list[Vector]:
        """X_0 .. X_(k-1) for up to ``samples_per_ciphertext`` samples (unused blocks zero)."""
        self._check_batch(x)
        k, c = self.lanes, self.classes
        padded = np.zeros((len(x), k))
        padded[:, : self.features] = x
        out = []
        for t in range(k):
            blocks = np.zeros((self.samples_per_ciphertext, k))
            cols = (np.arange(c) + t) % k
            blocks[: len(x), :c] = padded[:, cols]
            out.append(blocks.reshape(-1))
        return out

    def labels(self, y: NDArray[np.int64], scale: float = 1.0) -> Vector:
        """One-hot labels on lanes 0..classes-1 of each block, times ``scale``."""
        if y.ndim != 1 or len(y) > self.samples_per_ciphertext:
            raise InputError(f"labels must be [n <= {self.samples_per_ciphertext}], got {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= self.classes):
            raise InputError(f"labels must lie in [0, {self.classes})")
        blocks = np.zeros((self.samples_per_ciphertext, self.lanes))
        blocks[np.arange(len(y)), y] = scale
        return blocks.reshape(-1)

    def block_mask(self, keep: NDArray[np.bool_]) -> Vector:
        """1 on every lane of the kept blocks, 0 elsewhere."""
        if keep.shape != (self.samples_per_ciphertext,):
            raise InputError(
                f"a keep mask needs {self.samples_per_ciphertext} entries, got {keep.shape}"
            )
        return np.repeat(keep.astype(np.float64), self.lanes)

    def weight_diagonals(self, w: Vector) -> list[Vector]:
        """D_0 .. D_(k-1) of a ``features x classes`` weight matrix, replicated per block."""
        if w.shape != (self.features, self.classes):
            raise InputError(f"weights must be [{self.features}, {self.classes}], got {w.shape}")
        k, c = self.lanes, self.classes
        padded = np.zeros((k, c))
        padded[: self.features] = w
        out = []
        for t in range(k):
            block = np.zeros(k)
            block[:c] = padded[(np.arange(c) + t) % k, np.arange(c)]
            out.append(np.tile(block, self.samples_per_ciphertext))
        return out

    def weights_from_diagonals(self, diagonals: list[Vector]) -> Vector:
        """The weight matrix back from its replicated diagonals (averaging the replicas, which
        averages the encryption noise down too)."""
        k, c = self.lanes, self.classes
        if len(diagonals) != k:
            raise InputError(f"expected {k} diagonals, got {len(diagonals)}")
        w = np.zeros((k, c))
        for t, d in enumerate(diagonals):
            block = np.asarray(d).reshape(self.samples_per_ciphertext, k).mean(axis=0)
            w[(np.arange(c) + t) % k, np.arange(c)] = block[:c]
        return w[: self.features]

    def lane_zero(self, values: Vector) -> Vector:
        """Lane 0 of every block (where per-sample scores land)."""
        return np.asarray(values).reshape(self.samples_per_ciphertext, self.lanes)[:, 0]

    def class_lanes(self, values: Vector) -> Vector:
        """[samples, classes]: the class lanes of every block."""
        blocks = np.asarray(values).reshape(self.samples_per_ciphertext, self.lanes)
        return blocks[:, : self.classes]
