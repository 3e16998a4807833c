"""Mooncake traces: JSONL with 512-token prefix block hashes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from sandbox.trace_formats.checks import checked_lengths, checked_relative_times, checked_workload
from sandbox.workload import Workload, WorkloadError

MOONCAKE_BLOCK_TOKENS = 512


def load_mooncake(path: Path, name: str | None) -> Workload:
    opener = gzip.open if path.name.endswith(".gz") else open
    stamps: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{path}: invalid JSON on line {lineno} ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise WorkloadError(f"{path}: line {lineno} is not a JSON object")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in rec:
                    raise WorkloadError(f"{path}: missing field {key} on line {lineno}")
                value = rec[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise WorkloadError(
                        f"{path}: field {key} has non-numeric value {value!r} on line {lineno}"
                    )
            ids = rec.get("hash_ids", [])
            if not isinstance(ids, list) or not all(isinstance(h, int) for h in ids):
                raise WorkloadError(f"{path}: hash_ids on line {lineno} is not a list of integers")
            stamps.append(float(rec["timestamp"]))
            prompt.append(rec["input_length"])
            output.append(rec["output_length"])
            hashes.append(tuple(ids))
    if not stamps:
        raise WorkloadError(f"{path}: empty file")
    t = np.asarray(stamps) / 1000.0  # the trace's timestamps are milliseconds
    rel = checked_relative_times(path, t, "timestamp", header=False)
    p = checked_lengths(path, np.asarray(prompt, dtype=np.float64), "input_length", header=False)
    o = checked_lengths(path, np.asarray(output, dtype=np.float64), "output_length", header=False)
    return checked_workload(
        path,
        "mooncake",
        rel,
        p,
        o,
        name,
        prefix_hashes=tuple(hashes),
        prefix_block_tokens=MOONCAKE_BLOCK_TOKENS,
    )
