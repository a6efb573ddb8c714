"""Membership from DNS: a Kubernetes headless Service name, re-resolved every few seconds.

A headless Service answers one A (or AAAA) record per ready pod, so the record set *is* the set
of live members; Kubernetes already does the health checking (readiness probes) and this
module only follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from proxy import log

Resolver = Callable[[str], Awaitable[list[str]]]


def member_address(ip: str, port: int) -> str:
    """``ip:port``, with an IPv6 address in brackets (``[::1]:9900``)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class DnsMembers:
    """One member per A/AAAA record of ``name`` (each ``ip:port``), plus this node.

    A failed resolution keeps the last good set, and so does an empty answer: a DNS blip (a
    resolver timing out, CoreDNS restarting, an endpoints object briefly empty during a
    rollout) must not empty the ring, which would send every read to the store at once and
    move every key twice. A member that truly left but lingers this way is only a peer that
    does not answer, which failover covers. The failure is logged once per streak, not on
    every interval, and the recovery once.
    """

    def __init__(
        self,
        name: str,
        port: int,
        self_addr: str,
        interval: float = 5.0,
        resolve: Resolver | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.self_addr = self_addr
        self.interval = interval
        self._resolve = resolve or self._getaddrinfo
        self._timeout = max(interval, 5.0)
        self._members: frozenset[str] = frozenset()
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    async def _getaddrinfo(self, name: str) -> list[str]:
        """Every IPv4 and IPv6 address of ``name``, as ``ip:port``. The event loop runs
        getaddrinfo on its default executor, so the loop never blocks on DNS."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            name, self.port, type=socket.SOCK_STREAM
        )
        return [
            member_address(str(sockaddr[0]), self.port)
            for family, _, _, _, sockaddr in infos
            if family in (socket.AF_INET, socket.AF_INET6)
        ]

    async def start(self) -> None:
        """Resolve once (so ``live()`` is populated when this returns), then keep resolving
        in the background. A first failure is logged and retried like any other."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name=f"dns-members {self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def live(self) -> tuple[str, ...]:
        return tuple(sorted(self._members | {self.self_addr}))

    async def refresh(self) -> None:
        """Resolve ``name`` once and adopt the answer unless it failed or was empty."""
        try:
            async with asyncio.timeout(self._timeout):
                found = frozenset(await self._resolve(self.name))
        except (OSError, TimeoutError) as exc:  # socket.gaierror is an OSError
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if not found:
            self._fail("empty answer")
            return
        if self._failing:
            log.cluster.info("dns membership: %s resolves again", self.name)
            self._failing = False
        if found != self._members:
            log.cluster.info(
                "dns membership: %s -> %d members", self.name, len(found | {self.self_addr})
            )
            self._members = found

    def _fail(self, why: str) -> None:
        if not self._failing:
            log.cluster.warning(
                "dns membership: resolving %s failed (%s); keeping the last %d members",
                self.name,
                why,
                len(self._members | {self.self_addr}),
            )
            self._failing = True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()
