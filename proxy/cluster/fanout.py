"""Warm jobs and the cache's admin operations across the cluster.

A warm job on any node fills each object on its owners (each chunk of a large object on that
chunk's owners: cluster/chunks.py), not on the node that runs it: a signed
``POST fill`` to each owner in the ring's order, which reads the object through its own cache
(coalesced with its client reads; the first owner from the store, the others from the owners
before them) and answers its source and size once its copy is committed, never the body. An
owner that does not answer is passed over for the next member in the ring's order (the one
that owns the object once the dead one leaves), until ``replicas`` owners have it. The
owner's answer is a line of JSON after a newline every KEEPALIVE seconds, so a large object's
fill outlives the peer read timeout.

Pin, unpin and evict through one node's admin API apply there and, by a signed ``POST
cache/ACTION`` each, on every other live member; the answer counts the nodes that applied it.
Each node resolves the client-facing bucket and prefix through its own ``buckets`` mapping.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from proxy import errors, log
from proxy.cache import pins
from proxy.cache.store import CacheStore
from proxy.cluster import peers, ring
from proxy.cluster.node import Cluster
from proxy.cluster.source import replica_mount
from proxy.config import MountConfig
from proxy.core.metadata import oid_of
from proxy.core.reads import Reads
from proxy.jobs.warm import drain_chunk
from proxy.routing import Mount, Router, remote_of

FILL_PATH = peers.PREFIX + "fill"
ACTIONS = ("pin", "unpin", "evict")
CACHE_PATHS = {action: peers.PREFIX + "cache/" + action for action in ACTIONS}
KEEPALIVE = 5.0  # seconds between the newlines a fill in progress sends
CHUNKS_AT_ONCE = 4  # a large object's chunks a warm job fills at once on their owners
FILL_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=30.0)
APPLY_TIMEOUT = aiohttp.ClientTimeout(total=300.0, connect=2.0)  # a scan of a large index
_NEXT = (aiohttp.ClientError, TimeoutError)


class _Unanswered(Exception):
    """A member did not answer a fill (down, refused, or an answer that is not one)."""


def _s3_error(said: Mapping[str, Any]) -> errors.S3Error:
    """The error an owner's fill ended with, as the S3 error it was there."""
    exc = errors.S3Error(str(said.get("message") or "the owner's fill failed"))
    exc.code = str(said.get("error") or "InternalError")
    exc.status = int(said.get("status") or 500)
    return exc


