"""Fetch a dataset file for users with network access.

The file is streamed to a temporary name in the destination folder, hashed on the way, and
renamed over the target only when the SHA-256 matches. ``os.replace`` within one folder is
atomic, so a crash or a bad mirror never leaves a half-written file under the real name.
Nothing in the loaders calls this: they never touch the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Protocol

from fheprune.errors import InputError

from .errors import ChecksumMismatchError, DataError, DownloadError
from .integrity import digest_file
from .paths import StrPath

__all__ = ["ByteStream", "Opener", "download"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SCHEMES = ("https", "http", "file")  # the checksum, not the transport, guarantees content
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ByteStream(Protocol):
    """What an opener returns: a readable, closable byte stream (e.g. an HTTP response)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


Opener = Callable[[str], ByteStream]


def _urlopen(timeout: float) -> Opener:
    def open_url(url: str) -> ByteStream:
        response: ByteStream = urllib.request.urlopen(url, timeout=timeout)
        return response

    return open_url


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fetch(url: str, target: Path, sha256: str, opener: Opener, max_bytes: int | None) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, contextlib.closing(opener(url)) as src:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise DataError(f"{url}: more than the allowed {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumMismatchError(url, "sha256", sha256, actual)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def download(
    name: str,
    data_dir: StrPath,
    *,
    urls: Sequence[str],
    sha256: str,
    opener: Opener | None = None,
    timeout: float = 60.0,
    max_bytes: int | None = None,
) -> Path:
    """Download ``name`` (a path relative to ``data_dir``) from the first working mirror.

    Returns the final path. An existing file with the right digest is kept as is. ``opener``
    replaces :func:`urllib.request.urlopen` (tests, proxies). Raises :class:`DownloadError`
    with every mirror's failure when none delivers the expected bytes.
    """
    rel = PurePath(name)
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"name must be a relative path inside data_dir, got {name!r}")
    expected = sha256.lower()
    if not _SHA256.fullmatch(expected):
        raise InputError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if not urls:
        raise InputError("at least one URL is required")
    for url in urls:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise InputError(f"unsupported URL scheme {scheme!r} in {url}; use {_SCHEMES}")

    target = Path(data_dir) / rel
    if target.is_file():
        if digest_file(target) == expected:
            log.info("%s already present and verified", target)
            return target
        log.warning("%s exists but its checksum is wrong; downloading it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)

    fetch_from = opener if opener is not None else _urlopen(timeout)
    failures: list[tuple[str, BaseException]] = []
    for url in urls:
        log.info("downloading %s from %s", rel, url)
        try:
            _fetch(url, target, expected, fetch_from, max_bytes)
        except (OSError, ValueError, DataError, http.client.HTTPException) as exc:
            log.warning("download of %s from %s failed: %s", rel, url, exc)
            failures.append((url, exc))
            continue
        log.info("saved %s", target)
        return target
    details = "; ".join(f"{u}: {e}" for u, e in failures)
    raise DownloadError(f"could not download {rel} from any mirror ({details})", failures)
