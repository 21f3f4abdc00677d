"""The inference service, independent of the web framework: one bundle's program, built once,
client sessions on it, a bounded worker pool, and the metrics.

Every request's heavy work (parsing keys, loading ciphertexts, running the program, saving the
outputs) runs in the C++ core with the GIL released, on a pool of ``workers`` threads. The web
layer (app.py) admits 2 x workers requests at a time (reading their bodies, waiting for or
using a worker); later ones wait unread, up to ``max_queue``, and beyond that get 503.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import ctypes.util
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from fheprune import _core
from fheprune.errors import InputError
from fheprune.runtime.bundle import Bundle

from .config import ServeConfig
from .protocol import FrameReader, max_ciphertext_bytes
from .sessions import Session, SessionStore

__all__ = ["InferenceService", "OverloadedError", "RequestTooLargeError", "ServeConfig"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RequestTooLargeError(InputError):
    """A request body beyond the server's size limit (HTTP 413)."""


class OverloadedError(InputError):
    """Every admission slot is taken and the waiting line is full (HTTP 503, retry later)."""


class Metrics:
    """Request counts by route and status, inference latencies, and the queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=4096)
        # Where an inference's time goes, per stage (the profile of the server's side).
        self.stages: dict[str, collections.deque[float]] = {
            stage: collections.deque(maxlen=4096) for stage in ("read", "load", "run", "save")
        }
        self.waiting = 0  # requests waiting for admission, bodies unread
        self.admitted = 0  # requests reading their body, waiting for a worker, or running
        self.running = 0  # requests on a worker

    def adjust(self, *, waiting: int = 0, admitted: int = 0, running: int = 0) -> None:
        with self._lock:
            self.waiting += waiting
            self.admitted += admitted
            self.running += running

    def add_stage(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stages[stage].append(seconds)

    def count(self, route: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            if seconds is not None and status == 200 and route == "/v1/infer":
                self.latencies.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = sorted(self.latencies)
            stages = {name: _percentiles(sorted(v)) for name, v in self.stages.items()}
            by_route: dict[str, dict[str, int]] = {}
            for (route, status), n in sorted(self.requests.items()):
                by_route.setdefault(route, {})[str(status)] = n
            return {
                "uptime_s": time.time() - self.started,
                "requests": by_route,
                "requests_total": sum(self.requests.values()),
                "infer_latency_s": _percentiles(latencies),
                "infer_stages_s": stages,
                "queue": {
                    "waiting": self.waiting,
                    "admitted": self.admitted,
                    "running": self.running,
                },
            }


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None}

    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"count": len(values), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once (find_library runs ldconfig); None elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # AttributeError: not glibc
        return None
    return trim


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so that dropped sessions' keys do not stay
    in the server's resident memory."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class InferenceService:
    """One bundle served to many clients."""

    def __init__(self, bundle: Bundle, config: ServeConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or ServeConfig()
        start = time.perf_counter()
        self.host = _core.ProgramHost(bundle.program, threads=self.config.engine_threads)
        self.setup_s = time.perf_counter() - start
        self.max_ciphertext_bytes = max_ciphertext_bytes(self.host.parameters)
        self.input_ciphertexts = int(self.host.input_ciphertexts)
        self.sessions = SessionStore(
            max_sessions=self.config.max_sessions,
            max_key_bytes=self.config.max_key_bytes,
            idle_timeout_s=self.config.idle_timeout_s,
        )
        self.metrics = Metrics()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="fheprune-run"
        )
        log.info(
            "program %s: %d plaintexts (%.1f MB) ready in %.2f s; %d workers",
            bundle.program_fingerprint[:16],
            self.host.plaintext_count,
            self.host.plaintext_bytes / 1e6,
            self.setup_s,
            self.config.workers,
        )

    # ---- what the service tells anyone ----

    def program_info(self) -> dict[str, Any]:
        """Public facts about the program (no weights, nothing about any client)."""
        parameters = self.host.parameters
        return {
            "program_fingerprint": self.bundle.program_fingerprint,
            "parameters": bytes(parameters.to_bytes()).hex(),
            "poly_degree": int(parameters.poly_degree),
            "input_ciphertexts": self.input_ciphertexts,
            "output_ciphertexts": int(self.host.output_ciphertexts),
            "limits": {
                **{k: v for k, v in asdict(self.config).items() if k != "engine_threads"},
                "admitted": self.config.admitted_limit,
                "max_ciphertext_bytes": self.max_ciphertext_bytes,
            },
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        snapshot = self.metrics.snapshot()
        snapshot["sessions"] = {
            "active": len(self.sessions),
            "key_bytes": self.sessions.key_bytes,
            "expired": self.sessions.expired_total,
        }
        snapshot["server_rss_bytes"] = rss_bytes()
        snapshot["plaintext_bytes"] = int(self.host.plaintext_bytes)
        return snapshot

    # ---- the worker pool ----

    def submit(self, work: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Runs ``work`` on the worker pool (admission is the web layer's: app.py)."""

        def run() -> T:
            self.metrics.adjust(running=+1)
            try:
                return work()
            finally:
                self.metrics.adjust(running=-1)

        try:
            return self._pool.submit(run)
        except RuntimeError:  # the pool is shutting down
            raise OverloadedError("the server is shutting down") from None

    # ---- the work ----

    def register(self, key_bundle: bytes) -> Session:
        """A session for one client's evaluation keys (checked by the C++ host)."""
        self.sessions.reserve(len(key_bundle))
        server = self.host.serve(key_bundle)
        session = self.sessions.add(server, len(key_bundle))
        log.info("session %s registered (%d key bytes)", _short(session.token), len(key_bundle))
        return session

    def delete(self, token: str) -> None:
        self.sessions.delete(token)
        log.info("session %s deleted", _short(token))
        _trim_heap()

    def expire(self) -> int:
        dropped = self.sessions.expire()
        if dropped:
            log.info("%d idle sessions expired", dropped)
            _trim_heap()
        return dropped

    def frame_reader(self) -> FrameReader:
        return FrameReader(
            max_frames=self.input_ciphertexts * self.config.max_groups,
            max_frame_bytes=self.max_ciphertext_bytes,
        )

    def infer(self, session: Session, frames: list[bytes | None]) -> list[bytes | None]:
        """Input ciphertexts (serialized) -> output ciphertexts (serialized; None = zero).
        Every input is checked by the session's C++ server: parameters, key, level, scale."""
        server = session.server
        clock = time.perf_counter
        with session.lock:  # one run per session at a time (the C++ server serializes too)
            start = clock()
            inputs = [server.load_ciphertext(frame) for frame in frames]
            self.metrics.add_stage("load", clock() - start)
            if len(inputs) % self.input_ciphertexts:
                raise InputError(
                    f"the program takes {self.input_ciphertexts} input ciphertexts per group "
                    f"of samples, got {len(inputs)}"
                )
            start = clock()
            outputs, _stats = server.run(inputs)
            self.metrics.add_stage("run", clock() - start)
            session.runs += 1
        self.sessions.touch(session)  # a run longer than the idle timeout is still use
        start = clock()
        saved = [None if c is None else bytes(server.save_ciphertext(c)) for c in outputs]
        self.metrics.add_stage("save", clock() - start)
        return saved

    def close(self) -> None:
        """Finishes the admitted requests, then drops every session."""
        self._pool.shutdown(wait=True)
        self.sessions.clear()
        _trim_heap()


def _short(token: str) -> str:
    """A log-safe name for a session: never the token itself (it is the owner's credential)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]
