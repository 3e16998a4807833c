"""Frozen configuration of one evolution run.

Everything that changes what a run does lives here, so that the run's identity
(``EvolutionConfig.fingerprint``) can be checked when a killed run is resumed:
resuming with a different config would silently mix two experiments.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sandbox.objectives import Objective
from sandbox.replay.engines import EngineTarget
from sandbox.scenarios import SCENARIO_NAMES
from sandbox.splits import check_split


@dataclass(frozen=True)
class Suite:
    """A scenario set as the sandbox replays it: names, seeds, scale and split."""

    scenarios: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    scale: float = 1.0
    windows_dir: str | None = None
    """Folder of the window files that ``window:`` scenarios name (``sandbox.window_scenarios``).
    Not part of the digest: a window name's hash prefix already pins its content."""
    split: str = "train"
    """Which region of the traces the catalogue scenarios replay (``sandbox.splits``).
    Evolution, tuning and promotion use ``train``; only reports of a champion use
    ``test``."""

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ValueError("a suite needs at least one scenario")
        if not self.seeds:
            raise ValueError("a suite needs at least one seed")
        if not 0 < self.scale <= 1:
            raise ValueError(f"suite scale must be in (0, 1], not {self.scale}")
        check_split(self.split)

    @property
    def digest(self) -> str:
        """Hash of the scenario set: scores are only comparable under the same digest."""
        ident = {
            "scenarios": list(self.scenarios),
            "seeds": list(self.seeds),
            "scale": self.scale,
            "split": self.split,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


# The quick suite: scenarios where the policies differ: bursts (bursty-code), capacity
# events where rescheduling matters (gpu-loss, slow-ramp with spare GPUs) and prefix reuse
# (prefix-heavy). It is quick by having four scenarios and one seed, at full size: no
# smaller build kept the full suite's regime (shortening a run lifted near-saturation
# attainment by up to 0.1 and changed the top two; halving prefix-heavy's fleet moved
# least_outstanding by up to 0.45 on a test stretch). tests/test_regime.py holds every
# scenario to the regime at QUICK_SCALE.
QUICK_SCALE = 1.0
QUICK_SUITE = Suite(("bursty-code", "gpu-loss", "prefix-heavy", "slow-ramp"), (0,), QUICK_SCALE)
# The full suite guards the quick one against overfitting: every scenario, two seeds, full
# size (a full-size simulation takes ~0.2-1 s).
FULL_SUITE = Suite(SCENARIO_NAMES, (0, 1), 1.0)


@dataclass(frozen=True)
class ModelChoice:
    """One LLM the proposer may ask, drawn with probability proportional to ``weight``."""

    name: str
    weight: float = 1.0
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0


@dataclass(frozen=True)
class LLMConfig:
    """An OpenAI-compatible endpoint. ``base_url`` None means: no LLM, Optuna only."""

    base_url: str | None = None
    api_key: str = field(default="", repr=False)
    models: tuple[ModelChoice, ...] = (ModelChoice("local"),)
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    """First retry delay; doubles each retry (capped at 30 s), honouring Retry-After."""
    max_tokens: int = 2048
    temperature: float = 0.8
    grammar: bool = False
    """Constrain answers to the edit format (``edits.ANSWER_GRAMMAR``) with the ``grammar``
    request field: llama.cpp servers (``serve-local``) honour it; hosted APIs refuse it."""
    compose: bool = False
    """When a proposal's parent is a kit composition, ask for a composition instead of an
    edit: a JSON object held to ``compose.json_schema()`` by OpenAI's ``response_format``
    (llama.cpp turns it into a grammar), rendered as a module (``compose``)."""

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    @classmethod
    def from_env(cls, base_url: str | None, model: str | None = None, **kw: Any) -> LLMConfig:
        # The key is read from the environment, never from a flag (shell history, ps).
        key = os.environ.get("AUTOPOIESIS_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY", "")
        base = base_url or os.environ.get("AUTOPOIESIS_LLM_BASE_URL") or None
        models = tuple(
            ModelChoice(m.split("=")[0], float(m.split("=")[1]) if "=" in m else 1.0)
            for m in (model or os.environ.get("AUTOPOIESIS_LLM_MODEL", "local")).split(",")
            if m
        )
        return cls(base_url=base, api_key=key or "not-needed", models=models, **kw)


@dataclass(frozen=True)
class Budget:
    """Caps that stop a run cleanly (the generation in flight finishes its bookkeeping)."""

    tokens: int | None = None
    usd: float | None = None
    wall_s: float | None = None


@dataclass(frozen=True)
class ConfirmStage:
    """The replay stage after the full suite (``sandbox.replay.stage``); off at ``top_k`` 0.

    The best ``top_k`` challengers and the champion each route the first ``requests``
    requests of ``scenario`` through the live router on engines (``target``: simulated
    engines here, engine URLs or ``vllm-docker`` on a GPU runner); the challenger is then
    chosen on what was measured there.
    """

    top_k: int = 0
    target: str = "simulated"
    """``simulated``, ``vllm-docker`` or comma-separated engine URLs."""
    requests: int = 200
    time_scale: float = 1.0
    """Simulated engines: wall seconds per model second (above 1 where the CPUs lag)."""
    model: str = ""
    """``vllm-docker``: the model to serve; URLs: the served model name (empty: asked)."""
    gpu_ids: tuple[str, ...] = ()
    """``vllm-docker``: this host's device ids."""
    scenario: str | None = None
    """The scenario sliced; None: the quick suite's first (the live window, when evolving
    on one)."""
    tolerance: float = 0.02
    """On the replay a challenger may trail the champion by at most this: four requests'
    worth of SLO attainment on a 200-request slice."""
    wall_s: float = 900.0
    """Wall-clock limit of one candidate's replay (engines started, slice sent)."""

    def __post_init__(self) -> None:
        if self.top_k > 0:
            self.engines()  # a bad target fails the run's start, not its end

    def engines(self) -> EngineTarget:
        return EngineTarget.parse(self.target, time_scale=self.time_scale, model=self.model,
                                  gpu_ids=tuple(self.gpu_ids))


@dataclass(frozen=True)
class EvolutionConfig:
    quick: Suite = QUICK_SUITE
    full: Suite | None = FULL_SUITE
    """None: no cascade, the quick suite decides alone."""
    generations: int = 4
    population: int = 4
    """Candidates per generation, spread over the islands."""
    islands: int = 2
    migrate_every: int = 2
    """Every this many generations each island sends its best to the next (ring)."""
    seed: int = 0
    seeds_policies: tuple[str, ...] = (
        "least_outstanding",
        "llmd_weighted",
        "prefix_affinity",
        "power_of_two",
        "shortest_queue",
        "least_kv",
        "threshold_autoscaler",
        "reconfigure_if_pays",
    )
    tune_trials: int = 12
    """Optuna trials per tuned candidate (each one quick-suite evaluation)."""
    structure_share: float = 0.75
    """Of the slots search takes (all but the LLM's), the share that structural search
    composes new policies from the kit in (``structure``); the rest tune an archived
    policy's constants. 0: tuning only. Each slot is ``tune_trials`` evaluations either way."""
    tune_llm_candidates: bool = True
    """Every LLM child the sandbox accepts is tuned too (when it has PARAMS)."""
    llm_concurrency: int = 1
    """LLM requests in flight at once (a local one-slot server: 1)."""
    llm_wait_s: float | None = 0.0
    """How long a slot waits for the LLM's next answer before search takes it: 0 never
    waits; None waits without limit and takes one answer per slot, so the run does not
    depend on the LLM's speed (reproducible, as slow as the LLM)."""
    promising_margin: float = 0.01
    """Candidates within this of their island's best (quick suite) go on to tuning / full."""
    full_tolerance: float = 0.005
    """A challenger may trail the champion on the full suite by at most this (noise)."""
    objective_resolution: float = 1e-5
    """Objectives are rounded to this: the simulator charges measured decision wall time,
    so the last digits jitter between identical runs; finer differences are noise."""
    min_gain: float = 1e-4
    """A cell's elite is replaced only by a candidate better by more than this."""
    backend: str = "process"
    parallel: int = 2
    eval_wall_s: float = 180.0
    """Sandbox deadline of one evaluation: the full suite is 20 full-size simulations
    (1-1.7 s each measured with this machine's two cores shared by other work)."""
    eval_memory_mb: int = 1024
    llm: LLMConfig = LLMConfig()
    objective: Objective = field(default_factory=Objective)
    """What every evaluation scores (``sandbox.objectives``): slo, capacity or cost."""
    budget: Budget = Budget()
    prompt_top: int = 2
    prompt_diverse: int = 2
    prompt_errors: int = 3
    confirm: ConfirmStage = ConfirmStage()

    def __post_init__(self) -> None:
        if not 0.0 <= self.structure_share <= 1.0:
            raise ValueError(f"structure_share must be in [0, 1], not {self.structure_share}")

    def with_(self, **kw: Any) -> EvolutionConfig:
        return replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["llm"].pop("api_key", None)
        return d

    @property
    def fingerprint(self) -> str:
        """What must match for a resume: everything that shapes the search, not the caps."""
        d = self.to_dict()
        for volatile in ("budget", "backend", "parallel", "eval_wall_s"):
            d.pop(volatile, None)
        if not self.llm.enabled:  # how to wait for an LLM that is not there shapes nothing
            d.pop("llm_concurrency")
            d.pop("llm_wait_s")
        if self.structure_share == 0:
            d.pop("structure_share")  # tuning only: runs from before the option resume
        if self.confirm.top_k <= 0:
            d.pop("confirm")  # off: a run from before the stage existed resumes as it was
        else:
            d["confirm"].pop("wall_s")
        for suite in ("quick", "full"):  # where window files live is not what they hold
            if d.get(suite):
                d[suite].pop("windows_dir", None)
        # The endpoint URL may change between sessions (a local server's port); the models not.
        d["llm"] = {k: d["llm"][k] for k in ("models", "max_tokens", "temperature")}
        for flag in ("grammar", "compose"):  # only when on: older runs resume as they were
            if getattr(self.llm, flag):
                d["llm"][flag] = True
        d["llm"]["enabled"] = self.llm.enabled
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
