"""Where a replica (an owner of an object that is not its first owner) fills its copy from:
the other owners over the peer route, first owner first, and the store only when none of them
answers. It stands in for the mount's store in the read path (``replica_mount``): its GET and
HEAD go to the peers, everything else, its name included (so the cache id is the same), is the
store's.

Handoff (an owner that joined, or moved up the ranking, misses an object another node may
still hold): the members in ``only_cached`` are asked with HANDOFF_HEADER, which they answer
from their cache only (a 404 with NOT_CACHED_HEADER when they hold none, never a store fetch).
They are asked all at once, after the other owners: the first whole answer (2xx) wins, the
others are cancelled or released; none: the store. A miss pays one round trip for them. A peer
that stops in the middle of a body is replaced by the store for the rest (If-Match the peer's
ETag), so a fill never fails for it."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import aiohttp

from proxy import log, metrics
from proxy.backends.base import Backend
from proxy.backends.s3.codec import get_headers, map_answer, meta_from_headers
from proxy.cache.quota import LOCAL
from proxy.model import GetResult, ObjectMeta
from proxy.routing import Mount

# a peer request made to fill a replica: the owner that answers it does not ask the other
# owners to replicate in turn
REPLICA_HEADER = "x-slipstream-replica"
HANDOFF_HEADER = "x-slipstream-handoff"  # answer from the cache only
NOT_CACHED_HEADER = "x-slipstream-not-cached"  # the 404 of a handoff request it cannot serve
CLIP_HEADER = "x-slipstream-clip"  # cluster/chunks.py's: answer no further than one chunk
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_NEXT = (aiohttp.ClientError, TimeoutError)
# (method, member, path_qs, headers) -> the response's context manager
Call = Callable[[str, str, str, dict[str, str]], Any]
READ_SIZE = 256 * 1024


class PeerSource:
    def __init__(
        self,
        store: Backend,
        call: Call,
        path_qs: str,
        members: list[str],
        only_cached: frozenset[str] = frozenset(),
        replica: bool = True,
    ) -> None:
        self._store = store
        self._mark = {REPLICA_HEADER: "1"} if replica else {}
        self._call = call
        self._path_qs = path_qs
        self._members = members
        self._only_cached = only_cached

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def store(self) -> Backend:
        """The store behind the peers."""
        return self._store

    async def _ask(self, method: str, headers: dict[str, str]) -> aiohttp.ClientResponse | None:
        """The first other owner's answer that is the object's (2xx) or says what it is not
        (404, 412, 416: raised as the store's would be), else the handoff's; None when none
        answered."""
        for member in self._members:
            if member in self._only_cached:
                continue
            resp = await self._one(method, member, {**headers, **self._mark})
            if resp is None:
                continue
            if resp.status in (200, 206):
                return resp
            resp.release()
            if resp.status in (404, 412, 416):
                raise map_answer(resp.status, "", "", "")
            log.cluster.info("cluster: owner %s answered %d to a replica fill", member, resp.status)
        asked = [m for m in self._members if m in self._only_cached]
        return (
            await self._handoff(method, {**headers, HANDOFF_HEADER: "1"}, asked) if asked else None
        )

    async def _one(
        self, method: str, member: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse | None:
        try:
            resp: aiohttp.ClientResponse = await self._call(method, member, self._path_qs, headers)
        except _NEXT as exc:
            why = type(exc).__name__  # not str(exc): it may name the URL
            log.cluster.info("cluster: node %s did not answer a fill (%s)", member, why)
            return None
        return resp

    async def _handoff(
        self, method: str, headers: dict[str, str], asked: list[str]
    ) -> aiohttp.ClientResponse | None:
        """Every node in ``asked`` at once, for its cached copy: the first 2xx answer; the
        others are cancelled, or released when they answered too (their connections closed or
        given back). Any other answer (not cached there, or not as asked) counts for nothing."""
        pending = {asyncio.ensure_future(self._one(method, m, headers)) for m in asked}
        winner: aiohttp.ClientResponse | None = None
        try:
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    resp = task.result()
                    if resp is None:
                        continue
                    if winner is None and resp.status in (200, 206):
                        winner = resp
                    else:
                        resp.release()
            return winner
        finally:
            for task in pending:
                task.cancel()
            for late in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(late, aiohttp.ClientResponse):
                    late.release()

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        resp = await self._ask("HEAD", {})
        if resp is None:
            return await self._store.head(bucket, key)
        resp.release()
        return meta_from_headers(resp.headers, int(resp.headers.get("Content-Length", 0)))

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        # read at the peer no further than its chunk (and no read-ahead there: cluster/chunks.py)
        headers = get_headers(start, end, if_match) | {CLIP_HEADER: "1"}
        resp = await self._ask("GET", headers)
        if resp is None:
            return await self._store.get(bucket, key, start, end, if_match)
        length = int(resp.headers.get("Content-Length", 0))
        first, size = 0, length
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m:
            first, size = int(m.group(1)), int(m.group(3))

        meta = meta_from_headers(resp.headers, size)
        rest: list[GetResult] = []  # the store's read of what the peer did not send

        async def release() -> None:
            resp.release()
            for result in rest:
                await result.aclose()

        async def pieces() -> AsyncIterator[bytes]:
            sent = 0
            try:
                async for piece in resp.content.iter_chunked(READ_SIZE):
                    sent += len(piece)
                    metrics.PEER_RECEIVED.inc(len(piece))
                    yield piece
                if sent == length:
                    return
                why = "a short body"
            except _NEXT as exc:
                why = type(exc).__name__
            log.cluster.info("cluster: a peer stopped in a fill (%s); the store for the rest", why)
            resp.release()
            rest.append(
                await self._store.get(bucket, key, first + sent, first + length - 1, meta.etag)
            )
            async for piece in rest[0].body:
                yield piece

        return GetResult(
            meta=meta, start=first, end=first + length - 1, body=pieces(), release=release
        )


def replica_mount(
    mount: Mount,
    call: Call,
    path_qs: str,
    members: list[str],
    only_cached: frozenset[str] = frozenset(),
) -> Mount:
    """``mount`` with its reads going to ``members`` (the other owners, or the nodes that may
    hold it: ``only_cached``) first."""
    source = PeerSource(mount.backend, call, path_qs, members, only_cached)
    return dataclasses.replace(mount, backend=cast(Backend, source))


def local_mount(mount: Mount, call: Call, path_qs: str, owners: list[str]) -> Mount:
    """``mount`` as a node that does not own the object reads it to keep a local copy: from
    the owners in turn, the store only when none answers, as a client's read (the first owner
    has its replicas filled as usual), the records in the cache group quota.LOCAL."""
    source = PeerSource(mount.backend, call, path_qs, owners, replica=False)
    return dataclasses.replace(mount, backend=cast(Backend, source), group=LOCAL)
