"""Our own telemetry (the router's Parquet log) replayed as a Workload, and back.

``workload_frame`` is the inverse of the reader: any Workload (a trace in any format,
or a part of one) as telemetry rows, the form of a window file (``sandbox.window_scenarios``),
so a user's own trace can be replayed as window scenarios.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sandbox.trace_formats.checks import checked_workload
from sandbox.workload import Workload, WorkloadError
from serving.contract import DEFAULT_MAX_OUTPUT_TOKENS


def load_telemetry(
    path: Path,
    name: str | None,
    *,
    since_unix_s: float | None = None,
    statuses: tuple[str, ...] | None = None,
) -> Workload:
    # Imported here so the sandbox only needs serving's telemetry when it replays it.
    from serving.telemetry import TelemetryError, read_telemetry

    try:
        frame = read_telemetry(path, since_unix_s=since_unix_s)
    except TelemetryError as exc:
        raise WorkloadError(str(exc)) from exc
    return workload_from_frame(frame, path, name, statuses)


def workload_from_frame(
    frame, path: Path | str, name: str | None, statuses: tuple[str, ...] | None = None
) -> Workload:
    """A telemetry frame (rows sorted by arrival) as a Workload; ``path`` names it in errors."""
    if statuses is not None:
        frame = frame[frame["status"].isin(statuses)].reset_index(drop=True)
    if frame.empty:
        raise WorkloadError(f"{path}: no telemetry rows to replay")
    t = frame["arrival_unix_s"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise WorkloadError(f"{path}: telemetry has a non-finite arrival_unix_s")
    prompt = frame["prompt_tokens"].to_numpy(dtype=np.int64)
    if (prompt < 1).any():
        i = int(np.argmax(prompt < 1))
        raise WorkloadError(
            f"{path}: request {frame['request_id'].iloc[i]} has prompt_tokens {prompt[i]} (< 1)"
        )
    # A request that failed, was cancelled or rejected generated fewer tokens than it
    # would have: its logged output is a lower bound on its demand, kept >= 1 token.
    logged = frame["output_tokens"].to_numpy(dtype=np.int64)
    output = np.maximum(logged, 1)
    # What the router's policy was told: the client's max_tokens (no engine generates
    # past it), or, where the client set none (logged as 0), the router's default, which
    # says nothing about the request's length.
    asked = frame["max_tokens"].to_numpy(dtype=np.int64)
    max_tokens = np.where(asked > 0, np.maximum(asked, output), DEFAULT_MAX_OUTPUT_TOKENS)
    hashes: tuple[tuple[int, ...], ...] = ()
    block = 16
    has = frame["prefix_hashes"].map(len).to_numpy() > 0
    if has.any():
        blocks = np.unique(frame["prefix_block_tokens"].to_numpy()[has])
        if len(blocks) > 1:
            raise WorkloadError(
                f"{path}: rows mix prefix_block_tokens {blocks.tolist()}; replay one at a time"
            )
        block = int(blocks[0])
        hashes = tuple(tuple(int(h) for h in hs) for hs in frame["prefix_hashes"])
    sessions = frame["session_id"].fillna("").astype(str)
    session_ids = tuple(sessions) if (sessions != "").any() else ()
    non_ok = int((frame["status"] != "ok").sum())
    return checked_workload(
        path,
        "telemetry",
        t - t[0],
        prompt,
        output,
        name,
        max_tokens=max_tokens,
        meta={"start_unix_s": float(t[0]), "non_ok_rows": non_ok},
        prefix_hashes=hashes,
        prefix_block_tokens=block,
        session_ids=session_ids,
    )


def workload_frame(w: Workload, start_unix_s: float = 0.0):
    """``w`` as a telemetry frame (``serving.telemetry.TELEMETRY_SCHEMA`` columns).

    Keeps what a replay reads back (``workload_from_frame``): arrival (``start_unix_s`` plus
    the workload's own times), prompt, output and max tokens, prefix hashes with their
    block size, session ids. Every row is ``ok`` (it is demand, not an outcome) and
    served by no replica; latencies are NaN: the trace did not measure them here.
    """
    import pandas as pd

    n = len(w)
    nan = np.full(n, np.nan)
    hashes = list(w.prefix_hashes) if w.prefix_hashes else [()] * n
    return pd.DataFrame(
        {
            "request_id": [f"{w.name}-{i}" for i in range(n)],
            "arrival_unix_s": start_unix_s + w.arrival_s.astype(np.float64),
            "prompt_tokens": w.prompt_tokens.astype(np.int64),
            "output_tokens": w.output_tokens.astype(np.int64),
            "max_tokens": w.max_tokens.astype(np.int64),
            "ttft_s": nan,
            "tpot_s": nan,
            "e2e_s": nan,
            "queue_s": nan,
            "replica": "",
            "policy_version": "",
            "status": "ok",
            "prefix_block_tokens": np.full(n, w.prefix_block_tokens, dtype=np.int32),
            "prefix_hashes": [list(h) for h in hashes],
            "session_id": list(w.session_ids) if w.session_ids else [""] * n,
        }
    )
