"""What every trace reader shares: reading a CSV with its columns checked, validating
values with errors that name the file, column and line, and building the Workload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sandbox.workload import Workload, WorkloadError


def read_csv_columns(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        # Everything as text first: pandas would otherwise coerce or guess, and we
        # want to say which line holds the bad value.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise WorkloadError(f"{path}: empty file") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise WorkloadError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise WorkloadError(
            f"{path}: missing column {', '.join(missing)} (has {', '.join(frame.columns)})"
        )
    if frame.empty:
        raise WorkloadError(f"{path}: no rows after the header")
    return frame


def line_number(i: int, header: bool = True) -> int:
    return i + 2 if header else i + 1


def numeric_column(path: Path, frame: pd.DataFrame, col: str, header: bool = True) -> np.ndarray:
    raw = frame[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        text = str(raw.iloc[i])
        what = "a missing value" if text.strip() == "" else f"non-numeric value {text!r}"
        raise WorkloadError(f"{path}: column {col} has {what} on line {line_number(i, header)}")
    return values.to_numpy(dtype=np.float64)


def checked_lengths(path: Path, values: np.ndarray, col: str, header: bool = True) -> np.ndarray:
    """Token counts: integers >= 1, or a WorkloadError naming the first bad line."""
    if not np.all(np.isfinite(values)):
        i = int(np.argmax(~np.isfinite(values)))
        raise WorkloadError(f"{path}: column {col} is not finite on line {line_number(i, header)}")
    neg = values < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise WorkloadError(
            f"{path}: column {col} has negative length {values[i]:g} "
            f"on line {line_number(i, header)}"
        )
    zero = values < 1
    if zero.any():
        i = int(np.argmax(zero))
        raise WorkloadError(
            f"{path}: column {col} has length {values[i]:g} on line {line_number(i, header)}; "
            "lengths must be >= 1 token"
        )
    frac = values != np.floor(values)
    if frac.any():
        i = int(np.argmax(frac))
        raise WorkloadError(
            f"{path}: column {col} has non-integer length {values[i]:g} "
            f"on line {line_number(i, header)}"
        )
    return values.astype(np.int64)


def checked_relative_times(path: Path, t: np.ndarray, col: str, header: bool = True) -> np.ndarray:
    """Arrival seconds relative to the first row; rejects going back in time."""
    back = np.diff(t) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise WorkloadError(
            f"{path}: timestamps are not sorted: column {col} on line {line_number(i, header)} "
            f"is earlier than the line before"
        )
    return t - t[0]


def client_cap(outputs: np.ndarray) -> int:
    """The ``max_tokens`` a client that never wants a truncated answer sends for a trace.

    Its largest output rounded up to a power of two: a cap chosen once for the whole
    trace, so that it says nothing about any one request's length (see ``sandbox.traces``).
    """
    longest = max(int(np.max(outputs)), 1) if len(outputs) else 1
    return 1 << (longest - 1).bit_length()


def checked_workload(
    path: Path,
    fmt: str,
    arrival_s: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    name: str | None,
    *,
    max_tokens: np.ndarray | int | None = None,
    meta: dict | None = None,
    **extra: object,
) -> Workload:
    """The Workload of a trace's rows. ``max_tokens``: per row, or one cap for every row;
    None gives every row ``client_cap(output)`` (pass the cap when ``output`` is a sample of
    the trace rather than all of it)."""
    if max_tokens is None:
        max_tokens = client_cap(output)
    if np.isscalar(max_tokens):
        max_tokens = np.full(len(output), max_tokens, dtype=np.int64)
    return Workload(
        arrival_s=np.ascontiguousarray(arrival_s, dtype=np.float64),
        prompt_tokens=np.ascontiguousarray(prompt, dtype=np.int64),
        output_tokens=np.ascontiguousarray(output, dtype=np.int64),
        max_tokens=np.ascontiguousarray(max_tokens, dtype=np.int64),
        name=name or path.name.split(".")[0],
        meta={"source": str(path), "format": fmt, **(meta or {})},
        **extra,  # type: ignore[arg-type]
    )
