"""The closed-loop demo: a live router on simulated engines, a workload shift, the loop reacts.

1. Two simulated vLLM engines (one H100, one A100: unequal speed) run in this
   process at ``time_scale`` (wall seconds per model second), behind the live
   router -- or two real llama.cpp engines on CPU (``on_cpu_engines``); the
   champion is the baseline an operator would pick for the traffic before the
   shift: the best of all baselines on it in the simulator (``best_baseline``),
   registered in MLflow.
2. Conversation traffic, then a shift to bursty code traffic (long prompts,
   short outputs, bursts) at a higher rate.
3. A control thread runs ``pull-telemetry`` every ``pull_every_s``; on drift it
   runs ``evolve`` (Optuna, or an LLM when a base URL is given) and ``promote``
   in-process (``chain="inline"``), which swaps the new champion into the live
   router through the admin API.
4. Live metrics of the code traffic before the swap and after it are compared, and
   beside them the best *static* choice for the new traffic: the best baseline on the
   post-shift traffic, replayed live on the same requests from a fresh cluster. The
   verdict (``verdict``) says, metric by metric, what improved and what did not.

Everything is bounded: the traffic schedule is fixed, the control thread stops
with it, and the loop gives up evolving after ``max_cycles``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flows.live import LiveSLO, live_metrics
from flows.live_cluster import LiveCluster
from sandbox.replay.loadgen import Shot, run_load
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
    return replace(cfg, engines="llamacpp", lengths=0.03, conv_rate=0.6, code_rate=1.2,
                   conv_s=70.0, code_s=80.0 if quick else 120.0,
                   slo=LiveSLO(ttft_s=3.0, tpot_s=0.25))


def _requests(kind: str, rate: float, start: float, duration: float, seed: int,
              lengths: float = 1.0) -> list[tuple[float, int, int]]:
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


def shots(kind: str, rate: float, start: float, duration: float, seed: int,
          lengths: float = 1.0) -> list[Shot]:
    """Synthetic traffic shaped like the shared traces' conversation / code parts."""
    return [
        Shot(at, synth_prompt(prompt, salt=seed * 1_000_003 + i + 7), output)
        for i, (at, prompt, output) in enumerate(
            _requests(kind, rate, start, duration, seed, lengths)
        )
    ]


def traffic_scenario(kind: str, rate: float, duration: float, seed: int,
                     cfg: DemoConfig | None = None):
    """The same traffic as a simulator scenario on the demo's fleet."""
    from sandbox.scenario_spec import Scenario, parse_cluster
    from sandbox.workload import Workload

    cfg = cfg or DemoConfig()
    rows = np.asarray(_requests(kind, rate, 0.0, duration, seed, cfg.lengths),
                      dtype=float).reshape(-1, 3)
    tokens = rows[:, 1:].astype(np.int64)
    workload = Workload(arrival_s=rows[:, 0] - rows[0, 0], prompt_tokens=tokens[:, 0],
                        output_tokens=tokens[:, 1], max_tokens=tokens[:, 1].copy(),
                        name=f"demo-{kind}")
    return Scenario(f"demo-{kind}", f"the demo's {kind} traffic", workload,
                    parse_cluster(cfg.fleet))


def _phase_metrics(results: list[Any], slo: LiveSLO) -> dict[str, float]:
    import pandas as pd

    frame = pd.DataFrame({
        "status": ["ok" if r.ok else "error" for r in results],
        "ttft_s": [r.ttft_s for r in results],
        "tpot_s": [r.tpot_s for r in results],
        "e2e_s": [r.e2e_s for r in results],
    })
    return live_metrics(frame, slo)


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


@dataclass(frozen=True)
class _Setup:
    """One demo run's folders, tracking store and starting champion."""

    work: Path
    stamp: str
    telemetry: Path
    state: Path
    uri: str
    champion: str
    source: str
    version: str


def _setup(cfg: DemoConfig, log: Callable[[str], None]) -> _Setup:
    """Folders for this run, and the starting champion registered in MLflow."""
    from flows.registry import CHAMPION, PolicyRegistry
    from serving.policy_loader import builtin_source

    work = cfg.workdir
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    uri = cfg.tracking_uri or f"sqlite:///{(work / 'mlflow.db').resolve()}"
    start_name = cfg.champion or best_baseline(
        traffic_scenario("conv", cfg.conv_rate, cfg.conv_s, cfg.seed, cfg))[0]
    src = builtin_source(start_name)
    version = PolicyRegistry(uri).register_source(src, start_name, alias=CHAMPION)
    log(f"champion: {start_name} as autopoiesis-policy v{version}"
        + ("" if cfg.champion else " (the best baseline on the pre-shift traffic)"))
    return _Setup(work, stamp, work / f"telemetry-{stamp}", work / f"state-{stamp}", uri,
                  start_name, src, version)


