"""Checkpoints for a procedure made of many training calls, so that it resumes mid-way.

A pruning method trains many times (a fine-tune per step, recoveries, warm-ups); it takes
hours on a large model, and a process that stops loses the method's progress if only its end
result is saved. :class:`CallCheckpoints` gives each training call its own checkpoint folder.
Run the procedure again from the start: every finished call loads its last checkpoint at once,
the interrupted one resumes after its last finished epoch (the trainer's own resume), and the
rest train as before.

A call's folder is named by a digest of everything it starts from (the architecture and
weights, the masks, the training configuration, the distillation with its teacher's weights,
the regularizer and the data's description) and by how many calls of the procedure started
from exactly that before it. A replay that drifts from the first run (other code,
another thread count) therefore trains afresh instead of loading another call's checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fheprune.errors import InputError

from .config import TrainConfig

log = logging.getLogger(__name__)


class CallCheckpoints:
    """One checkpoint folder per training call of the procedure started with :meth:`begin`."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.seen: Counter[str] = Counter()

    def begin(self, folder: str | Path) -> None:
        """Start (or restart) a procedure whose calls keep their checkpoints under ``folder``."""
        self.folder = Path(folder)
        self.seen = Counter()

    def finish(self) -> None:
        """The procedure's result is saved elsewhere: drop its checkpoints."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self.seen = None, Counter()

    def next_dir(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        masks: Mapping[str, torch.Tensor] | None = None,
        distill: Any = None,
        regularizer: Any = None,
        data: Any = None,
    ) -> Path | None:
        """The checkpoint folder of the next call (None outside :meth:`begin`).

        Named by the digest of what the call starts from, and by how many calls of the
        procedure started from exactly that before: not by the call's position, so a procedure
        that skips some calls on a rerun (stages it cached itself) still finds the rest."""
        if self.folder is None:
            return None
        h = hashlib.blake2b(digest_size=12)
        for part in (
            repr(model),  # the architecture (strides, activations), beside the weights
            model,
            dict(masks or {}),
            config.to_dict(),
            distill,
            regularizer,
            data,
        ):
            _feed(h, part)
        digest = h.hexdigest()
        self.seen[digest] += 1
        return self.folder / f"call-{digest}-{self.seen[digest]}"


def _feed(h: Any, obj: Any, depth: int = 0) -> None:
    """Everything that determines ``obj``'s value into the hash (tensors and arrays by their
    bytes, functions by their code, defaults and captured values)."""
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
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
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
    elif isinstance(obj, functools.partial):
        h.update(b"partial")
        _feed(h, [obj.func, list(obj.args), dict(obj.keywords)], depth + 1)
    elif inspect.ismethod(obj):
        h.update(b"method")
        _feed(h, [obj.__func__, obj.__self__], depth + 1)
    elif inspect.isfunction(obj):
        h.update(f"F{obj.__module__}.{obj.__qualname__}".encode())
        h.update(obj.__code__.co_code)
        cells = [c.cell_contents for c in obj.__closure__ or ()]
        _feed(h, [list(obj.__defaults__ or ()), dict(obj.__kwdefaults__ or {}), cells], depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__qualname__.encode())
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, depth + 1)
    elif hasattr(obj, "__dict__"):
        h.update(type(obj).__qualname__.encode())
        _feed(h, vars(obj), depth + 1)
    else:
        h.update(repr(obj).encode())
