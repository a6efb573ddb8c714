"""Read-through, the read planner: answer from the cache, fill it from the store on a miss.

A GET walks: the index (record fresh? revalidate after metadata_ttl) -> the conditional
headers -> the chunks the range needs -> cached chunks as file slices (sendfile) or inline
bytes, missing chunks from a shared Fill. A cold read of an object no larger than one chunk is
one ranged store GET: its response carries the metadata, so no HEAD goes first.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping

from proxy import errors, metrics
from proxy.cache.record import Record
from proxy.cache.store import CacheStore
from proxy.config import CacheConfig
from proxy.core.body import NO_PARTS, FileSlice, ObjectRead, Part, read_slice
from proxy.core.conditions import check_conditions
from proxy.core.fills import Fill, Fills, NoFillMemory
from proxy.core.metadata import Metadata, fresh, oid_of
from proxy.core.readahead import ReadAhead
from proxy.model import ByteRange, ObjectMeta
from proxy.routing import Mount

READ_AHEAD = 2


class _Uncounted:
    """The counts of the proxy's own read (a warm-up job draining an object, a cluster owner
    filling its chunk): not a client's GET, so neither a hit nor a miss of its bucket."""

    def hit(self) -> None:
        pass

    def miss(self) -> None:
        pass


_UNCOUNTED = _Uncounted()


