"""What came back from a sandbox (``RawRun``), and what it means (``interpret``)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from sandbox.isolation.environment import READY_LINE
from sandbox.protocol import EvalRequest, EvalResponse, Limits, ProtocolError


@dataclass
class RawRun:
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_overflow: bool = False
    returncode: int | None = None
    timed_out: bool = False
    oom: bool = False
    pids_exhausted: bool = False
    ready: bool = True
    """The harness announced it had imported everything (False: it died before that)."""
    notes: list[str] = field(default_factory=list)

    @property
    def signal(self) -> int | None:
        rc = self.returncode
        if rc is None:
            return None
        if rc < 0:
            return -rc
        if 128 < rc < 128 + 65:  # shells, bwrap and Docker report death by signal as 128+N
            return rc - 128
        return None


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def interpret(req: EvalRequest, raw: RawRun) -> EvalResponse:
    """Turn what a sandbox produced into a response, trusting nothing it says blindly."""
    lim = req.limits
    tail = raw.stderr.replace(READY_LINE + b"\n", b"")[-3000:].decode("utf-8", "replace")

    def reject(stage: str, reason: str) -> EvalResponse:
        return EvalResponse.reject(req, stage, reason, detail=tail)

    if raw.timed_out:
        extra = ""
        if raw.pids_exhausted:
            extra = f"; the process limit of {lim.pids} was hit (fork bomb?)"
        elif raw.oom:
            extra = f"; the memory limit of {lim.memory_mb} MB was hit"
        return reject("limit", f"wall-clock deadline of {lim.wall_s:g} s exceeded{extra}")
    if raw.stdout_overflow:
        return reject(
            "limit", f"sandbox wrote more than {lim.output_bytes} bytes on the protocol channel"
        )
    lines = [ln for ln in raw.stdout.splitlines() if ln.strip()]
    if len(lines) > 1:
        return reject(
            "integrity",
            f"protocol channel corrupted: {len(lines)} lines where one response was expected",
        )
    if lines:
        try:
            resp = EvalResponse.from_json(lines[0])
        except ProtocolError as e:
            return reject("integrity", f"corrupt response from the sandbox: {e}")
        if resp.nonce != req.nonce or resp.key != req.key:
            return reject(
                "integrity", "response does not answer this request (nonce or key mismatch)"
            )
        if resp.ok:
            bad = _check_results(req, resp)
            if bad:
                return reject("integrity", bad)
        return resp
    # No response at all: say why the sandbox died.
    return reject(*_why_silent(lim, raw, tail))


def _why_silent(lim: Limits, raw: RawRun, tail: str) -> tuple[str, str]:
    """(stage, reason) of a sandbox that ended without a response."""
    sig = raw.signal
    if not raw.ready:
        last = tail.strip().splitlines()[-1:] or [f"exit status {raw.returncode}"]
        return ("internal", f"the sandbox failed before the harness was ready: {last[0]}")
    if raw.oom:
        return (
            "limit", f"memory limit of {lim.memory_mb} MB exceeded (killed by the OOM killer)"
        )
    if "MemoryError" in tail:
        return ("limit", f"memory limit of {lim.memory_mb} MB exceeded (MemoryError)")
    if sig == signal.SIGXCPU:
        return ("limit", "CPU time limit exceeded (SIGXCPU)")
    if sig == signal.SIGXFSZ:
        return ("limit", f"file size limit of {lim.file_bytes} bytes exceeded (SIGXFSZ)")
    if raw.pids_exhausted:
        return ("limit", f"process limit of {lim.pids} reached (fork bomb?)")
    if sig == signal.SIGKILL:
        return ("limit", "sandbox was killed (SIGKILL): a memory or process limit")
    if sig is not None:
        return ("runtime", f"sandbox crashed with {_signame(sig)}")
    return (
        "runtime",
        f"sandbox exited with status {raw.returncode} without answering "
        "(the candidate ended the process or closed the protocol channel)",
    )


def _check_results(req: EvalRequest, resp: EvalResponse) -> str | None:
    import math

    want = {(s, seed) for s in req.scenarios for seed in req.seeds}
    got = [(r.scenario, r.seed) for r in resp.results]
    if len(got) != len(set(got)) or set(got) != want:
        return f"response covers {sorted(set(got))}, not the requested {sorted(want)}"
    for r in resp.results:
        for label, d in (("metric", r.summary), ("decision stat", r.decision_stats)):
            for k, v in d.items():
                if not math.isfinite(v):
                    return f"{label} '{k}' is {v} in {r.scenario} seed {r.seed}"
    return None
