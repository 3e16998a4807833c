"""The LLM as a proposer that never holds the loop up: it answers in the background.

Requests (``q0000``, ``q0001``, ...) are asked ahead, ``cfg.llm_concurrency`` at a
time, by worker threads; each answer becomes a ``Draft`` there (``drafts``), with
one repair round, its error fed back, when it cannot be used as it is. A slot
takes the oldest finished draft that is usable; with none ready the slot goes to
search (``llm_wait_s`` 0, the default), or waits for it (``llm_wait_s`` seconds;
None waits without limit and takes exactly one answer per slot, which makes a
run independent of the LLM's speed: the tests' and a benchmark's mode). A child
the sandbox rejects gets its repair round after the sandbox, as a later request.
Every valid child is then tuned by Optuna like a search child.

Determinism and resume. Requests are issued at fixed points (when a slot is
filled) with prompts built from the archive as it stands then, and every answer
is journaled under its request key; which answers a slot consumed and which took
it is journaled too (``slot/g001-s002``). A resumed run therefore replays every
decision taken before the kill exactly. What waiting for no one gives up: with
``llm_wait_s`` not None, two uninterrupted runs with the same answers can still
differ, because how many slots the LLM fills depends on how fast it answers.
"""

from __future__ import annotations

import json
import queue
import random
import threading
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from flows.evolution import prompts
from flows.evolution.archive import Candidate
from flows.evolution.config import Budget, EvolutionConfig, ModelChoice
from flows.evolution.drafts import Draft, make_draft
from flows.evolution.edits import mark
from flows.evolution.journal import Journal
from flows.evolution.proposals import Counters, Fill, Slot, Workshop, new_candidate
from flows.evolution.proposer import BudgetTracker, LLMError, Proposer, pick_model
from flows.evolution.responses import normalised_hash
from flows.evolution.rundir import EvolutionError

MAX_ERRORS_IN_A_ROW = 3
"""An endpoint that failed this many requests in a row is not asked again this run."""


@dataclass
class Request:
    key: str
    root: str
    """The proposal it belongs to: its own key, or the key whose sandbox repair it is."""
    parent: Candidate
    base: str
    """The marked source the model is shown and its edits apply to."""
    messages: list[dict[str, str]]
    model: ModelChoice
    seed: int
    island: int
    known: frozenset[str]
    """Normalised hashes a usable answer must not repeat (the archive when it was asked)."""
    last_round: bool = False
    """A sandbox repair: the proposal's one repair round, so no further one."""
    future: Future[Result] = field(default_factory=Future, repr=False)


@dataclass
class Result:
    draft: Draft
    answers: list[dict[str, Any]]
    """The journal records of the calls made (the answer, then the repair round's)."""
    messages: list[dict[str, str]]
    """The conversation of the last call."""


