"""The evolution loop: seeds, generations of slots filled by proposers, cascade, archive.

    evo = Evolution(cfg, run, evaluator, proposers)   # run: a RunDir (resumes its journal)
    summary = evo.run()

``run.run_evolution`` assembles these (evaluator, proposers, tracker) for the
CLI and the Prefect flow. Generation 0 evaluates the seed baselines; the best is
the champion to beat. Each later generation fills ``population`` slots, spread
over the islands; for each slot the proposers are asked in order and the first
that takes it fills it (``proposals``): the LLM when it has a usable answer
ready, else search. Every evaluation runs in the sandbox on the quick suite; at
the end of a generation the promising go on to the full suite and everything
made is filed in the archive. The end of the run (``selection``) registers the
best candidate that beats the champion as the ``challenger``.

Every random choice comes from ``random.Random`` seeded by (run seed, generation,
slot), and every outside answer (LLM, sandbox) is journaled: see ``journal`` for
why that makes a killed run resume to the same result, and ``llm_proposer`` for
what an LLM that answers in the background changes about it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flows.evolution import selection
from flows.evolution.archive import Archive, Candidate
from flows.evolution.cascade import Cascade
from flows.evolution.config import Budget, EvolutionConfig
from flows.evolution.diagnosis import diagnose, render
from flows.evolution.proposals import STAGES, Proposer, Slot, Workshop, apply, new_candidate
from flows.evolution.proposer import BudgetExhausted, BudgetTracker
from flows.evolution.rundir import EvolutionError, RunDir
from flows.evolution.tracking import Tracker
from serving.policy_loader import builtin_source

__all__ = ["Evolution", "EvolutionError", "Progress"]
log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Hooks for a progress display (the CLI passes a rich one); no-ops by default."""

    start: Callable[[int, int], None] = lambda generations, population: None
    advance: Callable[[str], None] = lambda what: None
    generation: Callable[[int, float], None] = lambda gen, best: None
    report: Callable[[dict[str, Any]], None] = lambda row: None
    """The generation's report row (best, mean, and per proposer kind its counts)."""


