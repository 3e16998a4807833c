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
from serving.loadgen import Shot, run_load
from serving.prompt import synth_prompt

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
    from sandbox.scenario import Scenario, parse_cluster
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


class LiveCluster:
    """Engines + router + admin API in this event loop, with telemetry.

    ``engines="simulated"``: one simulated vLLM engine per GPU, in this process;
    ``"llamacpp"``: as many real llama.cpp engines (``serving.llamacpp``, processes).
    """

    def __init__(self, gpus: tuple[str, ...], time_scale: float, telemetry_dir: Path,
                 admin_token: str = "demo-admin-token", hold_timeout_s: float = 30.0,
                 engines: str = "simulated") -> None:
        self.hold_timeout_s = hold_timeout_s
        self.gpus, self.time_scale, self.telemetry_dir = gpus, time_scale, telemetry_dir
        self.admin_token = admin_token
        self.engines = engines
        self._runners: list[Any] = []
        self._fleet: Any = None
        self.running: Any = None

    async def _simulated_fleet(self) -> Any:
        from aiohttp import web

        from serving.engine_server import EngineServer, EngineServerConfig
        from serving.fleet import StaticFleet, free_port

        urls = []
        for gpu in self.gpus:
            srv = EngineServer(EngineServerConfig(gpu=gpu, time_scale=self.time_scale))
            runner = web.AppRunner(srv.app(), access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)
            urls.append(f"http://127.0.0.1:{port}")
        return StaticFleet(urls)

    async def start(self, policy_source: str, version: str, name: str) -> None:
        from serving.llamacpp import LlamaCppFleet
        from serving.policy_loader import load_policy
        from serving.policy_runtime import PolicyRuntime
        from serving.router import RouterConfig
        from serving.serve import start_router

        if self.engines == "llamacpp":
            self._fleet = LlamaCppFleet(len(self.gpus),
                                        log_dir=self.telemetry_dir.parent / "engine-logs")
            await self._fleet.start()
            fleet = self._fleet
        else:
            fleet = await self._simulated_fleet()
        runtime = PolicyRuntime(load_policy(policy_source, name=name), version=version)
        self.running = await start_router(
            fleet, runtime,
            RouterConfig(telemetry_dir=self.telemetry_dir, scrape_interval_s=0.25,
                         monitor_interval_s=1.0, hold_timeout_s=self.hold_timeout_s,
                         reschedule=False),
            admin_token=self.admin_token,
        )

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def admin_url(self) -> str:
        return self.running.admin_url

    async def close(self) -> None:
        if self.running is not None:
            await self.running.close()
        for r in self._runners:
            await r.cleanup()
        if self._fleet is not None:
            await self._fleet.close()


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


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from flows import prefect_flows as pf
    from flows.control_state import read_events
    from flows.registry import CHAMPION, PolicyRegistry
    from serving.policy_loader import builtin_source

    work = cfg.workdir
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    telemetry = work / f"telemetry-{stamp}"
    state = work / f"state-{stamp}"
    uri = cfg.tracking_uri or f"sqlite:///{(work / 'mlflow.db').resolve()}"
    reg = PolicyRegistry(uri)
    start_name = cfg.champion or best_baseline(
        traffic_scenario("conv", cfg.conv_rate, cfg.conv_s, cfg.seed, cfg))[0]
    src = builtin_source(start_name)
    version = reg.register_source(src, start_name, alias=CHAMPION)
    log(f"champion: {start_name} as autopoiesis-policy v{version}"
        + ("" if cfg.champion else " (the best baseline on the pre-shift traffic)"))
    conv = shots("conv", cfg.conv_rate, 0.0, cfg.conv_s, cfg.seed, cfg.lengths)
    code = shots("code", cfg.code_rate, cfg.conv_s, cfg.code_s, cfg.seed, cfg.lengths)
    cluster = LiveCluster(FLEET, cfg.time_scale, telemetry, engines=cfg.engines)
    fleet = cfg.fleet
    # A real model may stop early: make it generate the schedule's lengths.
    extra = {"ignore_eos": True} if cfg.engines == "llamacpp" else None
    t0_holder: dict[str, float] = {}
    stop = threading.Event()
    control: dict[str, Any] = {"cycles": [], "error": None}

    def control_loop() -> None:
        # Pulls on a fixed period; the flows run in this thread, the router keeps serving.
        evolve_params = {"generations": cfg.generations, "population": cfg.population,
                         "tune_trials": cfg.tune_trials, "scale": cfg.scale,
                         "llm_base_url": cfg.llm_base_url, "seed": cfg.seed,
                         # With an LLM, each slot waits for its answer: the demo shows
                         # what the LLM proposes, whatever its speed on this machine.
                         "llm_wait_s": None,
                         "seeds_policies": ["llmd_weighted", "power_of_two"],
                         "promote_params": {"admin_url": cluster.admin_url,
                                            "admin_token": cluster.admin_token,
                                            "telemetry_dir": str(telemetry),
                                            "dwell_s": cfg.dwell_s, "scale": cfg.scale}}
        promoted = False
        try:
            while not stop.wait(cfg.pull_every_s):
                out = pf.pull_telemetry(str(telemetry), state_dir=str(state), tracking_uri=uri,
                                        chain="inline", settle_s=3.0, min_requests=40,
                                        evolve_params=evolve_params, cluster=fleet)
                control["cycles"].append({k: out.get(k) for k in ("requests", "trigger",
                                                                  "reasons", "reason")})
                log(f"[{time.time() - t0_holder['t0']:6.1f}s] pull: {out.get('requests')} "
                    f"requests; " + "; ".join(out.get("reasons") or [out.get("reason") or
                                                                      "no drift"]))
                ev = out.get("evolve")
                if ev:
                    p = ev.get("promote") or {}
                    log(f"[{time.time() - t0_holder['t0']:6.1f}s] evolve: best "
                        f"{ev['best_objective']:.4f} (seed {ev['seed_objective']:.4f}), "
                        f"challenger v{ev['registered_version']}; promote: "
                        f"{'; '.join(p.get('reasons', ['-']))}")
                    promoted = promoted or bool(p.get("promoted") and not p.get("rolled_back"))
                if promoted:
                    return
        except Exception as e:  # surfaced in the result; the traffic still finishes
            control["error"] = f"{type(e).__name__}: {e}"

    async def main() -> tuple[list[Any], float]:
        await cluster.start(src, version, start_name)
        try:
            t0_holder["t0"] = time.time()
            th = threading.Thread(target=control_loop, name="control-plane", daemon=True)
            th.start()
            results, _ = await run_load(cluster.url, conv + code, timeout_s=120.0,
                                        extra_body=extra)
            stop.set()
            await asyncio.to_thread(th.join, 300.0)
            return results, t0_holder["t0"]
        finally:
            await cluster.close()

    results, t0 = asyncio.run(main())
    events = read_events(state)
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
    champion_now = reg.version_of(CHAMPION)
    # The static choice is measured on the requests the live result it is set beside
    # served: those after the swap, or (no promotion) the whole post-shift traffic.
    static = _best_static(cfg, code, after_idx or list(range(len(code))),
                          work / f"telemetry-static-{stamp}", log)
    live_now = _phase_metrics(after, cfg.slo) if after else _phase_metrics(code_results, cfg.slo)
    out = {
        "champion": start_name,
        "before": _phase_metrics(before, cfg.slo),
        "after": _phase_metrics(after, cfg.slo) if after else None,
        "best_static": static,
        "verdict": {
            "after_vs_before": verdict(_phase_metrics(after, cfg.slo) if after else None,
                                       _phase_metrics(before, cfg.slo)),
            "live_vs_best_static": verdict(live_now, static["metrics"] if static else None),
        },
        "conversation": _phase_metrics(results[:len(conv)], cfg.slo),
        "promoted_version": champion_now if champion_now != version else None,
        "baseline_version": version,
        "drift_detected_s": None if drift_t is None else drift_t - shift_at,
        "promoted_s": None if swap_t is None else swap_t - shift_at,
        "events": events,
        "control_error": control["error"],
        "pulls": control["cycles"],
        "tracking_uri": uri,
        "telemetry_dir": str(telemetry),
    }
    return out


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
