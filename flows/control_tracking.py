"""What the control flows log to MLflow: one run of the control experiment per decision.

Each run is linked both ways to the Prefect flow run that made it (``flows.links``).
"""

from __future__ import annotations

import time
from typing import Any

from flows import links
from flows.drift import WindowSample
from flows.registry import PolicyRegistry


def log_control_run(
    tracking_uri: str | None,
    name: str,
    kind: str,
    metrics: dict[str, float],
    params: dict[str, str],
    texts: dict[str, str],
    figure: Any = None,
    description: str = "",
) -> str:
    """One MLflow run of the control experiment, linked both ways to this flow run."""
    import math

    from mlflow.entities import Metric, Param

    reg = PolicyRegistry(tracking_uri)
    c = reg.client
    exp = reg.experiment_id()
    run = c.create_run(
        exp,
        run_name=name,
        tags={"kind": kind, **links.run_tags(links.default_source(), description)},
    )
    rid = run.info.run_id
    now = int(time.time() * 1000)
    ms = [
        Metric(k, float(v), now, 0)
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    ps = [Param(k, str(v)[:500]) for k, v in params.items()]
    c.log_batch(rid, metrics=ms, params=ps)
    for path, text in texts.items():
        c.log_text(rid, text, path)
    if figure is not None:
        c.log_figure(rid, figure, "window.png")
    c.set_terminated(rid, "FINISHED")
    links.link_flow_run(reg.uri, exp, rid, f"{kind} run")
    return rid


def window_plot(ref: WindowSample | None, cur: WindowSample) -> Any:
    """Prompt and output length distributions of a window beside the reference's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, what in zip(axes, ("prompt_tokens", "output_tokens"), strict=True):
        bins = np.linspace(0, 12, 40)
        if ref is not None:
            ax.hist(
                np.log1p(getattr(ref, what)), bins=bins, alpha=0.5, density=True, label="reference"
            )
        ax.hist(np.log1p(getattr(cur, what)), bins=bins, alpha=0.5, density=True, label="window")
        ax.set_xlabel(f"log1p({what})")
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
