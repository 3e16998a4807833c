"""The end of a run: which candidate, if any, becomes the challenger, and proof that it is.

A candidate is eligible when it beats the champion on the quick suite by more
than ``min_gain`` without trailing it on the full suite by more than
``full_tolerance``. With the replay stage on (``cfg.confirm``), the best
``top_k`` eligible candidates and the champion are first replayed through the
live router on engines, and the challenger is the best the replay confirmed.
The challenger is registered, then re-evaluated from the registry in fresh
sandboxes beside the champion (``reevaluate``).
"""

from __future__ import annotations

import math

from flows.evolution.archive import Archive, Candidate
from flows.evolution.cascade import Cascade
from flows.evolution.config import EvolutionConfig
from flows.evolution.rundir import EvolutionError
from flows.evolution.tracking import Tracker
from sandbox.protocol import sha256_text


def eligible(cfg: EvolutionConfig, archive: Archive, champ: Candidate | None) -> list[Candidate]:
    """Candidates that beat the champion on the quick suite without losing on the full
    one, best first (ties by id)."""
    if champ is None or champ.quick is None:
        return []
    out = [
        c
        for c in archive.candidates.values()
        if c.ok
        and not c.origin.startswith("seed:")
        and (c.quick or -math.inf) > champ.quick + cfg.min_gain
        and (
            cfg.full is None
            or (
                c.full is not None
                and champ.full is not None
                and c.full >= champ.full - cfg.full_tolerance
            )
        )
    ]
    return sorted(out, key=lambda c: (-(c.quick or -math.inf), c.id))


def challenger(cfg: EvolutionConfig, archive: Archive, champ: Candidate | None) -> Candidate | None:
    """The best eligible candidate; with the replay stage on, by what the replay measured.

    Then only a confirmed candidate qualifies (its replay ran and its own code routed
    every request), and not one trailing the champion's replay by more than the
    stage's tolerance: a simulator winner the engines do not bear out is not registered.
    """
    best = eligible(cfg, archive, champ)
    if cfg.confirm.top_k <= 0:
        return best[0] if best else None
    ref = champ.confirmed if champ is not None else None
    confirmed = [
        c
        for c in best
        if c.confirmed is not None and (ref is None or c.confirmed >= ref - cfg.confirm.tolerance)
    ]
    return max(confirmed, key=lambda c: c.confirmed or -math.inf, default=None)


def confirm_stage(
    cfg: EvolutionConfig,
    archive: Archive,
    champ: Candidate | None,
    evaluator: Cascade,
    tracker: Tracker | None,
) -> None:
    """Replay the best ``top_k`` eligible candidates and the champion on engines."""
    top = eligible(cfg, archive, champ)[: cfg.confirm.top_k]
    if not top or champ is None:
        return
    cands = [champ, *top]
    for c, out in zip(cands, evaluator.confirm([c.source for c in cands]), strict=True):
        c.confirmed = out.objective
        c.confirmation = {
            "verdict": "confirmed" if out.ok else f"{out.stage}: {out.reason}",
            "replay": out.results[0] if out.results else None,
        }
        if tracker is not None:
            tracker.confirmation(c)


def reevaluate(
    cfg: EvolutionConfig,
    evaluator: Cascade,
    chal: Candidate,
    champ: Candidate,
    version: str | None,
    tracker: Tracker | None,
) -> dict[str, float | None]:
    """Challenger (as stored in the registry) and champion again, same suite and seeds.

    Fresh sandbox evaluations: neither the journal nor the evaluator's cache is used,
    so the figure shows the improvement is not a lucky measurement.
    """
    source = chal.source
    if version is not None and tracker is not None:
        source = tracker.registered_source(version) or source
        if sha256_text(source) != chal.sha256:
            raise EvolutionError(f"registered version {version} does not match its hash")
    outs = evaluator.fresh([source, champ.source], cfg.quick)
    a, b = outs[0].objective, outs[1].objective
    return {
        "reevaluated_objective": a,
        "reevaluated_seed_objective": b,
        "reevaluated_improvement": (a - b) / abs(b) if a is not None and b else None,
    }
