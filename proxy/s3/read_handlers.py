"""S3 read operations: HeadBucket, GetBucketLocation/Versioning, ListBuckets, ListObjects (v1,
v2), HeadObject and GetObject, whose cached chunks go out with sendfile."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from email.utils import formatdate
from typing import Protocol

from aiohttp import web

from proxy import errors, log, metrics
from proxy.core.body import FileSlice, Part
from proxy.core.conditions import check_conditions
from proxy.core.listing import Listing
from proxy.core.partnumber import PartRanges, PartSpan
from proxy.core.reads import Reads
from proxy.memo import remember
from proxy.model import ByteRange, ObjectMeta
from proxy.routing import Mount
from proxy.s3 import parse, whole, xml
from proxy.s3.responses import request_ids, xml_response

FILE_BLOCK = 1024 * 1024
WHOLE_MISS_MAX = 64 * 1024  # a miss this small goes out whole, with its headers
Forward = Callable[[web.BaseRequest, Mount, str], Awaitable[web.StreamResponse | None]]
Write = Callable[[bytes], Awaitable[None]]


class Chunks(Protocol):
    """A cluster's per-chunk ownership of large objects (cluster/chunks.py)."""

    def clips(self, request: web.BaseRequest, mount: Mount) -> bool:
        """This GET reads here only the chunk its range starts in."""

    def clipped_header(self) -> str:
        """The answer header that tells a peer the read stopped at its first chunk's end."""

    async def send_rest(
        self, mount: Mount, key: str, meta: ObjectMeta, first: int, last: int, write: Write
    ) -> None:
        """Bytes ``first``..``last`` (from a chunk boundary) from their chunks' owners."""


@functools.lru_cache(maxsize=8192)
def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


