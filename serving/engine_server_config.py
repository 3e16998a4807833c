"""What an engine server (``serving.engine_server``) is told: its frozen configuration,
the fault it acts out, and its command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

from serving.engine import EngineConfig

MetricNames = Literal["new", "old"]
FaultMode = Literal["healthy", "refuse", "die", "crash"]


@dataclass(frozen=True)
class EngineServerConfig:
    model: str = "llama-3-8b"
    """Engine model's model name (hardware catalogue key)."""
    served_model_name: str = ""
    """What ``/v1/models`` reports and requests must name; defaults to ``model``."""
    gpu: str = "H100"
    tp: int = 1
    time_scale: float = 1.0
    """Wall seconds per model second: 0.1 runs the engine ten times faster than real."""
    cold_start_s: float | None = 0.0
    """Wall seconds ``/health`` answers 503 after start; None: the hardware model's
    cold start (weights over load bandwidth + init) times ``time_scale``."""
    metric_names: MetricNames = "new"
    """``new``: vLLM >= 0.10 names (kv_cache_usage_perc, prefix_cache_*);
    ``old``: V1 before that (gpu_cache_usage_perc, gpu_prefix_cache_*)."""
    default_max_tokens: int = 0
    """Output length when a request gives no max_tokens; 0 samples one (mean 128)."""
    kv_blocks: int | None = None
    """Override the KV capacity (blocks); None: derived from GPU memory."""
    fake_itl_s: float | None = None
    """Skip the engine model: first token after ``fake_ttft_s``, then one every
    ``fake_itl_s`` wall seconds."""
    fake_ttft_s: float = 0.0
    fault: FaultMode = "healthy"
    """The fault injected from the start (``FaultInjection.mode``)."""
    die_after_tokens: int = 2
    """With fault ``die``: each stream is cut after this many tokens."""
    seed: int = 0
    engine_config: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class FaultInjection:
    """The failure a server is told to act out (``/sim/fault``, tests, drills).

    The one part of an engine server that changes while it runs, so it is its own
    object, owned by the server; the configuration it starts from stays frozen.
    """

    mode: FaultMode = "healthy"
    die_after_tokens: int = 2
    """With mode ``die``: each stream is cut after this many tokens."""


def parse_args(argv: list[str] | None = None) -> tuple[EngineServerConfig, str, int]:
    p = argparse.ArgumentParser(description="Simulated vLLM engine (OpenAI-compatible).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--served-model-name", default="")
    p.add_argument("--gpu", default="H100")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument(
        "--cold-start-s",
        type=float,
        default=0.0,
        help="wall seconds of 503 on /health; negative: the hardware model's",
    )
    p.add_argument("--metric-names", choices=("new", "old"), default="new")
    p.add_argument("--default-max-tokens", type=int, default=0)
    p.add_argument("--kv-blocks", type=int, default=None)
    p.add_argument("--fake-itl-s", type=float, default=None)
    p.add_argument("--fake-ttft-s", type=float, default=0.0)
    p.add_argument("--fault", choices=("healthy", "refuse", "die"), default="healthy")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = EngineServerConfig(
        model=a.model,
        served_model_name=a.served_model_name,
        gpu=a.gpu,
        tp=a.tp,
        time_scale=a.time_scale,
        cold_start_s=None if a.cold_start_s < 0 else a.cold_start_s,
        metric_names=a.metric_names,
        default_max_tokens=a.default_max_tokens,
        kv_blocks=a.kv_blocks,
        fake_itl_s=a.fake_itl_s,
        fake_ttft_s=a.fake_ttft_s,
        fault=a.fault,
        seed=a.seed,
    )
    return cfg, a.host, a.port
