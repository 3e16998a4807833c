"""The ``autopoiesis`` command: every command and group, registered here in help order.

One module per command group (``evaluate``, ``serving``, ``replay``, ``evolve``,
``control``, ``bench``, ``llm``); ``output`` is what they all print and write with.
"""

from __future__ import annotations

import typer

from flows.cli import bench, control, evaluate, evolve, llm, replay, serving

app = typer.Typer(help="Autopoiesis: LLM serving policies as living code.", no_args_is_help=True)

# Scoring policies in the simulator and the sandbox.
app.command()(evaluate.simulate)
app.command()(evaluate.scenarios)
app.command()(evaluate.evaluate)
# The live serving plane.
app.command()(serving.serve)
app.command()(serving.engine)
app.command()(replay.replay)
# The control plane.
app.command("evolve")(evolve.evolve)
app.command("pull")(control.pull)
app.command("promote")(control.promote)
app.command("demo")(control.demo)
app.command("deploy")(control.deploy)
app.command("replay-stage")(replay.replay_stage)
# Groups.
app.add_typer(bench.bench_app, name="bench")
app.add_typer(evaluate.sandbox_app, name="sandbox")
app.add_typer(llm.llm_app, name="llm")

__all__ = ["app"]
