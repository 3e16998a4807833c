"""How a serving process is tuned at start-up: its event loop and its garbage collector.

Called by the programs that serve HTTP (the router, the simulated engine server, the
router benchmark), before their event loop starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc


def install_uvloop() -> None:
    """uvloop's event loop where it is installed (optional)."""
    # uvloop roughly halves per-request event-loop overhead.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Fewer, smaller collector pauses on the request path.

    Everything loaded at start-up (modules, policy, config) is frozen out of the
    collector, and the young-generation threshold raised: a router allocates
    many short-lived objects per request, and each default-threshold collection
    shows up as a latency spike at p99.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
