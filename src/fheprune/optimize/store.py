"""Trial results on disk, so that an interrupted search resumes where it stopped.

``OUT/trials/<candidate key>/`` holds ``record.json`` (the screening record, written last and
atomically: its presence means the trial is complete), the pruned weights and permutations,
and ``measured.json`` once the candidate has been measured encrypted.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from fheprune.reporting import write_json_atomic

__all__ = ["TrialStore"]

log = logging.getLogger(__name__)

RECORD = "record.json"
MEASURED = "measured.json"


class TrialStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.trials = self.root / "trials"
        self.trials.mkdir(parents=True, exist_ok=True)

    def folder(self, key: str) -> Path:
        return self.trials / key

    def _read(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable %s (%s); the trial will be redone", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def record(self, key: str) -> dict[str, Any] | None:
        return self._read(self.folder(key) / RECORD)

    def measured(self, key: str) -> dict[str, Any] | None:
        return self._read(self.folder(key) / MEASURED)

    def save_record(self, record: dict[str, Any], artifacts: Path | None = None) -> None:
        """Store a screening record; ``artifacts`` (a folder) is copied in first."""
        folder = self.folder(str(record["key"]))
        folder.mkdir(parents=True, exist_ok=True)
        if artifacts is not None and artifacts.resolve() != folder.resolve():
            for item in artifacts.iterdir():
                if item.is_file():
                    shutil.copy2(item, folder / item.name)
        write_json_atomic(folder / RECORD, record)

    def save_measured(self, key: str, measured: dict[str, Any]) -> None:
        write_json_atomic(self.folder(key) / MEASURED, measured)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for folder in sorted(self.trials.iterdir()):
            rec = self.record(folder.name)
            if rec is not None:
                measured = self.measured(folder.name)
                if measured is not None:
                    rec = {**rec, "measured": measured}
                out.append(rec)
        return out
