"""Training hyper-parameters, with the published defaults per model and dataset.

HE-PEx Table 2 (App. A.2) gives, for MLP-Classifier, CNN-Classifier, AE-Compressor and
AE-Denoiser: learning rate and batch size per dataset, and CosineAnnealingWarmRestarts with
T0 = 5, eta_min = 1e-4 for all. It does not give the optimizer, epoch count or denoising noise;
our choices (documented in :func:`default_config`): Adam, 10 epochs (two full warm-restart
cycles, as in the public HE-PEx demo's 10 epochs), Gaussian noise std 0.3 (MNIST) / 0.1
(CIFAR-10, SVHN). SpENCNN's LeNet-like (and its HEFNet and VGG-5): SGD, momentum 0.9,
weight decay 1e-4, lr 0.01, batch 64 (MNIST) / 128, 100 epochs (paper Sec. 4); the paper's
"decay factor 5e-4" is ambiguous, so we anneal the learning rate with one cosine cycle.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from fheprune.errors import InputError

from ..models.zoo import MODEL_NAMES, normalize_dataset

__all__ = ["OptimizerName", "SchedulerName", "TrainConfig", "default_config"]

OptimizerName = Literal["adam", "sgd"]
#: "warm_restarts": CosineAnnealingWarmRestarts(T_0=t0 epochs, eta_min), stepped per batch with
#: a fractional epoch; "cosine": one cosine cycle from lr to eta_min over all epochs;
#: "constant": no schedule.
SchedulerName = Literal["warm_restarts", "cosine", "constant"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (together with the data and initial weights).

    ``noise_std`` is the std of the Gaussian noise added to denoiser inputs (pixels in [0, 1],
    noisy inputs clipped back to [0, 1]); it is ignored by every other model.
    ``val_fraction`` of the training split is held out (fixed seed) for validation.
    """

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: OptimizerName = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: SchedulerName = "warm_restarts"
    t0: int = 5
    eta_min: float = 1e-4
    seed: int = 0
    noise_std: float = 0.0
    val_fraction: float = 0.1
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"TrainConfig.{field}: {why}, got {getattr(self, field)!r}")

        for field in ("epochs", "batch_size", "t0", "eval_batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(field, "must be a positive integer")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "must be a positive finite number")
        for field in ("momentum", "weight_decay", "eta_min", "noise_std"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value >= 0):
                raise bad(field, "must be a non-negative finite number")
        if self.optimizer not in ("adam", "sgd"):
            raise bad("optimizer", 'must be "adam" or "sgd"')
        if self.scheduler not in ("warm_restarts", "cosine", "constant"):
            raise bad("scheduler", 'must be "warm_restarts", "cosine" or "constant"')
        if not (0.0 <= self.val_fraction < 1.0):
            raise bad("val_fraction", "must lie in [0, 1)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "must be a non-negative integer")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**data)


# (lr, batch size) per dataset, HE-PEx Table 2.
_HEPEX_LR_BATCH: dict[str, dict[str, tuple[float, int]]] = {
    "mlp": {"mnist": (1e-3, 64), "cifar10": (1e-3, 128), "svhn": (1e-4, 64)},
    "cnn": {"mnist": (1e-3, 64), "cifar10": (1e-3, 128), "svhn": (1e-4, 64)},
    "ae-compressor": {"mnist": (1e-3, 64), "cifar10": (1e-3, 128), "svhn": (1e-4, 64)},
    "ae-denoiser": {"mnist": (1e-4, 32), "cifar10": (1e-4, 64), "svhn": (1e-4, 64)},
}

_DENOISER_NOISE = {"mnist": 0.3, "cifar10": 0.1, "svhn": 0.1}


def default_config(model_name: str, dataset: str = "mnist") -> TrainConfig:
    """Published hyper-parameters for ``model_name`` on ``dataset`` (see the module doc)."""
    key, ds = model_name.lower(), normalize_dataset(dataset)
    if key not in MODEL_NAMES:
        raise InputError(f"unknown model {model_name!r}; supported: {', '.join(MODEL_NAMES)}")
    if key in ("lenet", "hefnet-mnist", "vgg5-mnist"):  # SpENCNN Sec. 4, all its models
        return TrainConfig(
            epochs=100,
            lr=0.01,
            batch_size=64 if ds == "mnist" else 128,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=1e-4,
            scheduler="cosine",
            eta_min=0.0,
        )
    lr, batch = _HEPEX_LR_BATCH[key][ds]
    return TrainConfig(
        epochs=10,
        lr=lr,
        batch_size=batch,
        optimizer="adam",
        scheduler="warm_restarts",
        t0=5,
        eta_min=1e-4,
        noise_std=_DENOISER_NOISE[ds] if key == "ae-denoiser" else 0.0,
    )
