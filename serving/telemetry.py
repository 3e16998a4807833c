"""The router's request log: one Parquet row per request, in append-only segments.

The router calls ``TelemetryWriter.add`` from its event loop for every finished
request. Rows are buffered and written as a new segment file
``telemetry-<start>-<seq>.parquet`` at least every ``flush_interval_s`` (checked
inline in ``add``, so no thread is needed) and on ``flush``/``close``. A segment
is written under a hidden temporary name and renamed into place, so a reader
polling the directory never sees a half-written file. Segments are never
rewritten: the pull flow reads everything newer than its last watermark.

This module is part of the data plane: it must not import ``sandbox`` or ``flows``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TELEMETRY_SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"autopoiesis.telemetry.schema_version"

STATUSES = frozenset({"ok", "error", "timeout", "cancelled", "rejected"})

TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string()),
        pa.field("arrival_unix_s", pa.float64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("max_tokens", pa.int64()),
        # Latencies are NaN when not applicable (e.g. no first token for a rejected request).
        pa.field("ttft_s", pa.float64()),
        pa.field("tpot_s", pa.float64()),
        pa.field("e2e_s", pa.float64()),
        pa.field("queue_s", pa.float64()),
        pa.field("replica", pa.string()),
        pa.field("policy_version", pa.string()),
        pa.field("status", pa.string()),
        pa.field("prefix_block_tokens", pa.int32()),
        pa.field("prefix_hashes", pa.list_(pa.int64())),
        pa.field("session_id", pa.string()),
    ],
    metadata={SCHEMA_VERSION_KEY: TELEMETRY_SCHEMA_VERSION.encode()},
)

SEGMENT_GLOB = "telemetry-*.parquet"


class TelemetryError(ValueError):
    """A telemetry file or row that does not follow ``TELEMETRY_SCHEMA``."""


@dataclass(frozen=True, slots=True)
class TelemetryRow:
    """One request as the router saw it. Field names and order match ``TELEMETRY_SCHEMA``."""

    request_id: str
    arrival_unix_s: float
    prompt_tokens: int
    output_tokens: int
    max_tokens: int
    ttft_s: float = math.nan
    tpot_s: float = math.nan
    e2e_s: float = math.nan
    queue_s: float = math.nan
    replica: str = ""
    policy_version: str = ""
    status: str = "ok"
    prefix_block_tokens: int = 16
    prefix_hashes: tuple[int, ...] = ()
    session_id: str = ""


_ROW_FIELDS = tuple(f.name for f in fields(TelemetryRow))
if tuple(TELEMETRY_SCHEMA.names) != _ROW_FIELDS:
    raise ImportError("TelemetryRow and TELEMETRY_SCHEMA diverged")


def rows_to_table(rows: Iterable[TelemetryRow]) -> pa.Table:
    """Rows as an Arrow table with exactly ``TELEMETRY_SCHEMA``."""
    rows = list(rows)
    columns = {name: [getattr(r, name) for r in rows] for name in _ROW_FIELDS}
    try:
        return pa.Table.from_pydict(columns, schema=TELEMETRY_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise TelemetryError(f"telemetry rows do not fit the schema: {exc}") from exc


class TelemetryWriter:
    """Buffers rows and writes them as atomic, append-only Parquet segments.

    ``add`` is cheap (a list append and a clock read); it writes a segment when
    the oldest buffered row has waited ``flush_interval_s`` or the buffer holds
    ``max_buffered_rows``. Rows added and then left idle are written by the next
    ``add``, ``flush_due``, ``flush`` or ``close``: the router should call
    ``flush_due`` from its monitoring tick and ``close`` on shutdown.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        flush_interval_s: float = 1.0,
        max_buffered_rows: int = 50_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self.max_buffered_rows = max_buffered_rows
        self._clock = clock
        self._rows: list[TelemetryRow] = []
        self._oldest_at = 0.0
        self._seq = 0
        self._closed = False
        self.segments: list[Path] = []
        # Millisecond start time, zero-padded so names sort chronologically. Bump it
        # past any existing segment prefix so two writers never share file names.
        start_ms = int(clock() * 1000)
        while any(self.directory.glob(f"telemetry-{start_ms:013d}-*.parquet")):
            start_ms += 1
        self._start = f"{start_ms:013d}"

    def add(self, row: TelemetryRow) -> Path | None:
        """Buffer one row; returns the segment written if this add triggered a flush."""
        if self._closed:
            raise TelemetryError("TelemetryWriter is closed")
        if row.status not in STATUSES:
            raise TelemetryError(
                f"request {row.request_id}: status {row.status!r} is not one of {sorted(STATUSES)}"
            )
        now = self._clock()
        if not self._rows:
            self._oldest_at = now
        self._rows.append(row)
        if len(self._rows) >= self.max_buffered_rows:
            return self.flush()
        if now - self._oldest_at >= self.flush_interval_s:
            return self.flush()
        return None

    def flush_due(self) -> Path | None:
        """Flush if the oldest buffered row has waited ``flush_interval_s``."""
        if self._rows and self._clock() - self._oldest_at >= self.flush_interval_s:
            return self.flush()
        return None

    def flush(self) -> Path | None:
        """Write buffered rows as one new segment; returns its path (None when empty)."""
        if not self._rows:
            return None
        table = rows_to_table(self._rows)
        self._seq += 1
        final = self.directory / f"telemetry-{self._start}-{self._seq:06d}.parquet"
        # Hidden temp name: readers glob "telemetry-*.parquet" and never match it.
        tmp = self.directory / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._rows = []
        self.segments.append(final)
        return final

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def validate_schema(schema: pa.Schema, source: str) -> None:
    """Raise ``TelemetryError`` naming ``source`` and the first bad column.

    Extra columns are allowed (a newer writer may add some); missing or retyped
    ones are not. Nullability is not checked: other writers may mark all nullable.
    """
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is not None and version.decode() != TELEMETRY_SCHEMA_VERSION:
        raise TelemetryError(
            f"{source}: telemetry schema version {version.decode()!r}, "
            f"this reader understands {TELEMETRY_SCHEMA_VERSION!r}"
        )
    for expected in TELEMETRY_SCHEMA:
        idx = schema.get_field_index(expected.name)
        if idx < 0:
            raise TelemetryError(f"{source}: missing column {expected.name!r}")
        actual = schema.field(idx).type
        if actual != expected.type:
            raise TelemetryError(
                f"{source}: column {expected.name!r} has type {actual}, expected {expected.type}"
            )


