"""Active warming after a membership change: a node whose view of the members changed asks
each live peer for the objects the peer holds that this node now owns (HOLDINGS_PATH: NDJSON,
one ``{"bucket", "key"}`` per line, read from the peer's LMDB index in a thread, a page at a
time) and fills each it does not hold from that peer's cache (a handoff: the store only if the
peer lost it meanwhile). A few at a time (WARM_CONCURRENCY), behind client reads (it yields
between objects); it stops when the view changes again, and starts over for the new view. The
first view after start counts as a change (a node that restarted or joined late)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web

from proxy import errors, log
from proxy.cache.index import Index
from proxy.cache.record import Record
from proxy.cluster import peers
from proxy.cluster.node import Cluster
from proxy.cluster.source import replica_mount
from proxy.routing import Mount, Router

HOLDINGS_PATH = peers.PREFIX + "holdings"
PAGE = 500  # records a holdings answer reads from the index per thread hop
WARM_CONCURRENCY = 4
POLL = 0.5  # seconds between looks at the view


def _whole(rec: Record, inline: bool, chunk_size: int) -> bool:
    return inline or rec.chunks == (1 << rec.chunk_count(chunk_size)) - 1


def _page(index: Index, after: bytes, chunk_size: int) -> list[tuple[bytes, Record]]:
    """Up to PAGE whole objects of the index after oid ``after`` (in a thread)."""
    out: list[tuple[bytes, Record]] = []
    with index.env.begin(db=index.objects) as txn:
        cursor = txn.cursor()
        found = cursor.set_range(after) if after else cursor.first()
        while found and len(out) < PAGE:
            oid, raw = cursor.key(), cursor.value()
            if oid != after:
                rec = Record.loads(raw)
                if _whole(rec, rec.inline, chunk_size):
                    out.append((bytes(oid), rec))
            found = cursor.next()
    return out


class Holdings:
    """The peer route: what this node holds that ``member`` owns (as this node sees it)."""

    def __init__(
        self, cluster: Cluster, router: Router, index: Index | None, chunk_size: int
    ) -> None:
        self._cluster, self._router, self._index = cluster, router, index
        self._chunk_size = chunk_size

    def _named(self, rec: Record) -> Iterator[tuple[Mount, str]]:
        for mount in self._router.explicit:
            if not mount.cacheable or mount.backend.name != rec.backend:
                continue
            if mount.bucket == rec.bucket and rec.key.startswith(mount.prefix):
                yield mount, rec.key

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        member = request.query.get("member", "")
        index = self._index
        if index is None:
            return web.Response(status=503, text="Service Unavailable: no cache index\n")
        if member not in self._cluster.members.live():
            return web.Response(status=400, text="Bad Request: member is not live here\n")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        after = b""
        while True:
            page = await asyncio.to_thread(_page, index, after, self._chunk_size)
            if not page:
                break
            lines = []
            for _, rec in page:
                for mount, remote in self._named(rec):
                    if member in self._cluster.owners(mount, remote):
                        said = {"bucket": mount.name, "key": remote[len(mount.prefix) :]}
                        lines.append(json.dumps(said) + "\n")
            if lines:
                await resp.write("".join(lines).encode())
            after = page[-1][0]
        await resp.write_eof()
        return resp


class Warmer:
    """Pulls what this node owns from the peers that hold it, once per view."""

    def __init__(self, cluster: Cluster, router: Router) -> None:
        self._cluster, self._router = cluster, router
        self.passes = 0  # warm passes finished (for tests and the log)

    async def run(self) -> None:
        seen: tuple[str, ...] = ()  # the first view too: a node that restarts or joins late
        while True:
            await asyncio.sleep(POLL)
            live = self._cluster.members.live()
            if live == seen:
                continue
            seen = live
            try:
                await self._pass(live)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.cluster.info("cluster: a warm pass stopped (%s)", type(exc).__name__)

    async def _pass(self, view: tuple[str, ...]) -> None:
        moved = 0
        for peer in view:
            if peer == self._cluster.self_addr:
                continue
            moved += await self._from(peer, view)
            if self._cluster.members.live() != view:
                return  # the next change starts its own pass
        self.passes += 1
        log.cluster.info("cluster: warm pass done; %d objects moved here", moved)

    async def _from(self, peer: str, view: tuple[str, ...]) -> int:
        me = urllib.parse.urlencode({"member": self._cluster.self_addr})
        gate = asyncio.Semaphore(WARM_CONCURRENCY)
        tasks: set[asyncio.Task[bool]] = set()
        async with self._cluster.call("GET", peer, f"{HOLDINGS_PATH}?{me}", {}) as resp:
            if resp.status != 200:
                return 0
            async for line in resp.content:
                if self._cluster.members.live() != view:
                    break
                said: dict[str, Any] = json.loads(line)
                await gate.acquire()
                task = asyncio.ensure_future(self._one(peer, said, gate))
                tasks.add(task)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return sum(1 for d in done if d is True)

    async def _one(self, peer: str, said: dict[str, Any], gate: asyncio.Semaphore) -> bool:
        try:
            await asyncio.sleep(0)  # behind whatever client read is ready to run
            mount = self._router.resolve(str(said["bucket"]))
            remote = mount.remote_key(str(said["key"]))
            if self._cluster.self_addr not in self._cluster.owners(mount, remote):
                return False
            if self._cluster.holds(mount, remote):
                return False
            path_qs = peers.object_path(mount.name, str(said["key"]))
            source = replica_mount(
                mount, self._cluster.handoff_call, path_qs, [peer], frozenset([peer])
            )
            await self._cluster.fill(source, remote)
            return True
        except (errors.ProxyError, OSError, KeyError) as exc:
            log.cluster.info("cluster: a warm fill failed (%s)", type(exc).__name__)
            return False
        finally:
            gate.release()


def serve(cluster: Cluster, router: Router, index: Index | None, chunk_size: int) -> Warmer:
    """Answer the holdings route, and warm this node on each view change until it closes."""
    cluster.routes[("GET", HOLDINGS_PATH)] = Holdings(cluster, router, index, chunk_size).serve
    warmer = Warmer(cluster, router)
    cluster.spawn(warmer.run())
    return warmer