class _ControlLoop:
    """The control plane's thread: pulls on a fixed period until a promotion holds.

    The flows run in this thread while the router keeps serving; an exception ends the
    loop and is kept in ``error`` (the traffic still finishes).
    """

    def __init__(self, cfg: DemoConfig, setup: _Setup, cluster: LiveCluster,
                 log: Callable[[str], None]) -> None:
        self.cfg, self.setup, self.cluster, self.log = cfg, setup, cluster, log
        self.stop = threading.Event()
        self.cycles: list[dict[str, Any]] = []
        self.error: str | None = None
        self.t0 = 0.0

    def start(self) -> threading.Thread:
        self.t0 = time.time()
        th = threading.Thread(target=self.run, name="control-plane", daemon=True)
        th.start()
        return th

    def _evolve_params(self) -> dict[str, Any]:
        # Read once the cluster is up: its admin URL exists only then.
        cfg, cluster = self.cfg, self.cluster
        return {
            "generations": cfg.generations, "population": cfg.population,
            "tune_trials": cfg.tune_trials, "scale": cfg.scale,
            "llm_base_url": cfg.llm_base_url, "seed": cfg.seed,
            # With an LLM, each slot waits for its answer: the demo shows
            # what the LLM proposes, whatever its speed on this machine.
            "llm_wait_s": None,
            "seeds_policies": ["llmd_weighted", "power_of_two"],
            "promote_params": {"admin_url": cluster.admin_url,
                               "admin_token": cluster.admin_token,
                               "telemetry_dir": str(self.setup.telemetry),
                               "dwell_s": cfg.dwell_s, "scale": cfg.scale}}

    def run(self) -> None:
        from flows import prefect_flows as pf

        cfg, setup = self.cfg, self.setup
        evolve_params = self._evolve_params()
        promoted = False
        try:
            while not self.stop.wait(cfg.pull_every_s):
                out = pf.pull_telemetry(str(setup.telemetry), state_dir=str(setup.state),
                                        tracking_uri=setup.uri, chain="inline", settle_s=3.0,
                                        min_requests=40, evolve_params=evolve_params,
                                        cluster=cfg.fleet)
                self.cycles.append({k: out.get(k) for k in ("requests", "trigger",
                                                            "reasons", "reason")})
                self.log(f"[{time.time() - self.t0:6.1f}s] pull: {out.get('requests')} "
                         f"requests; " + "; ".join(out.get("reasons") or [out.get("reason") or
                                                                           "no drift"]))
                ev = out.get("evolve")
                if ev:
                    p = ev.get("promote") or {}
                    self.log(f"[{time.time() - self.t0:6.1f}s] evolve: best "
                             f"{ev['best_objective']:.4f} (seed {ev['seed_objective']:.4f}), "
                             f"challenger v{ev['registered_version']}; promote: "
                             f"{'; '.join(p.get('reasons', ['-']))}")
                    promoted = promoted or bool(p.get("promoted") and not p.get("rolled_back"))
                if promoted:
                    return
        except Exception as e:  # surfaced in the result; the traffic still finishes
            self.error = f"{type(e).__name__}: {e}"


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    setup = _setup(cfg, log)
    conv = shots("conv", cfg.conv_rate, 0.0, cfg.conv_s, cfg.seed, cfg.lengths)
    code = shots("code", cfg.code_rate, cfg.conv_s, cfg.code_s, cfg.seed, cfg.lengths)
    cluster = LiveCluster(FLEET, cfg.time_scale, setup.telemetry, engines=cfg.engines)
    # A real model may stop early: make it generate the schedule's lengths.
    extra = {"ignore_eos": True} if cfg.engines == "llamacpp" else None
    control = _ControlLoop(cfg, setup, cluster, log)

    async def main() -> list[Any]:
        await cluster.start(setup.source, setup.version, setup.champion)
        try:
            th = control.start()
            results, _ = await run_load(cluster.url, conv + code, timeout_s=120.0,
                                        extra_body=extra)
            control.stop.set()
            await asyncio.to_thread(th.join, 300.0)
            return results
        finally:
            await cluster.close()

    results = asyncio.run(main())
    return _report(cfg, setup, conv, code, results, control, log)