class Fanout:
    """The client side: what a warm job and the admin API ask of the other members."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    # -- warm jobs ----------------------------------------------------------------------------
    async def fill(self, mount: Mount, key: str, etag: str | None, pin: bool) -> tuple[str, int]:
        """Fill ``key`` (a remote key) on its owners: the object's owners fill it, or its first
        chunk when it spans more, then each other chunk's owners fill that chunk (CHUNKS_AT_ONCE
        at a time). With ``etag`` (as listed), an owner whose copy has another ETag drops it
        first; with ``pin``, each owner pins its copy. The source ("cache" when every owner
        had it) and the size. Raises the object's own error (NoSuchKey...) as the owner met
        it, and BackendUnavailable when no member answered."""
        source, size = await self._fill_chunk(mount, key, etag, pin, 0)
        cs = self._cluster.chunk_size
        if cs <= 0 or size <= cs:
            return source, size
        rest = range(1, -(-size // cs))
        limit = asyncio.Semaphore(CHUNKS_AT_ONCE)

        async def one(index: int) -> str:
            async with limit:
                return (await self._fill_chunk(mount, key, etag, pin, index))[0]

        sources = await asyncio.gather(*(one(i) for i in rest))
        return next((s for s in (source, *sources) if s != "cache"), "cache"), size

    async def _fill_chunk(
        self, mount: Mount, key: str, etag: str | None, pin: bool, index: int
    ) -> tuple[str, int]:
        """Fill chunk ``index`` on its owners, one after the other in the ring's order, until
        ``replicas`` have it: its source and the object's size."""
        c = self._cluster
        live = c.members.live()
        ranked = ring.chunk_owners(oid_of(mount, key), index, live, len(live))
        want = min(c.cfg.replicas, len(ranked))
        query = {"bucket": mount.name, "key": key[len(mount.prefix) :]}
        if etag is not None:
            query["etag"] = etag
        if pin:
            query["pin"] = "1"
        if index:
            query["chunk"] = str(index)
        path_qs = FILL_PATH + "?" + urllib.parse.urlencode(query)
        filled, source, size, missed = 0, "cache", 0, []
        for member in ranked:
            if filled == want:
                break
            try:
                said = await self._fill_on(member, path_qs)
            except _Unanswered as exc:
                log.cluster.info("cluster: owner %s did not fill an object (%s); next", member, exc)
                missed.append(f"{member}: {exc}")
                continue
            if "error" in said:
                raise _s3_error(said)  # the object's own answer: no other owner does better
            filled += 1
            size = int(said.get("size", said.get("bytes", 0)))  # "size": the object's
            if said.get("source") != "cache":
                source = str(said.get("source"))
        if filled == 0:
            raise errors.BackendUnavailable(f"No owner filled the object ({'; '.join(missed)}).")
        return source, size

    async def _fill_on(self, member: str, path_qs: str) -> dict[str, Any]:
        try:
            async with self._cluster.call_peer("POST", member, path_qs, {}, FILL_TIMEOUT) as resp:
                if resp.status != 200:
                    raise _Unanswered(f"it answered {resp.status}")
                lines = (await resp.read()).strip().splitlines()  # keepalives, the answer
        except _NEXT as exc:
            raise _Unanswered(type(exc).__name__) from None  # str(exc) may name the key
        try:
            said = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise _Unanswered("its answer was cut short") from None
        if not isinstance(said, dict):
            raise _Unanswered("its answer was not an object")
        return said

    async def pin_elsewhere(self, bucket: str, prefix: str) -> None:
        """A warm job's pin rule, on every other live member (logged where it failed)."""
        for result in await self.apply("pin", bucket, prefix):
            if "error" in result:
                log.cluster.warning(
                    "cluster: %s did not add a warm job's pin rule (%s)",
                    result["address"],
                    result["error"],
                )

    # -- pin, unpin, evict --------------------------------------------------------------------
    async def apply(self, action: str, bucket: str, prefix: str) -> list[dict[str, Any]]:
        """Apply ``action`` on every other live member at once: each one's answer (objects,
        bytes, existed) or its error, with its address."""
        c = self._cluster
        others = [m for m in c.members.live() if m != c.self_addr]
        query = urllib.parse.urlencode({"bucket": bucket, "prefix": prefix})
        path_qs = CACHE_PATHS[action] + "?" + query
        return list(await asyncio.gather(*(self._apply_on(m, path_qs) for m in others)))

    async def _apply_on(self, member: str, path_qs: str) -> dict[str, Any]:
        try:
            async with self._cluster.call_peer("POST", member, path_qs, {}, APPLY_TIMEOUT) as resp:
                if resp.status != 200:
                    return {"address": member, "error": f"it answered {resp.status}"}
                said = json.loads(await resp.read())
                return {
                    "address": member,
                    "objects": int(said["objects"]),
                    "bytes": int(said["bytes"]),
                    "existed": bool(said.get("existed", True)),
                }
        except _NEXT as exc:
            return {"address": member, "error": type(exc).__name__}
        except (ValueError, KeyError, TypeError):
            return {"address": member, "error": "its answer was not one"}


