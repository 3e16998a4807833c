"""Candidate evaluation through the sandbox, journaled, in a quick-then-full cascade.

An optional third stage (``confirm``, off unless ``cfg.confirm.top_k`` > 0) replays
a slice of a scenario through the live router on engines (``sandbox.replay.stage``,
in a worker process of its own) for the few candidates that got that far.

Every source is sent to ``sandbox.evaluator.Evaluator`` over a real isolation
backend (bubblewrap or Docker): an LLM-written policy is never loaded in this
process. Evaluations are journaled by the sandbox's reproducibility key, so a
resumed run does not redo them. Requests carry the suite's scale and split and the
run's objective (``sandbox.objectives`` computes it; ``objective_by_scenario`` groups it),
built here with ``EvalRequest.build`` and handed to ``Evaluator.submit``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.evolution.config import EvolutionConfig, Suite
from flows.evolution.journal import Journal
from sandbox.evaluator import Evaluator
from sandbox.objectives import objective_by_scenario
from sandbox.protocol import EvalRequest, EvalResponse, Limits
from sandbox.replay.stage import ReplayRequest, ReplayResult
from sandbox.replay.worker import run_isolated

# A replay that stopped here judged the candidate, not the machine: worth journaling.
_VERDICT_STAGES = ("static", "load")


@dataclass
class Outcome:
    """One candidate on one suite, as the engine uses it."""

    objective: float | None
    by_scenario: dict[str, float] = field(default_factory=dict)
    summaries: list[dict[str, float]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    stage: str | None = None
    reason: str | None = None
    wall_s: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.objective is not None


def quantise(x: float, resolution: float) -> float:
    # Rounded to a grid and back through repr, so equal scores compare equal exactly.
    return float(f"{round(x / resolution) * resolution:.12g}")


class Cascade:
    def __init__(
        self, cfg: EvolutionConfig, journal: Journal, evaluator: Evaluator | None = None
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.limits = Limits(wall_s=cfg.eval_wall_s, memory_mb=cfg.eval_memory_mb)
        self._evaluator = evaluator
        self.sandbox_evaluations = 0
        self.sandbox_seconds = 0.0
        self.started = time.monotonic()

    @property
    def evaluator(self) -> Evaluator:
        # Started lazily: a fully journaled resume never needs a sandbox.
        if self._evaluator is None:
            self._evaluator = Evaluator(
                self.cfg.backend,
                max_parallel=self.cfg.parallel,
                limits=self.limits,
                prewarm=self.cfg.parallel,
            )
        return self._evaluator

    def describe(self) -> str:
        return self.evaluator.backend.describe(self.limits)

    def _requests(
        self, sources: Sequence[str], suite: Suite, names: Sequence[str] | None = None
    ) -> list[EvalRequest]:
        """One request per source, named after its candidate (``names``) where given: the
        name is what a rejection, a sandbox log line and a Prefect task run show."""
        if names is not None and len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} sources")
        return [
            EvalRequest.build(
                src,
                suite.scenarios,
                seeds=suite.seeds,
                scale=suite.scale,
                limits=self.limits,
                name=names[i] if names is not None else "candidate",
                windows_dir=suite.windows_dir,
                split=suite.split,
                objective=self.cfg.objective,
            )
            for i, src in enumerate(sources)
        ]

    def evaluate_many(
        self, sources: Sequence[str], suite: Suite, names: Sequence[str] | None = None
    ) -> list[Outcome]:
        """One outcome per source, in order: from the journal where it holds one, else
        from a fresh sandbox evaluation (``_evaluate``), journaled unless it failed for
        the sandbox's own reasons."""
        reqs = self._requests(sources, suite, names)
        out: list[Outcome | None] = [None] * len(reqs)
        todo: list[tuple[int, EvalRequest]] = []
        for i, req in enumerate(reqs):
            rec = self.journal.get(f"eval/{req.key}")
            if rec is not None:
                out[i] = self._outcome(EvalResponse.from_dict(rec["response"]), cached=True)
            else:
                todo.append((i, req))
        fresh = self._evaluate([req for _, req in todo]) if todo else iter(())
        for (i, req), resp in zip(todo, fresh, strict=True):
            self.sandbox_evaluations += 1
            self.sandbox_seconds += resp.wall_s
            if resp.stage != "internal":
                self.journal.put(f"eval/{req.key}", {"kind": "eval", "response": resp.to_dict()})
            out[i] = self._outcome(resp)
        return [o for o in out if o is not None]

    def _evaluate(self, reqs: list[EvalRequest]) -> Iterator[EvalResponse]:
        """Fresh sandbox responses to ``reqs``, in order, as each is ready (all submitted
        first, so they run in parallel). ``fanout.TaskCascade`` runs them as Prefect tasks."""
        futures = [self.evaluator.submit(req) for req in reqs]
        for req, fut in zip(reqs, futures, strict=True):
            resp = fut.result()
            if resp.stage == "internal":  # the sandbox's fault, not the candidate's: once more
                resp = self.evaluator.submit(req.renewed()).result()
            yield resp

    def _outcome(self, resp: EvalResponse, cached: bool = False) -> Outcome:
        if not resp.ok:
            return Outcome(
                None, stage=resp.stage, reason=resp.reason, wall_s=resp.wall_s, cached=cached
            )
        res = self.cfg.objective_resolution
        by_scenario = {
            k: quantise(v, res) for k, v in objective_by_scenario(resp.results).items()
        }
        raw = resp.objective()
        if raw is None or not math.isfinite(raw):
            return Outcome(None, stage="integrity", reason="non-finite objective", cached=cached)
        return Outcome(
            objective=quantise(raw, res),
            by_scenario=by_scenario,
            summaries=[dict(r.summary) for r in resp.results],
            results=[
                {
                    "scenario": r.scenario,
                    "seed": r.seed,
                    "summary": dict(r.summary),
                    "decision_stats": dict(r.decision_stats),
                }
                for r in resp.results
            ],
            wall_s=resp.wall_s,
            cached=cached,
        )

    def fresh(self, sources: Sequence[str], suite: Suite) -> list[Outcome]:
        """Evaluate again from scratch: no journal, no cache (re-measurement, not replay)."""
        ev = Evaluator(
            self.cfg.backend, max_parallel=self.cfg.parallel, cache=False, limits=self.limits
        )
        try:
            reqs = self._requests(sources, suite)
            return [self._outcome(r) for r in ev.evaluate_many(reqs)]
        finally:
            ev.close()

    def confirm(self, sources: Sequence[str]) -> list[Outcome]:
        """The replay stage for each source, one after the other (they share the engines).

        A replay whose requests ran is journaled like a sandbox result (a resumed run
        does not redo it); one stopped by the engines or a timeout is not: it says
        nothing about the candidate. A candidate whose ``route``/``reschedule`` failed on
        the live router gets no objective: its requests were routed by the fallback.
        """
        conf, quick = self.cfg.confirm, self.cfg.quick
        target = conf.engines()
        out = []
        for src in sources:
            req = ReplayRequest(
                src, conf.scenario or quick.scenarios[0], seed=quick.seeds[0], scale=quick.scale,
                requests=conf.requests, target=target, windows_dir=quick.windows_dir,
                wall_s=conf.wall_s,
            )
            rec = self.journal.get(f"confirm/{req.key}")
            if rec is not None:
                out.append(self._confirmed(ReplayResult.from_dict(rec["result"]), cached=True))
                continue
            res = run_isolated(req)
            if res.ok or res.stage in _VERDICT_STAGES:
                self.journal.put(f"confirm/{req.key}", {"kind": "confirm", "result": res.to_dict()})
            out.append(self._confirmed(res))
        return out

    def _confirmed(self, res: ReplayResult, cached: bool = False) -> Outcome:
        common: dict[str, Any] = {"results": [res.to_dict()], "wall_s": res.wall_s,
                                  "cached": cached}
        if not res.ok:
            return Outcome(None, stage=f"confirm:{res.stage}", reason=res.error, **common)
        if res.faults:
            return Outcome(None, stage="confirm:fault", reason=(
                f"on the live router the policy failed {res.faults} times "
                f"(fallbacks {res.fallbacks}, reschedule errors {res.reschedule_errors})"),
                **common)
        if res.objective is None:
            return Outcome(None, stage="confirm:integrity", reason="non-finite objective",
                           **common)
        objective = quantise(res.objective, self.cfg.objective_resolution)
        return Outcome(objective, by_scenario={res.scenario: objective},
                       summaries=[res.summary], **common)

    def evaluations_per_hour(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.sandbox_evaluations / elapsed * 3600 if elapsed > 0 else 0.0

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