class S3ReadHandlers:
    """``sendfile``: serve cached chunks with loop.sendfile (else, or where the loop cannot,
    by pread and write)."""

    def __init__(self, *, reads: Reads, listing: Listing, region: str, sendfile: bool) -> None:
        self.reads = reads
        # with a cluster: a GET or HEAD of an object not cached here that another node owns
        # goes there
        self.forward: Forward | None = None
        # whether forward takes this GET or HEAD (not cached here, or cached but read through
        # other nodes: a cluster local copy, a chunk another node owns); one index lookup
        self.forwards: Callable[[web.BaseRequest, Mount, str], bool] | None = None
        self.chunks: Chunks | None = None
        self.part_ranges = PartRanges(reads)
        self.listing = listing
        self.region = region
        self.native_sendfile = sendfile

    # -- buckets ------------------------------------------------------------------------------
    async def head_bucket(self, request: web.BaseRequest, mount: Mount) -> web.StreamResponse:
        await self._require_bucket(mount)
        return web.Response(headers={"x-amz-bucket-region": self.region, **request_ids(request)})

    async def get_location(self, request: web.BaseRequest, mount: Mount) -> web.StreamResponse:
        await self._require_bucket(mount)
        return xml_response(request, xml.location(self.region))

    async def get_versioning(self, request: web.BaseRequest, mount: Mount) -> web.StreamResponse:
        await self._require_bucket(mount)
        return xml_response(request, xml.versioning())

    async def _require_bucket(self, mount: Mount) -> None:
        if not await self.listing.bucket_exists(mount):
            raise errors.NoSuchBucket(resource=mount.name)

    # -- buckets ------------------------------------------------------------------------------
    async def list_buckets(self, request: web.BaseRequest) -> web.StreamResponse:
        auth = request["auth"]  # only the buckets the caller may read
        buckets = [b for b in await self.listing.list_buckets() if auth.allows(b.name, False)]
        return xml_response(request, xml.list_buckets(buckets))

    async def list_v2(
        self, request: web.BaseRequest, mount: Mount, q: dict[str, str]
    ) -> web.Response:
        url = _encoding(q)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = parse.parse_max_keys(q.get("max-keys"))
        token = q.get("continuation-token")
        start_after = q.get("start-after") or None
        page = await self.listing.list_objects(
            mount, prefix, delimiter, max_keys, token or None, start_after
        )
        body = xml.list_objects_v2(
            mount.name,
            page,
            prefix=prefix,
            delimiter=delimiter,
            max_keys=max_keys,
            token=token,
            start_after=start_after,
            url=url,
            fetch_owner=q.get("fetch-owner") == "true",
        )
        return xml_response(request, body)

    async def list_v1(
        self, request: web.BaseRequest, mount: Mount, q: dict[str, str]
    ) -> web.Response:
        url = _encoding(q)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = parse.parse_max_keys(q.get("max-keys"))
        marker = q.get("marker", "")
        page = await self.listing.list_objects(
            mount, prefix, delimiter, max_keys, None, marker or None
        )
        body = xml.list_objects_v1(
            mount.name,
            page,
            prefix=prefix,
            delimiter=delimiter,
            max_keys=max_keys,
            marker=marker,
            url=url,
        )
        return xml_response(request, body)

    # -- objects ------------------------------------------------------------------------------
    async def _part(self, request: web.BaseRequest, mount: Mount, key: str, raw: str) -> PartSpan:
        """``?partNumber=``: the part's span (a Range beside it is refused, as S3 does)."""
        number = parse.parse_part_number(raw)
        if request.headers.get("Range"):
            raise errors.InvalidRequest(
                "Cannot specify both Range header and partNumber query parameter."
            )
        return await self.part_ranges.span(mount, key, number)

    async def head_object(
        self, request: web.BaseRequest, mount: Mount, key: str, query: dict[str, str]
    ) -> web.StreamResponse:
        if self.forward is not None and self.forwards is not None and "partNumber" not in query:
            if self.forwards(request, mount, key):
                forwarded = await self.forward(request, mount, key)
                if forwarded is not None:
                    return forwarded
        part = None
        if "partNumber" in query:
            part = await self._part(request, mount, key, query["partNumber"])
            meta = part.meta
        else:
            meta = await self.reads.head(mount, key)
        try:
            check_conditions(request.headers, meta.etag, meta.last_modified)
        except errors.NotModified as exc:
            exc.fields.update(_validators(meta))
            raise
        rng = parse.parse_range(request.headers.get("Range"))
        headers = _object_headers(request, meta, query, whole=rng is None and part is None)
        status = 200
        length = meta.size
        if part is not None:
            _part_headers(headers, part)
            if meta.size:
                status, length = 206, part.last - part.first + 1
        elif rng is not None:
            first, last = rng.resolve(meta.size)
            status, length = 206, last - first + 1
            headers["Content-Range"] = f"bytes {first}-{last}/{meta.size}"
        return whole.respond(request, status, headers, b"", length)

    async def get_object(
        self, request: web.BaseRequest, mount: Mount, key: str, query: dict[str, str]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        if (
            self.forward is not None
            and self.forwards is not None
            and "partNumber" not in query
            and self.forwards(request, mount, key)
        ):
            forwarded = await self.forward(request, mount, key)
            if forwarded is not None:
                return forwarded
        span = None
        if "partNumber" in query:
            span = await self._part(request, mount, key, query["partNumber"])
            rng = ByteRange(span.first, span.last) if span.meta.size else None
        else:
            rng = parse.parse_range(request.headers.get("Range"))
        clip = span is None and self.chunks is not None and self.chunks.clips(request, mount)
        try:
            read = await self.reads.read(mount, key, rng, request.headers, clip)
        except errors.NotModified as exc:
            meta = await self.reads.head(mount, key)
            exc.fields.update(_validators(meta))
            raise
        if span is not None and read.meta.etag != span.meta.etag:
            raise errors.ObjectChanged(f"{key} changed while its part was looked up")
        request["source"] = read.source
        stats = metrics.bucket(mount.name, mount.wildcard)
        hit = read.source == "cache"
        first_byte = metrics.FIRST_BYTE_HIT if hit else metrics.FIRST_BYTE_MISS
        parts = (
            read.parts if hit else _stalls(read.parts, stats.stall, time.perf_counter() - started)
        )
        # a clipped read for a client: the answer is the whole range asked, the rest of it
        # from the other chunks' owners after the bytes read here
        rest = read.clipped and not request.get("peer")
        if rest:
            size = read.meta.size
            first, last = rng.resolve(size) if rng is not None else (0, size - 1)
            partial = rng is not None
        else:
            first, last, partial = read.first, read.last, read.partial
        headers = _object_headers(request, read.meta, query, whole=not partial)
        if span is not None:
            _part_headers(headers, span)
        status = 200
        if partial:
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{read.meta.size}"
        if read.clipped and not rest and self.chunks is not None:
            headers[self.chunks.clipped_header()] = "1"
        if read.body is not None:  # a whole inline object: one write, no streaming
            # only a cluster's peer requests are marked (a missing key costs an exception)
            peer = self.forward is not None and request.get("peer", False)
            stats.served(read.source, len(read.body), peer)
            first_byte.observe(time.perf_counter() - started)
            return whole.respond(request, status, headers, read.body, len(read.body))
        gathered: list[bytes] = []
        failure: BaseException | None = None
        if not hit and not rest and read.length <= WHOLE_MISS_MAX and whole.fits(request, status):
            # A small miss comes in one store answer: gathered, it goes out with its headers in
            # one write, as a hit (a streamed answer costs aiohttp's header preparation and a
            # write each for headers and body).
            fill = read.fill() if read.fill is not None else None
            if fill is not None:  # one fill holds it: its bytes at once, once all came
                body_of = await fill.whole(read.first, read.last)
                del fill
                if body_of is not None:
                    waited = time.perf_counter() - started
                    stats.stall.inc(waited)  # as _stalls: all of it waited for the store
                    stats.served(read.source, len(body_of), request.get("peer", False))
                    first_byte.observe(waited)
                    return whole.respond(request, status, headers, body_of, len(body_of))
            try:
                async for piece in self.reads.bytes_of(replace(read, parts=parts), mount, key):
                    gathered.append(piece)
            except (errors.ProxyError, OSError, ValueError) as exc:
                failure = exc  # below: the headers, what came, then the cut (as streamed)
            else:
                body = gathered[0] if len(gathered) == 1 else b"".join(gathered)
                stats.served(read.source, len(body), request.get("peer", False))
                first_byte.observe(time.perf_counter() - started)
                return whole.respond(request, status, headers, body, len(body))
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = last - first + 1 if read.meta.size else 0
        await resp.prepare(request)
        first_byte.observe(time.perf_counter() - started)
        sent = 0
        try:
            for piece in gathered:
                await resp.write(piece)
                sent += len(piece)
            if failure is not None:
                raise failure
            async for part in parts:
                if isinstance(part, FileSlice):
                    sent += await self._send_file(request, resp, part, mount, key, read.meta)
                else:
                    await resp.write(part)
                    sent += len(part)
                del part  # a slice of a fill keeps its whole chunk buffer alive
            if rest and self.chunks is not None:  # not counted in ``sent``: not from here
                await self.chunks.send_rest(mount, key, read.meta, read.last + 1, last, resp.write)
        except (errors.ProxyError, OSError, ValueError) as exc:
            # Headers are gone: the only honest signal left is a short body.
            log.server.warning("aborting GET %s/%s after %d bytes: %s", mount.name, key, sent, exc)
            _abort(request)
            return resp
        finally:
            stats.served(read.source, sent, request.get("peer", False))
        await resp.write_eof()
        return resp

    async def _send_file(
        self,
        request: web.BaseRequest,
        resp: web.StreamResponse,
        part: FileSlice,
        mount: Mount,
        key: str,
        meta: ObjectMeta,
    ) -> int:
        loop = asyncio.get_running_loop()
        try:
            f = await loop.run_in_executor(None, open, part.path, "rb")
        except FileNotFoundError:
            sent = 0
            async for piece in self.reads.refill_missing(mount, key, part, meta):
                await resp.write(piece)
                sent += len(piece)
            return sent
        try:
            transport = request.transport
            if self.native_sendfile and transport is not None:
                try:
                    await loop.sendfile(transport, f, part.offset, part.length)
                    return part.length
                except NotImplementedError:
                    self.native_sendfile = False  # uvloop: use the plain path from now on
            fd = f.fileno()
            pos, end = part.offset, part.offset + part.length
            while pos < end:
                block = await loop.run_in_executor(
                    None, os.pread, fd, min(FILE_BLOCK, end - pos), pos
                )
                if not block:
                    raise OSError("cached chunk file is shorter than its index entry")
                await resp.write(block)
                pos += len(block)
            return part.length
        finally:
            f.close()


async def _stalls(
    parts: AsyncIterator[Part], stall: metrics.Tally, waited: float
) -> AsyncIterator[Part]:
    """``parts``, counting into ``stall`` the time spent waiting for store bytes (``waited``
    so far: the wait for the object). A cached slice costs no wait; the client's own pace
    (time between yields) is not counted."""
    mark = time.perf_counter()
    try:
        async for part in parts:
            if not isinstance(part, FileSlice):
                waited += time.perf_counter() - mark
            yield part
            del part
            mark = time.perf_counter()
    finally:
        stall.inc(waited)


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _encoding(q: Mapping[str, str]) -> bool:
    enc = q.get("encoding-type")
    if enc not in (None, "", "url"):
        raise errors.InvalidArgument(
            "Invalid Encoding Method specified in Request",
            argumentName="encoding-type",
            argumentValue=str(enc),
        )
    return enc == "url"


def _part_headers(headers: dict[str, str], part: PartSpan) -> None:
    """A part is answered as a range of the object (206), with the object's part count."""
    if part.count is not None:
        headers["x-amz-mp-parts-count"] = str(part.count)
    if part.meta.size:
        headers["Content-Range"] = f"bytes {part.first}-{part.last}/{part.meta.size}"


def _validators(meta: ObjectMeta) -> dict[str, str]:
    return {"ETag": meta.etag, "Last-Modified": http_date(meta.last_modified)}


_base_headers: dict[int, tuple[ObjectMeta, dict[str, str]]] = {}


_CHECKSUM_PREFIX = "x-amz-checksum-"


def object_fields(meta: ObjectMeta) -> dict[str, str]:
    """The headers of an answer about ``meta`` that depend on nothing else (no request ids,
    no checksums: those are asked for; no range, no overrides)."""
    base = {
        "ETag": meta.etag,
        "Last-Modified": http_date(meta.last_modified),
        "Content-Type": meta.content_type,
        "Accept-Ranges": "bytes",
        **{k: v for k, v in meta.headers.items() if not k.startswith(_CHECKSUM_PREFIX)},
    }
    for name, value in meta.metadata.items():
        base[f"x-amz-meta-{name}"] = value
    return base


def checksum_fields(meta: ObjectMeta) -> dict[str, str]:
    """The whole object's checksums, answered when x-amz-checksum-mode asks."""
    return {k: v for k, v in meta.headers.items() if k.startswith(_CHECKSUM_PREFIX)}


def _object_headers(
    request: web.BaseRequest, meta: ObjectMeta, query: Mapping[str, str], whole: bool = True
) -> dict[str, str]:
    entry = _base_headers.get(id(meta))
    if entry is None or entry[0] is not meta:
        # holding meta keeps its id unique
        entry = remember(_base_headers, id(meta), (meta, object_fields(meta)), 50_000)
    rid = request.get("request_id", "")
    headers = {**entry[1], "x-amz-request-id": rid, "x-amz-id-2": rid}
    if whole and request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        # https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html (ChecksumMode):
        # whole-object checksums only; a ranged answer carries none.
        for k, v in meta.headers.items():
            if k.startswith(_CHECKSUM_PREFIX):
                headers[k] = v
    if query:
        for param, header in parse.RESPONSE_OVERRIDES.items():
            if param in query:
                headers[header] = query[param]
    return headers
