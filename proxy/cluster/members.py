"""Membership providers: who is in the cluster and alive. ``StaticMembers`` takes the list from
the config and health-checks each peer; DNS and etcd providers implement the same Protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from proxy import log

FAILS_TO_LEAVE = 2  # checks failed in a row before a member leaves live()
OKS_TO_REJOIN = 2  # checks passed in a row before it comes back (no flapping under load)


class Members(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def live(self) -> tuple[str, ...]: ...  # "host:port" of live members, self included, sorted


class StaticMembers:
    """``members`` from the config; each peer is checked every ``interval`` seconds and leaves
    ``live()`` after FAILS_TO_LEAVE failed checks in a row and comes back after OKS_TO_REJOIN
    passed ones (one lucky answer under load does not move ownership back and forth). Self is
    always live."""

    def __init__(
        self,
        members: Iterable[str],
        self_addr: str,
        check: Callable[[str], Awaitable[bool]],
        interval: float = 1.0,
    ) -> None:
        self.members = tuple(sorted(set(members) | {self_addr}))
        self.self_addr = self_addr
        self._check = check
        self.interval = interval
        self._fails = {m: 0 for m in self.members if m != self_addr}
        self._oks = dict.fromkeys(self._fails, 0)
        self._out: set[str] = set()  # members that left live() and have not come back
        self._live = self.members
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def live(self) -> tuple[str, ...]:
        return self._live

    async def _one(self, member: str) -> None:
        try:
            ok = await asyncio.wait_for(self._check(member), timeout=max(self.interval, 1.0))
        except Exception:  # any failure of the check is a failed check
            ok = False
        if ok:
            self._fails[member] = 0
            self._oks[member] += 1
            if member in self._out and self._oks[member] >= OKS_TO_REJOIN:
                self._out.discard(member)
                log.server.info("cluster: member %s answers again; it rejoins the ring", member)
        else:
            self._oks[member] = 0
            self._fails[member] += 1
            if self._fails[member] >= FAILS_TO_LEAVE and member not in self._out:
                self._out.add(member)
                log.server.warning(
                    "cluster: member %s stopped answering; it leaves the ring", member
                )

    async def _round(self) -> None:
        await asyncio.gather(*(self._one(m) for m in self._fails))
        self._live = tuple(m for m in self.members if m not in self._out)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._round()
