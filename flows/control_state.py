"""The control plane's state between flow runs, in ``state_dir`` (``flows.prefect_flows``).

``watermark.json`` (the latest arrival already consumed), ``reference.json`` (the
window the champion was evolved on: the drift test's sample and its scenarios),
``events.jsonl`` (one line per decision) and ``windows/`` (the pulled windows as
content-addressed window files, ``sandbox.window_scenarios``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flows.drift import WindowSample
from flows.pulled_window import resolve_scenarios


def load_state(path: Path, default: Any) -> Any:
    """A JSON state file's value; ``default`` when there is none yet."""
    return json.loads(path.read_text()) if path.exists() else default


def save_state(path: Path, value: Any) -> None:
    """Write a JSON state file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    tmp.replace(path)


def record_event(state_dir: str | Path, kind: str, **data: Any) -> None:
    """Append one decision to ``events.jsonl`` (the demo reads its timings there)."""
    path = Path(state_dir) / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"event": kind, "t": time.time(), **data}, default=str) + "\n")


def read_events(state_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(state_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def set_reference(
    state_dir: str | Path,
    sample: WindowSample,
    scenarios: list[str],
    fallback: list[str] | None = None,
) -> None:
    """The window the next champion is evolved on: the drift test's sample, its scenarios."""
    save_state(
        Path(state_dir) / "reference.json",
        {"sample": sample.to_dict(), "scenarios": scenarios, "fallback": fallback or []},
    )


def windows_dir_of(state_dir: str | Path, windows_dir: str | None = None) -> str:
    """Where window files live: ``windows_dir``, or ``<state_dir>/windows`` (absolute)."""
    return str(Path(windows_dir or Path(state_dir) / "windows").resolve())


DEFAULT_FALLBACK = ["bursty-code", "steady-conv"]


def scenarios_to_replay(
    state_dir: str, scenarios: list[str] | None, windows_dir: str, fallback: list[str] | None
) -> list[str]:
    """The scenarios to replay: given, else the reference's; window files checked."""
    ref = read_reference(state_dir) or {}
    if not scenarios:
        scenarios = ref.get("scenarios") or list(DEFAULT_FALLBACK)
    fallback = fallback or ref.get("fallback") or list(DEFAULT_FALLBACK)
    return list(resolve_scenarios(scenarios, windows_dir, fallback))


def read_reference(state_dir: str | Path) -> dict[str, Any] | None:
    """The reference window's record (``set_reference``); None before the first window."""
    return load_state(Path(state_dir) / "reference.json", None)


def ensure_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
