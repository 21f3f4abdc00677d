"""Atomic file writes: a reader, or a run interrupted mid-write, never sees half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes"]


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, mode: int = 0o644
) -> Path:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it into place
    with permissions ``mode`` (0o600 for secrets: the file is never readable by others, not
    even for a moment)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)  # mkstemp creates 0600
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where directories can sync
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """:func:`atomic_write` of ``data`` as it is."""

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    return atomic_write(path, write, mode=mode)
