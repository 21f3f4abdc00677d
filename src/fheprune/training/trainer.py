"""Deterministic, resumable (re)training with optional fixed pruning masks.

Determinism: seeds for Python, numpy and torch are set from ``config.seed``; the batch order
is a function of (seed, epoch) (see :class:`~fheprune.training.data.EpochShuffleSampler`);
every RNG state is saved in the checkpoint. On one machine with the same thread count a run
interrupted after any epoch and resumed ends with bit-identical weights.

Masks: for each masked layer, masked weights are zeroed before training, their gradients are
zeroed after every backward pass (so momentum / Adam moments never move them) and the weights
are multiplied by the mask again after every optimizer step (weight decay and any optimizer
quirk cannot revive them). Biases are never masked.

Regularizers: ``train(..., regularizer=fn)`` adds ``fn(model)`` (a scalar tensor) to every
batch's loss, e.g. a group-Lasso penalty over HE units
(:class:`fheprune.pruning.rotation_aware.GroupLasso`). The recorded ``train_loss`` is the
regularized loss. A regularizer is not saved in the checkpoint: resume with the same one.

Distillation: ``train(..., distill=Distillation(teacher))`` trains a classifier on
``(1 - weight) * cross-entropy + weight * T^2 * KL(softmax(teacher / T) || softmax(model / T))``
(Hinton et al.), the teacher frozen in eval mode; pruning fine-tunes the pruned network
towards the dense one it came from. Like a regularizer, it is not saved in the checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
from tqdm import tqdm

from fheprune.errors import FhepruneError, InputError

from ..models.zoo import Task
from .checkpoint import CheckpointError, atomic_save, safe_load
from .config import TrainConfig
from .data import Loaders, set_loader_epoch
from .metrics import evaluate

__all__ = [
    "CHECKPOINT_NAME",
    "Distillation",
    "EpochRecord",
    "Regularizer",
    "TrainResult",
    "TrainingDivergedError",
    "apply_masks",
    "check_masks",
    "seed_everything",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
_CKPT_FORMAT = "fheprune-checkpoint"
_CKPT_VERSION = 1


#: A penalty added to the loss of every batch: model -> scalar tensor (differentiable).
Regularizer = Callable[[nn.Module], torch.Tensor]


class TrainingDivergedError(FhepruneError, RuntimeError):
    """The training loss became NaN or infinite (polynomial activations can blow up)."""


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: mean training loss, validation metric (NaN without a val split),
    learning rate at the epoch's start, and wall-clock seconds."""

    epoch: int
    train_loss: float
    val_metric: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    ``finished`` is False when ``stop_after_epochs`` ended the call early (resume later);
    ``resumed_from`` is the number of epochs already done when this call started.
    """

    history: tuple[EpochRecord, ...]
    epochs_completed: int
    finished: bool
    resumed_from: int
    val_metric: float
    checkpoint: Path | None


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor]
) -> dict[str, tuple[nn.Linear | nn.Conv2d, torch.Tensor]]:
    """Validate ``masks`` against ``model``; returns name -> (module, bool mask).

    Raises ValueError naming the offending entry: unknown or non-prunable layer, a shape that
    differs from the layer's ``.weight``, or a non-bool dtype.
    """
    modules = dict(model.named_modules())
    checked: dict[str, tuple[nn.Linear | nn.Conv2d, torch.Tensor]] = {}
    for name, mask in masks.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear | nn.Conv2d):
            prunable = [n for n, m in modules.items() if isinstance(m, nn.Linear | nn.Conv2d)]
            raise InputError(
                f"mask for {name!r}: not a prunable layer of this model "
                f"(prunable: {', '.join(prunable)})"
            )
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise InputError(f"mask for {name!r} must be a bool tensor, got {got}")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise InputError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, "
                f"the layer's weight has {tuple(module.weight.shape)}"
            )
        checked[name] = (module, mask)
    return checked


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``model`` in place (``weight.mul_(mask)``)."""
    for module, mask in check_masks(model, masks).values():
        weight = module.weight
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from ``teacher`` (see the module doc): ``weight`` in [0, 1] of
    the loss goes to matching the teacher's softened outputs at ``temperature``."""

    teacher: nn.Module
    weight: float = 0.7
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.weight <= 1.0):
            raise InputError(f"distillation weight must lie in [0, 1], got {self.weight}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"temperature must be positive, got {self.temperature}")

    def loss(
        self, task_loss: torch.Tensor, out: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(inputs)
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(out / t, dim=1), F.softmax(target / t, dim=1), reduction="batchmean"
        )
        return (1.0 - self.weight) * task_loss + self.weight * t * t * soft


def _loss(task: Task, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(out, target)
    return F.mse_loss(out, target)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> CosineAnnealingWarmRestarts | None:
    # Both schedules are closed-form in the (fractional) epoch, so resuming cannot drift:
    # "cosine" is a warm-restart schedule whose first cycle spans the whole run.
    if config.scheduler == "constant":
        return None
    period = config.t0 if config.scheduler == "warm_restarts" else config.epochs
    return CosineAnnealingWarmRestarts(optimizer, T_0=period, eta_min=config.eta_min)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])


