"""Active warming after a membership change: a node whose view of the members changed asks each
live peer for the objects the peer holds that this node owns *under this node's view*
(HOLDINGS_PATH: the asker posts its live members; the answer is NDJSON, one ``{"bucket", "key",
"chunks"}`` per line: the chunks it holds that the asker owns, each chunk of a large object
placed on its own, cluster/chunks.py; read from the peer's LMDB index in a thread, a page at a
time) and fills each it does not hold from that peer's cache (a handoff: the store only if the
peer lost it meanwhile). WARM_CONCURRENCY at a time, behind client reads (it yields before each
object); it stops when the view changes again and starts over for the new view. The first view
after start counts as a change (a node that restarted or joined late). A pass that did not
finish (a peer did not answer, a fill failed, the peers did not yet see the members this node
sees) is tried again for the same view after RETRY_DELAYS, then left to the lazy handoff on a
miss. A pass that finished tells the node (Cluster.warmed): it may skip handoff asks
(settled()).

One process per node warms (an flock on the cache directory: with ``workers > 1`` the first
worker to take it; another takes over when it dies)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy import errors, log
from proxy.cache.index import Index
from proxy.cache.record import Record
from proxy.cluster import peers, ring
from proxy.cluster.node import Cluster
from proxy.cluster.source import replica_mount
from proxy.core.metadata import oid_of
from proxy.routing import Mount, Router

HOLDINGS_PATH = peers.PREFIX + "holdings"
PAGE = 500  # records a holdings answer reads from the index per thread hop
WARM_CONCURRENCY = 4
POLL = 0.5  # seconds between looks at the view
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # an unfinished pass, tried again (then given up)
MAX_ASK = 1024 * 1024  # bytes of a holdings request (the asker's live members)


@dataclass(frozen=True, slots=True)
class Ask:
    member: str  # the asker
    live: tuple[str, ...]  # its view
    replicas: int
    chunk_size: int  # the cache's (whether a record is of a whole object)


def _page(index: Index, after: bytes, ask: Ask) -> tuple[bytes, list[tuple[Record, list[int]]]]:
    """The oid the page ended at (b"" at the end) and the records in it, up to PAGE looked at
    after oid ``after``, with the chunks of each that this node holds and ``ask.member`` owns
    under ``ask.live`` (an object of one chunk: [0] when held whole) (in a thread)."""
    out: list[tuple[Record, list[int]]] = []
    last = b""
    with index.env.begin(db=index.objects) as txn:
        cursor = txn.cursor()
        found = cursor.set_range(after) if after else cursor.first()
        seen = 0
        while found and seen < PAGE:
            oid = bytes(cursor.key())
            if oid != after:
                seen += 1
                last = oid
                rec = Record.loads(cursor.value())
                count = 1 if rec.inline else rec.chunk_count(ask.chunk_size)
                held = [0] if rec.inline else [i for i in range(count) if rec.has_chunk(i)]
                owned = [
                    i
                    for i in held
                    if ask.member in ring.chunk_owners(oid, i, ask.live, ask.replicas)
                ]
                if owned:
                    out.append((rec, owned))
            found = cursor.next()
    return last, out


class Holdings:
    """The peer route: what this node holds that the asker owns, as the asker sees it."""

    def __init__(
        self, cluster: Cluster, router: Router, index: Index | None, chunk_size: int
    ) -> None:
        self._cluster, self._router, self._index = cluster, router, index
        self._chunk_size = chunk_size

    def _named(self, rec: Record) -> Iterator[tuple[str, str]]:
        """The client-facing (bucket, key) each cacheable mount gives the record's object."""
        mounts = [m for m in self._router.explicit if m.bucket == rec.bucket]
        wildcard = self._router.wildcard_backend
        if wildcard is not None and wildcard.name == rec.backend:
            with contextlib.suppress(errors.ProxyError):
                mounts.append(self._router.resolve(rec.bucket))
        for mount in mounts:
            if not mount.cacheable or mount.backend.name != rec.backend:
                continue
            if mount.bucket == rec.bucket and rec.key.startswith(mount.prefix):
                yield mount.name, rec.key[len(mount.prefix) :]
                return

    async def _ask(self, request: web.BaseRequest) -> Ask | None:
        raw = await request.content.read(MAX_ASK + 1)
        try:
            said = json.loads(raw) if len(raw) <= MAX_ASK else None
            member, live = said["member"], said["live"]  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(live, list) or not all(isinstance(m, str) for m in live):
            return None
        if not isinstance(member, str) or member not in live:
            return None
        return Ask(member, tuple(live), self._cluster.cfg.replicas, self._chunk_size)

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        index = self._index
        if index is None:
            return web.Response(status=503, text="Service Unavailable: no cache index\n")
        ask = await self._ask(request)
        if ask is None:
            return web.Response(status=400, text="Bad Request: member and live are required\n")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        after = b""
        while True:
            after, page = await asyncio.to_thread(_page, index, after, ask)
            lines = []
            for rec, owned in page:
                for bucket, key in self._named(rec):
                    said = {"bucket": bucket, "key": key, "chunks": owned}
                    lines.append(json.dumps(said) + "\n")
            if lines:
                await resp.write("".join(lines).encode())
            if not after:
                break
        await resp.write_eof()
        return resp


@dataclass
class Pass:
    listed: int = 0  # objects the peers said they hold that this node owns
    moved: int = 0  # filled here
    failed: int = 0  # fills that failed
    peers_failed: list[str] = field(default_factory=list)  # peers whose listing failed


