"""``n`` things at once, first come, first served: fill slots (core/budget.py), a store
pool's connections (backends/kit/http1.py)."""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """``n`` things at once, first come, first served. A free slot is taken
    without awaiting or a timer (asyncio.Semaphore asks locked(), a scan of its waiters, twice
    per acquire); while any waits, a newcomer queues behind it."""

    __slots__ = ("free", "_queue")

    def __init__(self, n: int) -> None:
        self.free = n
        self._queue: deque[asyncio.Future[None]] = deque()  # none waits while any is free

    async def take(self, wait: float | None) -> bool:
        """A slot, waiting up to ``wait`` seconds for one (None: as long as it takes); False
        when none came in time."""
        if self.free and not self._queue:
            self.free -= 1
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter
        except TimeoutError:
            return waiter.done() and not waiter.cancelled()  # handed one as the timer fired
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed one as the reader went: pass it on
            raise
        return True

    def release(self) -> None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():  # a cancelled or timed-out waiter's is done
                waiter.set_result(None)
                return
        self.free += 1