def _report(cfg: DemoConfig, setup: _Setup, conv: list[Shot], code: list[Shot],
            results: list[Any], control: _ControlLoop,
            log: Callable[[str], None]) -> dict[str, Any]:
    """The run's result: live metrics of the code traffic before and after the swap,
    beside the best static choice, and when the loop reacted."""
    from flows.control_state import read_events
    from flows.registry import CHAMPION, PolicyRegistry

    t0 = control.t0
    events = read_events(setup.state)
    shift_at = t0 + cfg.conv_s

    def first(kind: str) -> float | None:
        ts = [e["t"] for e in events if e["event"] == kind]
        return min(ts) if ts else None

    drift_t, swap_t = first("drift"), first("swapped")
    code_results = results[len(conv):]
    before = [r for s, r in zip(code, code_results, strict=True)
              if swap_t is None or t0 + s.at < swap_t]
    after_idx = [i for i, s in enumerate(code) if swap_t is not None and t0 + s.at >= swap_t + 2.0]
    after = [code_results[i] for i in after_idx]
    champion_now = PolicyRegistry(setup.uri).version_of(CHAMPION)
    # The static choice is measured on the requests the live result it is set beside
    # served: those after the swap, or (no promotion) the whole post-shift traffic.
    static = _best_static(cfg, code, after_idx or list(range(len(code))),
                          setup.work / f"telemetry-static-{setup.stamp}", log)
    live_now = _phase_metrics(after, cfg.slo) if after else _phase_metrics(code_results, cfg.slo)
    return {
        "champion": setup.champion,
        "before": _phase_metrics(before, cfg.slo),
        "after": _phase_metrics(after, cfg.slo) if after else None,
        "best_static": static,
        "verdict": {
            "after_vs_before": verdict(_phase_metrics(after, cfg.slo) if after else None,
                                       _phase_metrics(before, cfg.slo)),
            "live_vs_best_static": verdict(live_now, static["metrics"] if static else None),
        },
        "conversation": _phase_metrics(results[:len(conv)], cfg.slo),
        "promoted_version": champion_now if champion_now != setup.version else None,
        "baseline_version": setup.version,
        "drift_detected_s": None if drift_t is None else drift_t - shift_at,
        "promoted_s": None if swap_t is None else swap_t - shift_at,
        "events": events,
        "control_error": control.error,
        "pulls": control.cycles,
        "tracking_uri": setup.uri,
        "telemetry_dir": str(setup.telemetry),
    }


def _best_static(cfg: DemoConfig, code: list[Shot], same: list[int], telemetry: Path,
                 log: Callable[[str], None]) -> dict[str, Any] | None:
    """The best baseline for the post-shift traffic, replayed live on the same requests.

    Chosen in the simulator on the post-shift traffic (what an operator who knew the new
    traffic would configure), then run from a fresh cluster on the same code shots; its
    metrics are over the requests ``same`` (indices into ``code``).
    """
    if not cfg.replay_best_static:
        return None
    from serving.policy_loader import builtin_source

    name, scores = best_baseline(
        traffic_scenario("code", cfg.code_rate, cfg.code_s, cfg.seed, cfg))
    log(f"best static baseline for the post-shift traffic: {name}; replaying it live")
    replay = [Shot(s.at - cfg.conv_s, s.prompt, s.max_tokens, s.session_id) for s in code]
    cluster = LiveCluster(FLEET, cfg.time_scale, telemetry, engines=cfg.engines)
    extra = {"ignore_eos": True} if cfg.engines == "llamacpp" else None

    async def main() -> list[Any]:
        await cluster.start(builtin_source(name), "static", name)
        try:
            results, _ = await run_load(cluster.url, replay, timeout_s=120.0, extra_body=extra)
            return results
        finally:
            await cluster.close()

    results = asyncio.run(main())
    return {"name": name, "simulated_objectives": scores,
            "metrics": _phase_metrics([results[i] for i in same], cfg.slo)}


LOWER_IS_BETTER = ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s")
ATTAINMENT_NOISE = 0.005
"""Attainment differences below this are "unchanged" (one request in 200)."""
LATENCY_NOISE = 0.05
"""Relative latency differences below this are "unchanged"."""


def verdict(now: dict[str, float] | None, ref: dict[str, float] | None) -> dict[str, list[str]]:
    """Metric by metric, whether ``now`` is better, worse or unchanged against ``ref``."""
    out: dict[str, list[str]] = {"better": [], "worse": [], "unchanged": [], "missing": []}
    for key in ("slo_attainment", *LOWER_IS_BETTER):
        a, b = (now or {}).get(key, math.nan), (ref or {}).get(key, math.nan)
        if math.isnan(a) or math.isnan(b):
            out["missing"].append(key)
            continue
        if key == "slo_attainment":
            delta, noise, text = a - b, ATTAINMENT_NOISE, f"{key} {b:.3f} -> {a:.3f}"
        else:
            delta = (b - a) / b if b > 0 else 0.0  # positive: faster
            noise, text = LATENCY_NOISE, f"{key} {b:.2f}s -> {a:.2f}s"
        side = "better" if delta > noise else "worse" if delta < -noise else "unchanged"
        out[side].append(text)
    return out


def verdict_line(label: str, v: dict[str, list[str]]) -> str:
    parts = [f"{side}: {', '.join(v[side])}" for side in ("better", "worse", "unchanged")
             if v[side]]
    return f"{label}: " + ("; ".join(parts) if parts else "nothing to compare")
