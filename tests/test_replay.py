"""fheprune.training.replay: a procedure of many training calls, interrupted and run again,
ends with the weights of an uninterrupted run and trains only what it had not finished."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="the trainer needs torch")
import torch
from toys import random_image_harness

import fheprune.pruning.rotation_aware as ra
from fheprune.models import LeNetLike
from fheprune.training import CallCheckpoints, Distillation, TrainConfig

CONFIG = TrainConfig(epochs=1, lr=0.01, batch_size=32, val_fraction=0.25, scheduler="constant")


def tiny() -> LeNetLike:
    torch.manual_seed(0)
    return LeNetLike(image_size=12, channels=(16, 8), hidden=8)


def prune(checkpoints: CallCheckpoints | None) -> ra.RotationAwareResult:
    """Sub-block pruning: two steps, each fine-tuned for two epochs (two training calls)."""
    harness = dataclasses.replace(random_image_harness(CONFIG), checkpoints=checkpoints)
    return ra.subblock_prune(
        tiny(),
        harness,
        budget=1.0,
        per_iteration=7,
        max_iterations=2,
        finetune_epochs=2,
        slots=512,
        input_shape=(1, 12, 12),
    )


def epochs_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum("train loss" in r.getMessage() for r in caplog.records)


def test_an_interrupted_procedure_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fheprune.training.trainer")
    plain = prune(None)
    total = epochs_logged(caplog)
    assert total == 4

    real_train = ra.train
    calls = 0

    def crash_in_the_second_call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            real_train(*args, **kwargs, stop_after_epochs=1)
            raise KeyboardInterrupt("the process stops here")
        return real_train(*args, **kwargs)

    checkpoints = CallCheckpoints()
    checkpoints.begin(tmp_path / "calls")
    monkeypatch.setattr(ra, "train", crash_in_the_second_call)
    with pytest.raises(KeyboardInterrupt):
        prune(checkpoints)
    monkeypatch.undo()

    caplog.clear()
    checkpoints.begin(tmp_path / "calls")  # a new process starts the procedure again
    resumed = prune(checkpoints)
    assert epochs_logged(caplog) == total - 3  # call 1 finished, call 2 stopped after epoch 1
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert all(torch.equal(plain.masks[k], resumed.masks[k]) for k in plain.masks)
    assert len(list((tmp_path / "calls").iterdir())) == 2
    checkpoints.finish()
    assert not (tmp_path / "calls").exists()


def test_a_call_that_starts_elsewhere_gets_its_own_folder(tmp_path: Path) -> None:
    model = tiny()
    masks = {"conv2": torch.ones_like(model.conv2.weight, dtype=torch.bool)}
    teacher = Distillation(tiny())

    def name(**change: Any) -> str:
        checkpoints = CallCheckpoints()
        checkpoints.begin(tmp_path)
        args: dict[str, Any] = {
            "model": model,
            "config": CONFIG,
            "masks": masks,
            "distill": teacher,
            "regularizer": None,
        }
        args.update(change)
        folder = checkpoints.next_dir(
            args["model"],
            args["config"],
            masks=args["masks"],
            distill=args["distill"],
            regularizer=args["regularizer"],
        )
        assert folder is not None and folder.parent == tmp_path
        return folder.name

    first = name()
    assert first.startswith("call-") and first.endswith("-1") and name() == first
    other_weights = tiny()
    with torch.no_grad():
        other_weights.conv1.weight[0, 0, 0, 0] += 1e-6
    other_masks = {"conv2": masks["conv2"].clone()}
    other_masks["conv2"][0, 0, 0, 0] = False
    changed = [
        name(model=other_weights),
        name(masks=other_masks),
        name(config=CONFIG.replace(lr=0.02)),
        name(distill=Distillation(tiny(), weight=0.5)),
        name(distill=None),
        name(regularizer=ra.GroupLasso({}, 0.1)),
        name(regularizer=ra.GroupLasso({}, 0.2)),
        name(regularizer=closure(0.1)),
        name(regularizer=closure(0.2)),
        name(regularizer=functools.partial(scaled, lam=0.3)),
        name(regularizer={"ids": np.arange(2000)}),
        name(regularizer={"ids": np.arange(2000) * 2}),
    ]
    assert len({first, *changed}) == len(changed) + 1
    assert CallCheckpoints().next_dir(model, CONFIG) is None  # outside begin(): no checkpoints
    # The same start twice in one procedure: two folders, told apart by their count.
    checkpoints = CallCheckpoints()
    checkpoints.begin(tmp_path)
    a, b = (checkpoints.next_dir(model, CONFIG) for _ in range(2))
    assert a is not None and b is not None and a != b and a.name[:-1] == b.name[:-1]


def scaled(model: torch.nn.Module, lam: float) -> torch.Tensor:
    return lam * sum(p.abs().sum() for p in model.parameters())


def closure(lam: float) -> Any:
    return lambda model: scaled(model, lam)


def test_a_regularizer_nested_too_deeply_is_refused_by_name(tmp_path: Path) -> None:
    from fheprune.errors import InputError

    nested: dict[str, Any] = {"lam": 0.1}
    for _ in range(10):
        nested = {"inner": nested}
    checkpoints = CallCheckpoints()
    checkpoints.begin(tmp_path)
    with pytest.raises(InputError, match="nests objects too deeply"):
        checkpoints.next_dir(tiny(), CONFIG, regularizer=nested)
