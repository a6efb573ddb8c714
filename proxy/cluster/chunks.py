"""Per-chunk ownership of a large object (one larger than cache.chunk_size): chunk ``i`` is
owned by ring.chunk_owners(oid, i), chunk 0 by the object's own owners, so an object of one
chunk is placed as before and costs nothing more.

A client's GET through any node goes, as before, to the owners of the chunk its range starts in
(the object's owners for a plain GET), which answer as always, except that the answer stops at
the end of that chunk when the object spans more (CLIP_HEADER asks for this, CLIPPED_HEADER on
the answer says it happened): a small object's GET is unchanged, and a large one's first chunk
brings its metadata. The node the client asked then sends the rest of the range itself (send_rest):
each chunk's span from that chunk's first live owner (a peer GET: Range, If-Match the ETag,
CLIP_HEADER), which reads it through its own cache (the store on a miss, only that chunk
cached there); this node asks itself over the same route when it owns the chunk. An owner
that fails, before or during its span, is replaced by the next owner from where it stopped,
then the store (ranged, If-Match). An owner holding another version (412: the object was
rewritten and it was not told) is told to drop its copy and passed over. Headers go once: a
failure after them aborts the client's connection (a short body, never a wrong whole).
Memory: one peer read (READ_SIZE) at a time."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from proxy import errors, log, metrics
from proxy.backends.s3.codec import meta_from_headers
from proxy.cache.record import Record
from proxy.cluster import peers, ring
from proxy.cluster.source import CLIP_HEADER, PeerSource
from proxy.core.metadata import oid_of
from proxy.model import GetResult, ObjectMeta
from proxy.routing import Mount
from proxy.s3 import parse

if TYPE_CHECKING:
    from proxy.cluster.node import Cluster

__all__ = ["CLIP_HEADER", "CLIPPED_HEADER", "ChunkReads", "clipped", "first_chunk"]

CLIPPED_HEADER = "x-slipstream-clipped"  # the answer stopped there: the rest is other nodes'
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)", re.ASCII)
READ_SIZE = 256 * 1024
_NEXT = (aiohttp.ClientError, TimeoutError)
Call = Callable[[str, str, str, dict[str, str]], Any]  # (method, member, path_qs, headers)
StoreGet = Callable[[int, int, str], Awaitable[GetResult]]  # (first, last, etag): a ranged read
Drop = Callable[[str], Awaitable[None]]  # have that member drop its copy of the object
Write = Callable[[bytes], Awaitable[None]]


class ChunkReads:
    """A node's side of per-chunk ownership: which GETs read only their first chunk here,
    which go to other nodes though this one caches some of the object, and the rest of a
    range from the chunks' owners (read_handlers.Chunks)."""

    def __init__(self, cluster: Cluster, chunk_size: int) -> None:
        self._cluster = cluster
        self._cs = chunk_size

    def clips(self, request: web.BaseRequest, mount: Mount) -> bool:
        """A GET here reads only the chunk its range starts in (when the object spans more):
        a client's, or a peer's that asks (CLIP_HEADER). Not with local copies (a node keeps
        whole objects then)."""
        return (
            request.method == "GET"
            and mount.cacheable
            and not self._cluster.cfg.local_copy
            and (not request.get("peer") or CLIP_HEADER in request.headers)
        )

    def clipped_header(self) -> str:
        return CLIPPED_HEADER

    def elsewhere(self, request: web.BaseRequest, mount: Mount, oid: bytes, rec: Record) -> bool:
        """A GET of a large object cached here in part (``rec``, its index entry) whose range
        starts in a chunk another node owns, or one this node owns and lacks (filled from the
        other owners)."""
        c = self._cluster
        if not self.clips(request, mount) or rec.size <= self._cs:
            return False  # an object of one chunk: the object's own rules
        index = first_chunk(request, self._cs, rec.size)
        if c.self_addr not in c.chunk_owners(oid, index):
            return True
        return not rec.has_chunk(index)

    async def first(self, request: web.BaseRequest, mount: Mount, key: str) -> int:
        """The chunk a GET's range starts in; for a range from the end, the object's size
        from this node's index, else from the object's owners (a peer HEAD)."""
        rng = parse.parse_range(request.headers.get("Range"))
        if rng is None or rng.first is not None:
            return first_chunk(request, self._cs)
        c, oid = self._cluster, oid_of(mount, key)
        rec, _ = c.lookup(oid)
        size = rec.size if rec is not None else None
        path_qs = peers.object_path(mount.name, key[len(mount.prefix) :])
        for member in c.chunk_owners(oid, 0) if size is None else []:
            try:
                async with c.call_peer("HEAD", member, path_qs, {}) as resp:
                    if resp.status == 200 and resp.content_length is not None:
                        size = resp.content_length
                        break
            except _NEXT as exc:
                log.cluster.info(
                    "cluster: owner %s did not answer (%s)", member, type(exc).__name__
                )
        return first_chunk(request, self._cs, size)

    async def send_rest(
        self, mount: Mount, key: str, meta: ObjectMeta, first: int, last: int, write: Write
    ) -> None:
        """``write`` bytes ``first``..``last`` of a large object (``first`` on a chunk
        boundary) from their chunks' owners."""
        c = self._cluster
        path_qs = peers.object_path(mount.name, key[len(mount.prefix) :])
        dropped = peers.object_path(mount.name, key[len(mount.prefix) :], peers.INVALIDATE_PATH)
        store = mount.backend.store if isinstance(mount.backend, PeerSource) else mount.backend

        def store_get(start: int, end: int, etag: str) -> Any:
            return store.get(mount.bucket, key, start, end, etag)

        async def drop(member: str) -> None:
            why = await c.post(member, dropped, 204)
            if why is not None:
                log.cluster.info("cluster: chunk owner %s kept another version (%s)", member, why)

        live, r, oid = c.members.live(), c.cfg.replicas, oid_of(mount, key)
        for index, lo, hi in spans(first, last, self._cs):
            owners = ring.chunk_owners(oid, index, live, r)
            pieces = _span(c.call_peer, path_qs, owners, lo, hi, meta.etag, store_get, drop)
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    await write(piece)


