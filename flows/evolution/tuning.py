"""Optuna (TPE) over a candidate's ``PARAMS``, every trial evaluated in the sandbox.

The parameter space is read from the source with ``ast`` (literal ``PARAMS``
entries and the module globals holding current values), never by importing the
module: candidates may be LLM-written. A trial's values are baked into the
source (``responses.bake_params``), so what gets evaluated, archived and
registered is one self-contained module.

TPE is seeded from the run's seed and the slot; objectives reach it quantised
(``cascade.quantise``), so a rerun or a resumed run asks the same trials.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna

from flows.evolution.cascade import Outcome
from flows.evolution.responses import assignment, bake_params
from serving.contract import Param

optuna.logging.set_verbosity(logging.WARNING)

FAILED_VALUE = -1.0
"""What a rejected trial tells TPE: below any real objective (attainment is >= 0)."""


def read_params(source: str) -> dict[str, tuple[Param, float]]:
    """``{name: (Param, current value)}`` for every literal, valid PARAMS entry."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return {}
    specs: dict[str, Param] = {}
    values: dict[str, float] = {}
    for node in tree.body:
        target, value = assignment(node)
        if target == "PARAMS" and isinstance(value, ast.Dict):
            for k, v in zip(value.keys, value.values, strict=False):
                spec = _param(v)
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and spec is not None:
                    specs[k.value] = spec
        elif target is not None and value is not None:
            try:
                lit = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                continue
            if isinstance(lit, int | float) and not isinstance(lit, bool):
                values[target] = lit
    return {
        k: (p, values[k]) for k, p in specs.items() if k in values and p.low <= values[k] <= p.high
    }


def _param(node: ast.expr) -> Param | None:
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Param"):
        return None
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        return Param(*args, **kw)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


@dataclass
class Trial:
    params: dict[str, float]
    source: str
    outcome: Outcome


def tune(
    source: str,
    evaluate: Callable[[Sequence[str]], list[Outcome]],
    *,
    trials: int,
    seed: int,
    batch: int = 2,
) -> list[Trial]:
    """Run ``trials`` TPE trials (``batch`` evaluated together); the current values first."""
    space = read_params(source)
    if not space or trials <= 0:
        return []
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, trials))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({k: v for k, (_, v) in space.items()})
    done: list[Trial] = []
    while len(done) < trials:
        asked = [study.ask() for _ in range(min(batch, trials - len(done)))]
        params = [{k: _suggest(t, k, p) for k, (p, _) in space.items()} for t in asked]
        sources = [bake_params(source, p) for p in params]
        outcomes = evaluate(sources)
        for t, p, s, o in zip(asked, params, sources, outcomes, strict=True):
            study.tell(t, o.objective if o.ok else FAILED_VALUE)
            done.append(Trial(p, s, o))
    return done


def _suggest(trial: optuna.Trial, name: str, p: Param) -> float:
    if p.integer:
        return trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(name, p.low, p.high, log=p.log)
