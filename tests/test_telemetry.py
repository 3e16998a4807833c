"""Telemetry: schema, atomic segments, round trip, validation, replay as a Workload."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.contract import DEFAULT_MAX_OUTPUT_TOKENS
from serving.telemetry import (
    TELEMETRY_SCHEMA,
    TELEMETRY_SCHEMA_VERSION,
    TelemetryError,
    TelemetryRow,
    TelemetryWriter,
    read_telemetry,
    rows_to_table,
)


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _row(i: int, t: float, **kw: object) -> TelemetryRow:
    base: dict = {
        "request_id": f"r{i}",
        "arrival_unix_s": t,
        "prompt_tokens": 100 + i,
        "output_tokens": 10 + i,
        "max_tokens": 64,
        "ttft_s": 0.1,
        "tpot_s": 0.02,
        "e2e_s": 0.5,
        "queue_s": 0.0,
        "replica": "r0",
        "policy_version": "v1",
        "prefix_hashes": (i, i + 1),
        "session_id": f"s{i % 2}",
    }
    base.update(kw)
    return TelemetryRow(**base)


def test_schema_constant() -> None:
    assert TELEMETRY_SCHEMA.names[0] == "request_id"
    assert TELEMETRY_SCHEMA.field("prefix_hashes").type == pa.list_(pa.int64())
    assert TELEMETRY_SCHEMA.field("prefix_block_tokens").type == pa.int32()
    assert TELEMETRY_SCHEMA.metadata[b"autopoiesis.telemetry.schema_version"] == (
        TELEMETRY_SCHEMA_VERSION.encode()
    )


def test_round_trip_and_segments(tmp_path: Path) -> None:
    clock = FakeClock()
    with TelemetryWriter(tmp_path, clock=clock, flush_interval_s=1.0) as writer:
        t0 = clock.t
        # Completion order differs from arrival order: the reader sorts by arrival.
        assert writer.add(_row(1, t0 + 0.5)) is None
        assert writer.add(_row(0, t0 + 0.1, status="rejected", ttft_s=math.nan)) is None
        clock.t += 1.5
        first = writer.add(_row(2, t0 + 1.2))  # oldest row waited 1.5 s: flush inline
        assert first is not None and first.exists()
        assert writer.buffered == 0
        writer.add(_row(3, t0 + 2.0))
    segs = sorted(tmp_path.glob("telemetry-*.parquet"))
    assert len(segs) == 2  # one inline, one on close
    assert all(p.name.startswith(f"telemetry-{int(t0 * 1000):013d}-") for p in segs)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    meta = pq.read_schema(segs[0]).metadata
    assert meta[b"autopoiesis.telemetry.schema_version"] == TELEMETRY_SCHEMA_VERSION.encode()

    df = read_telemetry(tmp_path)
    assert df["request_id"].tolist() == ["r0", "r1", "r2", "r3"]
    assert list(df.columns) == TELEMETRY_SCHEMA.names
    assert df["status"].tolist()[0] == "rejected"
    assert math.isnan(df["ttft_s"].iloc[0])
    assert list(df["prefix_hashes"].iloc[1]) == [1, 2]
    assert df["prompt_tokens"].dtype == np.int64

    since = read_telemetry(tmp_path, since_unix_s=t0 + 1.0)
    assert since["request_id"].tolist() == ["r2", "r3"]
    assert read_telemetry(segs[1])["request_id"].tolist() == ["r3"]


def test_flush_due_and_empty_dir(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = TelemetryWriter(tmp_path, clock=clock)
    assert writer.flush() is None
    writer.add(_row(0, clock.t))
    assert writer.flush_due() is None
    clock.t += 1.0
    assert writer.flush_due() is not None
    writer.close()
    with pytest.raises(TelemetryError, match="closed"):
        writer.add(_row(1, clock.t))
    (tmp_path / "sub").mkdir()
    empty = read_telemetry(tmp_path / "sub")
    assert empty.empty and list(empty.columns) == TELEMETRY_SCHEMA.names


def test_two_writers_never_share_names(tmp_path: Path) -> None:
    clock = FakeClock()
    a = TelemetryWriter(tmp_path, clock=clock)
    a.add(_row(0, clock.t))
    a.flush()
    b = TelemetryWriter(tmp_path, clock=clock)  # same millisecond
    b.add(_row(1, clock.t))
    b.flush()
    assert len(list(tmp_path.glob("telemetry-*.parquet"))) == 2


def test_bad_status_rejected(tmp_path: Path) -> None:
    with (
        TelemetryWriter(tmp_path) as writer,
        pytest.raises(TelemetryError, match="status 'weird'"),
    ):
        writer.add(_row(0, 1.0, status="weird"))


def test_bad_schema_names_file_and_column(tmp_path: Path) -> None:
    good = rows_to_table([_row(0, 1.0)])
    missing = tmp_path / "telemetry-0-1.parquet"
    pq.write_table(good.drop_columns(["replica"]), missing)
    with pytest.raises(TelemetryError, match=r"telemetry-0-1\.parquet: missing column 'replica'"):
        read_telemetry(missing)
    retyped = tmp_path / "retyped.parquet"
    table = good.set_column(
        good.schema.get_field_index("prompt_tokens"),
        "prompt_tokens",
        pa.array(["100"]),
    )
    pq.write_table(table, retyped)
    with pytest.raises(TelemetryError, match=r"retyped\.parquet: column 'prompt_tokens' has type"):
        read_telemetry(retyped)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(TelemetryError, match=r"garbage\.parquet: not a readable Parquet"):
        read_telemetry(garbage)
    with pytest.raises(TelemetryError, match="no such telemetry"):
        read_telemetry(tmp_path / "absent")


def test_telemetry_replays_as_workload(tmp_path: Path) -> None:
    from sandbox.traces import load_trace

    clock = FakeClock()
    with TelemetryWriter(tmp_path, clock=clock) as writer:
        writer.add(_row(1, clock.t + 2.0))
        writer.add(_row(0, clock.t + 0.5, status="cancelled", output_tokens=0))
    w = load_trace(tmp_path)
    np.testing.assert_allclose(w.arrival_s, [0.0, 1.5])
    assert w.output_tokens.tolist() == [1, 11]  # cancelled output: lower bound, >= 1
    assert w.max_tokens.tolist() == [64, 64]
    assert w.prefix_hashes == ((0, 1), (1, 2)) and w.prefix_block_tokens == 16
    assert w.session_ids == ("s0", "s1")
    assert w.meta["start_unix_s"] == pytest.approx(clock.t + 0.5)
    ok_only = load_trace(tmp_path, statuses=("ok",))
    assert len(ok_only) == 1


def test_telemetry_keeps_each_clients_max_tokens(tmp_path: Path) -> None:
    # Unlike public traces, telemetry records the caps clients sent: each row keeps its
    # own, and a row whose client set none (0) gets what the router told the policy.
    from sandbox.traces import load_trace

    clock = FakeClock()
    with TelemetryWriter(tmp_path, clock=clock) as writer:
        writer.add(_row(0, clock.t, max_tokens=64))
        writer.add(_row(1, clock.t + 1, max_tokens=1000, output_tokens=700))
        writer.add(_row(2, clock.t + 2, max_tokens=0, output_tokens=300))
    w = load_trace(tmp_path)
    assert w.max_tokens.tolist() == [64, 1000, DEFAULT_MAX_OUTPUT_TOKENS]
    assert w.output_tokens.tolist() == [10, 700, 300]


def test_data_plane_does_not_import_sandbox() -> None:
    code = (
        "import sys, serving.telemetry; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sandbox', 'flows')]; "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
