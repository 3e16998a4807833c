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

Everything is bounded: the traffic schedule is fixed, and the control thread stops
with it or once a promotion holds.

The settings and the traffic are ``flows.demo_traffic``; the result and its verdict
``flows.demo_report``; this module sets a run up and runs it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.demo_report import report
from flows.demo_traffic import FLEET, DemoConfig, best_baseline, shots, traffic_scenario
from flows.live_cluster import LiveCluster
from sandbox.replay.loadgen import run_load


@dataclass(frozen=True)
class DemoSetup:
    """One demo run's folders, tracking store and starting champion."""

    work: Path
    stamp: str
    telemetry: Path
    state: Path
    uri: str
    champion: str
    source: str
    version: str


def _setup(cfg: DemoConfig, log: Callable[[str], None]) -> DemoSetup:
    """Folders for this run, and the starting champion registered in MLflow."""
    from flows.registry import CHAMPION, PolicyRegistry
    from serving.policy_loader import builtin_source

    work = cfg.workdir
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    uri = cfg.tracking_uri or f"sqlite:///{(work / 'mlflow.db').resolve()}"
    start_name = (
        cfg.champion
        or best_baseline(traffic_scenario("conv", cfg.conv_rate, cfg.conv_s, cfg.seed, cfg))[0]
    )
    src = builtin_source(start_name)
    version = PolicyRegistry(uri).register_source(src, start_name, alias=CHAMPION)
    log(
        f"champion: {start_name} as autopoiesis-policy v{version}"
        + ("" if cfg.champion else " (the best baseline on the pre-shift traffic)")
    )
    return DemoSetup(
        work,
        stamp,
        work / f"telemetry-{stamp}",
        work / f"state-{stamp}",
        uri,
        start_name,
        src,
        version,
    )


class ControlLoop:
    """The control plane's thread: pulls on a fixed period until a promotion holds.

    The flows run in this thread while the router keeps serving; an exception ends the
    loop and is kept in ``error`` (the traffic still finishes).
    """

    def __init__(
        self, cfg: DemoConfig, setup: DemoSetup, cluster: LiveCluster, log: Callable[[str], None]
    ) -> None:
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
            "generations": cfg.generations,
            "population": cfg.population,
            "tune_trials": cfg.tune_trials,
            "scale": cfg.scale,
            "llm_base_url": cfg.llm_base_url,
            "seed": cfg.seed,
            # With an LLM, each slot waits for its answer: the demo shows
            # what the LLM proposes, whatever its speed on this machine.
            "llm_wait_s": None,
            "seeds_policies": ["llmd_weighted", "power_of_two"],
            "promote_params": {
                "admin_url": cluster.admin_url,
                "admin_token": cluster.admin_token,
                "telemetry_dir": str(self.setup.telemetry),
                "dwell_s": cfg.dwell_s,
                "scale": cfg.scale,
            },
        }

    def run(self) -> None:
        from flows import prefect_flows as pf

        cfg, setup = self.cfg, self.setup
        evolve_params = self._evolve_params()
        promoted = False
        try:
            while not self.stop.wait(cfg.pull_every_s):
                out = pf.pull_telemetry(
                    str(setup.telemetry),
                    state_dir=str(setup.state),
                    tracking_uri=setup.uri,
                    chain="inline",
                    settle_s=3.0,
                    min_requests=40,
                    evolve_params=evolve_params,
                    cluster=cfg.fleet,
                )
                self.cycles.append(
                    {k: out.get(k) for k in ("requests", "trigger", "reasons", "reason")}
                )
                self.log(
                    f"[{time.time() - self.t0:6.1f}s] pull: {out.get('requests')} "
                    f"requests; "
                    + "; ".join(out.get("reasons") or [out.get("reason") or "no drift"])
                )
                ev = out.get("evolve")
                if ev:
                    p = ev.get("promote") or {}
                    self.log(
                        f"[{time.time() - self.t0:6.1f}s] evolve: best "
                        f"{ev['best_objective']:.4f} (seed {ev['seed_objective']:.4f}), "
                        f"challenger v{ev['registered_version']}; promote: "
                        f"{'; '.join(p.get('reasons', ['-']))}"
                    )
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
    control = ControlLoop(cfg, setup, cluster, log)

    async def main() -> list[Any]:
        await cluster.start(setup.source, setup.version, setup.champion)
        try:
            th = control.start()
            results, _ = await run_load(cluster.url, conv + code, timeout_s=120.0, extra_body=extra)
            control.stop.set()
            await asyncio.to_thread(th.join, 300.0)
            return results
        finally:
            await cluster.close()

    results = asyncio.run(main())
    return report(cfg, setup, conv, code, results, control, log)