@dataclass(frozen=True, slots=True)
class _Owner:
    """The server side: the peer routes a node answers as owner."""

    _cluster: Cluster
    _router: Router
    _reads: Reads
    _cache: CacheStore
    _buckets: Mapping[str, MountConfig]

    async def fill(self, request: web.BaseRequest) -> web.StreamResponse:
        bucket, key = request.query.get("bucket"), request.query.get("key")
        if not bucket or not key:
            return web.Response(status=400, text="Bad Request: bucket and key are required\n")
        mount = self._router.resolve(bucket)  # NoSuchBucket: the S3 error
        if not mount.cacheable:
            return web.Response(status=400, text="Bad Request: this bucket is not cached\n")
        remote = mount.remote_key(key)
        etag, pin = request.query.get("etag"), request.query.get("pin") == "1"
        index = request.query.get("chunk", "0")
        if not index.isdigit() or len(index) > 12:
            return web.Response(status=400, text="Bad Request: chunk is a chunk index\n")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        task = asyncio.ensure_future(self._fill(mount, remote, etag, pin, int(index)))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # asker gone: no warning
        while not (await asyncio.wait({task}, timeout=KEEPALIVE))[0]:
            await resp.write(b"\n")
        try:
            source, got, size = task.result()
            said: dict[str, Any] = {"source": source, "bytes": got, "size": size}
        except errors.S3Error as exc:
            said = {"error": exc.code, "message": exc.message, "status": exc.status}
        except (errors.ProxyError, OSError) as exc:
            said = {"error": "InternalError", "message": type(exc).__name__, "status": 500}
        await resp.write(json.dumps(said).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def _fill(
        self, mount: Mount, remote: str, etag: str | None, pin: bool, index: int
    ) -> tuple[str, int, int]:
        """Read chunk ``index`` of the object (0: all of an object of one chunk) through this
        node's cache: from the store as its first owner, else from the owners before it (the
        store last). A copy whose ETag is not ``etag`` is dropped first (the store's object
        was rewritten). The source, the bytes read and the object's size."""
        c, oid = self._cluster, oid_of(mount, remote)
        if etag is not None:
            rec, _ = self._cache.lookup(oid)
            if rec is not None and rec.etag.strip('"') != etag.strip('"'):
                self._reads.invalidate(oid)
                await self._cache.drop(oid)
                self._reads.invalidate(oid)
        owners = c.chunk_owners(oid, index)
        others = [m for m in owners if m != c.self_addr]
        source = mount
        if others and owners[0] != c.self_addr:
            path_qs = peers.object_path(mount.name, remote[len(mount.prefix) :])
            source = replica_mount(mount, c.call_peer, path_qs, others)
        got = await drain_chunk(self._reads, source, remote, index)
        # answered once committed, as a worker's drain for a job: the asker's job may say done
        # (or the next owner read this copy) at once, and a pin finds the object's record
        await self._reads.fills.settled([oid])
        if pin:
            await self._cache.pin_objects([oid])
        return got

    async def apply(self, action: str, request: web.BaseRequest) -> web.StreamResponse:
        bucket, prefix = request.query.get("bucket"), request.query.get("prefix")
        if not bucket or prefix is None:
            return web.Response(status=400, text="Bad Request: bucket and prefix are required\n")
        backend, remote, base = remote_of(self._buckets, bucket)  # NoSuchBucket: the S3 error
        target = pins.Target(backend, remote, base + prefix)
        index = self._cache.index
        assert index is not None, "the cache is open"
        existed = True
        if action == "pin":
            counts = await pins.pin(index, target)
        elif action == "unpin":
            existed, counts = await pins.unpin(index, target)
        else:
            counts = await pins.evict(index, target)
        log.cache.info("peer %s: %d objects, %d bytes", action, counts.objects, counts.bytes)
        return web.json_response(
            {"objects": counts.objects, "bytes": counts.bytes, "existed": existed}
        )


def serve(
    cluster: Cluster,
    router: Router,
    reads: Reads,
    cache: CacheStore,
    buckets: Mapping[str, MountConfig],
) -> None:
    """Answer the fill and cache routes on this node's peer listener."""
    owner = _Owner(cluster, router, reads, cache, buckets)
    cluster.routes[("POST", FILL_PATH)] = owner.fill
    for action, path in CACHE_PATHS.items():
        cluster.routes[("POST", path)] = partial(owner.apply, action)
