"""The ceiling on fill memory (``cache.fill_memory``): bytes of chunk buffers alive at once.

A fill claims the bytes of its buffer before it fetches; the claim is given back when the
buffer is freed (the last reader and the commit have let go of it), not when the fill ends.
Claims are granted first come, first served: one waiting claim holds back later ones, so a
large fill is not starved by small ones. A read-ahead fill only starts when its claim can be
granted at once (``claim_now``), so a reader that waits holds no memory beyond its current
chunk, and readers cannot hold memory while waiting on each other.

``Slots`` (proxy/slots.py): the ceiling on store fetches at once (``cache.max_fills``), first
come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Claim:
    """``n`` bytes of a budget, granted or queued; ``release`` gives back what is held."""

    __slots__ = ("_budget", "n", "_granted")

    def __init__(self, budget: MemoryBudget, n: int) -> None:
        self._budget = budget
        self.n = n
        self._granted: asyncio.Future[None] | None = None

    @property
    def granted(self) -> bool:
        return self._granted is None or (self._granted.done() and not self._granted.cancelled())

    async def wait(self) -> None:
        """Until the bytes are granted; a caller that gives up (a timeout) calls ``release``."""
        if self._granted is not None:
            await asyncio.shield(self._granted)

    def shrink(self, n: int) -> None:
        """Keep only ``n`` bytes of a granted claim (the buffer turned out smaller)."""
        if n < self.n and self.granted:
            extra, self.n = self.n - n, n
            self._budget.give(extra)

    def release(self) -> None:
        """Give back what is held (or leave the queue); idempotent."""
        fut, n = self._granted, self.n
        self.n = 0
        if fut is not None and not fut.done():
            fut.cancel()  # still queued: the budget skips it
            self._budget.wake()
        elif n and self.granted:
            self._budget.give(n)


class MemoryBudget:
    """Not thread-safe: used from the event loop only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._queue: deque[tuple[Claim, asyncio.Future[None]]] = deque()

    def claim(self, n: int) -> Claim:
        """``n`` bytes now if there is room and nobody waits; else a place in the queue."""
        c = Claim(self, n)
        if not self._queue and self.used + n <= self.capacity:
            self.used += n
        else:
            fut = asyncio.get_running_loop().create_future()
            c._granted = fut
            self._queue.append((c, fut))
        return c

    def claim_now(self, n: int) -> Claim | None:
        """``n`` bytes at once, or None (there is no room, or others wait)."""
        if self._queue or self.used + n > self.capacity:
            return None
        self.used += n
        return Claim(self, n)

    def give(self, n: int) -> None:
        self.used -= n
        self.wake()

    def wake(self) -> None:
        queue = self._queue
        while queue:
            claim, fut = queue[0]
            if fut.done():  # given up while queued
                queue.popleft()
                continue
            if self.used + claim.n > self.capacity:
                return
            queue.popleft()
            self.used += claim.n
            fut.set_result(None)
