"""Window scenarios: a pulled live window, content-addressed, replayed in the sandbox."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sandbox_support import docker_backend, process_backend

from sandbox.harness import evaluate as in_process
from sandbox.protocol import EvalRequest, Limits
from sandbox.scenarios import build_scenario
from sandbox.window_scenarios import (
    VARIANTS,
    WindowIntegrityError,
    exists,
    parse_name,
    save_window,
    window_name,
    window_names,
)
from sandbox.workload import WorkloadError
from serving.policy_loader import builtin_source
from serving.telemetry import TelemetryRow, rows_to_table

FLEET = "llama-3-8b@1xH100,1xA100"
LIMITS = Limits(wall_s=30.0, memory_mb=768)


def telemetry_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = 1.7e9 + np.cumsum(rng.exponential(0.25, n))
    rows = [
        TelemetryRow(
            f"r{i}", float(t[i]), int(rng.integers(50, 900)), int(rng.integers(10, 200)), 256,
            0.1, 0.02, 1.0, 0.0, f"replica-{i % 2}", "1", "ok",
            prefix_hashes=(int(rng.integers(5)),), session_id=f"s{i % 7}",
        )
        for i in range(n)
    ]
    return rows_to_table(rows).to_pandas()


@pytest.fixture(scope="module")
def window(tmp_path_factory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("windows")
    return d, save_window(telemetry_frame(), FLEET, d)


def test_window_file_is_content_addressed(window):
    d, sha = window
    f = d / f"{sha}.parquet"
    assert hashlib.sha256(f.read_bytes()).hexdigest() == sha
    assert save_window(telemetry_frame(), FLEET, d) == sha  # same window, same file
    assert len(list(d.glob("*.parquet"))) == 1
    assert save_window(telemetry_frame(), "llama-3-8b@2xH100", d) != sha  # fleet is hashed too


def test_every_variant_builds(window):
    d, sha = window
    names = [window_name(sha, v) for v in VARIANTS]
    assert [parse_name(n)[1] for n in window_names(sha, FLEET)] == list(VARIANTS[:3])
    assert [parse_name(n)[1] for n in window_names(sha, "llama-3-8b@3xH100")] == list(VARIANTS)
    built = {parse_name(n)[1]: build_scenario(n, 0, windows_dir=str(d)) for n in names}
    replay = built["replay"]
    assert len(replay.workload) == 300 and replay.workload.arrival_s[0] == 0.0
    assert dict(replay.cluster.gpus) == {"H100": 1, "A100": 1}
    assert len(replay.cluster.plan.replicas) == 2 and replay.events == ()
    assert replay.workload.has_prefixes and replay.workload.session_ids
    fast = built["rate-1.5x"]
    assert len(fast.workload) == 300
    assert math.isclose(fast.workload.duration_s * 1.5, replay.workload.duration_s, rel_tol=1e-9)
    burst = built["burst"]
    assert len(burst.workload) > len(replay.workload) * 1.1
    span = replay.workload.duration_s
    during = ((burst.workload.arrival_s >= 0.4 * span) & (burst.workload.arrival_s < 0.6 * span))
    assert during.sum() > 1.5 * ((replay.workload.arrival_s >= 0.4 * span)
                                 & (replay.workload.arrival_s < 0.6 * span)).sum()
    loss = built["gpu-loss"]
    kinds = [(e.kind, e.gpu, e.count) for e in loss.events]
    assert kinds == [("remove_gpus", "H100", 1), ("add_gpus", "H100", 1)]
    assert 0 < loss.events[0].at_s < loss.events[1].at_s < span
    # Same (name, seed): the same scenario; scale cuts the replay, never below 200 requests.
    again = build_scenario(names[2], 0, windows_dir=str(d))
    assert np.array_equal(again.workload.arrival_s, burst.workload.arrival_s)
    assert len(build_scenario(names[0], 0, scale=0.1, windows_dir=str(d)).workload) == 200


def test_a_small_window_is_repeated_to_200_requests(tmp_path):
    sha = save_window(telemetry_frame(50), FLEET, tmp_path)
    w = build_scenario(window_name(sha), windows_dir=str(tmp_path)).workload
    assert len(w) == 200 and np.all(np.diff(w.arrival_s) >= 0)


def test_single_replica_fleet_cannot_lose_gpus(tmp_path):
    sha = save_window(telemetry_frame(50), "llama-3-8b@1xH100", tmp_path)
    assert "gpu-loss" not in {parse_name(n)[1] for n in window_names(sha, "llama-3-8b@1xH100")}
    with pytest.raises(ValueError, match="two replicas"):
        build_scenario(window_name(sha, "gpu-loss"), windows_dir=str(tmp_path))


def test_bad_names_and_missing_files(window, tmp_path):
    d, sha = window
    with pytest.raises(ValueError, match="unknown variant"):
        build_scenario(f"window:{sha[:16]}:sideways", windows_dir=str(d))
    with pytest.raises(ValueError, match="expected window:"):
        build_scenario(f"window:{sha[:4]}:replay", windows_dir=str(d))
    with pytest.raises(WorkloadError, match="no window file"):
        build_scenario(window_name("0" * 64), windows_dir=str(d))
    assert exists(window_name(sha), str(d)) and not exists(window_name(sha), str(tmp_path))


def tampered_copy(d: Path, sha: str, dest: Path) -> Path:
    dest.mkdir(exist_ok=True)
    data = bytearray((d / f"{sha}.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dest / f"{sha}.parquet").write_bytes(bytes(data))
    return dest


def test_tampered_window_is_an_integrity_rejection(window, tmp_path):
    d, sha = window
    bad = tampered_copy(d, sha, tmp_path / "bad")
    with pytest.raises(WindowIntegrityError, match="does not match its sha256"):
        build_scenario(window_name(sha), windows_dir=str(bad))
    req = EvalRequest.build(builtin_source("round_robin"), [window_name(sha)],
                            windows_dir=str(bad))
    resp = in_process(req)
    assert resp.stage == "integrity" and "sha256" in resp.reason


def test_window_request_round_trips_and_keeps_its_key(window):
    d, sha = window
    req = EvalRequest.build("x = 1\n", [window_name(sha)], windows_dir=str(d))
    back = EvalRequest.from_json(req.to_json())
    assert back == req and back.windows_dir == str(d)
    # The folder is not part of the key: the name's hash prefix pins the content.
    other = EvalRequest.build("x = 1\n", [window_name(sha)], windows_dir="/elsewhere")
    assert other.key == req.key


def test_process_sandbox_replays_a_window(window, tmp_path):
    d, sha = window
    backend = process_backend()
    try:
        names = [window_name(sha, "replay"), window_name(sha, "gpu-loss")]
        req = EvalRequest.build(builtin_source("least_outstanding"), names, limits=LIMITS,
                                windows_dir=str(d))
        boxed = backend.evaluate(req)
        assert boxed.ok, boxed.rejection
        local = in_process(req)
        for a, b in zip(boxed.results, local.results, strict=True):
            assert a.scenario == b.scenario
            assert math.isclose(a.summary["objective"], b.summary["objective"], rel_tol=1e-6)
        # The mount is read-only and the hash is checked inside the sandbox.
        bad = tampered_copy(d, sha, tmp_path / "bad")
        resp = backend.evaluate(EvalRequest.build(
            builtin_source("least_outstanding"), names[:1], limits=LIMITS, windows_dir=str(bad)))
        assert resp.stage == "integrity", resp.rejection
        probe = (
            "import os\nfrom serving.contract import Param\nPARAMS: dict[str, Param] = {}\n"
            "open(os.environ['AUTOPOIESIS_WINDOWS'] + '/x', 'w')\n"
            "def route(request, replicas, now):\n    return 0\n"
        )
        resp = backend.evaluate(EvalRequest.build(probe, names[:1], limits=LIMITS,
                                                  windows_dir=str(d), static_checks=False))
        assert resp.stage == "load", resp.rejection
        assert "Read-only file system" in resp.reason or "Permission denied" in resp.reason
        assert not (d / "x").exists()
    finally:
        backend.close()


def test_docker_container_binds_windows_read_only(window):
    d, sha = window
    backend = docker_backend(prewarm=0)
    try:
        cfg = backend.container_config(LIMITS, "probe", str(d))
        binds = cfg["host_config"]["Binds"]
        assert f"{d}:/windows:ro" in binds
        assert cfg["environment"]["AUTOPOIESIS_WINDOWS"] == "/windows"
        req = EvalRequest.build(builtin_source("least_outstanding"), [window_name(sha)],
                                limits=LIMITS, windows_dir=str(d))
        resp = backend.evaluate(req)
        assert resp.ok, resp.rejection
        assert resp.results[0].scenario == window_name(sha)
    finally:
        backend.close()


def test_flow_scenarios_use_the_window_and_fall_back_to_the_catalogue(window, tmp_path):
    from flows.pulled_window import GUARD_SCENARIOS, resolve_scenarios, window_scenarios

    d, sha = window
    scen = window_scenarios(sha, FLEET)
    assert scen[:3] == window_names(sha, FLEET) and scen[3:] == GUARD_SCENARIOS
    fallback = ("bursty-code", "steady-conv", *GUARD_SCENARIOS)
    assert resolve_scenarios(scen, str(d), fallback) == scen
    # No window file (gone, or another folder): the nearest catalogue scenarios instead.
    assert resolve_scenarios(scen, str(tmp_path), fallback) == fallback
    assert resolve_scenarios(scen, None, fallback) == fallback
    assert resolve_scenarios(["steady-conv"], None, fallback) == ("steady-conv",)


def test_window_metric_names_are_ones_mlflow_accepts(tmp_path):
    from mlflow.utils.validation import _validate_metric_name

    from flows.pulled_window import Window

    w = Window(0.0, 1.0, 10, 10.0, 1.0, 5, 5, 5, 3, 3, 3, 0.0, 2,
               slo_by_version={"baseline:least_outstanding@a74f0c3f4459": 0.5, "7": 1.0})
    names = set(w.metrics())
    assert {"slo.baseline:least_outstanding_a74f0c3f4459", "slo.7"} <= names
    for name in names:
        _validate_metric_name(name)  # raises on a name MLflow refuses
