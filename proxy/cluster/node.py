"""This node in the cluster: its membership, its peer client, the peer routes it answers, the
read hook that sends a GET or HEAD of an object it does not own to the object's owner (and has
a replica filled from the first owner), and the write hook that has the other owners drop
their copies before a write is acknowledged."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from proxy import errors, log, metrics
from proxy.cache.record import Record
from proxy.cluster import chunks, peers, ring
from proxy.cluster.config import ClusterConfig
from proxy.cluster.dns import DnsMembers
from proxy.cluster.etcd import EtcdMembers
from proxy.cluster.members import Members, StaticMembers
from proxy.cluster.source import (
    CLIP_HEADER,
    HANDOFF_HEADER,
    NOT_CACHED_HEADER,
    REPLICA_HEADER,
    local_mount,
    replica_mount,
)
from proxy.config_values import split_host_port
from proxy.core.metadata import oid_of
from proxy.routing import Mount, Router
from proxy.s3 import parse
from proxy.s3.parse import RESPONSE_OVERRIDES
from proxy.s3.responses import request_ids

PeerGet = Callable[[web.BaseRequest, Mount, str], Awaitable[web.StreamResponse]]
Drop = Callable[[bytes], Awaitable[None]]  # drop the cached copy of an oid, refuse older fills
Route = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Lookup = Callable[[bytes], tuple[Record | None, bytes | None]]  # the index's entry of an oid
Fill = Callable[[Mount, str, int], Awaitable[None]]  # read one chunk of an object into the cache

# request headers a forwarded GET carries to the owner (x-amz-checksum-mode: the owner adds
# the object's x-amz-checksum-* answer headers, carried back as all but _DROP_ANSWER are)
_PASS_REQUEST = (
    *("Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"),
    "x-amz-checksum-mode",
)
_DROP_ANSWER = frozenset(
    {"x-amz-request-id", "x-amz-id-2", "connection", "keep-alive", "transfer-encoding", "date"}
    | {"server", "content-length"}
)
_OBJECT_ROUTES = frozenset(
    {("GET", peers.OBJECT_PATH), ("HEAD", peers.OBJECT_PATH)}
    | {("POST", peers.INVALIDATE_PATH), ("POST", peers.REPLICATE_PATH)}
)
PEER_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=30.0)
INVALIDATE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
# a handoff asks a node that may hold the object: a short wait, then the next one, the store last
HANDOFF_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=1.0, sock_read=10.0)
# how far down an object's ranking a handoff looks beyond its owners: the nodes that owned it
# before one or two joined ahead of them
HANDOFF_DEPTH = 2


def make_members(cfg: ClusterConfig, check: Callable[[str], Awaitable[bool]]) -> Members:
    """The membership the config names: the static list (health-checked with ``check``), a
    DNS name re-resolved, or etcd leases."""
    if cfg.members is not None:
        return StaticMembers(cfg.members, cfg.self_addr, check)
    if cfg.dns is not None:
        name, port = split_host_port(cfg.dns, "cluster.dns")
        return DnsMembers(name, port, cfg.self_addr)
    assert cfg.etcd is not None
    etcd = cfg.etcd
    return EtcdMembers(list(etcd.endpoints), etcd.prefix, etcd.ttl, cfg.self_addr)


class Cluster:
    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.self_addr = cfg.self_addr
        self._secret = cfg.secret()
        self.verifier = peers.Verifier(self._secret)
        self.members = make_members(cfg, self.check)
        self._session: aiohttp.ClientSession | None = None
        self._router: Router | None = None
        self._peer_get: PeerGet | None = None
        self._peer_head: PeerGet | None = None
        self._drop: Drop | None = None
        self._fill: Fill | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # replicas being filled here on an owner's word: (oid, chunk index)
        self._filling: set[tuple[bytes, int]] = set()
        self.totals: Callable[[], tuple[int, int]] | None = None  # (bytes, objects) cached here
        self._lookup: Lookup | None = None  # the cache index: what a handoff may serve
        self._chunk_size = 0
        self.chunk_reads: chunks.ChunkReads | None = None  # set by use_index()
        self._peer_totals: dict[str, tuple[int, int]] = {}  # as each peer's health route said
        # whether a handoff can help (see settled()): the view this node last saw, whether all
        # it caches was cached under that view, and each peer's word on both
        self._view: tuple[str, ...] | None = None
        self._clean = False
        self._peer_views: dict[str, tuple[str, bool]] = {}
        self._warmed: tuple[str, ...] | None = None  # the view a warm pass last finished for
        self.routes: dict[tuple[str, str], Route] = {}  # more peer routes (fanout.py's)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=PEER_TIMEOUT, auto_decompress=False, connector=aiohttp.TCPConnector(limit=256)
        )
        await self.members.start()
        # what the cache held before this start was cached under a view nobody remembers
        self._clean = self.totals is None or self.totals()[1] == 0
        self._view = self.members.live()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.members.close()
        if self._session is not None:
            await self._session.close()

    def attach(
        self, router: Router, peer_get: PeerGet, peer_head: PeerGet, drop: Drop, fill: Fill
    ) -> None:
        """What the peer object route answers with: this node's own GET and HEAD, as owner;
        what the invalidate route does: ``drop``; how a replica is filled: ``fill`` (read the
        whole object through the cache)."""
        self._router, self._peer_get, self._peer_head = router, peer_get, peer_head
        self._drop, self._fill = drop, fill

    def use_index(self, lookup: Lookup, chunk_size: int) -> None:
        """How to tell whether this node holds a whole object (a handoff serves only those),
        and how large objects are cut into chunks, each placed on its own."""
        self._lookup, self._chunk_size = lookup, chunk_size
        self.chunk_reads = chunks.ChunkReads(self, chunk_size)

    def holds(self, mount: Mount, key: str, rng: str | None = None) -> bool:
        """This node's cache holds all of ``key`` (a remote key): inline, or every chunk (the
        chunks the Range header ``rng`` needs, with one)."""
        rec, inline = self._held(mount, key)
        if rec is None:
            return False
        if inline is not None:
            return True
        asked = parse.parse_range(rng)
        try:
            first, last = asked.resolve(rec.size) if asked else (0, max(0, rec.size - 1))
        except errors.S3Error:
            return False
        cs = self._chunk_size
        return all(rec.has_chunk(i) for i in range(first // cs, last // cs + 1))

    def holds_chunk(self, mount: Mount, key: str, index: int) -> bool:
        """This node's cache holds chunk ``index`` of ``key`` (a remote key); an inline object
        is its one chunk."""
        rec, inline = self._held(mount, key)
        return rec is not None and (inline is not None or rec.has_chunk(index))

    def _held(self, mount: Mount, key: str) -> tuple[Record | None, bytes | None]:
        if not mount.cacheable:
            return None, None
        return self.lookup(oid_of(mount, key))

    def view(self) -> tuple[str, bool]:
        """This node's live view (a fingerprint) and whether everything it caches was cached
        under that view: once the view changes while it holds anything, it may hold objects
        other nodes own now (until it restarts with an empty cache)."""
        live = self.members.live()
        if live != self._view:
            if self._view is not None and self.totals is not None and self.totals()[1] > 0:
                self._clean = False
            self._view = live
        return hashlib.blake2b("\n".join(live).encode(), digest_size=8).hexdigest(), self._clean

    def settled(self) -> bool:
        """No node this one can reach may hold a copy of an object that this node owns and
        does not hold. Either each live peer's last health answer said it sees the members
        this node sees and cached all it holds under that view (every object it holds it
        owns, so it is on its first owner too); or this node finished a warm pass under its
        view (warmer.py: it pulled every such copy the peers listed) and each live peer's last
        answer said it sees that view too (so no peer fills what it owns under another view).
        A peer not heard from, or any doubt: not settled (DNS and etcd members are not
        health-checked: never settled). A peer whose view changed since its last answer (a
        second at most) is the one window this misjudges: a store read."""
        mine, _ = self.view()
        others = [m for m in self.members.live() if m != self.self_addr]
        if all(self._peer_views.get(m) == (mine, True) for m in others):
            return True
        return self._warmed == self.members.live() and self.peers_agree()

    def peers_agree(self) -> bool:
        """Each live peer's last health answer said it sees the members this node sees."""
        mine, _ = self.view()
        others = [m for m in self.members.live() if m != self.self_addr]
        return all(m in self._peer_views and self._peer_views[m][0] == mine for m in others)

    def warmed(self, view: tuple[str, ...]) -> None:
        """A warm pass over ``view`` finished: what the peers held that this node owns under
        it is here (settled() may hold again)."""
        self._warmed = view

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` until it ends or this node closes (warmer.py's pass loop)."""
        self._spawn(work)

    async def fill(self, source: Mount, remote: str, index: int) -> None:
        """Read chunk ``index`` of ``remote`` (0: all of an object of one chunk) into this
        node's cache from ``source`` (warmer.py's)."""
        assert self._fill is not None, "attach() first"
        await self._fill(source, remote, index)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        return {
            "self": self.self_addr,
            "replicas": self.cfg.replicas,
            "membership": self.cfg.membership,
            "members": list(getattr(self.members, "members", self.members.live())),
            "live": list(self.members.live()),
            "nodes": self.nodes(),
            "settled": self.settled(),
        }

    # -- the client side ----------------------------------------------------------------------
    def call_peer(
        self,
        method: str,
        member: str,
        path_qs: str,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout = PEER_TIMEOUT,
        data: bytes | None = None,
    ) -> Any:
        """A signed request to a peer (``data``: its body): aiohttp's context manager."""
        assert self._session is not None, "start() first"
        signed = peers.sign(self._secret, method, path_qs)
        url = URL(f"http://{member}{path_qs}", encoded=True)  # sent as signed, not requoted
        all_headers = {**headers, **signed}
        return self._session.request(method, url, headers=all_headers, timeout=timeout, data=data)

    async def check(self, member: str) -> bool:
        """The member's peer health route answers 200 to a signed request (and says what it
        caches, kept for the cluster view)."""
        async with self.call_peer("GET", member, peers.HEALTH_PATH, {}) as resp:
            if resp.status != 200:
                return False
            try:
                said = json.loads(await resp.read())
                self._peer_totals[member] = (int(said["bytes"]), int(said["objects"]))
                self._peer_views[member] = (str(said["view"]), said["clean"] is True)
            except (ValueError, KeyError, TypeError):
                self._peer_views.pop(member, None)
                pass  # a node that answers "ok" only: live, holdings unknown
            return True

    def nodes(self) -> list[dict[str, Any]]:
        """Every member: live or not, its share of the objects (as owner), what it caches (as
        its last health answer said; this node's own now)."""
        live = self.members.live()
        share = ring.shares(tuple(live), self.cfg.replicas)
        out = []
        for member in getattr(self.members, "members", live):
            held = self.totals() if member == self.self_addr and self.totals else None
            held = held or self._peer_totals.get(member)
            out.append(
                {
                    "address": member,
                    "live": member in live,
                    "share": round(share.get(member, 0.0), 4),
                    "cached_bytes": held[0] if held else None,
                    "cached_objects": held[1] if held else None,
                }
            )
        return out

    async def invalidate(self, mount: Mount, key: str) -> None:
        """The store accepted a write or delete of ``key`` (a remote key) through this node:
        every other live owner drops its copy (and refuses fills begun before) before this
        returns; a copy kept here by a node that does not own the object is dropped too. An
        owner that does not answer within INVALIDATE_TIMEOUT is logged and passed over. Then
        every other live node drops its copy too: a chunk of a large object may lie on any
        node (chunks.py), and a node may keep local copies (cluster.local_copy)."""
        if not mount.cacheable:
            return
        owners = self.owners(mount, key)
        if self.self_addr not in owners and self._drop is not None:
            await self._drop(oid_of(mount, key))
        # the nodes ranked just below the owners too: a handoff may ask them for their copy
        others = [m for m in self.owners(mount, key, HANDOFF_DEPTH) if m != self.self_addr]
        path_qs = peers.object_path(mount.name, key[len(mount.prefix) :], peers.INVALIDATE_PATH)
        if others:
            await asyncio.gather(*(self._invalidate_on(m, path_qs) for m in others))
        # then the rest (after the owners: a copy filled from an owner once its own was
        # dropped is filled from the owner's new one)
        rest = [m for m in self.members.live() if m != self.self_addr and m not in others]
        if rest:
            await asyncio.gather(*(self._invalidate_on(m, path_qs) for m in rest))

    @property
    def chunk_size(self) -> int:
        """How large objects are cut into chunks, each placed on its own (0: not known yet)."""
        return self._chunk_size

    def lookup(self, oid: bytes) -> tuple[Record | None, bytes | None]:
        """The cache index's entry of ``oid`` (none before use_index())."""
        return self._lookup(oid) if self._lookup is not None else (None, None)

    async def post(self, member: str, path_qs: str, expect: int) -> str | None:
        """A signed POST with a short timeout; None when answered ``expect``, else why not."""
        try:
            async with self.call_peer("POST", member, path_qs, {}, INVALIDATE_TIMEOUT) as resp:
                return None if resp.status == expect else f"it answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__  # not str(exc): it may name the URL, the client's key

    async def _invalidate_on(self, member: str, path_qs: str) -> None:
        why = await self.post(member, path_qs, 204)
        if why is None:
            return
        log.cluster.warning(
            "cluster: owner %s did not confirm dropping an object written through this node "
            "(%s); it may serve its old copy until its metadata_ttl revalidation",
            member,
            why,
        )

    def owners(self, mount: Mount, key: str, beyond: int = 0) -> list[str]:
        """The object's owners over the live members, best first (and the ``beyond`` members
        ranked next)."""
        return ring.owners(oid_of(mount, key), self.members.live(), self.cfg.replicas + beyond)

    def takes(self, request: web.BaseRequest, mount: Mount, key: str) -> bool:
        """forward() takes this GET or HEAD of ``key`` (a remote key): it is not cached here
        (for a GET: no bytes here, a HEAD's metadata at most), or it is, but read through
        other nodes: keeps_copy, or a large object's chunk read elsewhere (chunks.py)."""
        if not mount.cacheable:
            return False
        oid = oid_of(mount, key)
        rec, inline = self.lookup(oid)
        if rec is None or (request.method == "GET" and inline is None and rec.chunks == 0):
            return True
        if self.keeps_copy(mount, key):
            return True
        return self.chunk_reads is not None and self.chunk_reads.elsewhere(request, mount, oid, rec)

    def keeps_copy(self, mount: Mount, key: str) -> bool:
        """A read of ``key`` (a remote key) here keeps a local copy (cluster.local_copy): this
        node does not own it. forward() takes such reads even when a copy is cached here: the
        copy is read, filled and revalidated through the owners."""
        return (
            self.cfg.local_copy > 0
            and mount.cacheable
            and self.self_addr not in self.owners(mount, key)
        )

    def chunk_owners(self, oid: bytes, index: int, beyond: int = 0) -> list[str]:
        """Chunk ``index``'s owners over the live members, best first (chunk 0: the
        object's)."""
        return ring.chunk_owners(oid, index, self.members.live(), self.cfg.replicas + beyond)

    def handoff_call(self, method: str, member: str, path_qs: str, headers: dict[str, str]) -> Any:
        timeout = HANDOFF_TIMEOUT if HANDOFF_HEADER in headers else PEER_TIMEOUT
        return self.call_peer(method, member, path_qs, headers, timeout)

    def _source(
        self, mount: Mount, key: str, path_qs: str, others: list[str], index: int = 0
    ) -> Mount:
        """Where this owner, without a copy, fills from: ``others`` (the other owners, asked
        as usual: they read through if they must), then the nodes ranked just below the
        owners, asked for their cached copy only; the first owner (``others`` empty) asks the
        other owners and those for their cached copies; the store last. No one is asked for a
        cached copy when none can hold one (settled())."""
        oid = oid_of(mount, key)
        ranked = [] if self.settled() else self.chunk_owners(oid, index, HANDOFF_DEPTH)
        only_cached = [m for m in ranked if m != self.self_addr and m not in others]
        members = others + only_cached
        return replica_mount(mount, self.handoff_call, path_qs, members, frozenset(only_cached))

    async def forward(
        self, request: web.BaseRequest, mount: Mount, key: str
    ) -> web.StreamResponse | None:
        """A GET or HEAD of ``key`` (a remote key) not cached here. This node does not own it:
        the first owner that answers streams it to the client, nothing is kept here (with
        cluster.local_copy: read through this node's cache from the owners, kept in the cache
        group quota.LOCAL; cached or not, see keeps_copy). This node
        is its first owner: None (read through the store here), and a GET asks the other owners
        to replicate it from here. Another owner: a GET fills the replica here from the other
        owners (the store last) while it answers; a HEAD asks them. None also when no owner
        answered (the caller reads through, as a single node does). A GET's owners are those
        of the chunk its range starts in (the object's for chunk 0), and the answer stops at
        that chunk's end when the object spans more (chunks.py: the rest follows)."""
        if not mount.cacheable or request.get("routed"):
            return None
        request["routed"] = True  # the answer below may come back here: once is enough
        reads, clip, index = self.chunk_reads, False, 0
        if reads is not None and reads.clips(request, mount):
            clip, index = True, await reads.first(request, mount, key)
        owners = self.chunk_owners(oid_of(mount, key), index)
        path_qs = peers.object_path(mount.name, key[len(mount.prefix) :])
        others = [m for m in owners if m != self.self_addr]
        if len(others) < len(owners):  # an owner, without a copy
            first = owners[0] == self.self_addr
            if first and request.method == "GET" and REPLICA_HEADER not in request.headers:
                if others:
                    self._spawn(self._replicate(others, path_qs, index))
            if request.method == "GET" and self._peer_get is not None:
                # a handoff of the copy the others or the nodes ranked next may hold (it joined
                # or moved up), else, for the first owner, the store as one node would
                source = self._source(mount, key, path_qs, [] if first else others, index)
                return await self._peer_get(request, source, key)
            if first:
                return None  # a HEAD: the store's, as one node
            owners = others  # a HEAD: asked of the other owners, as a non-owner does
        elif request.get("peer"):
            return None  # the asker's ring disagrees (membership changing): answer it here
        elif self.cfg.local_copy and self._peer_get is not None and self._peer_head is not None:
            # keep a local copy: this node's own read, its cache filled from the owners
            answer = self._peer_get if request.method == "GET" else self._peer_head
            return await answer(
                request, local_mount(mount, self.handoff_call, path_qs, owners), key
            )
        passed = {h: request.headers[h] for h in _PASS_REQUEST if h in request.headers}
        if clip:
            passed[CLIP_HEADER] = "1"
        wanted = {k: v for k, v in request.query.items() if k in RESPONSE_OVERRIDES}
        overrides = "&" + urllib.parse.urlencode(wanted) if wanted else ""  # response-*
        for member in owners:
            try:
                resp = await self.call_peer(request.method, member, path_qs + overrides, passed)
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = type(exc).__name__  # not str(exc): it may name the URL, the client's key
                log.server.info("cluster: owner %s did not answer (%s); next", member, why)
                continue
            if resp.status >= 500 or resp.status == 403:
                log.server.info("cluster: owner %s answered %d; next", member, resp.status)
                resp.release()
                continue
            return await self._relay(request, resp, mount, key)
        return None

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, mount: Mount, key: str
    ) -> web.StreamResponse:
        """Stream the owner's answer to the client, with backpressure, a piece at a time; an
        answer that stopped at its first chunk's end (chunks.CLIPPED_HEADER) is followed by
        the rest of the range the client asked, from the other chunks' owners."""
        try:
            drop = _DROP_ANSWER
            clipped = chunks.clipped(request, upstream)
            if clipped is not None:
                drop = drop | {"content-range", chunks.CLIPPED_HEADER}
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in drop}
            status = upstream.status
            if clipped is not None:
                meta, first, last, ranged = clipped
                status = 206 if ranged else 200
                if ranged:
                    headers["Content-Range"] = f"bytes {first}-{last}/{meta.size}"
            resp = web.StreamResponse(status=status, headers={**headers, **request_ids(request)})
            if clipped is not None:
                resp.content_length = last - first + 1
            elif upstream.content_length is not None:
                resp.content_length = upstream.content_length
            request["source"] = "peer"
            await resp.prepare(request)
            sent = 0
            async for piece in upstream.content.iter_any():
                metrics.PEER_RECEIVED.inc(len(piece))
                sent += len(piece)
                await resp.write(piece)
            if clipped is not None:
                upstream.release()
                try:
                    if sent != upstream.content_length:
                        raise errors.BackendUnavailable("an owner sent a short chunk")
                    assert self.chunk_reads is not None, "clipped: asked by this node"
                    await self.chunk_reads.send_rest(
                        mount, key, meta, first + sent, last, resp.write
                    )
                except (errors.ProxyError, OSError) as exc:
                    # headers are gone: the only honest signal left is a short body
                    log.server.warning("aborting a chunked GET after its first chunk (%s)", exc)
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
            await resp.write_eof()
            return resp
        finally:
            upstream.release()

    async def _replicate(self, others: list[str], path_qs: str, index: int) -> None:
        """Ask the other owners of chunk ``index`` (of the object: 0) to fill their replicas
        (from this node: the first owner)."""
        path_qs = peers.REPLICATE_PATH + path_qs[len(peers.OBJECT_PATH) :]
        if index:
            path_qs += f"&chunk={index}"
        for member in others:
            why = await self.post(member, path_qs, 202)
            if why is not None:
                log.cluster.info("cluster: owner %s was not told to replicate (%s)", member, why)

    async def _fill_replica(self, mount: Mount, remote: str, oid: bytes, index: int) -> None:
        """Fill this node's replica of chunk ``index`` (of the object: 0) from the other
        owners (the store only if none answers)."""
        assert self._fill is not None, "attach() first"
        owners = self.chunk_owners(oid, index)
        others = [m for m in owners if m != self.self_addr]
        if (
            len(others) == len(owners)
            or owners[0] == self.self_addr
            or (oid, index) in self._filling
        ):
            return  # no longer a replica here (membership changed), or already under way
        self._filling.add((oid, index))
        try:
            path_qs = peers.object_path(mount.name, remote[len(mount.prefix) :])
            await self._fill(self._source(mount, remote, path_qs, others, index), remote, index)
        except (errors.ProxyError, OSError) as exc:
            log.cluster.info("cluster: a replica fill failed (%s)", type(exc).__name__)
        finally:
            self._filling.discard((oid, index))

    # -- the server side ----------------------------------------------------------------------
    async def serve_peer(self, request: web.BaseRequest) -> web.StreamResponse:
        """The peer routes (PREFIX on the S3 listener): refused without a valid signature."""
        request["op"] = "Peer"
        why = self.verifier.refusal(request.method, request.raw_path, request.headers)
        if why is not None:
            return web.Response(status=403, text=f"Forbidden: {why}\n")
        route = request.method, request.raw_path.partition("?")[0]
        if route == ("GET", peers.HEALTH_PATH):
            if self.totals is None:
                return web.Response(text="ok\n")
            used, objects = self.totals()
            view, clean = self.view()
            local = self.cfg.local_copy > 0
            return web.json_response(
                {"bytes": used, "objects": objects, "view": view, "clean": clean, "local": local}
            )
        if route in self.routes:
            return await self.routes[route](request)
        if route not in _OBJECT_ROUTES:
            return web.Response(status=404, text="Not Found: no such peer route\n")
        bucket, key = request.query.get("bucket"), request.query.get("key")
        if not bucket or not key or self._router is None:
            return web.Response(status=400, text="Bad Request: bucket and key are required\n")
        mount = self._router.resolve(bucket)  # NoSuchBucket: the S3 error
        remote = mount.remote_key(key)
        request["peer"] = True
        if HANDOFF_HEADER in request.headers and route[0] != "POST":
            request["op"] = "PeerHandoff"  # answered from the cache only, never the store
            if not self.holds(mount, remote, request.headers.get("Range")):
                return web.Response(
                    status=404, headers={NOT_CACHED_HEADER: "1"}, text="Not Found: not cached\n"
                )
        if route == ("POST", peers.REPLICATE_PATH):
            index = request.query.get("chunk", "0")
            if not index.isdigit() or len(index) > 12:
                return web.Response(status=400, text="Bad Request: chunk is a chunk index\n")
            if mount.cacheable:
                oid = oid_of(mount, remote)
                self._spawn(self._fill_replica(mount, remote, oid, int(index)))
            return web.Response(status=202)
        if route[0] == "POST":
            assert self._drop is not None, "attach() first"
            if mount.cacheable:
                await self._drop(oid_of(mount, remote))
            return web.Response(status=204)
        answer = self._peer_get if route[0] == "GET" else self._peer_head
        assert answer is not None, "attach() first"
        return await answer(request, mount, remote)