def first_chunk(request: web.BaseRequest, chunk_size: int, size: int | None = None) -> int:
    """The chunk a GET's range starts in (0: no range; one from the end: with the object's
    ``size``, else 0)."""
    if request.method != "GET":
        return 0
    rng = parse.parse_range(request.headers.get("Range"))
    if rng is None:
        return 0
    if rng.first is None:
        if size is None or rng.last is None:
            return 0
        return max(0, size - rng.last) // chunk_size
    return rng.first // chunk_size


def clipped(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse
) -> tuple[ObjectMeta, int, int, bool] | None:
    """For an owner's answer that stopped at its first chunk's end: the object's metadata,
    the range the client asked (first, last) and whether it asked one; else None."""
    if CLIPPED_HEADER not in upstream.headers or upstream.status != 206:
        return None
    m = _CONTENT_RANGE.fullmatch(upstream.headers.get("Content-Range", ""))
    rng = parse.parse_range(request.headers.get("Range"))
    if m is not None:
        size = int(m.group(3))
        first, last = rng.resolve(size) if rng is not None else (0, size - 1)
        if first == int(m.group(1)):
            return meta_from_headers(upstream.headers, size), first, last, rng is not None
    raise errors.BackendUnavailable("An owner answered a chunked read out of order.")


def spans(first: int, last: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """Bytes ``first``..``last`` cut at chunk boundaries: (chunk index, first, last) each."""
    out = []
    for index in range(first // chunk_size, last // chunk_size + 1):
        out.append((index, max(first, index * chunk_size), min(last, (index + 1) * chunk_size - 1)))
    return out


async def _span(
    call: Call,
    path_qs: str,
    owners: list[str],
    first: int,
    last: int,
    etag: str,
    store_get: StoreGet,
    drop: Drop,
) -> AsyncGenerator[bytes, None]:
    at = first
    for member in owners:
        headers = {"Range": f"bytes={at}-{last}", "If-Match": etag, CLIP_HEADER: "1"}
        try:
            async with call("GET", member, path_qs, headers) as resp:
                if resp.status == 412:
                    why = "another version"
                elif resp.status != 206 or resp.headers.get("ETag") != etag:
                    why = f"an answer {resp.status}"
                else:
                    async for piece in resp.content.iter_chunked(READ_SIZE):
                        metrics.PEER_RECEIVED.inc(len(piece))
                        piece = piece[: last + 1 - at]
                        at += len(piece)
                        yield piece
                    if at > last:
                        return
                    why = "a short body"
            if resp.status == 412:
                await drop(member)  # its next read of the chunk fills from the store
        except _NEXT as exc:
            why = type(exc).__name__  # not str(exc): it may name the URL
        log.cluster.info("cluster: chunk owner %s failed (%s); the next", member, why)
    result = await store_get(at, last, etag)
    try:
        async for piece in result.body:
            piece = piece[: last + 1 - at]
            at += len(piece)
            yield piece
    finally:
        await result.aclose()
    if at != last + 1:
        raise errors.ObjectChanged("the store sent a short chunk")
