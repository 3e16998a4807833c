"""The folder of one evolution: its identity (``run.json``) and its ``journal.jsonl``.

At the end it also holds ``summary.json``, ``archive.json`` and the best candidate's
source (``best_policy.py``: the challenger, or the champion when none qualified), which
``best_source`` reads back (``evolve --trace`` judges it on the held-out part).

Opened before anything else of a run, because the evaluator and the proposers
both write to the journal: a folder that holds a run of another configuration
is refused (resuming it would mix two experiments), ``fresh`` starts it over.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flows.evolution.config import EvolutionConfig
from flows.evolution.journal import Journal

BEST_POLICY = "best_policy.py"


class EvolutionError(RuntimeError):
    """The run cannot start or continue as asked; the message says what to do."""


def best_source(run_dir: Path) -> str:
    """The source of the best candidate of the finished run in ``run_dir``."""
    path = Path(run_dir) / BEST_POLICY
    if not path.is_file():
        raise EvolutionError(f"{run_dir} holds no {BEST_POLICY}: the run has not finished")
    return path.read_text("utf-8")


class RunDir:
    def __init__(self, cfg: EvolutionConfig, path: Path, *, fresh: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta_path = self.path / "run.json"
        if fresh:
            for p in (self.meta_path, self.path / "journal.jsonl"):
                p.unlink(missing_ok=True)
        self.meta: dict[str, Any] = (
            json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}
        )
        if self.meta and self.meta.get("fingerprint") != cfg.fingerprint:
            raise EvolutionError(
                f"{self.path} holds a run with another configuration "
                f"({self.meta.get('fingerprint')} != {cfg.fingerprint}); pass --fresh to start "
                "over there, or choose another --run-dir"
            )
        self.resumed = bool(self.meta)
        self.meta.setdefault("fingerprint", cfg.fingerprint)
        self.meta.setdefault("created", time.time())
        self.journal = Journal(self.path / "journal.jsonl")

    @property
    def name(self) -> str:
        return self.path.name

    def save(self, **fields: Any) -> None:
        self.meta.update(fields)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        tmp.replace(self.meta_path)

    def write(self, name: str, value: Any) -> None:
        (self.path / name).write_text(json.dumps(value, indent=2, default=str))

    def write_best(self, source: str) -> None:
        (self.path / BEST_POLICY).write_text(source, "utf-8")

    def close(self) -> None:
        self.journal.close()
