"""Encrypted inference as a network service: ``fheprune serve BUNDLE``.

* :mod:`.protocol`: the wire format of ciphertext batches;
* :mod:`.sessions`: client sessions (one client's evaluation keys each) and their limits;
* :mod:`.service`: the program built once, the worker pool, the metrics (no web code);
* :mod:`.app`: the HTTP API (FastAPI) over the service;
* :func:`run_server`: load a bundle and serve it with uvicorn until SIGINT / SIGTERM.

The client side is :mod:`fheprune.client`. docs/serving.md describes the API and the limits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
from pathlib import Path
from typing import Any

from fheprune.fileio import atomic_write_bytes

from .config import ServeConfig
from .protocol import BatchFormatError, FrameReader, encode_batch, iter_batch
from .sessions import SessionLimitError, SessionStore, UnknownSessionError

__all__ = [
    "BatchFormatError",
    "FrameReader",
    "InferenceService",
    "OverloadedError",
    "RequestTooLargeError",
    "ServeConfig",
    "SessionLimitError",
    "SessionStore",
    "UnknownSessionError",
    "encode_batch",
    "iter_batch",
    "run_server",
]

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    # The service needs the compiled engine; import it only when used.
    if name in ("InferenceService", "OverloadedError", "RequestTooLargeError"):
        from . import service

        return getattr(service, name)
    raise AttributeError(f"module 'fheprune.serving' has no attribute {name!r}")


def run_server(
    bundle_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8470,
    config: ServeConfig | None = None,
    owner_key: str | None = None,
    ready_file: str | os.PathLike[str] | None = None,
    log_level: str = "info",
    tls: tuple[str | os.PathLike[str], str | os.PathLike[str] | None] | None = None,
) -> None:
    """Serve a bundle until interrupted. The program is built before the port is opened;
    ``port=0`` takes a free port, and ``ready_file`` receives ``{"url": ...}`` once the server
    accepts connections. SIGTERM / SIGINT stop accepting, finish the admitted requests (up to
    ``config.graceful_timeout_s``), then exit. ``tls`` = (certificate file, key file) serves
    HTTPS; without it, put the server behind a TLS-terminating proxy before it leaves the
    machine (the session token and the ciphertexts would travel in clear text)."""
    import uvicorn

    from fheprune.runtime.bundle import load_bundle

    from .app import create_app
    from .service import InferenceService

    config = config or ServeConfig()
    bundle = load_bundle(bundle_dir, owner_key=owner_key)
    service = InferenceService(bundle, config)
    # Bind first, so that port 0 resolves to a real port that can be reported.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    scheme = "https" if tls else "http"
    url = f"{scheme}://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound_port}"
    app = create_app(service)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(config.graceful_timeout_s),
            ssl_certfile=None if tls is None else str(tls[0]),
            ssl_keyfile=None if tls is None or tls[1] is None else str(tls[1]),
            # Bodies are streamed into the service's own limits; nothing else buffers them.
            h11_max_incomplete_event_size=64 * 1024,
        )
    )

    if ready_file is not None:
        ready = Path(ready_file)
        original_startup = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await original_startup(sockets=sockets)
            if server.started:
                payload = json.dumps({"url": url, "pid": os.getpid()}).encode()
                atomic_write_bytes(ready, payload)

        server.startup = startup  # type: ignore[method-assign]
    # uvicorn handles SIGINT / SIGTERM itself (stop accepting, finish the admitted requests)
    # and then re-raises the signal under whatever handler was there before; a handler that
    # only notes it makes a graceful stop exit with status 0 rather than die by the signal.
    stops: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: stops.append(number))
    log.info("serving %s at %s", bundle.folder, url)
    server.run(sockets=[sock])
    log.info("stopped (%s)", ", ".join(signal.Signals(n).name for n in stops) or "no signal")
