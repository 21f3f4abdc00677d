"""Client sessions: one client's evaluation keys, served on the shared program.

A session is created by uploading an evaluation-key bundle and is named by a random 256-bit
token, which is also its owner's credential: whoever holds the token may run inferences on it
and delete it. The store bounds what clients can make the server hold: the number of sessions,
the bytes of their keys, and how long an unused session lives.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fheprune.errors import InputError

__all__ = ["Session", "SessionLimitError", "SessionStore", "UnknownSessionError"]


class UnknownSessionError(InputError):
    """No session with this token (never made, deleted, or expired)."""


class SessionLimitError(InputError):
    """The server holds as many sessions (or key bytes) as its limits allow."""


@dataclass
class Session:
    token: str
    server: Any  # _core.Server: this client's keys on the host's program
    key_bytes: int
    created: float
    last_used: float
    runs: int = 0
    # Held while a run uses the keys (a session in use never expires).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # One request of this session at a time (taken on the event loop, before a worker).
    turn: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


class SessionStore:
    """Thread-safe sessions with limits; ``clock`` is injectable for tests."""

    def __init__(
        self,
        *,
        max_sessions: int,
        max_key_bytes: int,
        idle_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_key_bytes = max_key_bytes
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.expired_total = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @property
    def key_bytes(self) -> int:
        with self._lock:
            return sum(s.key_bytes for s in self._sessions.values())

    def room(self) -> int:
        """Key bytes a new session may still bring."""
        with self._lock:
            return max(0, self.max_key_bytes - sum(s.key_bytes for s in self._sessions.values()))

    def reserve(self, key_bytes: int) -> None:
        """Refuses a new session of ``key_bytes`` if it would break a limit (after expiring
        idle sessions), before the server spends any work on its keys."""
        self.expire()
        with self._lock:
            self._check_room(key_bytes)

    def add(self, server: Any, key_bytes: int) -> Session:
        now = self._clock()
        session = Session(
            token=secrets.token_urlsafe(32),
            server=server,
            key_bytes=key_bytes,
            created=now,
            last_used=now,
        )
        with self._lock:
            self._check_room(key_bytes)  # another upload may have taken the room meanwhile
            self._sessions[session.token] = session
        return session

    def get(self, token: str) -> Session:
        """The session (marked used now); UnknownSessionError if there is none."""
        with self._lock:
            session = self._sessions.get(token)
            if session is None or self._is_idle(session, self._clock()):
                if session is not None:
                    del self._sessions[token]
                    self.expired_total += 1
                raise UnknownSessionError(
                    "no such session (never registered, deleted, or expired after "
                    f"{self.idle_timeout_s:g} s unused); register the evaluation keys again"
                )
            session.last_used = self._clock()
            return session

    def touch(self, session: Session) -> None:
        with self._lock:
            session.last_used = self._clock()

    def delete(self, token: str) -> None:
        with self._lock:
            if self._sessions.pop(token, None) is None:
                raise UnknownSessionError("no such session (never registered, or already gone)")

    def expire(self) -> int:
        """Drops sessions unused for longer than the idle timeout; returns how many."""
        now = self._clock()
        with self._lock:
            idle = [t for t, s in self._sessions.items() if self._is_idle(s, now)]
            for token in idle:
                del self._sessions[token]
            self.expired_total += len(idle)
        return len(idle)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def _is_idle(self, session: Session, now: float) -> bool:
        # A session whose request is in progress is in use, however long it takes.
        busy = session.lock.locked() or session.turn.locked()
        return now - session.last_used > self.idle_timeout_s and not busy

    def _check_room(self, key_bytes: int) -> None:
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitError(
                f"the server holds its maximum of {self.max_sessions} sessions; retry later, or "
                "delete sessions you no longer use"
            )
        held = sum(s.key_bytes for s in self._sessions.values())
        if held + key_bytes > self.max_key_bytes:
            raise SessionLimitError(
                f"the server's key memory is full ({held} of {self.max_key_bytes} bytes held, "
                f"this bundle is {key_bytes}); retry later"
            )
