"""The limits and sizes of an inference server (pure Python: the command line reads its
defaults without loading the engine)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fheprune.errors import InputError

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """Limits and sizes of a server; every field has a command-line option (fheprune serve)."""

    workers: int = max(1, os.cpu_count() or 1)  # concurrent runs
    # Engine threads of the one context all sessions share: its pool serves one layer at a
    # time, so with several workers keep this at 1 (workers give the parallelism).
    engine_threads: int = 1
    # Requests whose body is being read or whose run waits or runs: 2 x workers, so that the
    # next bodies arrive while runs go on. Memory: at most this many requests' ciphertexts.
    # Later requests wait, unread (TCP holds their senders back), up to max_queue of them;
    # beyond that they are refused with 503.
    max_queue: int = 64
    max_sessions: int = 64
    max_key_bytes: int = 8 << 30  # all sessions' evaluation keys together
    idle_timeout_s: float = 900.0  # an unused session is dropped after this
    max_request_bytes: int = 1 << 30  # one inference request (its ciphertexts)
    max_groups: int = 64  # groups of samples per inference request
    graceful_timeout_s: float = 60.0  # on shutdown, running requests get this long
    body_timeout_s: float = 300.0  # a request body must arrive within this

    def __post_init__(self) -> None:
        for name in (
            "workers",
            "engine_threads",
            "max_sessions",
            "max_key_bytes",
            "max_request_bytes",
            "max_groups",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"ServeConfig.{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise InputError(f"ServeConfig.max_queue must be >= 0, got {self.max_queue!r}")
        for name in ("idle_timeout_s", "graceful_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"ServeConfig.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def admitted_limit(self) -> int:
        return 2 * self.workers
