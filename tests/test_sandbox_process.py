"""The process backend (bubblewrap), the protocol, the harness and the Evaluator."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sysconfig
import tempfile
import venv
from pathlib import Path

import pytest
from sandbox_support import ROOT, process_backend

from sandbox.backends import (
    ProcessBackend,
    RawRun,
    SandboxUnavailable,
    choose_backend,
    interpret,
    leftover_processes,
)
from sandbox.evaluator import Evaluator
from sandbox.harness import evaluate as in_process
from sandbox.protocol import (
    PROTOCOL_VERSION,
    EvalRequest,
    EvalResponse,
    Limits,
    ProtocolError,
)
from sandbox.selftest import good_source
from serving.policy_loader import builtin_source

SCEN = "sandbox-tiny"
LIMITS = Limits(wall_s=20.0, memory_mb=768)


@pytest.fixture(scope="module")
def backend():
    b = process_backend(prewarm=1)
    yield b
    b.close()


def test_protocol_round_trip_and_key():
    req = EvalRequest.build("def route(r, rs, n): return 0\n", ["a", "b"], seeds=[1, 0])
    back = EvalRequest.from_json(req.to_json())
    assert back == req
    assert "\n" not in req.to_json()
    other = EvalRequest.build(req.source, ["b", "a"], seeds=[0, 1])
    assert other.key == req.key and other.nonce != req.nonce  # key: what, not when
    assert EvalRequest.build(req.source, ["a"], seeds=[0]).key != req.key
    bad = json.loads(req.to_json())
    bad["version"] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match="protocol version"):
        EvalRequest.from_dict(bad)


def test_sandboxed_result_matches_in_process(backend):
    req = EvalRequest.build(
        builtin_source("least_outstanding"), [SCEN], seeds=[0, 1], limits=LIMITS
    )
    boxed = backend.evaluate(req)
    local = in_process(req)
    assert boxed.ok, boxed.rejection
    assert boxed.backend == "process"
    assert [(r.scenario, r.seed) for r in boxed.results] == [(SCEN, 0), (SCEN, 1)]
    for a, b in zip(boxed.results, local.results, strict=True):
        # Decision time is measured wall time and charged, so allow that much noise.
        assert math.isclose(a.summary["objective"], b.summary["objective"], rel_tol=1e-6)
        assert a.summary["completed"] == b.summary["completed"]
        assert a.decision_stats["route_calls"] == b.decision_stats["route_calls"]


def test_sandbox_sees_no_host_environment_or_files(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPOIESIS_TEST_SECRET", "hunter2")
    probe = (
        "import os\n"
        "env = sorted(os.environ)\n"
        "files = [p for p in ('/etc/shadow', '/home', '/var/run/docker.sock', "
        f"'{tmp_path}', '{ROOT / '.git'}', '{ROOT / 'pyproject.toml'}') if os.path.exists(p)]\n"
        "raise RuntimeError(f'files={files} uid={os.getuid()} env={env}')\n"
        "def route(r, rs, n): return 0\n"
    )
    resp = backend.evaluate(EvalRequest.build(probe, [SCEN], limits=LIMITS, static_checks=False))
    assert resp.stage == "load"
    assert "hunter2" not in resp.to_json() and "AUTOPOIESIS_TEST_SECRET" not in resp.reason
    assert "files=[]" in resp.reason
    assert "uid=65534" in resp.reason


def test_static_rejection_starts_no_sandbox(backend):
    before = len(backend.last_markers)
    resp = backend.evaluate(EvalRequest.build("import os\n" + good_source(), [SCEN]))
    assert resp.stage == "static" and "import of 'os'" in resp.reason
    assert len(backend.last_markers) == before


def test_deadline_kills_the_whole_sandbox(backend):
    src = (
        "import os\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "while True:\n"
        "    pass\n"
        "def route(r, rs, n): return 0\n"
    )
    resp = backend.evaluate(
        EvalRequest.build(src, [SCEN], limits=Limits(wall_s=2.0), static_checks=False)
    )
    assert resp.stage == "limit" and "deadline of 2 s" in resp.reason
    assert leftover_processes(backend.last_markers[-1]) == []


def test_unknown_scenario_is_an_internal_error_not_the_candidates(backend):
    resp = backend.evaluate(EvalRequest.build(good_source(), ["no-such-scenario"], limits=LIMITS))
    assert resp.stage == "internal" and "unknown scenario 'no-such-scenario'" in resp.reason


def test_interpret_rejects_what_it_cannot_trust():
    req = EvalRequest.build(good_source(), [SCEN])
    good = in_process(req)
    ok = interpret(req, RawRun(stdout=(good.to_json() + "\n").encode(), returncode=0))
    assert ok.ok
    two = interpret(req, RawRun(stdout=b"hello\n" + good.to_json().encode(), returncode=0))
    assert two.stage == "integrity" and "protocol channel corrupted" in two.reason
    forged = EvalResponse(key=req.key, results=good.results, nonce="0" * 32)
    assert "nonce" in interpret(req, RawRun(stdout=forged.to_json().encode())).reason
    assert "corrupt response" in interpret(req, RawRun(stdout=b"{not json")).reason
    assert "OOM" in interpret(req, RawRun(returncode=137, oom=True)).reason
    assert "SIGSEGV" in interpret(req, RawRun(returncode=-11)).reason
    broken = RawRun(returncode=1, ready=False, stderr=b"Traceback\nImportError: no numpy\n")
    assert interpret(req, broken).stage == "internal"
    assert "no numpy" in interpret(req, broken).reason
    missing = EvalResponse(key=req.key, results=(), nonce=req.nonce)
    assert "response covers" in interpret(req, RawRun(stdout=missing.to_json().encode())).reason


def test_harness_rejects_non_finite_metrics(monkeypatch):
    import sandbox.simulator as sim

    real = sim.simulate

    def nan_sim(*a, **kw):
        res = real(*a, **kw)
        summary = dict(res.summary())
        summary["objective"] = float("nan")
        monkeypatch.setattr(res, "summary", lambda: summary, raising=False)
        return res

    monkeypatch.setattr(sim, "simulate", nan_sim)
    resp = in_process(EvalRequest.build(good_source(), [SCEN]))
    assert resp.stage == "integrity" and "'objective' is nan" in resp.reason


def test_missing_bwrap_refuses_loudly(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="unsafe-process"):
        ProcessBackend()
    with pytest.raises(SandboxUnavailable, match="unsafe-process"):
        choose_backend("process")


def test_unsafe_process_only_by_name_and_warns_every_time(caplog):
    b = ProcessBackend(unsafe=True)
    try:
        with caplog.at_level(logging.WARNING, logger="autopoiesis.sandbox"):
            for _ in range(2):
                resp = b.evaluate(EvalRequest.build(good_source(), [SCEN], limits=LIMITS))
                assert resp.ok and resp.backend == "unsafe-process"
        assert sum("UNSAFE" in r.message for r in caplog.records) == 2
    finally:
        b.close()


def test_choose_backend_says_which_isolation(caplog):
    process_backend().close()  # skip here when bwrap is unusable
    with caplog.at_level(logging.WARNING, logger="autopoiesis.sandbox"):
        b = choose_backend("process")
    b.close()
    assert any("isolation in force: bubblewrap" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        choose_backend("none")


def test_evaluator_runs_in_parallel_and_caches(backend):
    with Evaluator(backend, max_parallel=2, limits=LIMITS) as ev:
        reqs = [
            ev.request(builtin_source(name), [SCEN])
            for name in ("round_robin", "least_outstanding", "shortest_queue")
        ]
        first = ev.evaluate_many(reqs)
        assert all(r.ok for r in first), [r.rejection for r in first]
        assert ev.stats["evaluations"] == 3
        again = ev.evaluate(builtin_source("round_robin"), [SCEN])
        assert ev.stats["cache_hits"] == 1 and again.results == first[0].results
        bad = ev.evaluate("import os\n" + good_source(), [SCEN])
        assert bad.stage == "static"
    assert os.path.isdir("/proc")  # the backend belongs to the fixture and stays open


def test_runtime_under_tmp_is_not_hidden_by_the_private_tmp():
    """A checkout cloned under /tmp has its venv there: the sandbox's own /tmp must not hide it."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        runtime = Path(d) / "venv"
        venv.create(runtime, with_pip=False, symlinks=True)
        site = next(runtime.glob("lib/python3*/site-packages"))
        # The packages come from this venv, which the backend binds as well.
        paths = sysconfig.get_paths()
        (site / "host.pth").write_text(f"{paths['purelib']}\n{paths['platlib']}\n")
        b = process_backend(python=str(runtime / "bin" / "python"))
        try:
            good = b.evaluate(EvalRequest.build(good_source(), [SCEN], limits=LIMITS))
            assert good.ok, good.rejection
            probe = "import sys\nraise RuntimeError(f'prefix={sys.prefix}')\n" + good_source()
            resp = b.evaluate(EvalRequest.build(probe, [SCEN], limits=LIMITS, static_checks=False))
            assert f"prefix={runtime}" in resp.reason
        finally:
            b.close()