def _same_masks(
    saved: Mapping[str, torch.Tensor] | None, given: Mapping[str, torch.Tensor] | None
) -> bool:
    saved, given = saved or {}, given or {}
    if saved.keys() != given.keys():
        return False
    return all(torch.equal(saved[k].cpu(), given[k].cpu()) for k in saved)


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineAnnealingWarmRestarts | None,
    config: TrainConfig,
    masks: Mapping[str, torch.Tensor] | None,
) -> tuple[int, list[EpochRecord]]:
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an fheprune training checkpoint")
    if ckpt.get("version") != _CKPT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {ckpt.get('version')!r}")
    if ckpt["config"] != config.to_dict():
        diff = sorted(
            k for k, v in config.to_dict().items() if ckpt["config"].get(k, object()) != v
        )
        raise CheckpointError(
            f"{path} was written with a different TrainConfig (fields: {', '.join(diff)}); "
            "use another checkpoint_dir or resume=False"
        )
    if not _same_masks(ckpt.get("masks"), masks):
        raise CheckpointError(f"{path} was written with different pruning masks")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} does not fit this model / optimizer: {exc}") from exc
    _set_rng_state(ckpt["rng"])
    history = [EpochRecord(**rec) for rec in ckpt["history"]]
    return int(ckpt["epoch"]), history


def _save_checkpoint(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineAnnealingWarmRestarts | None,
    config: TrainConfig,
    masks: Mapping[str, torch.Tensor] | None,
    history: list[EpochRecord],
) -> None:
    atomic_save(
        {
            "format": _CKPT_FORMAT,
            "version": _CKPT_VERSION,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": _rng_state(),
            "masks": None if masks is None else {k: v.cpu() for k, v in masks.items()},
            "config": config.to_dict(),
            "history": [asdict(rec) for rec in history],
        },
        path,
    )


def train(
    model: nn.Module,
    loaders: Loaders,
    config: TrainConfig,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    device: torch.device | str = "cpu",
    regularizer: Regularizer | None = None,
    distill: Distillation | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs; returns the per-epoch history.

    Args:
        masks: layer name -> bool mask shaped like that layer's weight; masked weights are
            zero before training and stay exactly zero (see module doc).
        checkpoint_dir: where ``checkpoint.pt`` is written atomically after every epoch. If it
            exists and ``resume`` is true, training continues from it (same config and masks
            required); with ``resume=False`` it is overwritten.
        progress: tqdm bars (shown only when stderr is a terminal).
        stop_after_epochs: end this call after that many epochs (a time-boxed slice of a
            long run; call again with the same arguments to resume).
        device: where to train; checkpoints are always loadable on the CPU.
        regularizer: ``fn(model) -> scalar tensor`` added to every batch's loss (e.g. a
            group-Lasso penalty); None (default) trains on the task loss alone.
        distill: a :class:`Distillation` from a teacher (classification only).
    """
    task: Task = loaders.spec.task
    if distill is not None and task != "classification":
        raise InputError("distillation is for classifiers; this task is " + repr(task))
    model_task = getattr(model, "task", task)
    if model_task != task:
        raise InputError(f"model task is {model_task!r} but the loaders are for {task!r}")
    if stop_after_epochs is not None and stop_after_epochs < 1:
        raise InputError(f"stop_after_epochs must be positive, got {stop_after_epochs}")
    checked = check_masks(model, masks or {})
    model.to(device)
    if distill is not None:
        distill.teacher.to(device).eval()
    float_masks = {
        name: (module, mask.to(device=device, dtype=torch.float32))
        for name, (module, mask) in checked.items()
    }

    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    seed_everything(config.seed)
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config)
    start, history = 0, list[EpochRecord]()
    if ckpt_path is not None and resume and ckpt_path.exists():
        start, history = _load_checkpoint(ckpt_path, model, optimizer, scheduler, config, masks)
        logger.info("resuming from %s after epoch %d/%d", ckpt_path, start, config.epochs)
    elif masks:
        apply_masks(model, masks)

    n_batches = len(loaders.train)
    if n_batches == 0:
        raise InputError("the training loader is empty")
    show = progress and sys.stderr.isatty()
    for ran, epoch in enumerate(range(start, config.epochs)):
        if stop_after_epochs is not None and ran >= stop_after_epochs:
            break
        began = time.perf_counter()
        lr_at_start = float(optimizer.param_groups[0]["lr"])
        set_loader_epoch(loaders.train, epoch)
        model.train()
        loss_sum, seen = 0.0, 0
        bar = tqdm(
            loaders.train,
            total=n_batches,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not show,
            leave=False,
        )
        for i, (inputs, targets) in enumerate(bar):
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(inputs)
            loss = _loss(task, out, targets)
            if distill is not None:
                loss = distill.loss(loss, out, inputs)
            if regularizer is not None:
                loss = loss + regularizer(model)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1}; "
                    "try a smaller learning rate"
                )
            torch.autograd.backward(loss)
            for module, fmask in float_masks.values():
                grad = module.weight.grad
                if grad is not None:
                    grad.mul_(fmask)
            optimizer.step()
            with torch.no_grad():
                for module, fmask in float_masks.values():
                    module.weight.mul_(fmask)
            if scheduler is not None:
                scheduler.step(epoch + (i + 1) / n_batches)
            loss_sum += float(loss.item()) * len(targets)
            seen += len(targets)
            if show and i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4g}")
        val_metric = math.nan
        if loaders.val is not None:
            val_metric = evaluate(model, loaders.val, task, device=device)
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / max(seen, 1),
            val_metric=val_metric,
            lr=lr_at_start,
            seconds=time.perf_counter() - began,
        )
        history.append(record)
        logger.info(
            "epoch %d/%d: train loss %.5g, val %s %.5g (%.1fs)",
            record.epoch,
            config.epochs,
            record.train_loss,
            "accuracy" if task == "classification" else "mse",
            record.val_metric,
            record.seconds,
        )
        if ckpt_path is not None:
            _save_checkpoint(
                ckpt_path, epoch + 1, model, optimizer, scheduler, config, masks, history
            )

    done = history[-1].epoch if history else 0
    return TrainResult(
        history=tuple(history),
        epochs_completed=done,
        finished=done >= config.epochs,
        resumed_from=start,
        val_metric=history[-1].val_metric if history else math.nan,
        checkpoint=ckpt_path,
    )