class Warmer:
    """Pulls what this node owns from the peers that hold it, once per view."""

    def __init__(self, cluster: Cluster, router: Router, lock: Path | None) -> None:
        self._cluster, self._router, self._lock_path = cluster, router, lock
        self._lock: int | None = None
        self.passes = 0  # warm passes finished

    def _locked(self) -> bool:
        """This process is the node's warmer (holds the flock; taken when free)."""
        if self._lock is not None or self._lock_path is None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock = fd
        return True

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            if self._lock is not None:
                os.close(self._lock)

    async def _loop(self) -> None:
        seen: tuple[str, ...] | None = None  # the first view too: a restart or a late join
        tries = 0  # unfinished passes of view ``seen``
        due = 0.0  # when the next try of ``seen`` may start
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(POLL)
            if not self._locked():
                continue
            live = self._cluster.members.live()
            if live != seen:
                seen, tries, due = live, 0, 0.0
            elif tries == 0 or tries > len(RETRY_DELAYS) or loop.time() < due:
                continue  # done with this view (finished, or given up), or not yet
            if await self._pass(live):
                tries = 0
                self._cluster.warmed(live)
            else:
                tries += 1
                due = loop.time() + RETRY_DELAYS[min(tries, len(RETRY_DELAYS)) - 1]

    def _agreed(self, view: tuple[str, ...]) -> bool:
        return self._cluster.members.live() == view and self._cluster.peers_agree()

    async def _pass(self, view: tuple[str, ...]) -> bool:
        """One pass over the peers of ``view``; whether it finished (every peer listed, every
        fill done, the peers seeing this view throughout)."""
        agreed = self._cluster.peers_agree()
        done = Pass()
        for peer in view:
            if peer == self._cluster.self_addr:
                continue
            try:
                await self._from(peer, view, done)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.cluster.info(
                    "cluster: warm listing from %s failed (%s)", peer, type(exc).__name__
                )
                done.peers_failed.append(peer)
            if self._cluster.members.live() != view:
                break
        finished = not done.peers_failed and not done.failed and agreed and self._agreed(view)
        self.passes += 1
        log.cluster.info(
            "cluster: warm pass %s over %d members: %d owned here listed by peers, %d moved here, "
            "%d fills failed, %d peers unanswered",
            "finished" if finished else "unfinished",
            len(view),
            done.listed,
            done.moved,
            done.failed,
            len(done.peers_failed),
        )
        return finished

    async def _from(self, peer: str, view: tuple[str, ...], done: Pass) -> None:
        body = json.dumps({"member": self._cluster.self_addr, "live": list(view)})
        gate = asyncio.Semaphore(WARM_CONCURRENCY)
        tasks: set[asyncio.Task[bool | None]] = set()
        try:
            async with self._cluster.call_peer(
                "POST", peer, HOLDINGS_PATH, {}, data=body.encode()
            ) as resp:
                if resp.status != 200:
                    resp.release()
                    raise ValueError(f"answered {resp.status}")
                async for line in resp.content:
                    if self._cluster.members.live() != view:
                        break
                    said: dict[str, Any] = json.loads(line)
                    done.listed += 1
                    await gate.acquire()
                    tasks.add(asyncio.ensure_future(self._one(peer, said, gate)))
        finally:
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if result is True:
                    done.moved += 1
                elif result is not None:
                    done.failed += 1

    async def _one(self, peer: str, said: dict[str, Any], gate: asyncio.Semaphore) -> bool | None:
        """Fill the listed chunks of one object here from ``peer`` (an object of one chunk:
        chunk 0): True when filled, None when there was nothing to do (held already, or no
        longer owned here), False when it failed."""
        try:
            await asyncio.sleep(0)  # behind whatever client read is ready to run
            mount = self._router.resolve(str(said["bucket"]))
            remote = mount.remote_key(str(said["key"]))
            oid, c = oid_of(mount, remote), self._cluster
            moved: bool | None = None
            for index in [int(i) for i in said.get("chunks", [0])]:
                if c.self_addr not in c.chunk_owners(oid, index):
                    continue
                if c.holds_chunk(mount, remote, index):
                    continue
                if not await self._fill(peer, mount, str(said["key"]), remote, index):
                    return False
                moved = True
            return moved
        except (errors.ProxyError, KeyError, ValueError, TypeError) as exc:
            log.cluster.info("cluster: a warm fill failed (%s)", type(exc).__name__)
            return False
        finally:
            gate.release()

    async def _fill(self, peer: str, mount: Mount, key: str, remote: str, index: int) -> bool:
        path_qs = peers.object_path(mount.name, key)
        source = replica_mount(
            mount, self._cluster.handoff_call, path_qs, [peer], frozenset([peer])
        )
        try:
            await self._cluster.fill(source, remote, index)
        except (errors.ProxyError, OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.cluster.info("cluster: a warm fill failed (%s)", type(exc).__name__)
            return False
        return True


def serve(
    cluster: Cluster, router: Router, index: Index | None, chunk_size: int, lock: Path | None
) -> Warmer:
    """Answer the holdings route, and warm this node on each view change until it closes
    (``lock``: the file whose flock makes one process of the node the warmer)."""
    holdings = Holdings(cluster, router, index, chunk_size)
    cluster.routes[("POST", HOLDINGS_PATH)] = holdings.serve
    warmer = Warmer(cluster, router, lock)
    cluster.spawn(warmer.run())
    return warmer
