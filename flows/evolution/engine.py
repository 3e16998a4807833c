"""The evolution loop: seeds, generations of proposals and tuning, cascade, archive, registry.

    evo = Evolution(cfg, run_dir)          # resumes if run_dir holds a journal of this config
    summary = evo.run()

Generation 0 evaluates the seed baselines; the best is the champion to beat.
Each later generation fills ``population`` slots, spread over the islands:
a parent is drawn from the slot's island; with an LLM configured it proposes a
child (then promising children have their PARAMS tuned), without one Optuna
tunes the parent's PARAMS. Every evaluation runs in the sandbox on the quick
suite; the promising go on to the full suite. At the end the best candidate
that beats the champion on the quick suite without losing on the full suite
is registered as the ``challenger`` and re-evaluated from the registry. With
the replay stage on (``cfg.confirm``), the best ``top_k`` of those and the
champion are first replayed through the live router on engines, and the
challenger is the best the replay confirmed (see ``challenger``).

Every random choice comes from ``random.Random`` seeded by (run seed,
generation, slot), and every outside answer (LLM, sandbox) is journaled: see
``journal`` for why that makes a killed run resume to the same result.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.evolution import prompts
from flows.evolution.archive import Archive, Candidate, cell_of, descriptors_of
from flows.evolution.cascade import Cascade, Outcome
from flows.evolution.config import EvolutionConfig, Suite
from flows.evolution.diagnosis import diagnose, render
from flows.evolution.journal import Journal
from flows.evolution.proposer import BudgetExhausted, BudgetTracker, LLMError, Proposer, pick_model
from flows.evolution.responses import ResponseError, extract_candidate, normalised_hash
from flows.evolution.tracking import Tracker
from flows.evolution.tuning import read_params, tune
from sandbox.protocol import sha256_text
from serving.policy_loader import builtin_source


class EvolutionError(RuntimeError):
    """The run cannot start or continue as asked; the message says what to do."""


@dataclass
class Progress:
    """Hooks for a progress display (the CLI passes a rich one); no-ops by default."""

    start: Callable[[int, int], None] = lambda generations, population: None
    advance: Callable[[str], None] = lambda what: None
    generation: Callable[[int, float], None] = lambda gen, best: None


class Evolution:
    def __init__(
        self,
        cfg: EvolutionConfig,
        run_dir: Path,
        *,
        tracker: Tracker | None = None,
        champion: tuple[str, str] | None = None,
        progress: Progress | None = None,
        fresh: bool = False,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.run_dir / "run.json"
        if fresh:
            for p in (meta_path, self.run_dir / "journal.jsonl"):
                p.unlink(missing_ok=True)
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if self.meta and self.meta.get("fingerprint") != cfg.fingerprint:
            raise EvolutionError(
                f"{self.run_dir} holds a run with another configuration "
                f"({self.meta.get('fingerprint')} != {cfg.fingerprint}); pass --fresh to start "
                "over there, or choose another --run-dir"
            )
        self.resumed = bool(self.meta)
        self.meta.setdefault("fingerprint", cfg.fingerprint)
        self.meta.setdefault("created", time.time())
        self.meta_path = meta_path
        self.journal = Journal(self.run_dir / "journal.jsonl")
        self.cascade = Cascade(cfg, self.journal)
        self.archive = Archive(cfg.islands, cfg.min_gain)
        self.tracker = tracker
        self.champion_spec = champion
        self.progress = progress or Progress()
        self.budget = BudgetTracker(cfg.budget)
        self.budget.started -= float(self.meta.get("wall_used_s", 0.0))
        self.proposer = Proposer(cfg.llm) if cfg.llm.enabled else None
        self.history: list[dict[str, float]] = []
        self.champion: Candidate | None = None
        self.stopped: str | None = None
        self.generations_done = 0
        self._diagnosis = ""

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        if self.tracker is not None:
            self.meta["mlflow_run_id"] = self.tracker.start(
                self.cfg, self.meta.get("mlflow_run_id"), self.run_dir.name
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
        except BudgetExhausted as e:
            self.stopped = str(e)
        summary = self._finish(time.monotonic() - t0)
        return summary

    def close(self) -> None:
        self.cascade.close()
        self.journal.close()
        if self.proposer is not None:
            self.proposer.close()

    def _save_meta(self) -> None:
        self.meta["wall_used_s"] = self.budget.elapsed()
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        tmp.replace(self.meta_path)

    # ------------------------------------------------------------------ generation 0
    def _seed_generation(self) -> None:
        cfg = self.cfg
        seeds: list[tuple[str, str]] = [(n, builtin_source(n)) for n in cfg.seeds_policies]
        if self.champion_spec is not None and all(s != self.champion_spec[1] for _, s in seeds):
            seeds.insert(0, self.champion_spec)
        outcomes = self.cascade.evaluate_many(
            [s for _, s in seeds], cfg.quick, names=[f"g000-s{i:03d}-{n}" for i, (n, _) in
                                                     enumerate(seeds)]
        )
        cands = []
        for i, ((name, src), out) in enumerate(zip(seeds, outcomes, strict=True)):
            c = self._candidate(f"g000-s{i:03d}", src, 0, i % cfg.islands, f"seed:{name}")
            self._apply(c, out)
            cands.append(c)
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
            self._track(c, None)
        self._diagnosis = render(diagnose(champ.results + champ.full_results))
        self._close_generation(0, cands)

    # ------------------------------------------------------------------ generation g
    def _generation(self, g: int) -> None:
        cfg = self.cfg
        new: list[Candidate] = []
        if self.proposer is not None:
            new = self._llm_generation(g)
        else:
            for s in range(cfg.population):
                rng = random.Random(f"{cfg.seed}/{g}/{s}")
                island = s % cfg.islands
                tunable = [c for c in self.archive.elites(island) if read_params(c.source)]
                tunable = tunable or [c for c in self.archive.elites() if read_params(c.source)]
                if not tunable:
                    raise EvolutionError("no seed policy has PARAMS to tune and no LLM is set")
                parent = rng.choice(tunable)
                child = self._tuned(parent, g, s, island, suffix="")
                if child is not None:
                    new.append(child)
                self.progress.advance("tuned")
        self._cascade_full(new)
        for c in new:
            self.archive.add(c)
        for c in new:
            parent = self.archive.candidates.get(c.parent_ids[0]) if c.parent_ids else None
            self._track(c, parent.source if parent else None)
        if cfg.islands > 1 and cfg.migrate_every > 0 and g % cfg.migrate_every == 0:
            self.archive.migrate()
        self._close_generation(g, new)

    def _llm_generation(self, g: int) -> list[Candidate]:
        cfg = self.cfg
        assert self.champion is not None and self.proposer is not None
        drafts: list[Candidate] = []
        seen = self.archive.known_hashes()
        for s in range(cfg.population):
            rng = random.Random(f"{cfg.seed}/{g}/{s}")
            island = s % cfg.islands
            parent = self.archive.sample_parent(rng, island) or self.champion
            model = pick_model(cfg.llm.models, rng)
            messages = prompts.build_messages(
                parent=parent,
                champion=self.champion,
                archive=self.archive,
                diagnosis=self._diagnosis,
                workload=prompts.describe_workload(cfg.quick.scenarios),
                rng=rng,
                n_top=cfg.prompt_top,
                n_diverse=cfg.prompt_diverse,
                n_errors=cfg.prompt_errors,
            )
            cid = f"g{g:03d}-s{s:03d}"
            rec = self.journal.get(f"llm/{cid}")
            if rec is None:
                self.budget.check()  # before spending: a reached cap stops the run here
                try:
                    reply = self.proposer.complete(
                        messages, model, seed=rng.randrange(2**31), tag=cid
                    )
                    rec = {
                        "kind": "llm",
                        "text": reply.text,
                        "model": reply.model,
                        "tokens": reply.tokens,
                        "cost_usd": reply.cost_usd,
                        "latency_s": reply.latency_s,
                        "attempts": reply.attempts,
                    }
                except LLMError as e:
                    rec = {
                        "kind": "llm",
                        "error": str(e),
                        "model": model.name,
                        "tokens": 0,
                        "cost_usd": 0.0,
                    }
                self.journal.put(f"llm/{cid}", rec)
            self.budget.charge(int(rec.get("tokens", 0)), float(rec.get("cost_usd", 0.0)))
            c = self._candidate(cid, parent.source, g, island, "llm", parents=(parent.id,))
            c.model, c.tokens, c.cost_usd = rec["model"], int(rec["tokens"]), rec["cost_usd"]
            c.prompt = json.dumps(messages, indent=1)
            c.response = rec.get("text", "")
            if "error" in rec:
                c.rejection, c.stage = rec["error"], "llm"
            else:
                try:
                    src, _kind = extract_candidate(rec["text"], parent.source)
                    c.source, c.sha256 = src, sha256_text(src)
                    c.ast_hash = normalised_hash(src)
                    if c.ast_hash in seen:
                        c.rejection, c.stage = "duplicate of an archived candidate", "duplicate"
                    seen.add(c.ast_hash)
                except ResponseError as e:
                    c.rejection, c.stage = str(e), "response"
            drafts.append(c)
            self.progress.advance("proposed")
        todo = [c for c in drafts if c.rejection is None]
        outs = self.cascade.evaluate_many(
            [c.source for c in todo], cfg.quick, names=[c.id for c in todo]
        )
        for c, out in zip(todo, outs, strict=True):
            self._apply(c, out)
        out_list = list(drafts)
        if cfg.tune_llm_candidates and cfg.tune_trials > 0:
            for c in todo:
                if c.ok and self._promising(c) and read_params(c.source):
                    t = self._tuned(c, g, int(c.id[-3:]), c.island, suffix="t")
                    if t is not None:
                        out_list.append(t)
        return out_list

    def _tuned(
        self, parent: Candidate, g: int, s: int, island: int, suffix: str
    ) -> Candidate | None:
        cid = f"g{g:03d}-s{s:03d}{suffix}"
        trial_no = itertools.count()
        trials = tune(
            parent.source,
            lambda srcs: self.cascade.evaluate_many(
                srcs, self.cfg.quick, names=[f"{cid}-trial{next(trial_no)}" for _ in srcs]
            ),
            trials=self.cfg.tune_trials,
            seed=random.Random(f"{self.cfg.seed}/{g}/{s}/tune").randrange(2**31),
            batch=max(1, self.cfg.parallel),
        )
        ok = [t for t in trials if t.outcome.ok]
        if not ok:
            return None
        best = max(ok, key=lambda t: t.outcome.objective or -math.inf)  # first of equals
        c = self._candidate(cid, best.source, g, island, "tune", parents=(parent.id,))
        if c.ast_hash in self.archive.known_hashes():
            return None  # the parent's own values won: nothing new
        c.params = dict(best.params)
        c.tuning = [t.outcome.objective if t.outcome.ok else math.nan for t in trials]
        # Every trial's sandbox time is this candidate's; ``_apply`` adds the winner's.
        c.eval_s = sum(t.outcome.wall_s for t in trials if t is not best)
        self._apply(c, best.outcome)
        return c

    def _promising(self, c: Candidate) -> bool:
        best = self.archive.best(c.island)
        ref = best.quick if best is not None and best.quick is not None else -math.inf
        return (c.quick or -math.inf) >= ref - self.cfg.promising_margin

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

    # ------------------------------------------------------------------ helpers
    def _candidate(
        self, cid: str, source: str, g: int, island: int, origin: str, parents: tuple[str, ...] = ()
    ) -> Candidate:
        return Candidate(
            id=cid,
            source=source,
            sha256=sha256_text(source),
            ast_hash=normalised_hash(source),
            generation=g,
            island=island,
            origin=origin,
            parent_ids=parents,
        )

    def _apply(self, c: Candidate, out: Outcome) -> None:
        c.eval_s += out.wall_s
        if not out.ok:
            c.rejection, c.stage = out.reason or "rejected", out.stage
            return
        c.quick = out.objective
        c.quick_by_scenario = out.by_scenario
        c.descriptors = descriptors_of(out.summaries, c.source)
        c.cell = cell_of(c.descriptors)
        c.results = out.results

    def _track(self, c: Candidate, parent_source: str | None) -> None:
        if self.tracker is None:
            return
        self.tracker.candidate(
            c,
            parent_source,
            {
                "quick": c.results,
                "full": c.full_results,
                "rejection": c.rejection,
                "stage": c.stage,
            },
        )

    def _close_generation(self, g: int, cands: list[Candidate]) -> None:
        best = self.archive.best()
        scores = [c.quick for c in cands if c.quick is not None]
        row = {
            "generation": float(g),
            "best": best.quick if best and best.quick else math.nan,
            "mean": sum(scores) / len(scores) if scores else math.nan,
            "candidates": float(len(cands)),
        }
        self.history.append(row)
        if self.tracker is not None:
            self.tracker.generation(
                g,
                row["best"],
                row["mean"],
                self.archive.coverage(),
                self.cascade.sandbox_evaluations,
            )
        self.progress.generation(g, row["best"])

    # ------------------------------------------------------------------ end of run
    def _eligible(self) -> list[Candidate]:
        """Candidates that beat the champion on the quick suite without losing on the full
        one, best first (ties by id)."""
        champ = self.champion
        if champ is None or champ.quick is None:
            return []
        eligible = [
            c
            for c in self.archive.candidates.values()
            if c.ok
            and not c.origin.startswith("seed:")
            and (c.quick or -math.inf) > champ.quick + self.cfg.min_gain
            and (
                self.cfg.full is None
                or (
                    c.full is not None
                    and champ.full is not None
                    and c.full >= champ.full - self.cfg.full_tolerance
                )
            )
        ]
        return sorted(eligible, key=lambda c: (-(c.quick or -math.inf), c.id))

    def challenger(self) -> Candidate | None:
        """The best eligible candidate; with the replay stage on, by what the replay measured.

        Then only a confirmed candidate qualifies (its replay ran and its own code routed
        every request), and not one trailing the champion's replay by more than the
        stage's tolerance: a simulator winner the engines do not bear out is not registered.
        """
        eligible = self._eligible()
        if self.cfg.confirm.top_k <= 0:
            return eligible[0] if eligible else None
        champ = self.champion
        ref = champ.confirmed if champ is not None else None
        confirmed = [
            c
            for c in eligible
            if c.confirmed is not None
            and (ref is None or c.confirmed >= ref - self.cfg.confirm.tolerance)
        ]
        return max(confirmed, key=lambda c: c.confirmed or -math.inf, default=None)

    def _confirm_stage(self) -> None:
        """Replay the best ``top_k`` eligible candidates and the champion on engines."""
        top = self._eligible()[: self.cfg.confirm.top_k]
        if not top or self.champion is None:
            return
        cands = [self.champion, *top]
        for c, out in zip(cands, self.cascade.confirm([c.source for c in cands]), strict=True):
            c.confirmed = out.objective
            c.confirmation = {
                "verdict": "confirmed" if out.ok else f"{out.stage}: {out.reason}",
                "replay": out.results[0] if out.results else None,
            }
            if self.tracker is not None:
                self.tracker.confirmation(c)

    def _finish(self, wall: float) -> dict[str, Any]:
        champ = self.champion
        assert champ is not None and champ.quick is not None
        if self.cfg.confirm.top_k > 0:
            self._confirm_stage()
        chal = self.challenger()
        best = chal or champ
        version = None
        reeval: dict[str, float | None] = {}
        if chal is not None:
            if self.tracker is not None:
                version = self.tracker.register(chal, self.cfg.quick.digest)
            reeval = self._reevaluate(chal, champ, version)
        llm_tokens = self.budget.tokens
        cands = [c for c in self.archive.candidates.values() if c.generation > 0]
        summary: dict[str, Any] = {
            "seed_policy": champ.origin.removeprefix("seed:"),
            "seed_objective": champ.quick,
            "best_objective": best.quick,
            "improvement": (best.quick - champ.quick) / abs(champ.quick) if champ.quick else 0.0,
            "candidates": len(cands),
            "candidates_rejected": sum(1 for c in cands if c.rejection),
            "evaluations_per_hour": self.cascade.evaluations_per_hour(),
            "sandbox_evaluations": self.cascade.sandbox_evaluations,
            "journal_hits": self.journal.hits,
            "llm_tokens": llm_tokens,
            "llm_cost_usd": self.budget.usd,
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
            "stopped": self.stopped,
            "resumed": self.resumed,
            "wall_s": wall,
            "scenario_set": self.cfg.quick.digest,
            "quick_suite": list(self.cfg.quick.scenarios),
            "archive_cells": self.archive.coverage(),
            "mlflow_run_id": self.meta.get("mlflow_run_id"),
            "run_dir": str(self.run_dir),
        }
        self._save_meta()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (self.run_dir / "archive.json").write_text(json.dumps(self.archive.snapshot(), indent=1))
        if self.tracker is not None:
            self.tracker.finish(summary, self.archive, self.history)
        return summary

    def _reevaluate(
        self, chal: Candidate, champ: Candidate, version: str | None
    ) -> dict[str, float | None]:
        """Challenger (as stored in the registry) and champion again, same suite and seeds.

        Fresh sandbox evaluations: neither the journal nor the evaluator's cache is used,
        so the figure shows the improvement is not a lucky measurement.
        """
        source = chal.source
        if version is not None and self.tracker is not None:
            source = self.tracker.registered_source(version) or source
            if sha256_text(source) != chal.sha256:
                raise EvolutionError(f"registered version {version} does not match its hash")
        outs = self.cascade.fresh([source, champ.source], self.cfg.quick)
        a, b = outs[0].objective, outs[1].objective
        return {
            "reevaluated_objective": a,
            "reevaluated_seed_objective": b,
            "reevaluated_improvement": (a - b) / abs(b) if a is not None and b else None,
        }


def suite_from_names(names: list[str], seeds: tuple[int, ...], scale: float) -> Suite:
    return Suite(tuple(names), seeds, scale)
