"""The router's own bookkeeping, kept outside the policy so a policy swap keeps it.

In-flight requests and tokens per replica are counted at dispatch time -- the
router knows them exactly, while engine metrics arrive late (the cause of the
herding bugs real routers have had). The prefix index remembers which prompt
chunks the router sent to which replica, an estimate of each replica's
prefix cache that costs the engine nothing to report. The routing core
(``serving.routing``) does the counting, the one place both routers count.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from serving.contract import Request


@dataclass(slots=True)
class ReplicaLedger:
    inflight_requests: int = 0
    inflight_tokens: int = 0
    prefixes: OrderedDict[int, None] = field(default_factory=OrderedDict)
    prefix_capacity: int = 0
    """Prefix chunks remembered; roughly what the replica's KV cache can hold."""


class RouterAccounting:
    def __init__(self) -> None:
        self._ledgers: dict[int, ReplicaLedger] = {}

    def add_replica(self, replica_id: int, prefix_capacity: int) -> None:
        self._ledgers[replica_id] = ReplicaLedger(prefix_capacity=max(1, prefix_capacity))

    def remove_replica(self, replica_id: int) -> None:
        self._ledgers.pop(replica_id, None)

    def ledger(self, replica_id: int) -> ReplicaLedger:
        return self._ledgers[replica_id]

    def on_finish(self, replica_id: int, request: Request) -> bool:
        """Count ``request`` out; False when its replica already left the accounting."""
        ledger = self._ledgers.get(replica_id)
        if ledger is None:
            return False
        ledger.inflight_requests -= 1
        ledger.inflight_tokens -= request.prompt_tokens + request.max_output_tokens
        return True


def count_in(ledger: ReplicaLedger, request: Request) -> None:
    """``request`` was dispatched to ``ledger``'s replica: count it and index its prefix."""
    ledger.inflight_requests += 1
    ledger.inflight_tokens += request.prompt_tokens + request.max_output_tokens
    if request.prefix_hashes:
        prefixes = ledger.prefixes
        for h in request.prefix_hashes:
            prefixes[h] = None
            prefixes.move_to_end(h)
        while len(prefixes) > ledger.prefix_capacity:
            prefixes.popitem(last=False)


def overlap_blocks(ledger: ReplicaLedger, request: Request, block_size: int = 16) -> int:
    """Leading ``block_size``-token prompt blocks of ``request`` in ``ledger``'s prefix index."""
    if not request.prefix_hashes:
        return 0
    prefixes = ledger.prefixes
    n = 0
    for h in request.prefix_hashes:
        if h not in prefixes:
            break
        n += 1
    return min(n * request.prefix_block_tokens, request.prompt_tokens) // block_size