class LLMProposer:
    kind = "llm"

    def __init__(
        self, cfg: EvolutionConfig, journal: Journal, client: Proposer | None = None
    ) -> None:
        if not cfg.llm.enabled:
            raise ValueError("no LLM endpoint configured")
        self.cfg = cfg
        self.journal = journal
        self.client = client or Proposer(cfg.llm)
        self.counters = Counters()
        self.budget = BudgetTracker(Budget(tokens=cfg.budget.tokens, usd=cfg.budget.usd))
        self.pending: deque[Request] = deque()
        self.issued = 0
        self.retired: str | None = None
        self.errors_in_a_row = 0
        self.extra = {"errors": 0, "repaired": 0, "repair_rounds": 0, "sandbox_repairs": 0}
        self.taken: set[str] = set()
        self.shop: Workshop | None = None
        self._workload = prompts.describe_workload(cfg.quick.scenarios)
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"llm-{i}", daemon=True)
            for i in range(max(1, cfg.llm_concurrency))
        ]
        for t in self._threads:
            t.start()

    def bind(self, shop: Workshop) -> None:
        self.shop = shop

    # ------------------------------------------------------------------ the slot
    def fill(self, slot: Slot) -> Fill:
        shop = self.shop
        assert shop is not None, "bind() first"
        self._top_up()
        reqs, took = self._decide(slot)
        fill = Fill(took=took is not None)
        for req in reqs:
            c = self._candidate(req, slot, taken=req.key == took)
            fill.candidates.append(c)
            shop.advance("proposed")
            if req.key == took:
                fill.candidates += self._evaluate(req, c, slot)
        self._top_up()
        return fill

    def _decide(self, slot: Slot) -> tuple[list[Request], str | None]:
        """The requests this slot consumes and the one whose draft takes it (or None)."""
        key = f"slot/{slot.id}"
        rec = self.journal.get(key)
        if rec is not None:  # decided before a kill: the same again
            keys = list(rec["consumed"])
            if [r.key for r in list(self.pending)[: len(keys)]] != keys:
                raise EvolutionError(f"the journal's {key} does not match this run's requests")
            return [self.pending.popleft() for _ in keys], rec["took"]
        wait = self.cfg.llm_wait_s
        reqs: list[Request] = []
        took = None
        while self.pending:
            head = self.pending[0]
            if not head.future.done():
                if reqs:
                    break
                try:
                    head.future.result(timeout=wait)
                except FutureTimeout:
                    break
            reqs.append(self.pending.popleft())
            if self._usable(head, head.future.result().draft):
                took = head.key
                break
            if wait is None:
                break  # one answer per slot: what the LLM fills does not depend on its speed
        self.journal.put(key, {"kind": "slot", "consumed": [r.key for r in reqs], "took": took})
        return reqs, took

    def _usable(self, req: Request, draft: Draft) -> bool:
        assert self.shop is not None
        if not draft.ok or draft.source is None:
            return False
        h = normalised_hash(draft.source)
        return h not in self.shop.archive.known_hashes() and h not in self.taken

    def _candidate(self, req: Request, slot: Slot, taken: bool) -> Candidate:
        """The consumed draft as a candidate: the slot's child, or a rejected one on record
        (a usable draft that did not take the slot repeats what the archive now holds)."""
        res = req.future.result()
        d = res.draft
        c = new_candidate(
            f"g{slot.generation:03d}-{req.key}",
            d.source or req.parent.source,
            slot.generation,
            req.island,
            "llm",
            (req.parent.id,),
        )
        c.model = req.model.name
        c.tokens = sum(int(a.get("tokens", 0)) for a in res.answers)
        c.cost_usd = sum(float(a.get("cost_usd", 0.0)) for a in res.answers)
        c.prompt = json.dumps(res.messages, indent=1)
        c.response = "\n\n---- repair round ----\n\n".join(a.get("text", "") for a in res.answers)
        if not d.ok:
            c.rejection, c.stage = d.error, d.stage
        elif not taken:
            c.rejection, c.stage = "duplicate of an archived candidate", "duplicate"
        self._account(req, res, taken)
        return c

    def _account(self, req: Request, res: Result, taken: bool) -> None:
        for a in res.answers:
            self.budget.charge(int(a.get("tokens", 0)), float(a.get("cost_usd", 0.0)))
        d = res.draft
        first_failed = "error" in res.answers[0]
        self.errors_in_a_row = self.errors_in_a_row + 1 if first_failed else 0
        self.extra["errors"] += sum(1 for a in res.answers if "error" in a)
        self.extra["repaired"] += bool(d.repairs)
        if req.last_round:
            self.extra["sandbox_repairs"] += 1
        else:
            self.extra["repair_rounds"] += len(res.answers) > 1
            if not first_failed:
                self.counters.note(req.root, "proposed")
        self.counters.note(req.root, *(s for s in d.reached() if taken or s != "unique"))

    def _evaluate(self, req: Request, c: Candidate, slot: Slot) -> list[Candidate]:
        """The slot's child in the sandbox, then tuned; a rejected one gets its repair round."""
        shop = self.shop
        assert shop is not None
        self.taken.add(c.ast_hash)
        self.counters.note(req.root, "evaluated")
        shop.evaluate([c])
        if not c.ok:
            # One repair round per proposal: after the sandbox only if none came before it.
            first_try = not req.last_round and len(req.future.result().answers) == 1
            if first_try and c.stage != "internal":
                self._ask_sandbox_repair(req, c)
            return []
        out: list[Candidate] = []
        if shop.improves(c, req.parent):
            self.counters.note(req.root, "improving")
        if self.cfg.tune_llm_candidates and shop.tunable(c):
            t = shop.tuned(c, slot, c.id + "t", c.island)
            if t is not None:
                out.append(t)
                if shop.improves(t, req.parent):
                    self.counters.note(req.root, "improving")
        return out

    # ------------------------------------------------------------------ requests
    def _top_up(self) -> None:
        if self.retired is None:
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                self.retired = f"the endpoint failed {self.errors_in_a_row} requests in a row"
            else:
                self.retired = self.budget.exhausted()
        while self.retired is None and len(self.pending) < max(1, self.cfg.llm_concurrency):
            self._submit(self._new_request())

    def _new_request(self) -> Request:
        shop, cfg = self.shop, self.cfg
        assert shop is not None
        n = self.issued
        self.issued += 1
        rng = random.Random(f"{cfg.seed}/llm/{n}")
        island = n % cfg.islands
        parent = shop.archive.sample_parent(rng, island) or shop.champion
        model = pick_model(cfg.llm.models, rng)
        messages = prompts.build_messages(
            parent=parent,
            champion=shop.champion,
            archive=shop.archive,
            diagnosis=shop.diagnosis,
            workload=self._workload,
            rng=rng,
            n_top=cfg.prompt_top,
            n_diverse=cfg.prompt_diverse,
            n_errors=cfg.prompt_errors,
        )
        key = f"q{n:04d}"
        return Request(
            key,
            key,
            parent,
            mark(parent.source),
            messages,
            model,
            rng.randrange(2**31),
            island,
            frozenset(shop.archive.known_hashes()),
        )

    def _ask_sandbox_repair(self, req: Request, c: Candidate) -> None:
        res = req.future.result()
        error = f"in the sandbox ({c.stage}): {c.rejection}"
        messages = prompts.repair_messages(
            res.messages, res.answers[-1].get("text", ""), error, c.source, prompts.REPAIR_EDIT
        )
        self._submit(
            Request(
                f"{req.key}r",
                req.root,
                req.parent,
                mark(c.source),
                messages,
                req.model,
                req.seed,
                req.island,
                req.known | {c.ast_hash},
                last_round=True,
            )
        )

    def _submit(self, req: Request) -> None:
        self.pending.append(req)
        self._queue.put(req)

    # ------------------------------------------------------------------ worker threads
    def _serve(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            try:
                req.future.set_result(self._work(req))
            except BaseException as e:  # a bug here must reach the loop, not die in a thread
                req.future.set_exception(e)

    def _work(self, req: Request) -> Result:
        first = self._ask(req.key, req.messages, req)
        if "error" in first:
            return Result(Draft(stage="llm", error=first["error"]), [first], req.messages)
        parent = req.parent.source
        draft = make_draft(first["text"], req.base, parent, req.known)
        if draft.ok or req.last_round:
            return Result(draft, [first], req.messages)
        shown = draft.source or req.base
        instruction = (
            prompts.REWRITE_BLOCK
            if draft.stage == "parse"
            else prompts.REAL_CHANGE
            if draft.stage in ("copy", "duplicate")
            else prompts.REPAIR_EDIT
        )
        messages = prompts.repair_messages(
            req.messages, first["text"], draft.error or "", shown, instruction
        )
        second = self._ask(f"{req.key}/repair", messages, req)
        if "error" in second:
            return Result(draft, [first, second], messages)
        return Result(
            make_draft(second["text"], mark(shown), parent, req.known), [first, second], messages
        )

    def _ask(self, key: str, messages: list[dict[str, str]], req: Request) -> dict[str, Any]:
        rec = self.journal.get(f"llm/{key}")
        if rec is not None:
            return rec
        try:
            reply = self.client.complete(messages, req.model, seed=req.seed, tag=key)
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
                "model": req.model.name,
                "tokens": 0,
                "cost_usd": 0.0,
            }
        self.journal.put(f"llm/{key}", rec)
        return rec

    # ------------------------------------------------------------------ the report
    def report(self) -> dict[str, Any]:
        return {
            **self.counters.counts(),
            **self.extra,
            "tokens": self.budget.tokens,
            "cost_usd": self.budget.usd,
            "retired": self.retired,
        }

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        self.client.close()
