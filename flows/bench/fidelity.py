"""Fidelity benchmark of the step-time model: refit on part of the profiles, score the rest.

Each profile row measured one quantity (a whole layer, the non-attention ops of a layer, the
attention kernel, or the lm_head projection). A held-out row is scored by the relative error
of the refitted model's prediction of that same quantity, scaled to the whole model
(x layers) — the scale cancels in a relative error, so it is the error of the layer stack.
The additive terms no row measured (all-reduce, CPU time) are *not* added to both sides,
which would dilute the error.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from serving.steptime_fit import Row, fit_rows, load_rows, predict_row_ms


def split_rows(rows: list[Row], seed: int, holdout: float) -> tuple[list[Row], list[Row]]:
    """Random `holdout` share of every source's rows held out (at least one per source)."""
    rng = random.Random(seed)
    by_source: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_source[r.source].append(r)
    train: list[Row] = []
    test: list[Row] = []
    for src in sorted(by_source):
        group = by_source[src][:]
        rng.shuffle(group)
        k = max(1, round(holdout * len(group)))
        test += group[:k]
        train += group[k:]
    return train, test


def fidelity_report(
    seed: int = 0, holdout: float = 0.2, shared: Path | None = None
) -> dict[str, Any]:
    """{"mape": overall, "sources": {name: {"mape", "rows"}}, "rows": held-out rows}.

    Rows of a source are pooled across its GPUs/models; "mape" is the mean absolute
    percentage error as a fraction (0.05 = 5 %).
    """
    rows = load_rows(shared)
    train, test = split_rows(rows, seed, holdout)
    fit = fit_rows(train)
    # Measured non-attention time of a layer by (combo, tokens), to put attention-only rows
    # back into the layer they belong to.
    linear = {(r.combo, r.n): r for r in rows if r.kind == "linear"}
    errors: dict[str, list[float]] = defaultdict(list)
    parts: dict[str, list[float]] = defaultdict(list)
    for r in test:
        pred, meas = predict_row_ms(fit, r), r.y_ms
        parts[r.source].append(abs(pred - meas) / meas)
        if r.kind == "attn":
            lin = linear.get((r.combo, r.b if r.a == 0 else r.pt))
            if lin is None:
                continue
            pred += predict_row_ms(fit, lin)
            meas += lin.y_ms
        errors[r.source].append(abs(pred - meas) / meas)
    every = [e for errs in errors.values() for e in errs]
    return {
        "mape": sum(every) / len(every),
        "rows": len(every),
        "seed": seed,
        "holdout": holdout,
        "sources": {
            src: {
                "mape": sum(errs) / len(errs),
                "rows": len(errs),
                "component_mape": sum(parts[src]) / len(parts[src]),
                "component_rows": len(parts[src]),
            }
            for src, errs in sorted(errors.items())
        },
    }
