"""Client reads first: every warm job's fetch of an object passes this gate, and so does every
prefetch job's (``gated``: in the process whose fill slots it takes, a worker's for what the
supervisor hands over); client fills never do. Jobs together hold at most ``share`` of the fill
slots (``cache.max_fills``), so a client miss finds a slot free, and while any fill waits for a
slot or for fill memory no job fetch starts: the waiting (client) fills get the slots and
memory the job's fetches give back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from proxy.core.fills import Fills
from proxy.routing import Mount

T = TypeVar("T")


def job_share(max_fills: int) -> int:
    """The fill slots jobs may use together: three quarters, at least one."""
    return max(1, max_fills * 3 // 4)


class JobGate:
    def __init__(self, fills: Fills, share: int, *, yield_to_clients: bool = True) -> None:
        self._fills = fills
        self._share = asyncio.Semaphore(share)
        self._yield = yield_to_clients

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the jobs' slots for one object's fetch, once no fill is waiting."""
        async with self._share:
            while self._yield and self._fills.waiting:
                await self._fills.unqueued.wait()
            yield


def gated(
    gate: JobGate, fetch: Callable[[Mount, str], Awaitable[T]]
) -> Callable[[Mount, str], Awaitable[T]]:
    """``fetch`` of one object, each call in a turn of ``gate``."""

    async def run(mount: Mount, key: str) -> T:
        async with gate.turn():
            return await fetch(mount, key)

    return run


def jobs_gate(fills: Fills) -> JobGate:
    """The gate of a process's jobs over its ``fills``: ``job_share`` of its fill slots."""
    return JobGate(fills, job_share(fills.cfg.max_fills))
