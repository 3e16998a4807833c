"""What the closed-loop demo runs (``flows.demo``): its settings, its traffic, its fleet.

The traffic is synthetic, shaped like the shared traces' conversation and code
parts; the same traffic is also a simulator scenario on the demo's fleet, so the
best baseline on it (the champion an operator would pick) is chosen in the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flows.live import LiveSLO
from sandbox.replay.loadgen import Shot
from serving.prompt_tokens import synth_prompt

FLEET = ("H100", "A100")
MODEL = "llama-3-8b"


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("mlruns") / "demo"
    tracking_uri: str | None = None
    time_scale: float = 1.0
    conv_s: float = 30.0
    code_s: float = 110.0
    conv_rate: float = 3.0
    code_rate: float = 7.0
    pull_every_s: float = 8.0
    dwell_s: float = 10.0
    llm_base_url: str | None = None
    generations: int = 1
    population: int = 2
    tune_trials: int = 3
    scale: float = 0.05
    seed: int = 0
    slo: LiveSLO = field(default_factory=lambda: LiveSLO(ttft_s=2.0, tpot_s=0.1))
    engines: str = "simulated"
    """``simulated`` (vLLM-compatible, in this process) or ``llamacpp`` (real, on CPU)."""
    lengths: float = 1.0
    """Scales every prompt and output length of the traffic."""
    champion: str | None = None
    """The starting champion; None: the best baseline on the pre-shift traffic."""
    replay_best_static: bool = True
    """Replay the post-shift traffic live under the best static baseline (+``code_s``)."""

    @property
    def fleet(self) -> str:
        """What the simulator replays on: the live fleet, one replica per engine. It has
        no model of a CPU engine: two llama.cpp engines stand as two A100s."""
        gpus = FLEET if self.engines == "simulated" else ("A100",) * len(FLEET)
        return f"{MODEL}@" + ",".join(f"1x{g}" for g in gpus)


def on_cpu_engines(cfg: DemoConfig, quick: bool = False) -> DemoConfig:
    """The demo on two real llama.cpp engines (SmolLM2-135M on CPU): a load they can serve.

    Prompts and outputs ~30x shorter and rates ~5x lower than on the simulated GPUs
    (SmolLM2 prefills ~30-150 tokens/s on one shared core), each phase long enough
    for the demo's 40-request pull windows; the SLO a CPU engine can meet when not
    overloaded (TPOT ~20-70 ms).
    """
    return replace(
        cfg,
        engines="llamacpp",
        lengths=0.03,
        conv_rate=0.6,
        code_rate=1.2,
        conv_s=70.0,
        code_s=80.0 if quick else 120.0,
        slo=LiveSLO(ttft_s=3.0, tpot_s=0.25),
    )


def _requests(
    kind: str, rate: float, start: float, duration: float, seed: int, lengths: float = 1.0
) -> list[tuple[float, int, int]]:
    """(arrival, prompt tokens, output tokens), shaped like the traces' conv / code parts."""
    rng = np.random.default_rng([seed, 1 if kind == "code" else 0])
    out: list[tuple[float, int, int]] = []
    t = start
    while True:
        if kind == "code":
            # Bursts: arrivals come in clumps (gamma gaps, CV ~2), like the Azure code trace.
            t += float(rng.gamma(0.25, 1 / (0.25 * rate)))
            prompt = int(min(6000, rng.lognormal(7.5, 0.6)))
            output = int(max(4, min(200, rng.lognormal(3.0, 0.6))))
        else:
            t += float(rng.exponential(1 / rate))
            prompt = int(min(4000, rng.lognormal(6.4, 0.8)))
            output = int(max(8, min(600, rng.lognormal(5.2, 0.6))))
        if t >= start + duration:
            return out
        out.append((t, max(8, round(prompt * lengths)), max(4, round(output * lengths))))


def shots(
    kind: str, rate: float, start: float, duration: float, seed: int, lengths: float = 1.0
) -> list[Shot]:
    """Synthetic traffic shaped like the shared traces' conversation / code parts."""
    return [
        Shot(at, synth_prompt(prompt, salt=seed * 1_000_003 + i + 7), output)
        for i, (at, prompt, output) in enumerate(
            _requests(kind, rate, start, duration, seed, lengths)
        )
    ]


def traffic_scenario(
    kind: str, rate: float, duration: float, seed: int, cfg: DemoConfig | None = None
):
    """The same traffic as a simulator scenario on the demo's fleet."""
    from sandbox.scenario_spec import Scenario, parse_cluster
    from sandbox.workload import Workload

    cfg = cfg or DemoConfig()
    rows = np.asarray(_requests(kind, rate, 0.0, duration, seed, cfg.lengths), dtype=float).reshape(
        -1, 3
    )
    tokens = rows[:, 1:].astype(np.int64)
    workload = Workload(
        arrival_s=rows[:, 0] - rows[0, 0],
        prompt_tokens=tokens[:, 0],
        output_tokens=tokens[:, 1],
        max_tokens=tokens[:, 1].copy(),
        name=f"demo-{kind}",
    )
    return Scenario(
        f"demo-{kind}", f"the demo's {kind} traffic", workload, parse_cluster(cfg.fleet)
    )


def best_baseline(scenario: Any) -> tuple[str, dict[str, float]]:
    """The best baseline on ``scenario`` in the simulator, and every baseline's objective."""
    from sandbox.simulator import PolicyFault, simulate
    from serving.policy_loader import BUILTIN_POLICIES, builtin_policy

    scores = {}
    for name in BUILTIN_POLICIES:
        try:
            scores[name] = simulate(scenario, builtin_policy(name), seed=0).summary()["objective"]
        except PolicyFault:
            scores[name] = -math.inf
    return max(scores, key=lambda k: scores[k]), scores