class Reads:
    def __init__(self, cache: CacheStore, cfg: CacheConfig, fills: Fills) -> None:
        self.cache = cache
        self.cs = cfg.chunk_size
        self.fills = fills
        self.metadata = Metadata(cache, cfg)
        self.ahead = ReadAhead(fills, self.cs)  # sequential ranged reads of one object
        self.on_read: Callable[[str, str], None] | None = None  # (bucket, key): prefetch's hook

    async def close(self) -> None:
        await self.fills.close()
        await self.metadata.close()

    async def head(self, mount: Mount, key: str) -> ObjectMeta:
        """The object's metadata: from a fill of its first chunk whose bytes are all in (its
        commit may still wait for company: index.LINGER), else from the index or the store."""
        if mount.cacheable:
            landed = self.fills.landed(oid_of(mount, key))
            if landed is not None:
                return landed
        return await self.metadata.head(mount, key)

    def invalidate(self, oid: bytes) -> None:
        """A write or delete of this object is under way or done: no fill or revalidation
        begun before now may speak for it."""
        self.fills.invalidate(oid)
        self.metadata.forget(oid)

    async def read(
        self,
        mount: Mount,
        key: str,
        rng: ByteRange | None,
        headers: Mapping[str, str],
        clip: bool = False,
        client: bool = True,
        ahead: bool = False,
    ) -> ObjectRead:
        """Resolve metadata, conditionals and range; the body streams from ``parts``. With
        ``clip``, a read of an object larger than one chunk stops at the end of the chunk the
        range starts in (``clipped``): a cluster node reads here only a chunk it owns, and
        starts no read-ahead of the chunks after it. ``client``: False for the proxy's own read (a
        job's, a cluster owner's fill), which neither counts as the bucket's hit or miss nor
        moves a prefetch job's read position. ``ahead``: a warm-up job's, ahead of any read
        (what it fills is committed unread: Fills.get)."""
        if not mount.cacheable:
            return await self._pass_through(mount, key, rng, headers)
        if client and self.on_read is not None:
            self.on_read(mount.name, key)
        oid = oid_of(mount, key)
        stats = metrics.bucket(mount.name, mount.wildcard) if client else _UNCOUNTED
        rec, inline = self.cache.lookup(oid)
        if rec is not None and not fresh(rec, mount, time.time()):
            rec, inline = await self.metadata.current(mount, key, oid)
        first_fill: Fill | None = None
        # the fill it joined had every byte in (its commit to come), or it found the object
        # committed by another process once that one's fill was done: no wait for the store
        landed = False
        if rec is None:
            start_chunk = rng.first // self.cs if rng and rng.first is not None else 0
            first_fill = self.fills.get(mount, key, oid, start_chunk, None, ahead=ahead)
            landed = first_fill.verified
            try:
                meta = await first_fill.wait_meta()
            except NoFillMemory:
                stats.miss()
                return await self._pass_through(mount, key, rng, headers)
            except BaseException:
                stats.miss()
                raise
            landed = landed or first_fill.from_cache
            if not landed:
                stats.miss()
        else:
            meta = self.metadata.meta_of(rec)
        check_conditions(headers, meta.etag, meta.last_modified)
        if rng is not None:
            first, last = rng.resolve(meta.size)
            if not clip:
                self.ahead.note(mount, key, oid, rec, meta, first, last)
        else:
            first, last = 0, meta.size - 1
        clipped = clip and last >= (first // self.cs + 1) * self.cs  # past its first chunk
        if clipped:
            last = (first // self.cs + 1) * self.cs - 1
        if rec is not None:
            if rec.inline and inline is not None:
                stats.hit()
                self.cache.note_hit(oid, rec, time.time())
                # bytes, not a memoryview: aiohttp and uvloop write bytes faster
                part = inline if last - first + 1 == len(inline) else inline[first : last + 1]
                return ObjectRead(meta, first, last, rng is not None, "cache", NO_PARTS, part)
            needed = range(first // self.cs, last // self.cs + 1) if meta.size else range(0)
            if all(rec.has_chunk(i) for i in needed):
                stats.hit()
                self.cache.note_hit(oid, rec, time.time())
                source = "cache"
            else:
                stats.miss()
                source = "backend"
        elif landed:
            assert first_fill is not None
            body = None if clipped else first_fill.held(first, last)
            if body is not None:  # as a hit: no wait for the store (the fill counts the use)
                stats.hit()
                return ObjectRead(meta, first, last, rng is not None, "cache", NO_PARTS, body)
            stats.miss()  # the answer goes past the chunk this fill holds
            source = "backend"
        else:
            source = "backend"
        parts = self._parts(mount, key, oid, rec, meta, first, last, first_fill)
        partial = rng is not None or clipped
        one = first_fill if first_fill is not None and meta.size else None
        if one is not None and not one.index == first // self.cs == last // self.cs:
            one = None  # the answer does not lie in the first fill's chunk alone
        held = weakref.ref(one) if one is not None else None  # ``parts`` holds it
        return ObjectRead(meta, first, last, partial, source, parts, clipped=clipped, fill=held)

    async def _parts(
        self,
        mount: Mount,
        key: str,
        oid: bytes,
        rec: Record | None,
        meta: ObjectMeta,
        first: int,
        last: int,
        first_fill: Fill | None,
    ) -> AsyncIterator[Part]:
        """The body, chunk by chunk. It holds the fills of its current chunk and of at most
        READ_AHEAD chunks after it (started only while fill memory is free), and lets go of
        each chunk once its bytes are passed on: a read's memory is a window."""
        if meta.size == 0:
            return
        gen = rec.gen if rec is not None else None
        chunks = range(first // self.cs, last // self.cs + 1)
        fills: dict[int, Fill] = {}
        if first_fill is not None:
            fills[first_fill.index] = first_fill
            del first_fill
        for n, i in enumerate(chunks):
            lo = max(first, i * self.cs)
            hi = min(last, (i + 1) * self.cs - 1)
            cached = i not in fills and rec is not None and rec.has_chunk(i) and gen is not None
            if not cached and i not in fills:
                fills[i] = self.fills.get(mount, key, oid, i, meta)
            for j in chunks[n + 1 : n + 1 + READ_AHEAD]:
                if j in fills or (rec is not None and rec.has_chunk(j)):
                    continue
                ahead = self.fills.get_ahead(mount, key, oid, j, meta)
                if ahead is None:
                    break  # no memory now: the next chunks start when this reader gets there
                fills[j] = ahead
            if cached:
                assert rec is not None and gen is not None
                path = self.cache.chunk_path(oid, rec, i)
                yield FileSlice(path, lo - i * self.cs, hi - lo + 1, oid, gen, i)
                continue
            piece: Part = b""
            async for piece in self._from_fill(mount, key, meta, fills.pop(i), lo, hi):
                yield piece
            piece = b""  # a slice keeps the whole chunk buffer alive

    async def _from_fill(
        self, mount: Mount, key: str, meta: ObjectMeta, fill: Fill, lo: int, hi: int
    ) -> AsyncIterator[memoryview | bytes]:
        """Bytes lo..hi of ``fill``'s chunk; from the store uncached if it got no memory."""
        try:
            got = await fill.wait_meta()
        except NoFillMemory:
            del fill
            async for piece in self._uncached(mount, key, meta, lo, hi):
                yield piece
            return
        if got.etag != meta.etag or got.size != meta.size:
            raise errors.ObjectChanged(f"{key} changed in the store during the read")
        async for view in fill.read(lo, hi):
            yield view

    async def _uncached(
        self, mount: Mount, key: str, meta: ObjectMeta, lo: int, hi: int
    ) -> AsyncIterator[bytes]:
        """Fill memory stayed spent: bytes lo..hi straight from the store, not cached."""
        metrics.FILLS.labels("uncached").inc()
        try:
            result = await mount.backend.get(mount.bucket, key, lo, hi, meta.etag)
        except errors.PreconditionFailed:
            raise errors.ObjectChanged(f"{key} changed in the store during the read") from None
        try:
            if result.meta.etag != meta.etag or result.start != lo:
                raise errors.ObjectChanged(f"{key} changed in the store during the read")
            left = hi - lo + 1
            async for piece in result.body:
                piece = piece[:left]
                left -= len(piece)
                yield piece
                if not left:
                    break
            if left:
                raise errors.BackendUnavailable("The store sent fewer bytes than it announced.")
        finally:
            await result.aclose()

    async def _pass_through(
        self, mount: Mount, key: str, rng: ByteRange | None, headers: Mapping[str, str]
    ) -> ObjectRead:
        """One store read, streamed, nothing kept: a bucket with caching off, or a cold read
        while fill memory stays spent."""
        start, end = (rng.first, rng.last) if rng is not None else (None, None)
        if rng is not None and rng.first is None:  # a suffix range needs the size first
            meta = await mount.backend.head(mount.bucket, key)
            start, end = rng.resolve(meta.size)
        result = await mount.backend.get(mount.bucket, key, start, end)
        try:
            check_conditions(headers, result.meta.etag, result.meta.last_modified)
            if rng is not None:
                rng.resolve(result.meta.size)  # the S3 answer for an unsatisfiable range
        except BaseException:
            await result.aclose()
            raise
        first, last = (result.start, result.end) if rng is not None else (0, result.meta.size - 1)

        async def parts() -> AsyncIterator[Part]:
            try:
                async for piece in result.body:
                    yield piece
            finally:
                await result.aclose()

        return ObjectRead(result.meta, first, last, rng is not None, "backend", parts())

    async def refill_missing(
        self, mount: Mount, key: str, part: FileSlice, meta: ObjectMeta
    ) -> AsyncIterator[memoryview | bytes]:
        """A cached chunk file vanished under us: forget it and read that slice from the store."""
        await self.cache.forget_chunk(part.oid, part.gen, part.index)
        fill = self.fills.get(mount, key, part.oid, part.index, meta)
        lo = part.index * self.cs + part.offset
        async for piece in self._from_fill(mount, key, meta, fill, lo, lo + part.length - 1):
            yield piece

    async def bytes_of(self, read: ObjectRead, mount: Mount, key: str) -> AsyncIterator[bytes]:
        """A read's body as plain bytes (for copies between stores)."""
        if read.body is not None:
            yield read.body
            return
        async for part in read.parts:
            if isinstance(part, FileSlice):
                data = await asyncio.to_thread(read_slice, part)
                if data is None:
                    async for piece in self.refill_missing(mount, key, part, read.meta):
                        yield bytes(piece)
                    continue
                yield data
            else:
                data = bytes(part)
                del part  # a slice keeps the whole chunk buffer alive
                yield data
