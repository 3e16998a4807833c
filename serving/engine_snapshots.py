"""Engine metric snapshots, stored beside the request telemetry.

The router's scraper already holds each engine's latest normalised metrics;
at every monitoring tick one row per engine is buffered here and written, like
telemetry, as an append-only Parquet segment (``engine-metrics-*.parquet``,
hidden temp name then rename) every ``flush_interval_s`` and on close. The pull
flow can then line up what the engines saw with what the requests saw.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from serving.metrics_adapter import EngineMetrics

SNAPSHOT_SCHEMA = pa.schema([
    pa.field("at_unix_s", pa.float64()),
    pa.field("replica", pa.string()),
    pa.field("running", pa.int64()),
    pa.field("waiting", pa.int64()),
    pa.field("kv_usage", pa.float64()),
    pa.field("kv_blocks_total", pa.int64()),
    pa.field("prefix_queries", pa.float64()),
    pa.field("prefix_hits", pa.float64()),
    pa.field("preemptions", pa.float64()),
    pa.field("age_s", pa.float64()),
])


class SnapshotWriter:
    def __init__(self, directory: str | os.PathLike[str], flush_interval_s: float = 10.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self._rows: dict[str, list] = {name: [] for name in SNAPSHOT_SCHEMA.names}
        self._last_flush = time.monotonic()
        self._start = f"{int(time.time() * 1000):013d}"
        self._seq = 0

    def add(self, replica: str, m: EngineMetrics, now_mono: float) -> None:
        r = self._rows
        r["at_unix_s"].append(time.time())
        r["replica"].append(replica)
        r["running"].append(m.running)
        r["waiting"].append(m.waiting)
        r["kv_usage"].append(m.kv_usage)
        r["kv_blocks_total"].append(m.kv_blocks_total)
        r["prefix_queries"].append(m.prefix_queries)
        r["prefix_hits"].append(m.prefix_hits)
        r["preemptions"].append(m.preemptions)
        r["age_s"].append(now_mono - m.at)
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> Path | None:
        self._last_flush = time.monotonic()
        if not self._rows["replica"]:
            return None
        table = pa.Table.from_pydict(self._rows, schema=SNAPSHOT_SCHEMA)
        self._seq += 1
        final = self.directory / f"engine-metrics-{self._start}-{self._seq:06d}.parquet"
        tmp = self.directory / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._rows = {name: [] for name in SNAPSHOT_SCHEMA.names}
        return final
