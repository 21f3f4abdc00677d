"""Where the dataset files live.

Resolution order: explicit argument, then ``$FHEPRUNE_DATA``, then a ``shared/data`` folder
found by walking up from the current directory and from this package. The walk finds both
``<repo>/shared/data`` and the layout used here, where ``shared/`` is a sibling of the checkout.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import DatasetNotFoundError

__all__ = ["DATA_ENV_VAR", "StrPath", "resolve_data_dir"]

log = logging.getLogger(__name__)

DATA_ENV_VAR = "FHEPRUNE_DATA"

StrPath = str | os.PathLike[str]

_SHARED = Path("shared") / "data"
_HOW_TO = f"set {DATA_ENV_VAR}=/path/to/data or pass --data-dir /path/to/data"


def _search_roots() -> list[Path]:
    roots: list[Path] = []
    with contextlib.suppress(OSError):  # the working directory may have been deleted
        roots.append(Path.cwd())
    roots.append(Path(__file__).resolve().parent)
    return roots


def _ancestors(start: Path) -> Iterator[Path]:
    yield start
    yield from start.parents


def _describe_expected(base: Path, expected: Sequence[str]) -> str:
    if not expected:
        return ""
    return " Expected " + " and ".join(str(base / e) for e in expected) + "."


def resolve_data_dir(explicit: StrPath | None = None, *, expected: Sequence[str] = ()) -> Path:
    """Return the root data directory.

    ``expected`` names the files (relative to the root) the caller is after; it only makes
    error messages precise. An explicit or environment path must exist: silently falling back
    to a search would hide a typo in the user's setting.
    """
    chosen: Path | None = None
    source = ""
    if explicit is not None:
        chosen, source = Path(explicit).expanduser(), "the data_dir argument"
    elif os.environ.get(DATA_ENV_VAR):
        chosen, source = Path(os.environ[DATA_ENV_VAR]).expanduser(), f"${DATA_ENV_VAR}"
    if chosen is not None:
        if not chosen.is_dir():
            raise DatasetNotFoundError(
                f"data directory {chosen} (from {source}) does not exist."
                f"{_describe_expected(chosen, expected)} Fix the path: {_HOW_TO}.",
                [chosen / e for e in expected] or [chosen],
            )
        log.debug("data directory %s (from %s)", chosen, source)
        return chosen

    searched: list[Path] = []
    for root in _search_roots():
        for folder in _ancestors(root):
            candidate = folder / _SHARED
            if candidate in searched:
                continue
            searched.append(candidate)
            if candidate.is_dir():
                log.debug("data directory %s (found by search)", candidate)
                return candidate

    tried = ", ".join(str(p) for p in searched)
    raise DatasetNotFoundError(
        f"no data directory found: {DATA_ENV_VAR} is unset and no shared/data folder exists "
        f"above the current directory or the fheprune package (looked at {tried})."
        f"{_describe_expected(Path('<data-dir>'), expected)} {_HOW_TO}.",
        [p / e for p in searched for e in expected] or searched,
    )
