"""Checksums of official dataset files and the rule deciding when to check them.

The ``verify`` argument of every loader follows one rule:

* ``verify=False``: never hash; only the format checks run.
* ``verify=True`` (strict): every file read must be an official file with a known reference
  digest, and its size and digest must match. Anything else raises
  :class:`ChecksumMismatchError` (or :class:`DataError` when no reference exists at all).
* ``verify=None`` (default): hash a file only when its name is an official name *and* its size
  equals the official size. A file of exactly the official size claims to be the official
  download, so a different digest means corruption (bit rot, a bad mirror, a partial
  overwrite). A file of another size is by construction not the official file (for example a
  small hand-made IDX fixture); it is loaded and left to the format checks, which catch
  truncation and trailing bytes on their own.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import ChecksumMismatchError, DataError

__all__ = ["KnownFile", "check_file", "digest_bytes", "digest_file"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownFile:
    """Reference size and digest of one official distribution file."""

    name: str
    size: int
    algorithm: str  # a hashlib name: "sha256" or "md5" (where only MD5 is published)
    digest: str


def _hasher(algorithm: str) -> hashlib._Hash:
    # usedforsecurity=False keeps MD5 usable on FIPS-enabled builds; it is an integrity check.
    return hashlib.new(algorithm, usedforsecurity=False)


def digest_bytes(data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> str:
    """Hex digest of an in-memory buffer."""
    h = _hasher(algorithm)
    h.update(data)
    return h.hexdigest()


def digest_file(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks so large archives never sit in memory whole."""
    h = _hasher(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_file(
    path: Path,
    known: KnownFile | None,
    verify: bool | None,
    *,
    data: bytes | bytearray | None = None,
) -> bool:
    """Apply the module's verification rule to ``path``; True when a digest was compared.

    ``data`` is the file content when the caller already read it, to avoid a second read.
    """
    if verify is False:
        return False
    if known is None:
        if verify:
            raise DataError(
                f"{path}: verify=True, but no reference checksum is known for this file, so it "
                "cannot be proven to be the official release; use the official file or "
                "verify=None"
            )
        return False
    size = len(data) if data is not None else path.stat().st_size
    if size != known.size:
        if verify is None:
            log.debug("%s: %d bytes, not the official %d; not hashing", path, size, known.size)
            return False
        raise ChecksumMismatchError(path, "size", f"{known.size} bytes", f"{size} bytes")
    actual = (
        digest_bytes(data, known.algorithm)
        if data is not None
        else digest_file(path, known.algorithm)
    )
    if actual != known.digest:
        raise ChecksumMismatchError(path, known.algorithm, known.digest, actual)
    log.debug("%s: %s verified", path, known.algorithm)
    return True
