"""One store fetch per chunk, shared by every reader that wants it, across tasks and processes.

A ``Fill`` is one chunk's fetch: it runs as its own task (a reader that goes away never
cancels it) into a buffer sized from the response headers, so readers get zero-copy slices as
bytes arrive. ``Fills`` keeps the in-process table of fills under way, bounds them
(``max_fills``) and their memory (``cache.fill_memory``: a buffer's bytes are claimed before the
fetch and given back when the buffer is freed, see ``budget.py``), takes the cross-process lock
for the chunk (another worker may be filling it: wait, then serve its copy), verifies the bytes
(length; MD5 where the ETag is one) and persists them to the cache once every reader has them.

A verified fill (the chunk is the whole object and its ETag an MD5) holds back its last byte
until the check passes: a reader never gets a whole object that failed it, and a failed check
ends every read with an error (a short body), never a clean answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from proxy import errors, log, metrics
from proxy.cache.locks import FillLocks
from proxy.cache.store import CacheStore
from proxy.config import CacheConfig
from proxy.core.budget import Claim, MemoryBudget
from proxy.core.metadata import fresh, record_of
from proxy.model import ObjectMeta
from proxy.routing import Mount
from proxy.slots import Slots

LOCK_POLL_START = 0.001
LOCK_POLL_MAX = 0.05
FILL_SLOT_WAIT = 10.0
FILL_MEMORY_WAIT = 10.0  # then the reader streams its slice from the store, uncached
PIECE_MAX = 1024 * 1024  # a reader's slices of a buffer, so a socket pins no more of it
CLOSE_PERSIST_WAIT = 5.0
MD5_ON_LOOP_MAX = 64 * 1024
WRITTEN_MAX = 10_000


class NoFillMemory(errors.SlowDown):
    """Fill memory stayed spent for FILL_MEMORY_WAIT: read this chunk without caching it."""


class FillBuffer(bytearray):
    """A chunk's buffer; a bytearray that can be watched (weakref) until it is freed. Freed,
    it gives its memory claim back on its loop (``__del__``: no weakref.finalize per fill)."""

    __slots__ = ("claim", "loop", "thread", "__weakref__")

    def __init__(self, length: int, claim: Claim, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(length)
        self.claim, self.loop, self.thread = claim, loop, threading.get_ident()

    def __del__(self) -> None:
        # the garbage collector may run in any thread: the claim goes back on the loop's
        try:
            if threading.get_ident() == self.thread:
                self.claim.release()
            elif not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.claim.release)
        except (AttributeError, TypeError):  # at interpreter exit: modules already torn down
            pass


class Fill:
    def __init__(
        self,
        oid: bytes,
        index: int,
        claim: Claim,
        seen: int,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """``loop``: the running one (given: not looked up again)."""
        self.oid = oid
        self.index = index
        self.claim = claim  # the memory for the buffer; given back when the buffer is freed
        self.seen = seen  # the index's write mark before the store was asked (write_mark)
        self.meta: ObjectMeta | None = None
        self.start = 0  # object offset of buf[0]
        self.buf: bytearray = bytearray()
        self.filled = 0
        self.hold = 0  # bytes at the end readers get only once the fill is verified
        self.done = False
        self.error: BaseException | None = None
        self.from_cache = False
        self.rereads = 0  # reads that joined it once it was verified: uses, counted at commit
        self._loop = loop or asyncio.get_running_loop()
        self._waiters: list[asyncio.Future[None]] = []  # readers waiting for news (_wake)
        self.task: asyncio.Task[None] | None = None
        self.started = time.monotonic()
        self.in_slot = False  # holds one of Fills' slots (a store fetch under way)
        self.urgent = False  # somebody here waits on its commit (Fills.settled): no lingering
        self.ahead = False  # only jobs want it so far (prefetch, warm-up): store.unread

    # -- the filler's side --------------------------------------------------------------------
    def begin(self, meta: ObjectMeta, start: int, length: int, verified: bool = False) -> None:
        """``verified``: the bytes are checked once all are in; hold the last one back."""
        self.meta, self.start = meta, start
        self.claim.shrink(length)
        self.buf = FillBuffer(length, self.claim, self._loop)
        self.hold = 1 if verified and length else 0
        self._wake()

    def append(self, piece: bytes) -> None:
        end = self.filled + len(piece)
        if end > len(self.buf):
            raise ValueError("the store sent more bytes than it announced")
        self.buf[self.filled : end] = piece
        self.filled = end
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done, self.error = True, error
        self._wake()

    @property
    def verified(self) -> bool:
        """Every byte is in and passed its checks."""
        return self.done and self.error is None

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():  # a cancelled reader's is done
                    waiter.set_result(None)

    # -- readers' side ----------------------------------------------------------------------
    async def _changed(self) -> None:
        """Until the next change: metadata, bytes, or the end."""
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def wait_meta(self) -> ObjectMeta:
        while self.meta is None:
            if self.done:
                assert self.error is not None
                raise self.error
            await self._changed()
        return self.meta

    async def whole(self, first: int, last: int) -> bytes | None:
        """Object bytes first..last at once, when the fill is done and verified; None when it
        failed (``read`` then gives what came and the error)."""
        while not self.done:
            await self._changed()
        if self.error is not None:
            return None
        body = self.held(first, last)
        if body is None:
            raise ValueError("range outside this chunk")
        return body

    def held(self, first: int, last: int) -> bytes | None:
        """Object bytes first..last now, if the fill is verified and holds them all; else None."""
        buf = self.buf
        pos, end = first - self.start, last - self.start + 1
        if not self.verified or pos < 0 or end > len(buf) or end < pos:
            return None
        return bytes(buf) if pos == 0 and end == len(buf) else bytes(memoryview(buf)[pos:end])

    async def read(self, first: int, last: int) -> AsyncIterator[memoryview]:
        """Object bytes first..last (inclusive) as they arrive."""
        await self.wait_meta()
        pos = first - self.start
        end = last - self.start + 1
        if pos < 0 or end > len(self.buf):
            raise ValueError("range outside this chunk")
        view = memoryview(self.buf)
        size = len(self.buf)
        while pos < end:
            ready = self.filled if self.verified else min(self.filled, size - self.hold)
            if ready > pos:
                upto = min(ready, end, pos + PIECE_MAX)
                yield view[pos:upto]
                pos = upto
                continue
            if self.done:
                raise self.error or ConnectionError("the fill ended short")
            await self._changed()


class Fills:
    def __init__(self, cache: CacheStore, cfg: CacheConfig, sole: bool = False) -> None:
        """``sole``: no other process fills this cache (``workers: 1``; see _lock_or_cached)."""
        self.cache = cache
        self.sole = sole
        self.cfg = cfg
        self.cs = cfg.chunk_size
        self._fills: dict[tuple[bytes, int], Fill] = {}
        self._slots = Slots(cfg.max_fills)
        self.memory = MemoryBudget(cfg.fill_memory)
        self._written: dict[bytes, float] = {}  # oid -> monotonic time of its last write
        self.waiting = 0  # fills waiting for memory or a slot: warm jobs hold back meanwhile
        self.unqueued = asyncio.Event()  # set while no fill waits
        self.unqueued.set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one fills run on
        if not sole:
            cache.watch_waiters()

    @property
    def _locks(self) -> FillLocks:
        assert self.cache.locks is not None, "cache not open"
        return self.cache.locks

    def get(
        self,
        mount: Mount,
        key: str,
        oid: bytes,
        index: int,
        expect: ObjectMeta | None,
        *,
        ahead: bool = False,
    ) -> Fill:
        """The fill of chunk ``index`` under way (joined), or a new one, which waits its turn
        for fill memory. ``expect``: the version the reader already knows; None for a cold
        read, which learns it from the fill. ``ahead``: a job's, fetching before any read
        (its record is committed unread: store.unread)."""
        fill = self._joined(oid, index, expect)
        if fill is None:
            fill = self._start(mount, key, oid, index, expect, self.memory.claim)
            assert fill is not None
            fill.ahead = ahead
        elif not ahead and fill.ahead:
            fill.ahead = False  # a job's fill a read joined: that read is its first use
        elif not ahead and fill.verified:
            fill.rereads += 1  # read again after it was whole, before its commit landed
        return fill

    def landed(self, oid: bytes) -> ObjectMeta | None:
        """The metadata of ``oid`` as its fill of chunk 0 under way got it, once that fill is
        verified (every byte in and checked; only its commit to come), else None."""
        fill = self._fills.get((oid, 0))
        return fill.meta if fill is not None and fill.verified else None

    def get_ahead(
        self, mount: Mount, key: str, oid: bytes, index: int, expect: ObjectMeta
    ) -> Fill | None:
        """A read-ahead fill: joined, or started if its memory is free now; else None (and
        one that waits for memory is not joined: a reader holds nothing that waits)."""
        fill = self._joined(oid, index, expect)
        if fill is not None:
            return fill if fill.claim.granted else None
        return self._start(mount, key, oid, index, expect, self.memory.claim_now)

    def _joined(self, oid: bytes, index: int, expect: ObjectMeta | None) -> Fill | None:
        fill = self._fills.get((oid, index))
        if fill is not None and (
            expect is None or fill.meta is None or fill.meta.etag == expect.etag
        ):
            metrics.READS_COALESCED.inc()
            return fill
        return None

    def _start(
        self,
        mount: Mount,
        key: str,
        oid: bytes,
        index: int,
        expect: ObjectMeta | None,
        claim_of: Callable[[int], Claim | None],
    ) -> Fill | None:
        bound = self.cs if expect is None else max(0, min(self.cs, expect.size - index * self.cs))
        claim = claim_of(bound)
        if claim is None:
            return None
        slot = (oid, index)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fill = Fill(oid, index, claim, self.cache.write_mark(), loop)
        self._fills[slot] = fill
        fill.task = loop.create_task(self._run(fill, mount, key, expect))

        def forget(_: object) -> None:
            if self._fills.get(slot) is fill:
                del self._fills[slot]

        fill.task.add_done_callback(forget)
        return fill

    def invalidate(self, oid: bytes) -> None:
        """A write or delete of this object is under way or done: fills begun before now
        must not commit their (older) bytes, and new reads must not join them."""
        now = time.monotonic()
        if len(self._written) > WRITTEN_MAX:
            self._written = {o: t for o, t in self._written.items() if now - t < 600}
        self._written[oid] = now
        for slot in [s for s in self._fills if s[0] == oid]:
            del self._fills[slot]

    async def wait_idle(self) -> None:
        """Wait until no fill is under way: each has committed its bytes or given up."""
        while self._fills:
            await self._hurried(list(self._fills.values()))

    async def settled(self, oids: list[bytes]) -> None:
        """Wait until the fills under way of these objects committed their bytes or gave up (a
        reader may finish reading a fill before its commit lands)."""
        wanted = set(oids)
        await self._hurried([f for (o, _), f in self._fills.items() if o in wanted])

    async def _hurried(self, fills: list[Fill]) -> None:
        """Wait for these fills' tasks; their commits do not linger for company (index.LINGER):
        one queued already ends its batch's wait, one to come is queued eager."""
        tasks = [f.task for f in fills if f.task is not None]
        if not tasks:
            return
        for fill in fills:
            fill.urgent = True
        self.cache.hurry()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        # A fill whose bytes are all in has only its commit left: let it finish (briefly), or its
        # chunk file would be published without an index entry (an orphan until the next fsck).
        persisting = [f.task for f in self._fills.values() if f.task and f.done]
        if persisting:
            await asyncio.wait(persisting, timeout=CLOSE_PERSIST_WAIT)
        pending = [f.task for f in self._fills.values() if f.task]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self, fill: Fill, mount: Mount, key: str, expect: ObjectMeta | None) -> None:
        try:
            self.waiting += 1
            self.unqueued.clear()
            try:
                if not await self._wait_turn(fill):
                    return
            finally:
                self.waiting -= 1
                if not self.waiting:
                    self.unqueued.set()
            fill.in_slot = True
            try:
                await self._run_in_slot(fill, mount, key, expect)
            finally:
                self._leave_slot(fill)
        except asyncio.CancelledError:
            fill.finish(errors.ServiceUnavailable("The proxy is shutting down."))
            raise
        finally:
            if fill.meta is None:  # no buffer was made: the claim goes back now
                fill.claim.release()

    def _leave_slot(self, fill: Fill) -> None:
        """The fill's store fetch is over: its slot goes to the next (its commit, if any, is
        bounded by fill memory, not by the slots that bound the store's load)."""
        if fill.in_slot:
            fill.in_slot = False
            self._slots.release()

    async def _wait_turn(self, fill: Fill) -> bool:
        """Wait for the fill's memory, then a slot; False (the fill finished) on a timeout.
        Memory granted and a slot free (the usual case), it takes them without a timer."""
        try:
            if not fill.claim.granted:
                async with asyncio.timeout(FILL_MEMORY_WAIT):
                    await fill.claim.wait()
        except TimeoutError:
            fill.claim.release()
            metrics.FILLS.labels("no_memory").inc()
            fill.finish(NoFillMemory("Fill memory is spent; this read goes uncached."))
            return False
        if not await self._slots.take(FILL_SLOT_WAIT):
            metrics.SLOWDOWNS.inc()
            fill.finish(errors.SlowDown("Too many store fetches in flight; retry."))
            return False
        return True

    async def _run_in_slot(
        self, fill: Fill, mount: Mount, key: str, expect: ObjectMeta | None
    ) -> None:
        metrics.FILLS_IN_FLIGHT.inc()
        locked = False
        try:
            if await self._lock_or_cached(fill, mount, expect):
                locked = not self.sole
                await self._fetch(fill, mount, key, expect)
        except errors.S3Error as exc:
            fill.finish(exc)
        except errors.ObjectChanged as exc:
            fill.finish(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.cache.exception("fill failed")
            fill.finish(errors.InternalError(f"fill failed: {type(exc).__name__}"))
        finally:
            if locked:
                self._locks.release(fill.oid, fill.index)
            metrics.FILLS_IN_FLIGHT.inc(-1)

    async def _lock_or_cached(self, fill: Fill, mount: Mount, expect: ObjectMeta | None) -> bool:
        """Take the cross-process lock for this chunk; if another worker filled it meanwhile,
        serve this fill from the cache instead and return False.

        The only process that fills this cache (``sole``) takes no lock: the in-process table
        of fills already keeps one filler per chunk. A cold read (no ``expect``) looked the
        cache up just before it started the fill, so it fetches at once; a fill of a known
        object's chunk may start long after its reader's lookup (a large object's later
        chunks), so it still looks again first: another read may have filled it since."""
        if self.sole:
            return expect is None or not await self._load_cached(fill, mount, expect)
        locks = self._locks
        began = time.monotonic()
        said = False  # that this process waits (the filler then commits without lingering)
        waited = False
        try:
            while True:
                if locks.try_acquire(fill.oid, fill.index):
                    try:
                        cached = await self._load_cached(fill, mount, expect)
                    except BaseException:  # failed or cancelled: the fill does not hold it
                        locks.release(fill.oid, fill.index)
                        raise
                    if cached:
                        locks.release(fill.oid, fill.index)
                        return False
                    return True
                said = said or locks.wait_begin(fill.oid, fill.index)
                waited = True
                # Another process fills it: look again after a quarter of the time waited so
                # far, so a read waits at most ~25% past that fill's end (a 20 ms fill: ~12
                # looks).
                so_far = time.monotonic() - began
                await asyncio.sleep(min(LOCK_POLL_MAX, max(LOCK_POLL_START, so_far / 4)))
        finally:
            # never raises past a lock just taken (its caller would not know to release it):
            # a waiter's byte left locked only makes the filler commit without lingering
            with contextlib.suppress(OSError):
                if waited:
                    metrics.FILL_WAIT.observe(time.monotonic() - began)
                if said:
                    locks.wait_end(fill.oid, fill.index)

    async def _load_cached(self, fill: Fill, mount: Mount, expect: ObjectMeta | None) -> bool:
        rec, inline = self.cache.lookup(fill.oid)
        if rec is None or (expect is not None and rec.etag != expect.etag):
            return False
        if expect is None and not fresh(rec, mount, time.time()):
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
            md5 = hashlib.md5(usedforsecurity=False) if _verifiable(meta, length) else None
            fill.begin(meta, start, length, verified=md5 is not None)
            skip = start - result.start  # a store that ignored the Range sends from byte 0
            if skip < 0:
                raise errors.BackendUnavailable("The store answered a different range.")
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
                log.cache.warning("MD5 of %r does not match its ETag; read cut short", key)
                fill.finish(errors.BackendUnavailable("The store's bytes fail their MD5 check."))
                return
        fill.finish()  # readers have every byte; persisting follows
        self._leave_slot(fill)
        await self._persist(fill, mount, key, meta, length)

    async def _persist(
        self, fill: Fill, mount: Mount, key: str, meta: ObjectMeta, length: int
    ) -> None:
        if self._written.get(fill.oid, -1.0) >= fill.started:
            metrics.FILLS.labels("superseded").inc()  # a write landed meanwhile: keep it
            return
        rec = record_of(mount, key, meta)
        view = memoryview(fill.buf)

        def urgent() -> bool:  # asked as the commit is queued: does anybody wait on it?
            return fill.urgent or (not self.sole and self._locks.waited_on(fill.oid, fill.index))

        ahead = fill.ahead
        if fill.index == 0 and meta.size <= self.cfg.inline_max:
            ok = await self.cache.commit_inline(
                fill.oid, rec, bytes(view[:length]), seen=fill.seen, urgent=urgent, ahead=ahead
            )
        else:
            ok = await self.cache.commit_chunk(
                fill.oid, rec, fill.index, view[:length], seen=fill.seen, urgent=urgent, ahead=ahead
            )
        (metrics.FILLS_CACHED if ok else metrics.FILLS_NOT_CACHED).inc()
        if ok and fill.rereads:  # each a use, as a hit of the committed copy would count
            now = time.time()
            for _ in range(fill.rereads):
                self.cache.note_hit(fill.oid, rec, now)


def _verifiable(meta: ObjectMeta, length: int) -> bool:
    """The chunk is the whole object and its ETag is the MD5 of the bytes."""
    return meta.etag_is_md5 and length == meta.size


def _read_file(path: Path, length: int) -> bytes:
    """Blocking."""
    with open(path, "rb") as f:
        data = f.read(length + 1)
    if len(data) != length:
        raise OSError(f"cached chunk {path.name} has the wrong size")
    return data
