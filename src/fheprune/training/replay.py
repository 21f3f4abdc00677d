"""Checkpoints for a procedure made of many training calls, so that it resumes mid-way.

A pruning method trains many times (a fine-tune per step, recoveries, warm-ups); it takes
hours on a large model, and a process that stops loses the method's progress if only its end
result is saved. :class:`CallCheckpoints` gives each training call its own checkpoint folder.
Run the procedure again from the start: every finished call loads its last checkpoint at once,
the interrupted one resumes after its last finished epoch (the trainer's own resume), and the
rest train as before.

A call's folder is named by its position in the sequence and by a digest of everything it
starts from: the weights, the masks, the training configuration, the distillation (teacher
weights included) and the regularizer. A replay that drifts from the first run (other code,
another thread count) therefore trains afresh instead of loading another call's checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fheprune.errors import InputError

from .config import TrainConfig

log = logging.getLogger(__name__)


class CallCheckpoints:
    """One checkpoint folder per training call of the procedure started with :meth:`begin`."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.calls = 0

    def begin(self, folder: str | Path) -> None:
        """Start (or restart) a procedure whose calls keep their checkpoints under ``folder``."""
        self.folder = Path(folder)
        self.calls = 0

    def finish(self) -> None:
        """The procedure's result is saved elsewhere: drop its checkpoints."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self.calls = None, 0

    def next_dir(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        masks: Mapping[str, torch.Tensor] | None = None,
        distill: Any = None,
        regularizer: Any = None,
    ) -> Path | None:
        """The checkpoint folder of the next call (None outside :meth:`begin`)."""
        if self.folder is None:
            return None
        self.calls += 1
        h = hashlib.blake2b(digest_size=12)
        for part in (model, dict(masks or {}), config.to_dict(), distill, regularizer):
            _feed(h, part)
        return self.folder / f"call-{self.calls:04d}-{h.hexdigest()}"


def _feed(h: Any, obj: Any, depth: int = 0) -> None:
    """Everything that determines ``obj``'s value into the hash (tensors by their bytes)."""
    if depth > 8:
        raise InputError(
            "a training call's regularizer or distillation nests objects too deeply to digest "
            "(more than 8 levels); give it plain fields (tensors, numbers, mappings)"
        )
    if isinstance(obj, nn.Module):  # its class and its weights, not its hooks and flags
        h.update(type(obj).__qualname__.encode())
        _feed(h, obj.state_dict(), depth + 1)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"M%d" % len(obj))
        for key in sorted(obj, key=str):
            h.update(str(key).encode() + b"=")
            _feed(h, obj[key], depth + 1)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _feed(h, item, depth + 1)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(json.dumps(obj).encode())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__qualname__.encode())
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, depth + 1)
    elif hasattr(obj, "__dict__"):
        h.update(type(obj).__qualname__.encode())
        _feed(h, vars(obj), depth + 1)
    else:
        h.update(repr(obj).encode())
