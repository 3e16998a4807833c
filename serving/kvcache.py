"""Paged KV-cache accounting with prefix caching, as vLLM V1's block pool does it.

Blocks are counted, not stored. A prompt chunk with a known hash becomes a
cache *entry* of ``unit_blocks`` blocks once computed; running sequences hold
references on entries, and an entry whose last reference goes is kept as
evictable (LRU) until its blocks are needed again. Usage, as vLLM reports it,
counts only blocks that some running sequence holds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    refs: int
    blocks: int


class KVCache:
    def __init__(self, capacity_blocks: int, *, prefix_caching: bool = True) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"KV cache needs at least one block, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self.prefix_caching = prefix_caching
        self.used = 0
        """Blocks held by running sequences (a shared entry counts once)."""
        self._entries: dict[int, _Entry] = {}
        self._evictable: OrderedDict[int, int] = OrderedDict()
        self._evictable_blocks = 0
        self.hit_queries = 0
        self.hit_units = 0

    @property
    def evictable_blocks(self) -> int:
        return self._evictable_blocks

    def available(self) -> int:
        """Blocks that can be handed out now, evicting cached entries if needed."""
        return self.capacity - self.used

    def take(self, n: int) -> None:
        if n > self.capacity - self.used:
            raise RuntimeError(f"KV cache over-allocated: need {n}, have {self.available()}")
        self.used += n
        # Evict least-recently-used entries only when truly free blocks run out,
        # so the cache keeps as much reusable prefix as it can.
        while self.capacity - self.used < self._evictable_blocks:
            key, blocks = self._evictable.popitem(last=False)
            self._evictable_blocks -= blocks
            del self._entries[key]

    def release(self, n: int) -> None:
        self.used -= n

    def match(self, hashes: tuple[int, ...], max_units: int) -> int:
        """How many leading hashes are cached (at most ``max_units``)."""
        if not self.prefix_caching:
            return 0
        n = 0
        entries = self._entries
        for h in hashes[:max_units]:
            if h not in entries:
                break
            n += 1
        self.hit_queries += 1
        self.hit_units += n
        return n

    def evictable_among(self, hashes: tuple[int, ...]) -> int:
        """Blocks of these (cached) entries that are currently evictable."""
        return sum(self._entries[h].blocks for h in hashes if self._entries[h].refs == 0)

    def ref(self, h: int) -> None:
        entry = self._entries[h]
        if entry.refs == 0:
            del self._evictable[h]
            self._evictable_blocks -= entry.blocks
            self.used += entry.blocks
        entry.refs += 1

    def deref(self, h: int) -> None:
        entry = self._entries[h]
        entry.refs -= 1
        if entry.refs == 0:
            self.used -= entry.blocks
            self._evictable[h] = entry.blocks
            self._evictable_blocks += entry.blocks

    def publish(self, h: int, blocks: int) -> bool:
        """Turn ``blocks`` private blocks of one sequence into a shared entry.

        Returns False when the hash is already cached (computed concurrently by
        another sequence): vLLM keeps such a duplicate private.
        """
        if not self.prefix_caching or h in self._entries:
            return False
        self._entries[h] = _Entry(refs=1, blocks=blocks)
        return True
