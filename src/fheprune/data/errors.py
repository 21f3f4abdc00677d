"""Typed errors raised by the dataset loaders.

Every error derives from :class:`DataError` so callers (the CLI in particular) can catch one
type and print the message, which is written to tell the user what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fheprune.errors import FhepruneError

__all__ = [
    "ChecksumMismatchError",
    "CorruptDatasetError",
    "DataError",
    "DatasetNotFoundError",
    "DownloadError",
]

# What __reduce__ returns: the class and its __init__ arguments.
_Reduced = tuple[type[Exception], tuple[object, ...]]


class DataError(FhepruneError):
    """Base class for every dataset problem (missing, corrupt, unverifiable, ...)."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The data directory or the dataset files inside it could not be found.

    Also a :class:`FileNotFoundError` so generic ``except OSError`` handlers still work.
    ``expected`` lists the paths that were looked for, for programmatic use.
    """

    def __init__(self, message: str, expected: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.expected: tuple[Path, ...] = tuple(expected)

    def __str__(self) -> str:
        # FileNotFoundError would otherwise format args as "[Errno ...]"-style tuples.
        return str(self.args[0])

    def __reduce__(self) -> _Reduced:
        # Exceptions cross process boundaries (data-loader workers) by pickling.
        return type(self), (str(self.args[0]), self.expected)


class CorruptDatasetError(DataError):
    """A dataset file exists but its content is not what the format requires."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path  # a str when the data is not a plain file (archive member, URL)
        self.problem = problem

    def __reduce__(self) -> _Reduced:
        return type(self), (self.path, self.problem)


class ChecksumMismatchError(CorruptDatasetError):
    """A file that must be an official distribution file has the wrong digest (or size).

    ``algorithm`` is a hashlib name, or ``"size"`` when strict mode rejected the byte count.
    """

    def __init__(self, path: Path | str, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(
            path,
            f"{algorithm} mismatch: expected {expected}, got {actual}; the file is damaged or "
            "not the official release - delete it and fetch it again",
        )
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> _Reduced:
        return type(self), (self.path, self.algorithm, self.expected, self.actual)


class DownloadError(DataError):
    """Every mirror failed; ``failures`` holds ``(url, exception)`` for each attempt."""

    def __init__(self, message: str, failures: Sequence[tuple[str, BaseException]]) -> None:
        super().__init__(message)
        self.failures: tuple[tuple[str, BaseException], ...] = tuple(failures)

    def __reduce__(self) -> _Reduced:
        return type(self), (str(self.args[0]), self.failures)