class Evolution:
    def __init__(
        self,
        cfg: EvolutionConfig,
        run: RunDir,
        evaluator: Cascade,
        proposers: Sequence[Proposer],
        *,
        tracker: Tracker | None = None,
        champion: tuple[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        if not proposers:
            raise EvolutionError("an evolution needs at least one proposer")
        self.cfg = cfg
        self.rundir = run
        self.journal = run.journal
        self.cascade = evaluator
        self.proposers = list(proposers)
        self.archive = Archive(cfg.islands, cfg.min_gain)
        self.tracker = tracker
        self.champion_spec = champion
        self.progress = progress or Progress()
        # Token and cost caps belong to the LLM proposer; the loop keeps to the wall clock.
        self.budget = BudgetTracker(Budget(wall_s=cfg.budget.wall_s))
        self.budget.started -= float(run.meta.get("wall_used_s", 0.0))
        self.history: list[dict[str, Any]] = []
        self.champion: Candidate | None = None
        self.stopped: str | None = None
        self.generations_done = 0
        self._diagnosis = ""
        shop = Workshop(
            cfg,
            evaluator,
            self.archive,
            lambda: self.champion,
            lambda: self._diagnosis,
            self.progress.advance,
        )
        for p in self.proposers:
            p.bind(shop)

    @property
    def resumed(self) -> bool:
        return self.rundir.resumed

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        if self.tracker is not None:
            self.rundir.meta["mlflow_run_id"] = self.tracker.start(
                self.cfg, self.rundir.meta.get("mlflow_run_id"), self.rundir.name
            )
        self._save_meta()
        self.progress.start(self.cfg.generations, self.cfg.population)
        try:
            self._seed_generation()
            for g in range(1, self.cfg.generations + 1):
                why = self.budget.exhausted()
                if why:
                    raise BudgetExhausted(why)
                self._generation(g)
                self.generations_done = g
                self._save_meta()
                if self.stopped:
                    break
        except BudgetExhausted as e:
            self.stopped = str(e)
        return self._finish(time.monotonic() - t0)

    def close(self) -> None:
        for p in self.proposers:
            p.close()
        self.cascade.close()
        self.rundir.close()

    def _save_meta(self) -> None:
        self.rundir.save(wall_used_s=self.budget.elapsed())

    # ------------------------------------------------------------------ generation 0
    def _seed_generation(self) -> None:
        cfg = self.cfg
        seeds: list[tuple[str, str]] = [(n, builtin_source(n)) for n in cfg.seeds_policies]
        if self.champion_spec is not None and all(s != self.champion_spec[1] for _, s in seeds):
            seeds.insert(0, self.champion_spec)
        cands = [
            new_candidate(f"g000-s{i:03d}", src, 0, i % cfg.islands, f"seed:{name}")
            for i, (name, src) in enumerate(seeds)
        ]
        outs = self.cascade.evaluate_many(
            [s for _, s in seeds], cfg.quick,
            names=[f"{c.id}-{name}" for c, (name, _) in zip(cands, seeds, strict=True)],
        )
        for c, out in zip(cands, outs, strict=True):
            apply(c, out)
            self.progress.advance("seed")
        ok = [c for c in cands if c.ok]
        if not ok:
            reasons = "; ".join(f"{c.origin}: {c.rejection}" for c in cands)
            raise EvolutionError(f"no seed policy could be evaluated: {reasons}")
        if self.champion_spec is not None:
            champ = next(c for c in cands if c.source == self.champion_spec[1])
            if not champ.ok:
                raise EvolutionError(f"the champion was rejected: {champ.rejection}")
        else:
            champ = max(ok, key=lambda c: (c.quick or -math.inf, -int(c.id[-3:])))
        self.champion = champ
        if cfg.full is not None:
            self._full([champ])
        for c in cands:
            self.archive.add(c)
            self._track(c)
        self._diagnosis = render(diagnose(champ.results + champ.full_results))
        self._close_generation(0, cands, {})

    # ------------------------------------------------------------------ generation g
    def _generation(self, g: int) -> None:
        cfg = self.cfg
        before = self._counts()
        new: list[Candidate] = []
        for s in range(cfg.population):
            why = self.budget.exhausted()
            if why:  # the slots filled so far are kept: the generation closes on them
                self.stopped = why
                break
            slot = Slot(g, s, s % cfg.islands, cfg.seed)
            for p in self.proposers:
                fill = p.fill(slot)
                new += fill.candidates
                if fill.took:
                    break
            else:
                raise EvolutionError(f"no proposer took slot {slot.id}: end the list with search")
        self._cascade_full(new)
        for c in new:
            self.archive.add(c)
        for c in new:
            self._track(c)
        if cfg.islands > 1 and cfg.migrate_every > 0 and g % cfg.migrate_every == 0:
            self.archive.migrate()
        self._close_generation(g, new, before)

    def _cascade_full(self, cands: list[Candidate]) -> None:
        """Full suite for the candidates within ``promising_margin`` of the best so far."""
        if self.cfg.full is None:
            return
        best = self.archive.best()
        scores = [c.quick for c in cands if c.quick is not None]
        if best is not None and best.quick is not None:
            scores.append(best.quick)
        if not scores:
            return
        ref = max(scores) - self.cfg.promising_margin
        self._full([c for c in cands if c.ok and (c.quick or -math.inf) >= ref])

    def _full(self, cands: list[Candidate]) -> None:
        assert self.cfg.full is not None
        outs = self.cascade.evaluate_many(
            [c.source for c in cands], self.cfg.full, names=[f"{c.id}-full" for c in cands]
        )
        for c, out in zip(cands, outs, strict=True):
            c.eval_s += out.wall_s
            c.full = out.objective
            c.full_by_scenario = out.by_scenario
            c.full_results = out.results

    # ------------------------------------------------------------------ reports
    def _leaves(self) -> list[Proposer]:
        return [q for p in self.proposers for q in getattr(p, "parts", lambda p=p: [p])()]

    def _counts(self) -> dict[str, dict[str, int]]:
        return {p.kind: p.counters.counts() for p in self._leaves()}

    def _track(self, c: Candidate) -> None:
        if self.tracker is None:
            return
        parent = self.archive.candidates.get(c.parent_ids[0]) if c.parent_ids else None
        self.tracker.candidate(
            c,
            parent.source if parent else None,
            {
                "quick": c.results,
                "full": c.full_results,
                "rejection": c.rejection,
                "stage": c.stage,
            },
        )

    def _close_generation(
        self, g: int, cands: list[Candidate], before: dict[str, dict[str, int]]
    ) -> None:
        best = self.archive.best()
        scores = [c.quick for c in cands if c.quick is not None]
        kinds = {
            kind: {s: n - before.get(kind, {}).get(s, 0) for s, n in counts.items()}
            for kind, counts in self._counts().items()
        }
        row: dict[str, Any] = {
            "generation": float(g),
            "best": best.quick if best and best.quick else math.nan,
            "mean": sum(scores) / len(scores) if scores else math.nan,
            "candidates": float(len(cands)),
            "kinds": kinds,
        }
        self.history.append(row)
        if g > 0:
            log.info(
                "generation %d: best %.4f; %s",
                g,
                row["best"],
                "; ".join(
                    f"{k}: " + ", ".join(f"{n} {s}" for s, n in v.items()) for k, v in kinds.items()
                ),
            )
        if self.tracker is not None:
            self.tracker.generation(
                g,
                row["best"],
                row["mean"],
                self.archive.coverage(),
                self.cascade.sandbox_evaluations,
                {f"{k}.{s}": float(n) for k, v in kinds.items() for s, n in v.items()},
            )
        self.progress.report(row)
        self.progress.generation(g, row["best"])

    # ------------------------------------------------------------------ end of run
    def challenger(self) -> Candidate | None:
        return selection.challenger(self.cfg, self.archive, self.champion)

    def _finish(self, wall: float) -> dict[str, Any]:
        cfg, champ = self.cfg, self.champion
        assert champ is not None and champ.quick is not None
        if cfg.confirm.top_k > 0:
            selection.confirm_stage(cfg, self.archive, champ, self.cascade, self.tracker)
        chal = self.challenger()
        best = chal or champ
        version = None
        reeval: dict[str, float | None] = {}
        if chal is not None:
            if self.tracker is not None:
                version = self.tracker.register(chal, cfg.quick.digest)
            reeval = selection.reevaluate(cfg, self.cascade, chal, champ, version, self.tracker)
        summary = self._summary(champ, best, version, reeval, wall)
        self._save_meta()
        self.rundir.write("summary.json", summary)
        self.rundir.write("archive.json", self.archive.snapshot())
        self.rundir.write_best(best.source)
        if self.tracker is not None:
            self.tracker.finish(summary, self.archive, self.history)
        return summary

    def _summary(
        self,
        champ: Candidate,
        best: Candidate,
        version: str | None,
        reeval: dict[str, float | None],
        wall: float,
    ) -> dict[str, Any]:
        cands = [c for c in self.archive.candidates.values() if c.generation > 0]
        llm = next((p for p in self._leaves() if p.kind == "llm"), None)
        llm_report: dict[str, Any] = llm.report() if llm is not None else dict.fromkeys(STAGES, 0)
        return {
            "seed_policy": champ.origin.removeprefix("seed:"),
            "seed_objective": champ.quick,
            "best_objective": best.quick,
            "improvement": (best.quick - champ.quick) / abs(champ.quick)  # type: ignore[operator]
            if champ.quick
            else 0.0,
            "candidates": len(cands),
            "candidates_rejected": sum(1 for c in cands if c.rejection),
            "evaluations_per_hour": self.cascade.evaluations_per_hour(),
            "sandbox_evaluations": self.cascade.sandbox_evaluations,
            "journal_hits": self.journal.hits,
            "llm_tokens": int(llm_report.get("tokens", 0)),
            "llm_cost_usd": float(llm_report.get("cost_usd", 0.0)),
            "llm": llm_report,
            "proposers": self._counts(),
            "registered_version": version,
            "best_candidate": best.id,
            "best_origin": best.origin,
            "seed_full_objective": champ.full,
            "best_full_objective": best.full,
            "seed_confirmed_objective": champ.confirmed,
            "best_confirmed_objective": best.confirmed,
            "confirmations": {
                c.id: c.confirmation["verdict"]
                for c in self.archive.candidates.values()
                if c.confirmation
            },
            **reeval,
            "generations_done": self.generations_done,
            "generations": [  # JSON has no NaN: a generation without scores has none
                {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                | {"generation": int(r["generation"])}
                for r in self.history
            ],
            "stopped": self.stopped,
            "resumed": self.resumed,
            "wall_s": wall,
            "scenario_set": self.cfg.quick.digest,
            "quick_suite": list(self.cfg.quick.scenarios),
            "archive_cells": self.archive.coverage(),
            "mlflow_run_id": self.rundir.meta.get("mlflow_run_id"),
            "run_dir": str(self.rundir.path),
        }
