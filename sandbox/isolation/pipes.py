"""Capped readers for a sandbox's stdout/stderr, and the daemon threads that pump them."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from sandbox.isolation.environment import READY_LINE


class CappedBuffer:
    """Collects a byte stream up to ``cap`` (head) or keeping the last ``cap`` bytes (tail)."""

    def __init__(self, cap: int, *, tail: bool = False) -> None:
        self.cap = cap
        self.tail = tail
        self.buf = bytearray()
        self.total = 0
        self.done = threading.Event()
        self.ready = threading.Event()
        """Set once the harness announced it is ready (stderr only)."""

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.tail:
            self.buf += data
            if len(self.buf) > 2 * self.cap:
                del self.buf[: len(self.buf) - self.cap]
        elif len(self.buf) < self.cap:
            self.buf += data[: self.cap - len(self.buf)]
        if not self.ready.is_set() and READY_LINE in self.buf:
            self.ready.set()

    @property
    def overflow(self) -> bool:
        return self.total > self.cap

    def value(self) -> bytes:
        return bytes(self.buf[-self.cap :] if self.tail else self.buf)


def pump_fd(stream, sink: CappedBuffer) -> None:
    """Read ``stream`` to its end into ``sink``; ``sink.done`` is set afterwards."""
    fd = stream.fileno()
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            sink.feed(data)
    except OSError:
        pass
    finally:
        sink.done.set()


def daemon_thread(target: Callable, *args) -> threading.Thread:
    """``target(*args)`` on a started daemon thread."""
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t
