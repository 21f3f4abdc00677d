"""The in-memory dataset container shared by all loaders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fheprune.errors import InputError, InputTypeError

__all__ = ["Dataset", "to_float"]


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no bool value
class Dataset:
    """Images and labels of one split of one dataset.

    ``images`` is uint8 with shape ``[n, H, W]`` (grey) or ``[n, H, W, C]`` (channels last);
    ``labels`` is int64 with shape ``[n]`` and values in ``0 .. classes-1``.
    """

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    name: str
    classes: int
    split: str

    def __post_init__(self) -> None:
        # Loaders validate file content; these checks guard hand-built instances.
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise InputError(
                f"images must be uint8 [n, H, W] or [n, H, W, C], got {self.images.dtype} "
                f"with shape {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise InputError(
                f"labels must be int64 [n], got {self.labels.dtype} {self.labels.shape}"
            )
        if len(self.images) != len(self.labels):
            raise InputError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.classes < 1:
            raise InputError(f"classes must be positive, got {self.classes}")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.classes):
            raise InputError(f"labels must lie in [0, {self.classes}), got values outside")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image (without the leading sample axis)."""
        return tuple(int(d) for d in self.images.shape[1:])


def to_float(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Scale uint8 pixels to float32 in [0, 1] (255 maps exactly to 1.0)."""
    if images.dtype != np.uint8:
        # Refuse silently re-scaling data that is already float or wider ints.
        raise InputTypeError(f"to_float expects uint8 pixels, got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)
