"""The LLM as a proposer that never holds the loop up: it answers in the background.

Requests (``q0000``, ``q0001``, ...) are asked ahead, ``cfg.llm_concurrency`` at a
time, by worker threads that only talk to the endpoint; the loop's thread makes
each answer a ``Draft`` (``drafts``: ``ast`` is not safe to use from two threads
at once in CPython 3.11) and asks one repair round, its error fed back, for an
answer it cannot use (``q0000/repair``, a later request). A slot takes the
oldest finished answer that is usable; with none ready the slot goes to
search (``llm_wait_s`` 0, the default), or waits for it (``llm_wait_s`` seconds;
None waits without limit and takes exactly one answer per slot, which makes a
run independent of the LLM's speed: the tests' and a benchmark's mode). A child
the sandbox rejects gets its repair round after the sandbox, as a later request.
Every valid child is then tuned by Optuna like a search child. What is asked
(an edit, or a composition when the parent is one and ``LLMConfig.compose`` is
on) is built in ``llm_requests``; a composition's answer is drafted by
``compose.compose_draft``, counted in this proposer's funnel and again in its
own (``report()["compose"]``).

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
import threading
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flows.evolution import compose, prompts
from flows.evolution.archive import Candidate
from flows.evolution.compose import compose_draft
from flows.evolution.config import Budget, EvolutionConfig
from flows.evolution.drafts import Draft, make_draft
from flows.evolution.journal import Journal
from flows.evolution.llm_requests import Request, archived_compositions, proposal, repair_round
from flows.evolution.proposals import Counters, Fill, Slot, Workshop, new_candidate
from flows.evolution.proposer import BudgetTracker, LLMError, Proposer
from flows.evolution.responses import normalised_hash
from flows.evolution.rundir import EvolutionError

MAX_ERRORS_IN_A_ROW = 3
"""An endpoint that failed this many requests in a row is not asked again this run."""


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
        self.composed = Counters()
        """The proposals asked for as compositions: their own funnel, also counted above."""
        self.budget = BudgetTracker(Budget(tokens=cfg.budget.tokens, usd=cfg.budget.usd))
        self.pending: deque[Request] = deque()
        self.issued = 0
        self._composed = False
        """Whether a composition has been archived (``_ready_to_ask``)."""
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
        reqs: list[Request] = []
        if rec is not None:  # decided before a kill: the same again, in the same order
            for k in rec["consumed"]:
                if not self.pending or self.pending[0].key != k:
                    raise EvolutionError(f"the journal's {key} does not match this run's requests")
                reqs.append(self.pending.popleft())
                self._drafted(reqs[-1])  # may ask its repair round, as the live run did
            return reqs, rec["took"]
        wait = self.cfg.llm_wait_s
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
            if self._usable(self._drafted(head)):
                took = head.key
                break
            if wait is None:
                break  # one answer per slot: what the LLM fills does not depend on its speed
        self.journal.put(key, {"kind": "slot", "consumed": [r.key for r in reqs], "took": took})
        return reqs, took

    def _drafted(self, req: Request) -> Draft:
        """The request's answer as a draft; an unusable first answer gets its repair round."""
        if req.draft is None:
            answer = req.answer
            if "error" in answer:
                req.draft = Draft(stage="llm", error=answer["error"])
            else:
                req.draft = (
                    make_draft(answer["text"], req.base, req.parent.source, req.known)
                    if req.genes is None
                    else compose_draft(answer["text"], req.genes, req.parent.source, req.known)
                )
                if not req.draft.ok and req.kind == "propose":
                    self._ask_repair(req)
        return req.draft

    def _usable(self, draft: Draft) -> bool:
        assert self.shop is not None
        if not draft.ok or draft.source is None:
            return False
        h = normalised_hash(draft.source)
        return h not in self.shop.archive.known_hashes() and h not in self.taken

    def _candidate(self, req: Request, slot: Slot, taken: bool) -> Candidate:
        """The consumed draft as a candidate: the slot's child, or a rejected one on record
        (a usable draft that did not take the slot repeats what the archive now holds)."""
        d = self._drafted(req)
        c = new_candidate(
            f"g{slot.generation:03d}-{req.key.replace('/', '-')}",
            d.source or req.parent.source,
            slot.generation,
            req.island,
            "llm",
            (req.parent.id,),
        )
        c.model = req.model.name
        c.tokens = int(req.answer.get("tokens", 0))
        c.cost_usd = float(req.answer.get("cost_usd", 0.0))
        c.prompt = json.dumps(req.messages, indent=1)
        c.response = req.answer.get("text", "")
        if not d.ok:
            c.rejection, c.stage = d.error, d.stage
        elif not taken:
            c.rejection, c.stage = "duplicate of an archived candidate", "duplicate"
        self._account(req, d, taken)
        return c

    def _account(self, req: Request, d: Draft, taken: bool) -> None:
        answer = req.answer
        self.budget.charge(int(answer.get("tokens", 0)), float(answer.get("cost_usd", 0.0)))
        failed = "error" in answer
        self.errors_in_a_row = self.errors_in_a_row + 1 if failed else 0
        self.extra["errors"] += failed
        self.extra["repaired"] += bool(d.repairs)
        if req.kind == "propose" and not failed:
            self._note(req, "proposed")
        self._note(req, *(s for s in d.reached() if taken or s != "unique"))

    def _note(self, req: Request, *stages: str) -> None:
        self.counters.note(req.root, *stages)
        if req.genes is not None:
            self.composed.note(req.root, *stages)

    def _evaluate(self, req: Request, c: Candidate, slot: Slot) -> list[Candidate]:
        """The slot's child in the sandbox, then tuned; a rejected one gets its repair round."""
        shop = self.shop
        assert shop is not None
        self.taken.add(c.ast_hash)
        self._note(req, "evaluated")
        shop.evaluate([c])
        if not c.ok:
            # One repair round per proposal: after the sandbox only if none came before it,
            # and not for a composition (the sandbox rejecting one is no answer's fault).
            if req.kind == "propose" and c.stage != "internal" and req.genes is None:
                self._ask_repair(req, c)
            return []
        out: list[Candidate] = []
        if shop.improves(c, req.parent):
            self._note(req, "improving")
        if self.cfg.tune_llm_candidates and shop.tunable(c):
            t = shop.tuned(c, slot, c.id + "t", c.island)
            if t is not None:
                out.append(t)
                if shop.improves(t, req.parent):
                    self._note(req, "improving")
        return out

    # ------------------------------------------------------------------ requests
    def _top_up(self) -> None:
        if self.retired is None:
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                self.retired = f"the endpoint failed {self.errors_in_a_row} requests in a row"
            else:
                self.retired = self.budget.exhausted()
        while (
            self.retired is None
            and len(self.pending) < max(1, self.cfg.llm_concurrency)
            and self._ready_to_ask()
        ):
            self._submit(self._new_request())

    def _ready_to_ask(self) -> bool:
        """Asking for compositions while search composes them, the first request waits for
        the first archived composition rather than ask for an edit: an edit prompt with the
        archive in it is ~5k tokens; read at 11 tokens/s by the local model on two shared
        cores, it ran past the 300 s timeout twice and took a whole 600 s run."""
        cfg = self.cfg
        if self._composed or not (cfg.llm.compose and cfg.structure_share > 0):
            return True
        assert self.shop is not None
        self._composed = bool(archived_compositions(self.shop.archive))
        return self._composed

    def _new_request(self) -> Request:
        assert self.shop is not None
        self.issued += 1
        return proposal(self.issued - 1, self.cfg, self.shop, self._workload)

    def _ask_repair(self, req: Request, failed: Candidate | None = None) -> None:
        """The proposal's one repair round (``llm_requests.repair_round``), a later request."""
        self.extra["sandbox_repairs" if failed is not None else "repair_rounds"] += 1
        self._submit(repair_round(req, failed))

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
                req.future.set_result(self._ask(req))
            except BaseException as e:  # a bug here must reach the loop, not die in a thread
                req.future.set_exception(e)

    def _ask(self, req: Request) -> dict[str, Any]:
        """The endpoint's answer (journaled), on a worker thread: no ``ast`` here."""
        rec = self.journal.get(f"llm/{req.key}")
        if rec is not None:
            return rec
        try:
            reply = self.client.complete(
                req.messages,
                req.model,
                seed=req.seed,
                tag=req.key,
                response_format=None if req.genes is None else compose.response_format(),
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
                "model": req.model.name,
                "tokens": 0,
                "cost_usd": 0.0,
            }
        self.journal.put(f"llm/{req.key}", rec)
        return rec

    # ------------------------------------------------------------------ the report
    def report(self) -> dict[str, Any]:
        return {
            **self.counters.counts(),
            **self.extra,
            "tokens": self.budget.tokens,
            "cost_usd": self.budget.usd,
            "retired": self.retired,
            "compose": self.composed.counts(),
        }

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        self.client.close()
