"""Where a replica (an owner of an object that is not its first owner) fills its copy from:
the other owners over the peer route, first owner first, and the store only when none of them
answers. It stands in for the mount's store in the read path (``replica_mount``): its GET and
HEAD go to the peers, everything else, its name included (so the cache id is the same), is the
store's."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp

from proxy import errors, log
from proxy.backends.base import Backend
from proxy.backends.s3.codec import get_headers, map_answer, meta_from_headers
from proxy.model import GetResult, ObjectMeta
from proxy.routing import Mount

# a peer request made to fill a replica: the owner that answers it does not ask the other
# owners to replicate in turn
REPLICA_HEADER = "x-slipstream-replica"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_NEXT = (aiohttp.ClientError, TimeoutError)
# (method, member, path_qs, headers) -> the response's context manager
Call = Callable[[str, str, str, dict[str, str]], Any]
READ_SIZE = 256 * 1024


class PeerSource:
    def __init__(self, store: Backend, call: Call, path_qs: str, members: list[str]) -> None:
        self._store = store
        self._call = call
        self._path_qs = path_qs
        self._members = members

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def _ask(self, method: str, headers: dict[str, str]) -> aiohttp.ClientResponse | None:
        """The first other owner's answer that is the object's (2xx) or says what it is not
        (404, 412, 416: raised as the store's would be); None when none answered."""
        for member in self._members:
            try:
                resp: aiohttp.ClientResponse = await self._call(
                    method, member, self._path_qs, {**headers, REPLICA_HEADER: "1"}
                )
            except _NEXT as exc:
                log.cluster.info(
                    "cluster: owner %s did not answer a replica fill (%s)",
                    member,
                    type(exc).__name__,
                )
                continue
            if resp.status in (200, 206):
                return resp
            resp.release()
            if resp.status in (404, 412, 416):
                raise map_answer(resp.status, "", "", "")
            log.cluster.info("cluster: owner %s answered %d to a replica fill", member, resp.status)
        return None

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        resp = await self._ask("HEAD", {})
        if resp is None:
            return await self._store.head(bucket, key)
        resp.release()
        return meta_from_headers(resp.headers, int(resp.headers.get("Content-Length", 0)))

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        headers = get_headers(start, end, if_match)
        resp = await self._ask("GET", headers)
        if resp is None:
            return await self._store.get(bucket, key, start, end, if_match)
        length = int(resp.headers.get("Content-Length", 0))
        first, size = 0, length
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m:
            first, size = int(m.group(1)), int(m.group(3))

        async def release() -> None:
            resp.release()

        return GetResult(
            meta=meta_from_headers(resp.headers, size),
            start=first,
            end=first + length - 1,
            body=_pieces(resp),
            release=release,
        )


async def _pieces(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for piece in resp.content.iter_chunked(READ_SIZE):
            yield piece
    except _NEXT as exc:
        why = f"An owner stopped answering: {type(exc).__name__}."
        raise errors.BackendUnavailable(why) from exc


def replica_mount(mount: Mount, call: Call, path_qs: str, members: list[str]) -> Mount:
    """``mount`` with its reads going to ``members`` (the other owners) first."""
    source = PeerSource(mount.backend, call, path_qs, members)
    return dataclasses.replace(mount, backend=cast(Backend, source))


Fill = Callable[[Mount, str], Awaitable[None]]
