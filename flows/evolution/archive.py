"""MAP-Elites archive over behavioural descriptors, split into islands with migration.

Each island keeps its own grid: a cell (one combination of descriptor bins)
holds the best candidate seen there. Islands evolve apart, which keeps
structurally different policies alive; every few generations each island's
best moves to the next island (a ring), so good ideas still spread.

The archive holds no randomness of its own: callers pass a ``random.Random``
derived from (run seed, generation, slot), which is what lets a resumed run
make the same choices (see ``journal``).

Descriptors (deterministic given the evaluation, so a cell does not flicker):
- queue share: router+engine queueing time / end-to-end latency (mean over the
  quick suite) -- does the policy hold/queue work or push it to engines early;
- preemption rate: KV-cache preemptions per request -- does it overload caches;
- code size: AST nodes of the module -- simple vs elaborate policies.
"""

from __future__ import annotations

import ast
import bisect
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

QUEUE_EDGES = (0.05, 0.15, 0.35)
PREEMPT_EDGES = (0.005, 0.05)
SIZE_EDGES = (150, 400, 900)
DESCRIPTORS = ("queue_share", "preemption_rate", "code_size")


@dataclass
class Candidate:
    id: str
    source: str
    sha256: str
    ast_hash: str
    generation: int
    island: int
    origin: str
    """"seed:<baseline>", "llm", "tune", "migrant"."""
    parent_ids: tuple[str, ...] = ()
    model: str = ""
    params: dict[str, float] = field(default_factory=dict)
    quick: float | None = None
    full: float | None = None
    quick_by_scenario: dict[str, float] = field(default_factory=dict)
    full_by_scenario: dict[str, float] = field(default_factory=dict)
    descriptors: dict[str, float] = field(default_factory=dict)
    cell: tuple[int, ...] = ()
    rejection: str | None = None
    stage: str | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    prompt: str = ""
    response: str = ""
    tuning: list[float] = field(default_factory=list)
    eval_s: float = 0.0
    """Sandbox wall time of this candidate's evaluations (quick, full, tuning trials)."""
    results: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """Per-(scenario, seed) sandbox results on the quick suite (summaries, decision stats)."""
    full_results: list[dict[str, Any]] = field(default_factory=list, repr=False)
    confirmed: float | None = None
    """Objective measured by the replay stage (through the live router, on engines)."""
    confirmation: dict[str, Any] = field(default_factory=dict, repr=False)
    """The replay stage's verdict and result (``ReplayResult.to_dict``)."""

    @property
    def ok(self) -> bool:
        return self.rejection is None and self.quick is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def code_size(source: str) -> int:
    try:
        return sum(1 for _ in ast.walk(ast.parse(source)))
    except (SyntaxError, ValueError, RecursionError):
        return 0


def descriptors_of(summaries: list[dict[str, float]], source: str) -> dict[str, float]:
    shares, preempt = [], []
    for s in summaries:
        e2e = s.get("e2e_mean_s", math.nan)
        q = s.get("queue_mean_s", math.nan)
        if math.isfinite(e2e) and e2e > 0 and math.isfinite(q):
            shares.append(q / e2e)
        if s.get("requests", 0) > 0:
            preempt.append(s.get("preemptions", 0.0) / s["requests"])
    return {
        "queue_share": sum(shares) / len(shares) if shares else 0.0,
        "preemption_rate": sum(preempt) / len(preempt) if preempt else 0.0,
        "code_size": float(code_size(source)),
    }


def cell_of(desc: dict[str, float]) -> tuple[int, ...]:
    return (
        bisect.bisect_right(QUEUE_EDGES, desc.get("queue_share", 0.0)),
        bisect.bisect_right(PREEMPT_EDGES, desc.get("preemption_rate", 0.0)),
        bisect.bisect_right(SIZE_EDGES, desc.get("code_size", 0.0)),
    )


