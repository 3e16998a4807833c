"""Run the router (and its admin API) in front of a fleet, in-process or as a program.

``start_router`` is what tests and ``autopoiesis serve`` use; ``python -m
serving.serve`` runs the same thing as a standalone process (the router bench
starts it that way so the load generator does not share its event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from serving.admin import AdminAPI, RegistryLoader
from serving.contract import Plan, ReplicaSpec
from serving.fleet import Fleet, LocalFleet, StaticFleet, free_port
from serving.llamacpp import SMOLLM_ALIAS, LlamaCppFleet
from serving.policy_loader import BUILTIN_POLICIES, builtin_policy, load_policy_file
from serving.policy_runtime import PolicyRuntime
from serving.process_tuning import install_uvloop, tune_gc
from serving.router import Router, RouterConfig


@dataclass
class RunningRouter:
    router: Router
    url: str
    admin_url: str
    admin_token: str
    _runners: tuple[web.AppRunner, ...]

    async def close(self) -> None:
        # Router first: it drains its telemetry to disk on cleanup.
        for runner in self._runners:
            await runner.cleanup()


async def start_router(
    fleet: Fleet,
    runtime: PolicyRuntime,
    config: RouterConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    admin_host: str = "127.0.0.1",
    admin_port: int = 0,
    admin_token: str | None = None,
    registry: RegistryLoader | None = None,
) -> RunningRouter:
    """Start router and admin listeners in the running loop; port 0 picks a free one."""
    router = Router(fleet, runtime, config)
    token = admin_token or secrets.token_urlsafe(24)
    admin = AdminAPI(runtime, token, registry=registry, on_swap=router.telemetry.swap_ms.observe)
    port = port or free_port(host)
    admin_port = admin_port or free_port(admin_host)
    runners = []
    for app, h, p in ((router.app(), host, port), (admin.app(), admin_host, admin_port)):
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, h, p, backlog=1024).start()
        runners.append(runner)
    return RunningRouter(router, f"http://{host}:{port}", f"http://{admin_host}:{admin_port}",
                         token, tuple(runners))


def load_policy_spec(spec: str):
    """A baseline's name or a policy file path."""
    if spec in BUILTIN_POLICIES:
        return builtin_policy(spec)
    return load_policy_file(spec)


ENGINE_KINDS = ("simulated", "llamacpp")


def make_fleet(engines: int, engine_urls: list[str], gpu: str, model: str,
               engine_args: list[str], kind: str = "simulated") -> Fleet:
    """Fixed URLs, else ``engines`` simulated vLLM engines or real llama.cpp ones (CPU)."""
    if engine_urls:
        return StaticFleet(engine_urls, ReplicaSpec(gpu, 1))
    if kind == "llamacpp":
        return LlamaCppFleet(engines)
    if kind != "simulated":
        raise ValueError(f"unknown engine kind {kind!r}; known: {', '.join(ENGINE_KINDS)}")
    plan = Plan(tuple(ReplicaSpec(gpu, 1) for _ in range(engines)))
    return LocalFleet(plan, model=model, engine_args=engine_args)


async def serve_forever(
    fleet: Fleet, runtime: PolicyRuntime, config: RouterConfig, *, host: str, port: int,
    admin_host: str, admin_port: int, admin_token: str | None,
    duration_s: float | None = None, announce=print,
) -> None:
    """Start fleet and router; run until SIGINT/SIGTERM (or ``duration_s``); stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await fleet.start()
    running = await start_router(fleet, runtime, config, host=host, port=port,
                                 admin_host=admin_host, admin_port=admin_port,
                                 admin_token=admin_token)
    try:
        announce(f"router {running.url}  admin {running.admin_url}  "
                 f"policy {runtime.current.version}  engines "
                 + " ".join(e.url for e in fleet.engines()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), duration_s)
    finally:
        await running.close()
        await fleet.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Autopoiesis router in front of engines.")
    p.add_argument("--engine-url", action="append", default=[])
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--engine-kind", choices=ENGINE_KINDS, default="simulated")
    p.add_argument("--gpu", default="H100")
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--policy", default="least_outstanding")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin-host", default="127.0.0.1")
    p.add_argument("--admin-port", type=int, default=0)
    p.add_argument("--admin-token", default=os.environ.get("AUTOPOIESIS_ADMIN_TOKEN"))
    p.add_argument("--telemetry-dir", type=Path, default=None)
    p.add_argument("--route-budget-ms", type=float, default=2.0)
    p.add_argument("--no-reschedule", action="store_true")
    a = p.parse_args(argv)
    install_uvloop()
    tune_gc()
    fleet = make_fleet(a.engines, a.engine_url, a.gpu, a.model, [], a.engine_kind)
    runtime = PolicyRuntime(load_policy_spec(a.policy), budget_s=a.route_budget_ms / 1000)
    model = SMOLLM_ALIAS if a.engine_kind == "llamacpp" else a.model
    config = RouterConfig(telemetry_dir=a.telemetry_dir, model_name=model,
                          reschedule=not a.no_reschedule)
    asyncio.run(serve_forever(fleet, runtime, config, host=a.host, port=a.port,
                              admin_host=a.admin_host, admin_port=a.admin_port,
                              admin_token=a.admin_token,
                              announce=lambda s: print(s, flush=True)))


if __name__ == "__main__":
    main()
