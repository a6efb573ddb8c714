"""Read-through: answer from the cache, fill it from the store on a miss, one fetch per chunk.

A GET walks: the index (record fresh? revalidate after metadata_ttl) -> the chunks the range
needs -> cached chunks as file slices (sendfile) or inline bytes, missing chunks from a shared
Fill. A cold read of an object no larger than one chunk is one ranged store GET: its response
carries the metadata, so no HEAD goes first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy import errors, metrics
from proxy.cache.record import Record, object_id
from proxy.cache.store import CacheStore, record_for
from proxy.config import CacheConfig
from proxy.fill import Fill
from proxy.model import BucketInfo, ByteRange, ListPage, ObjectMeta
from proxy.routing import Mount, Router
from proxy.s3.parse import check_conditions

log = logging.getLogger("proxy.cache")

LOCK_POLL_START = 0.002
LOCK_POLL_MAX = 0.05
FILL_SLOT_WAIT = 10.0
READ_AHEAD = 2
CLOSE_PERSIST_WAIT = 5.0
MD5_ON_LOOP_MAX = 64 * 1024
META_CACHE_MAX = 50_000
WRITTEN_MAX = 10_000


@dataclass(frozen=True, slots=True)
class FileSlice:
    path: Path
    offset: int
    length: int
    oid: bytes
    gen: str
    index: int


Part = memoryview | bytes | FileSlice


@dataclass(slots=True)
class ObjectRead:
    meta: ObjectMeta
    first: int
    last: int
    partial: bool
    source: str  # "cache" or "backend"
    parts: AsyncIterator[Part]
    body: bytes | None = None  # set when the whole answer is already in memory

    @property
    def length(self) -> int:
        return self.last - self.first + 1 if self.meta.size else 0


class ObjectService:
    def __init__(self, cache: CacheStore, cfg: CacheConfig, router: Router) -> None:
        self.cache = cache
        self.cfg = cfg
        self.router = router
        self.cs = cfg.chunk_size
        self._fills: dict[tuple[bytes, int], Fill] = {}
        self._revalidations: dict[bytes, asyncio.Task[Record]] = {}
        self._slots = asyncio.Semaphore(cfg.max_fills)
        self._background: set[asyncio.Task[object]] = set()
        self._metas: dict[int, tuple[Record, ObjectMeta]] = {}
        self._written: dict[bytes, float] = {}  # oid -> monotonic time of its last write

    def _meta_of(self, rec: Record) -> ObjectMeta:
        """rec.to_meta(), memoised for the shared read-only records of the index's cache, so
        repeated hits reuse one ObjectMeta (and the handler's headers built from it)."""
        entry = self._metas.get(id(rec))
        if entry is not None and entry[0] is rec:
            return entry[1]
        meta = rec.to_meta()
        if len(self._metas) >= META_CACHE_MAX:
            self._metas.clear()
        self._metas[id(rec)] = (rec, meta)
        return meta

    async def close(self) -> None:
        # A fill whose bytes are all in has only its commit left: let it finish (briefly), or its
        # chunk file would be published without an index entry (an orphan until the next fsck).
        persisting = [f.task for f in self._fills.values() if f.task and f.done]
        if persisting:
            await asyncio.wait(persisting, timeout=CLOSE_PERSIST_WAIT)
        pending = [f.task for f in self._fills.values() if f.task] + list(self._background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- metadata ---------------------------------------------------------------------------
    def _fresh(self, rec: Record, mount: Mount, now: float) -> bool:
        return mount.metadata_ttl is None or now - rec.validated < mount.metadata_ttl

    async def _current(
        self, mount: Mount, key: str, oid: bytes
    ) -> tuple[Record | None, bytes | None]:
        """The cached record if it is fresh (revalidating it if due), else None."""
        rec, inline = self.cache.lookup(oid)
        if rec is None:
            return None, None
        now = time.time()
        if self._fresh(rec, mount, now):
            return rec, inline
        task = self._revalidations.get(oid)
        if task is None:
            task = asyncio.create_task(self._revalidate(mount, key, oid, rec))
            self._revalidations[oid] = task
            task.add_done_callback(lambda _: self._revalidations.pop(oid, None))
        fresh = await asyncio.shield(task)
        if fresh.etag != rec.etag or fresh.size != rec.size:
            return None, None  # changed in the store: the old bytes are gone
        return fresh, inline

    async def _revalidate(self, mount: Mount, key: str, oid: bytes, rec: Record) -> Record:
        try:
            meta = await mount.backend.head(mount.bucket, key)
        except errors.NoSuchKey:
            await self.cache.drop(oid)
            raise
        except (errors.ServiceUnavailable, errors.SlowDown):
            ttl = mount.metadata_ttl or 0.0
            if time.time() - rec.validated < ttl + self.cfg.stale_if_error:
                metrics.CACHE_STALE_SERVED.inc()
                log.warning(
                    "store unavailable; serving a stale entry for up to %ss",
                    self.cfg.stale_if_error,
                )
                return rec
            raise
        return await self.cache.put_meta(oid, self._record(mount, key, meta))

    def _record(self, mount: Mount, key: str, meta: ObjectMeta) -> Record:
        return record_for(meta, mount.backend.name, mount.bucket, key)

    async def head(self, mount: Mount, key: str) -> ObjectMeta:
        if not mount.cacheable:
            return await mount.backend.head(mount.bucket, key)
        oid = object_id(mount.backend.name, mount.bucket, key)
        rec, _ = await self._current(mount, key, oid)
        if rec is not None:
            return self._meta_of(rec)
        meta = await mount.backend.head(mount.bucket, key)
        self._spawn(self.cache.put_meta(oid, self._record(mount, key, meta)))
        return meta

    # -- reads ------------------------------------------------------------------------------
    async def read(
        self, mount: Mount, key: str, rng: ByteRange | None, headers: Mapping[str, str]
    ) -> ObjectRead:
        """Resolve metadata, conditionals and range; the body streams from ``parts``."""
        if not mount.cacheable:
            return await self._pass_through(mount, key, rng, headers)
        oid = object_id(mount.backend.name, mount.bucket, key)
        rec, inline = self.cache.lookup(oid)
        if rec is not None and not self._fresh(rec, mount, time.time()):
            rec, inline = await self._current(mount, key, oid)
        first_fill: Fill | None = None
        if rec is None:
            metrics.CACHE_MISSES.inc()
            start_chunk = rng.first // self.cs if rng and rng.first is not None else 0
            first_fill = self._fill(mount, key, oid, start_chunk, None)
            meta = await first_fill.wait_meta()
        else:
            meta = self._meta_of(rec)
        check_conditions(headers, meta.etag, meta.last_modified)
        if rng is not None:
            first, last = rng.resolve(meta.size)
        else:
            first, last = 0, meta.size - 1
        if rec is not None:
            if rec.inline and inline is not None:
                metrics.CACHE_HITS.inc()
                self.cache.note_hit(oid, rec, time.time())
                # bytes, not a memoryview: aiohttp and uvloop write bytes faster
                part = inline if last - first + 1 == len(inline) else inline[first : last + 1]
                return ObjectRead(meta, first, last, rng is not None, "cache", _NO_PARTS, part)
            needed = range(first // self.cs, last // self.cs + 1) if meta.size else range(0)
            if all(rec.has_chunk(i) for i in needed):
                metrics.CACHE_HITS.inc()
                self.cache.note_hit(oid, rec, time.time())
                source = "cache"
            else:
                metrics.CACHE_MISSES.inc()
                source = "backend"
        else:
            source = "backend"
        parts = self._parts(mount, key, oid, rec, meta, first, last, first_fill)
        return ObjectRead(meta, first, last, rng is not None, source, parts)

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
        if meta.size == 0:
            return
        gen = rec.gen if rec is not None else None
        chunks = list(range(first // self.cs, last // self.cs + 1))
        fills: dict[int, Fill] = {}
        if first_fill is not None:
            fills[first_fill.index] = first_fill
        for n, i in enumerate(chunks):
            lo = max(first, i * self.cs)
            hi = min(last, (i + 1) * self.cs - 1)
            for j in chunks[n + 1 : n + 1 + READ_AHEAD]:
                if j not in fills and not (rec is not None and rec.has_chunk(j)):
                    fills[j] = self._fill(mount, key, oid, j, meta)
            if i not in fills and rec is not None and rec.has_chunk(i) and gen is not None:
                path = self.cache.chunk_path(oid, rec, i)
                yield FileSlice(path, lo - i * self.cs, hi - lo + 1, oid, gen, i)
                continue
            fill = fills.get(i) or self._fill(mount, key, oid, i, meta)
            fills[i] = fill
            got = await fill.wait_meta()
            if got.etag != meta.etag or got.size != meta.size:
                raise errors.ObjectChanged(f"{key} changed in the store during the read")
            async for piece in fill.read(lo, hi):
                yield piece

    async def _pass_through(
        self, mount: Mount, key: str, rng: ByteRange | None, headers: Mapping[str, str]
    ) -> ObjectRead:
        """A bucket with caching off: one store read, streamed, nothing kept."""
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
    ) -> AsyncIterator[memoryview]:
        """A cached chunk file vanished under us: forget it and read that slice from the store."""
        await self.cache.forget_chunk(part.oid, part.gen, part.index)
        fill = self._fill(mount, key, part.oid, part.index, meta)
        base = part.index * self.cs
        async for piece in fill.read(base + part.offset, base + part.offset + part.length - 1):
            yield piece

    # -- fills ------------------------------------------------------------------------------
    def _fill(
        self, mount: Mount, key: str, oid: bytes, index: int, expect: ObjectMeta | None
    ) -> Fill:
        slot = (oid, index)
        fill = self._fills.get(slot)
        if fill is not None and (
            expect is None or fill.meta is None or fill.meta.etag == expect.etag
        ):
            metrics.COALESCED.inc()
            return fill
        fill = Fill(oid, index)
        self._fills[slot] = fill
        fill.task = asyncio.create_task(self._run_fill(fill, mount, key, expect))

        def forget(_: object) -> None:
            if self._fills.get(slot) is fill:
                del self._fills[slot]

        fill.task.add_done_callback(forget)
        return fill

    async def _run_fill(
        self, fill: Fill, mount: Mount, key: str, expect: ObjectMeta | None
    ) -> None:
        try:
            async with asyncio.timeout(FILL_SLOT_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            metrics.SLOWDOWNS.inc()
            fill.finish(errors.SlowDown("Too many store fetches in flight; retry."))
            return
        metrics.INFLIGHT_FILLS.inc()
        locked = False
        try:
            locked = await self._lock_or_cached(fill, mount, key, expect)
            if locked:
                await self._fetch(fill, mount, key, expect)
        except errors.S3Error as exc:
            fill.finish(exc)
        except errors.ObjectChanged as exc:
            fill.finish(exc)
        except asyncio.CancelledError:
            fill.finish(errors.ServiceUnavailable("The proxy is shutting down."))
            raise
        except Exception as exc:
            log.exception("fill failed")
            fill.finish(errors.InternalError(f"fill failed: {type(exc).__name__}"))
        finally:
            if locked:
                assert self.cache.locks is not None
                self.cache.locks.release(fill.oid, fill.index)
            metrics.INFLIGHT_FILLS.dec()
            self._slots.release()

    async def _lock_or_cached(
        self, fill: Fill, mount: Mount, key: str, expect: ObjectMeta | None
    ) -> bool:
        """Take the cross-process lock for this chunk; if another worker filled it meanwhile,
        serve this fill from the cache instead and return False."""
        locks = self.cache.locks
        assert locks is not None
        delay = LOCK_POLL_START
        while True:
            if locks.try_acquire(fill.oid, fill.index):
                if await self._load_cached(fill, mount, expect):
                    locks.release(fill.oid, fill.index)
                    return False
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, LOCK_POLL_MAX)

    async def _load_cached(self, fill: Fill, mount: Mount, expect: ObjectMeta | None) -> bool:
        rec, inline = self.cache.lookup(fill.oid)
        if rec is None or (expect is not None and rec.etag != expect.etag):
            return False
        if expect is None and not self._fresh(rec, mount, time.time()):
            return False
        meta = rec.to_meta()
        if rec.inline and inline is not None:
            fill.begin(meta, 0, len(inline))
            fill.append(inline)
        elif rec.has_chunk(fill.index):
            start = fill.index * self.cs
            length = min(self.cs, rec.size - start)
            path = self.cache.chunk_path(fill.oid, rec, fill.index)
            try:
                data = await asyncio.to_thread(_read_file, path, length)
            except OSError:
                return False
            fill.begin(meta, start, length)
            fill.append(data)
        else:
            return False
        fill.from_cache = True
        fill.finish()
        return True

    async def _fetch(self, fill: Fill, mount: Mount, key: str, expect: ObjectMeta | None) -> None:
        start = fill.index * self.cs
        end = start + self.cs - 1
        if_match = expect.etag if expect is not None else None
        try:
            result = await mount.backend.get(mount.bucket, key, start, end, if_match)
        except errors.InvalidRange:
            if fill.index != 0 or expect is not None:
                raise
            result = await mount.backend.get(mount.bucket, key, None, None)  # an empty object
        except errors.PreconditionFailed:
            if if_match is None:
                raise
            raise errors.ObjectChanged(f"{key} changed in the store") from None
        try:
            meta = result.meta
            if expect is not None and (meta.etag != expect.etag or meta.size != expect.size):
                raise errors.ObjectChanged(f"{key} changed in the store")
            length = max(0, min(self.cs, meta.size - start))
            fill.begin(meta, start, length)
            skip = start - result.start  # a store that ignored the Range sends from byte 0
            if skip < 0:
                raise errors.BackendUnavailable("The store answered a different range.")
            md5 = hashlib.md5(usedforsecurity=False) if self._verify_md5(meta, length) else None
            async for piece in result.body:
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                room = length - fill.filled
                if len(piece) > room:
                    piece = piece[:room]
                if piece:
                    if md5 is not None and length <= MD5_ON_LOOP_MAX:
                        md5.update(piece)
                    fill.append(piece)
                if fill.filled >= length:
                    break
        finally:
            await result.aclose()
        if fill.filled != length:
            metrics.INTEGRITY_FAILURES.inc()
            metrics.FILLS.labels("short").inc()
            raise errors.BackendUnavailable("The store sent fewer bytes than the object holds.")
        if md5 is not None:
            if length > MD5_ON_LOOP_MAX:
                md5 = await asyncio.to_thread(hashlib.md5, fill.buf, usedforsecurity=False)
            if md5.hexdigest() != meta.etag.strip('"').lower():
                metrics.INTEGRITY_FAILURES.inc()
                metrics.FILLS.labels("bad_checksum").inc()
                log.warning("MD5 of %s does not match its ETag; served but not cached", key)
                fill.finish()
                return
        fill.finish()  # readers have every byte; persisting follows
        await self._persist(fill, mount, key, meta, length)

    def _verify_md5(self, meta: ObjectMeta, length: int) -> bool:
        return meta.etag_is_md5 and length == meta.size

    async def _persist(
        self, fill: Fill, mount: Mount, key: str, meta: ObjectMeta, length: int
    ) -> None:
        if self._written.get(fill.oid, -1.0) >= fill.started:
            metrics.FILLS.labels("superseded").inc()  # a write landed meanwhile: keep it
            return
        rec = self._record(mount, key, meta)
        view = memoryview(fill.buf)
        if fill.index == 0 and meta.size <= self.cfg.inline_max:
            ok = await self.cache.commit_inline(fill.oid, rec, bytes(view[:length]))
        else:
            ok = await self.cache.commit_chunk(fill.oid, rec, fill.index, view[:length])
        metrics.FILLS.labels("cached" if ok else "not_cached").inc()

    def invalidate(self, oid: bytes) -> None:
        """A write or delete of this object is under way or done: fills begun before now
        must not commit their (older) bytes, and new reads must not join them."""
        now = time.monotonic()
        if len(self._written) > WRITTEN_MAX:
            self._written = {o: t for o, t in self._written.items() if now - t < 600}
        self._written[oid] = now
        for slot in [s for s in self._fills if s[0] == oid]:
            del self._fills[slot]
        self._revalidations.pop(oid, None)

    async def bytes_of(self, read: ObjectRead, mount: Mount, key: str) -> AsyncIterator[bytes]:
        """A read's body as plain bytes (for copies between stores)."""
        if read.body is not None:
            yield read.body
            return
        async for part in read.parts:
            if isinstance(part, FileSlice):
                data = await asyncio.to_thread(_read_slice, part)
                if data is None:
                    async for piece in self.refill_missing(mount, key, part, read.meta):
                        yield bytes(piece)
                    continue
                yield data
            else:
                yield bytes(part)

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # -- listing ----------------------------------------------------------------------------
    async def list_objects(
        self,
        mount: Mount,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        p = mount.prefix
        page = await mount.backend.list_page(
            mount.bucket,
            p + prefix,
            delimiter,
            max_keys,
            token,
            p + start_after if start_after else None,
        )
        if not p:
            return page
        return ListPage(
            entries=[
                type(e)(
                    key=e.key[len(p) :],
                    size=e.size,
                    etag=e.etag,
                    last_modified=e.last_modified,
                    storage_class=e.storage_class,
                )
                for e in page.entries
                if e.key.startswith(p)
            ],
            prefixes=[c[len(p) :] for c in page.prefixes if c.startswith(p)],
            truncated=page.truncated,
            next_token=page.next_token,
        )

    async def bucket_exists(self, mount: Mount) -> bool:
        return await mount.backend.bucket_exists(mount.bucket)

    async def list_buckets(self) -> list[BucketInfo]:
        out = {m.name: BucketInfo(m.name, time.time()) for m in self.router.explicit}
        backend = self.router.wildcard_backend
        if backend is not None:
            for b in await backend.list_buckets():
                out.setdefault(b.name, b)
        return sorted(out.values(), key=lambda b: b.name)


class _NoParts:
    """The parts of an answer held whole in ``ObjectRead.body``: none. Shared, stateless."""

    def __aiter__(self) -> _NoParts:
        return self

    async def __anext__(self) -> Part:
        raise StopAsyncIteration


_NO_PARTS = _NoParts()


def _read_slice(part: FileSlice) -> bytes | None:
    """Blocking; None if the chunk file is gone."""
    try:
        with open(part.path, "rb") as f:
            f.seek(part.offset)
            return f.read(part.length)
    except FileNotFoundError:
        return None


def _read_file(path: Path, length: int) -> bytes:
    """Blocking."""
    with open(path, "rb") as f:
        data = f.read(length + 1)
    if len(data) != length:
        raise OSError(f"cached chunk {path.name} has the wrong size")
    return data


def _log_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background cache update failed: %s", task.exception())


def chunk_file_ok(path: Path, length: int) -> bool:
    """Blocking: the chunk file exists with at least ``length`` bytes."""
    try:
        return os.stat(path).st_size >= length
    except OSError:
        return False
