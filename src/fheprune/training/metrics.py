"""Quality metrics and the degradation rule used to accept or reject a pruned model.

Classification is scored by accuracy in [0, 1] (higher is better); reconstruction by mean
squared error per element (lower is better). HE-PEx accepts a pruned network when its
degradation over the unpruned one is below 2.5% (Sec. 5), which we read as:

* classification: ``baseline_acc - acc`` in absolute accuracy (0.025 = 2.5 points);
* reconstruction: ``(loss - baseline_loss) / baseline_loss``, the relative loss increase
  (0.025 = 2.5% higher MSE).

In both cases a positive degradation means "worse than the baseline".
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from fheprune.errors import InputError

from ..models.zoo import Task

__all__ = [
    "DEFAULT_BUDGET",
    "degradation",
    "evaluate",
    "higher_is_better",
    "metric_is_better",
    "within_budget",
]

#: HE-PEx's acceptance threshold (Sec. 5): at most 2.5% degradation.
DEFAULT_BUDGET = 0.025


def _check_task(task: str) -> None:
    if task not in ("classification", "reconstruction"):
        raise InputError(f'task must be "classification" or "reconstruction", got {task!r}')


def higher_is_better(task: Task) -> bool:
    """True for classification (accuracy), False for reconstruction (MSE)."""
    _check_task(task)
    return task == "classification"


def metric_is_better(task: Task, candidate: float, reference: float) -> bool:
    """Whether ``candidate`` is strictly better than ``reference`` for ``task``."""
    return candidate > reference if higher_is_better(task) else candidate < reference


def degradation(baseline: float, value: float, task: Task) -> float:
    """How much worse ``value`` is than ``baseline`` (positive = worse; see module doc)."""
    if higher_is_better(task):
        return baseline - value
    if baseline <= 0:
        raise InputError(f"relative degradation needs a positive baseline loss, got {baseline}")
    return (value - baseline) / baseline


def within_budget(
    baseline: float, value: float, task: Task, budget: float = DEFAULT_BUDGET
) -> bool:
    """Whether ``value`` degrades ``baseline`` by at most ``budget``."""
    return degradation(baseline, value, task) <= budget


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    task: Task,
    *,
    device: torch.device | str = "cpu",
) -> float:
    """Accuracy in [0, 1] (classification) or mean squared error per element (reconstruction).

    The model is put in eval mode for the pass and its previous mode is restored.
    """
    _check_task(task)
    was_training = model.training
    model.eval()
    total = 0.0
    count = 0
    try:
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            out = model(inputs)
            if task == "classification":
                total += float((out.argmax(dim=1) == targets).sum().item())
                count += len(targets)
            else:
                # Sum in float64: many small squared errors lose precision in float32.
                total += float((out - targets).double().pow(2).sum().item())
                count += targets.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise InputError("cannot evaluate on an empty loader")
    return total / count
