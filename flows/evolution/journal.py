"""An append-only, fsynced journal: what makes a killed run resumable.

The engine is deterministic given two kinds of outside answers: what the LLM
said and what the sandbox measured. Both are journaled under a key derived
from the run's own deterministic choices (``llm/g3/s1``, an evaluation's
reproducibility key). A resumed run re-executes the loop from the top and
takes every answer it already has from here, so it makes the same random
choices, loses no evaluated candidate, and converges on the same state as a
run that was never interrupted. A torn last line (killed mid-write) is ignored.
The LLM proposer's worker threads write beside the loop: reads and writes are locked.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self._lock = threading.Lock()
        if path.exists():
            self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        with self.path.open("r", encoding="utf-8") as fh:
            good = 0
            for line in fh:
                if not line.endswith("\n"):
                    break  # torn write: the process died here
                try:
                    rec = json.loads(line)
                except ValueError:
                    break
                self.records[rec["key"]] = rec
                good += len(line.encode("utf-8"))
        # Cut a torn tail so the next append starts on a fresh line.
        with self.path.open("r+b") as fh:
            fh.truncate(good)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self.records.get(key)
            if rec is not None:
                self.hits += 1
            return rec

    def put(self, key: str, record: dict[str, Any]) -> None:
        rec = {"key": key, **record}
        line = json.dumps(rec, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._fh.closed:
                return  # a worker answering after the run closed: nothing waits for it
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.records[key] = rec

    def close(self) -> None:
        with self._lock:
            self._fh.close()
