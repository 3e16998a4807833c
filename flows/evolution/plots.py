"""Plots logged with each evolution: objective per generation and the archive map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.evolution.archive import PREEMPT_EDGES, QUEUE_EDGES, Archive


def write_plots(folder: Path, archive: Archive, history: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    gens = [h["generation"] for h in history]
    ax.plot(gens, [h["best"] for h in history], marker="o", label="best")
    ax.plot(gens, [h["mean"] for h in history], marker=".", label="mean (evaluated)")
    ax.set_xlabel("generation")
    ax.set_ylabel("objective (quick suite)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = folder / "objective_per_generation.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    p = _proposals_plot(folder, history, plt)
    if p is not None:
        paths.append(p)

    # The map: best objective per (queue share, preemption rate) cell over all islands.
    grid = np.full((len(PREEMPT_EDGES) + 1, len(QUEUE_EDGES) + 1), np.nan)
    for c in archive.elites():
        if c.quick is None or len(c.cell) < 2:
            continue
        q, pr = c.cell[0], c.cell[1]
        if np.isnan(grid[pr, q]) or c.quick > grid[pr, q]:
            grid[pr, q] = c.quick
    fig, ax = plt.subplots(figsize=(5, 3.5))
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), _labels(QUEUE_EDGES))
    ax.set_yticks(range(grid.shape[0]), _labels(PREEMPT_EDGES))
    ax.set_xlabel("queue share of latency")
    ax.set_ylabel("preemptions per request")
    ax.set_title(f"archive map ({archive.coverage()} cells filled)")
    fig.colorbar(im, ax=ax, label="best objective")
    fig.tight_layout()
    p = folder / "archive_map.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def _labels(edges: tuple[float, ...]) -> list[str]:
    lo = ["0", *[f"{e:g}" for e in edges]]
    hi = [*[f"{e:g}" for e in edges], "∞"]
    return [f"{a}–{b}" for a, b in zip(lo, hi, strict=True)]


def _proposals_plot(folder: Path, history: list[dict[str, Any]], plt: Any) -> Path | None:
    """Per generation and proposer kind: children evaluated, and of those, improving."""
    rows = [h for h in history if h.get("kinds") and h["generation"] > 0]
    kinds = sorted({k for h in rows for k in h["kinds"]})
    if not rows or not kinds:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        xs = [h["generation"] + (i - (len(kinds) - 1) / 2) * width for h in rows]
        evaluated = [h["kinds"].get(kind, {}).get("evaluated", 0) for h in rows]
        improving = [h["kinds"].get(kind, {}).get("improving", 0) for h in rows]
        bars = ax.bar(xs, evaluated, width, label=f"{kind}: evaluated", alpha=0.45)
        ax.bar(xs, improving, width, label=f"{kind}: improving",
               color=bars.patches[0].get_facecolor(), alpha=1.0)
    ax.set_xlabel("generation")
    ax.set_ylabel("children")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    p = folder / "proposals_per_generation.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
