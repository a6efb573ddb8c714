"""Membership from etcd: each node holds a lease-bound key under a prefix and watches it.

The client is etcd's v3 JSON gateway (``/v3/...``, served by every etcd 3.x on its client
port) over aiohttp, which the proxy already uses, rather than ``aetcd``: that is five plain
POSTs and one streamed watch, and needs no gRPC and protobuf dependency (large native wheels
whose versions would have to agree with everything else in the environment).

A node grants a lease of ``ttl`` seconds, puts ``prefix + self_addr`` bound to it, and renews
it every ``ttl / 3``. A clean leave (``close()``) revokes the lease, which deletes the key at
once; a crashed node stops renewing and its key goes when the lease expires, within ``ttl``.
Every node lists the prefix and then watches it from the listed revision, so ``live()``
follows joins and leaves as etcd reports them. When etcd cannot be reached, both loops retry
with capped exponential backoff across the endpoints, and ``live()`` keeps the last members
it knew: an etcd outage must not empty the ring. A lease that expired meanwhile (etcd down
longer than ``ttl``, or its data lost) is granted again and the key put again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from typing import Any

import aiohttp

from proxy import log

_CALL_TIMEOUT = aiohttp.ClientTimeout(total=5)
# A healthy watch is silent while nothing changes; re-listing after this much silence also
# notices an etcd that stopped answering without closing the connection.
_WATCH_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=30)
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0


class EtcdUnavailable(Exception):
    """No endpoint answered, or one answered with an error."""


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode("ascii")


def _unb64(data: str) -> str:
    return base64.b64decode(data).decode("utf-8", "replace")


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix`` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return base64.b64encode(b"\0").decode("ascii")  # the whole key space
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


class _Backoff:
    """Capped exponential delays between retries: 0.1 s, 0.2 s, ... 5 s."""

    def __init__(self) -> None:
        self.delay = _BACKOFF_MIN

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, _BACKOFF_MAX)
        return delay

    def reset(self) -> None:
        self.delay = _BACKOFF_MIN


class EtcdMembers:
    def __init__(self, endpoints: list[str], prefix: str, ttl: float, self_addr: str) -> None:
        if not endpoints:
            raise ValueError("etcd membership needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        self.ttl = ttl
        self.self_addr = self_addr
        self._key = _b64(prefix + self_addr)
        self._range = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        self._endpoint = 0
        self._lease: str | None = None
        self._members: frozenset[str] = frozenset()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._failing: set[str] = set()

    # -- Members -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register and list once if etcd answers (so ``live()`` is populated), then keep the
        lease alive and watch the prefix in the background. An unreachable etcd does not fail
        the start: the background loops retry, and ``live()`` is this node alone meanwhile."""
        self._session = aiohttp.ClientSession()
        try:
            await self._register()
            await self._list()
        except EtcdUnavailable as exc:
            self._failed("keepalive", exc)  # its loop retries, and logs the recovery
        self._tasks = [
            asyncio.create_task(self._keepalive_loop(), name="etcd-members keepalive"),
            asyncio.create_task(self._watch_loop(), name="etcd-members watch"),
        ]

    async def close(self) -> None:
        """Stop the loops and revoke the lease: the key goes at once (a clean leave)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease, self._lease = self._lease, None
        if lease is not None and self._session is not None:
            try:
                await self._call("/v3/lease/revoke", {"ID": lease})
            except EtcdUnavailable as exc:
                log.cluster.warning("etcd membership: revoking the lease failed (%s)", exc)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def live(self) -> tuple[str, ...]:
        return tuple(sorted(self._members | {self.self_addr}))

    # -- etcd calls ----------------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the current endpoint; on failure move to the next one and raise."""
        assert self._session is not None
        endpoint = self.endpoints[self._endpoint]
        try:
            async with self._session.post(
                endpoint + path, json=body, timeout=_CALL_TIMEOUT
            ) as response:
                text = await response.text()
                if response.status != 200:
                    raise EtcdUnavailable(f"{path}: HTTP {response.status}: {text[:200]}")
                doc = json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"{endpoint}{path}: {type(exc).__name__}: {exc}") from exc
        except EtcdUnavailable:
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            raise
        if not isinstance(doc, dict):
            raise EtcdUnavailable(f"{path}: not a JSON object")
        return doc

    async def _register(self) -> None:
        """Grant a fresh lease and put this node's key bound to it."""
        granted = await self._call("/v3/lease/grant", {"TTL": max(1, math.ceil(self.ttl))})
        lease = str(granted.get("ID", ""))
        if not lease or granted.get("error"):
            raise EtcdUnavailable(f"lease grant refused: {granted}")
        await self._call(
            "/v3/kv/put", {"key": self._key, "value": _b64(self.self_addr), "lease": lease}
        )
        self._lease = lease

    async def _renew(self) -> None:
        """Keep the lease alive; grant a new one and put the key again if it expired."""
        if self._lease is not None:
            answer = await self._call("/v3/lease/keepalive", {"ID": self._lease})
            if int(answer.get("result", {}).get("TTL", 0)) > 0:
                return
            log.cluster.warning("etcd membership: the lease expired; joining again")
        await self._register()

    async def _list(self) -> int:
        """Adopt the members under the prefix; returns the revision listed."""
        answer = await self._call("/v3/kv/range", dict(self._range, keys_only=True))
        self._members = frozenset(self._member(kv) for kv in answer.get("kvs", []))
        return int(answer.get("header", {}).get("revision", 0))

    def _member(self, kv: dict[str, Any]) -> str:
        return _unb64(str(kv.get("key", "")))[len(self.prefix) :]

    async def _watch(self, revision: int) -> None:
        """Apply the prefix's events from ``revision`` on, until the stream ends."""
        assert self._session is not None
        endpoint = self.endpoints[self._endpoint]
        request = {"create_request": dict(self._range, start_revision=revision)}
        try:
            async with self._session.post(
                endpoint + "/v3/watch", json=request, timeout=_WATCH_TIMEOUT
            ) as response:
                if response.status != 200:
                    raise EtcdUnavailable(f"/v3/watch: HTTP {response.status}")
                self._recovered("watch")
                async for line in response.content:
                    if line.strip():
                        self._apply(json.loads(line))
        except aiohttp.SocketTimeoutError:
            return  # silent for _WATCH_TIMEOUT: the caller lists again
        except (aiohttp.ClientError, ValueError) as exc:
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"{endpoint}/v3/watch: {type(exc).__name__}: {exc}") from exc

    def _apply(self, message: dict[str, Any]) -> None:
        result = message.get("result")
        if not isinstance(result, dict) or message.get("error"):
            raise EtcdUnavailable(f"watch error: {str(message)[:200]}")
        if result.get("canceled"):  # compacted past our revision, or the server gave up
            raise EtcdUnavailable(f"watch canceled: {result.get('cancel_reason', '')}")
        members = set(self._members)
        for event in result.get("events", []):
            member = self._member(event.get("kv", {}))
            if event.get("type") == "DELETE":
                members.discard(member)
            else:
                members.add(member)
        self._members = frozenset(members)

    # -- background loops ----------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        backoff = _Backoff()
        delay = self.ttl / 3
        while True:
            await asyncio.sleep(delay)
            try:
                await self._renew()
            except EtcdUnavailable as exc:
                self._failed("keepalive", exc)
                delay = min(backoff.next(), self.ttl / 3)
                continue
            self._recovered("keepalive")
            backoff.reset()
            delay = self.ttl / 3

    async def _watch_loop(self) -> None:
        backoff = _Backoff()
        while True:
            try:
                revision = await self._list()
                self._recovered("watch")
                backoff.reset()
                await self._watch(revision + 1)
            except EtcdUnavailable as exc:
                self._failed("watch", exc)
                await asyncio.sleep(backoff.next())

    def _failed(self, what: str, exc: Exception) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.cluster.warning(
                "etcd membership: %s failed (%s); keeping the last %d members, retrying",
                what,
                exc,
                len(self.live()),
            )

    def _recovered(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.cluster.info("etcd membership: %s works again", what)
