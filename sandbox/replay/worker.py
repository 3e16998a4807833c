"""The replay stage in a worker process: what callers outside the evaluation plane use.

``run_isolated(request)`` runs ``sandbox.replay.stage.run`` as ``python -m
sandbox.replay.worker REQUEST.json RESULT.json`` in a session of its own, so the
candidate policy the router loads never runs in the caller's process, and
bounds it by the request's wall-clock limit. Nothing the worker starts outlives
the call: on the limit the worker gets SIGTERM (it unwinds, stopping router,
engines and containers) and, after a grace period, its whole process group
SIGKILL -- as it does after every run, for engines a crashed worker left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sandbox.replay.stage import ReplayRequest, ReplayResult, run

CODE_ROOT = Path(__file__).resolve().parents[2]


def run_isolated(req: ReplayRequest, *, grace_s: float = 20.0) -> ReplayResult:
    """The replay stage's result; failures of the worker itself are results too."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autopoiesis-replay-") as tmp:
        inp, res, err = (Path(tmp) / n for n in ("request.json", "result.json", "stderr"))
        inp.write_text(json.dumps(req.to_dict()))
        with err.open("wb") as err_fh:  # a file, not a pipe: a chatty policy cannot block it
            proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox.replay.worker", str(inp), str(res)],
                cwd=CODE_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err_fh, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=req.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace_s)
            finally:
                # The session's group is the worker and what it started (engines).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        failed = ReplayResult(ok=False, engine_kind=req.target.kind,
                              time_scale=req.target.time_scale, wall_s=time.monotonic() - t0)
        if timed_out:
            failed.stage, failed.error = "timeout", f"ran past its {req.wall_s:g} s limit"
            return failed
        if not res.exists():
            tail = err.read_bytes()[-600:].decode(errors="replace").strip()
            failed.stage = "internal"
            failed.error = f"worker exited with {proc.returncode}: {tail or 'no output'}"
            return failed
        return ReplayResult.from_dict(json.loads(res.read_text()))


def _interrupted(signum: int, frame: object) -> None:
    # SIGTERM from run_isolated: unwind through the finally clauses that stop engines.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    inp, res = (Path(a) for a in (argv or sys.argv[1:]))
    signal.signal(signal.SIGTERM, _interrupted)
    result = run(ReplayRequest.from_dict(json.loads(inp.read_text())))
    tmp = res.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), default=str))
    tmp.replace(res)


if __name__ == "__main__":
    main()