def segment_files(dir_or_file: str | os.PathLike[str]) -> list[Path]:
    """The segment files of a telemetry directory in write order (or the one file given)."""
    path = Path(dir_or_file)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.glob(SEGMENT_GLOB))
    raise TelemetryError(f"{path}: no such telemetry file or directory")


def read_telemetry(
    dir_or_file: str | os.PathLike[str], since_unix_s: float | None = None
) -> pd.DataFrame:
    """All rows of a telemetry directory (or one segment), sorted by arrival.

    ``since_unix_s`` keeps rows that arrived at or after it. Rows are written in
    completion order, so they are re-sorted by ``arrival_unix_s`` here. An empty
    directory gives an empty frame with the schema's columns.
    """
    tables = []
    for path in segment_files(dir_or_file):
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise TelemetryError(f"{path}: not a readable Parquet file ({exc})") from exc
        validate_schema(schema, str(path))
        filters = None if since_unix_s is None else [("arrival_unix_s", ">=", since_unix_s)]
        table = pq.read_table(path, columns=list(TELEMETRY_SCHEMA.names), filters=filters)
        tables.append(table.cast(TELEMETRY_SCHEMA))
    if not tables:
        return TELEMETRY_SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables(tables)
    frame = table.to_pandas()
    return frame.sort_values("arrival_unix_s", kind="stable", ignore_index=True)
