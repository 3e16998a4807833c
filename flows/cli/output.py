"""What every ``autopoiesis`` command prints and writes: one console, errors, progress, JSON.

Shared by every command module of ``flows/cli/``, so they look and fail alike.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Piped output (CI logs, files) gets room for the wide benchmark tables.
console = Console() if sys.stdout.isatty() else Console(width=160)

JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")]


def fail(message: str) -> NoReturn:
    """A one-line error naming what is wrong; exit status 2."""
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def progress() -> Progress:
    """The progress bar of long commands: description, bar, done/total, elapsed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def cell(
    value: float | None, fmt: str = "{:.4g}", *, scale: float = 1.0, missing: str = "-"
) -> str:
    """A number as a table cell: ``fmt`` of ``value * scale``, ``missing`` where there is none
    (None, NaN or infinite)."""
    if value is None or not math.isfinite(value):
        return missing
    return fmt.format(value * scale)


def fmt(value: object) -> str:
    """A figure as a table cell: floats to 4 significant digits (``nan`` kept), else its text."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def funnel_table(kinds: dict[str, dict[str, int]]) -> Table:
    """Per proposer kind, how many proposals reached each stage (``proposals.STAGES``)."""
    from flows.evolution.proposals import STAGES

    funnel = Table(title="Proposals (each stage: how many got that far)")
    funnel.add_column("kind")
    for stage in STAGES:
        funnel.add_column(stage, justify="right")
    for kind, counts in kinds.items():
        funnel.add_row(kind, *(str(counts[s]) for s in STAGES))
    return funnel


def write_json(path: Path | None, payload: object) -> None:
    """``--json F``: the results, indented; nothing when no file was asked for."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    console.print(f"wrote {path}")


def _jsonable(value: object) -> object:
    # numpy scalars become numbers; anything else (paths, enums) its text.
    if hasattr(value, "item"):
        return value.item()
    return str(value)
