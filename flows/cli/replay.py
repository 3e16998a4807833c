"""``autopoiesis replay-stage``: a policy on a scenario slice through the live router.

Prints what the replay measured next to what the simulator predicts for the
same slice, so the two can be compared at a glance. Registered onto the main
app by one line at the bottom of ``flows/cli.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.output import cell, console, write_json
from flows.cli.output import fail as _fail

ROWS = (
    ("requests", "requests", 1.0, "{:.0f}"),
    ("failed", "failed", 1.0, "{:.0f}"),
    ("SLO attainment", "slo_attainment", 1.0, "{:.3f}"),
    ("objective", "objective", 1.0, "{:.4f}"),
    *((f"{m.upper()} {q} ms", f"{m}_{q}_s", 1000.0, "{:.1f}")
      for m in ("ttft", "tpot", "e2e") for q in ("mean", "p50", "p90", "p99")),
    ("makespan s", "makespan_s", 1.0, "{:.2f}"),
    ("goodput req/s", "goodput_rps", 1.0, "{:.2f}"),
    ("preemptions", "preemptions", 1.0, "{:.0f}"),
    ("retries", "retries", 1.0, "{:.0f}"),
)


# Long for its options: typer reads the command line from this signature.
def replay_stage(
    policy: Annotated[str, typer.Option(help="Policy file or a baseline's name.")],
    scenario: Annotated[str, typer.Option(help="Scenario name (or window:<sha>:<variant>).")],
    engines: Annotated[list[str] | None, typer.Option(
        help="simulated (default), vllm-docker, or engine URLs (repeatable or comma-separated)."
    )] = None,
    requests: Annotated[int, typer.Option(help="Replay the first this many requests.")] = 200,
    seconds: Annotated[float | None, typer.Option(
        help="…arriving within this many (model) seconds.")] = None,
    time_scale: Annotated[float, typer.Option(
        help="Simulated engines: wall seconds per model second.")] = 1.0,
    seed: int = 0,
    scale: Annotated[float, typer.Option(help="Scenario scale (0 < scale <= 1).")] = 1.0,
    model: Annotated[str, typer.Option(
        help="vllm-docker: the model to serve; URLs: the served model name.")] = "",
    gpu_ids: Annotated[str, typer.Option(help="vllm-docker: device ids, e.g. 0,1.")] = "",
    windows_dir: Annotated[Path | None, typer.Option(
        help="Window files for window:<sha>:<variant> scenarios.")] = None,
    wall: Annotated[float, typer.Option(help="Wall-clock limit of the whole stage (s).")] =
        900.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result.")] = None,
) -> None:
    """Replay a scenario slice through the router running POLICY on engines; vs the simulator."""
    from sandbox.replay.engines import EngineTarget
    from sandbox.replay.stage import ReplayRequest
    from sandbox.replay.worker import run_isolated
    from serving.policy_loader import BUILTIN_POLICIES, builtin_source

    # The source only: the policy is loaded in the stage's worker, never in this process.
    if policy in BUILTIN_POLICIES:
        name, source = policy, builtin_source(policy)
    else:
        path = Path(policy)
        if not path.is_file():
            _fail(f"policy file '{policy}' not found (nor is it a baseline's name)")
        name, source = path.name, path.read_text("utf-8")
    try:
        target = EngineTarget.parse(
            ",".join(engines or ["simulated"]), time_scale=time_scale, model=model,
            gpu_ids=tuple(g for g in gpu_ids.split(",") if g))
        req = ReplayRequest(
            source, scenario, name=name, seed=seed, scale=scale,
            requests=requests, seconds=seconds, target=target, wall_s=wall,
            windows_dir=str(windows_dir.resolve()) if windows_dir else None)
    except ValueError as e:
        _fail(str(e))
    with console.status(f"replaying {scenario} on {target.kind} engines"):
        res = run_isolated(req)
    write_json(json_out, res.to_dict())
    if not res.ok:
        _fail(f"replay stage stopped at {res.stage}: {res.error}")
    table = Table(title=f"{name} on {res.scenario} ({res.engine_kind} engines, "
                        f"time scale {res.time_scale:g})")
    for col in ("", "simulator", "replay", "replay/sim"):
        table.add_column(col, justify="left" if not col else "right")
    for label, key, mult, fmt in ROWS:
        sim, live = res.simulated.get(key), res.summary.get(key)
        ratio = live / sim if sim and live is not None and math.isfinite(sim) else None
        table.add_row(label, cell(sim, fmt, scale=mult), cell(live, fmt, scale=mult),
                      cell(ratio, "{:.3f}"))
    console.print(table)
    if res.sim_error:
        console.print(f"[yellow]simulator:[/] {res.sim_error}", highlight=False)
    faults = {k: v for k, v in res.fallbacks.items() if v}
    console.print(
        f"engines {' '.join(res.engines)}; wall {res.wall_s:.1f} s; failed {res.failures}"
        f"{' ' + str(res.errors) if res.errors else ''}; router fallbacks {faults or 0}; "
        f"max send lag {res.max_send_lag_s * 1000:.0f} ms (model time)"
        f"{f'; {res.events_dropped} cluster events left out' if res.events_dropped else ''}",
        highlight=False)
    if json_out is not None:
        console.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("replay-stage")(replay_stage)