class Archive:
    def __init__(self, islands: int, min_gain: float = 1e-4) -> None:
        self.islands: list[dict[tuple[int, ...], str]] = [{} for _ in range(islands)]
        self.candidates: dict[str, Candidate] = {}
        self.min_gain = min_gain

    def record(self, cand: Candidate) -> None:
        """Remember every candidate (failed ones too: their errors feed later prompts)."""
        self.candidates[cand.id] = cand

    def add(self, cand: Candidate, island: int | None = None) -> bool:
        """Offer ``cand`` to an island's grid; True if it became its cell's elite."""
        self.record(cand)
        if not cand.ok:
            return False
        grid = self.islands[cand.island if island is None else island]
        cell = cand.cell or cell_of(cand.descriptors)
        incumbent = grid.get(cell)
        if incumbent is not None:
            inc = self.candidates[incumbent]
            # Strictly better by min_gain: noise-level differences do not churn the grid.
            if (cand.quick or -math.inf) <= (inc.quick or -math.inf) + self.min_gain:
                return False
        grid[cell] = cand.id
        return True

    def elites(self, island: int | None = None) -> list[Candidate]:
        grids = self.islands if island is None else [self.islands[island]]
        ids = [cid for g in grids for cid in g.values()]
        # Stable order (by id) so choices made from it do not depend on dict history.
        return [self.candidates[c] for c in sorted(set(ids))]

    def best(self, island: int | None = None) -> Candidate | None:
        el = self.elites(island)
        return _argmax(el)

    def sample_parent(self, rng: random.Random, island: int) -> Candidate | None:
        """Uniform over the island's elites, MAP-Elites' classic choice (no score bias)."""
        el = self.elites(island) or self.elites()
        return rng.choice(el) if el else None

    def top(self, k: int, exclude: tuple[str, ...] = ()) -> list[Candidate]:
        el = [c for c in self.elites() if c.id not in exclude]
        return sorted(el, key=lambda c: (-(c.quick or -math.inf), c.id))[:k]

    def diverse(self, k: int, rng: random.Random, exclude: tuple[str, ...] = ()) -> list[Candidate]:
        """Elites from distinct cells, away from the best's cell first."""
        el = [c for c in self.elites() if c.id not in exclude]
        by_cell: dict[tuple[int, ...], Candidate] = {}
        for c in el:
            by_cell.setdefault(tuple(c.cell), c)
        cells = sorted(by_cell)
        rng.shuffle(cells)
        return [by_cell[c] for c in cells[:k]]

    def failures(self, k: int) -> list[Candidate]:
        bad = [c for c in self.candidates.values() if c.rejection]
        return sorted(bad, key=lambda c: c.id)[-k:]

    def migrate(self) -> list[tuple[int, int, str]]:
        """Each island's best is offered to the next island (ring). Returns the moves."""
        moves = []
        bests = [self.best(i) for i in range(len(self.islands))]
        for i, b in enumerate(bests):
            if b is None or len(self.islands) < 2:
                continue
            dest = (i + 1) % len(self.islands)
            if self.add(b, island=dest):
                moves.append((i, dest, b.id))
        return moves

    def known_hashes(self) -> set[str]:
        return {c.ast_hash for c in self.candidates.values()}

    def coverage(self) -> int:
        return len({cell for g in self.islands for cell in g})

    def snapshot(self) -> dict[str, Any]:
        return {
            "islands": [
                {",".join(map(str, cell)): cid for cell, cid in sorted(g.items())}
                for g in self.islands
            ],
            "candidates": {
                cid: {
                    "quick": c.quick,
                    "full": c.full,
                    "confirmed": c.confirmed,
                    "cell": list(c.cell),
                    "origin": c.origin,
                    "parents": list(c.parent_ids),
                    "rejection": c.rejection,
                }
                for cid, c in sorted(self.candidates.items())
            },
        }


def _argmax(cands: list[Candidate]) -> Candidate | None:
    best = None
    for c in sorted(cands, key=lambda c: c.id):
        if c.quick is not None and (best is None or c.quick > (best.quick or -math.inf)):
            best = c
    return best
