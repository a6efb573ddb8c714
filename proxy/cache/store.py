"""The cache's async facade: lookups, commits, hit statistics and start-up repair."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from proxy import errors, log, metrics
from proxy.cache import cleanstop, fsck, pins, quota
from proxy.cache.batch import Batch
from proxy.cache.blobs import BlobStore
from proxy.cache.index import Index, Txn
from proxy.cache.locks import FillLocks
from proxy.cache.parts import PartStaging
from proxy.cache.quota import QuotaRule
from proxy.cache.record import FORMAT2, UNREAD, UNREAD_REFUSED, Record
from proxy.cache.space import Volume, disk_full
from proxy.config import CacheConfig
from proxy.memo import remember
from proxy.model import ObjectMeta

T = TypeVar("T")
Urgent = Callable[[], bool] | None  # asked as a read's commit is queued: does somebody wait?

HIT_FLUSH_INTERVAL = 1.0
HIT_FLUSH_SLICE = 128  # hits of one flush committed in one transaction, at most
ATIME_REFRESH = 600.0
COUNTED_MAX = 50_000  # note_hit's memo of use counts raised this era (cleared when full)
MAKE_ROOM_TRIES = 3  # evictions (S3-FIFO order) to make room for one chunk file


class CacheStore:
    def __init__(self, cfg: CacheConfig, quotas: Sequence[QuotaRule] = ()) -> None:
        self.cfg = cfg
        self.quotas = tuple(quotas)
        self.root = cfg.dir.resolve()
        self.blobs = BlobStore(self.root)
        self.index: Index | None = None
        self.locks: FillLocks | None = None
        self.uploads = PartStaging(self.root / "uploads", cfg.chunk_size)
        self._hits: dict[bytes, int] = {}
        self._reads: dict[bytes, int] = {}  # hits that only raise use counts (note_hit)
        self._leaving: set[bytes] = set()  # first reads of UNREAD_REFUSED records, committing
        self._era = 0  # the index's era of use counts, as of the last flush
        # oid -> the record whose use count was seen raised in era _counted_era: a hit of the
        # same record (the index's shared parsed record: a changed entry is another object)
        # skips the uses lookup until the era moves. A uses entry lives as long as its record
        # and its era only grows, so the answer cannot change meanwhile.
        self._counted: dict[bytes, Record] = {}
        self._counted_era = 0
        self._flusher: asyncio.Task[None] | None = None
        self._checked = False  # this process ran the start-up check: it marks a clean stop

    # -- life cycle --------------------------------------------------------------------------
    def open_sync(self) -> None:
        """Blocking: create directories, open LMDB. Run before serving, off the loop."""
        self.blobs.prepare()
        volume = Volume(self.root, self.cfg.min_free)
        if volume.spare() < 0:
            log.cache.warning(
                "the volume under the cache has less free than cache.min_free (%s of %d bytes);"
                " nothing is cached until there is room",
                self.cfg.min_free,
                volume.size,
            )
        self.index = Index(
            self.root / "index", self.cfg.index_map_size, self.cfg.max_size, volume, self.quotas
        )
        self.index.on_commit = self._after_commit
        _claim_format(self.index, self.root)
        self.locks = FillLocks(self.root / "locks")

    async def open(self) -> None:
        """Open (unless open_sync ran already) and start the writer thread and hit flusher."""
        if self.index is None:
            await asyncio.to_thread(self.open_sync)
        assert self.index is not None
        self.index.start()
        self._flusher = asyncio.create_task(self._flush_hits_forever())

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        await self._flush_hits()
        if self.index is not None:
            await asyncio.to_thread(self._close_index, self.index)
        if self.locks is not None:
            self.locks.close()

    def _close_index(self, index: Index) -> None:
        """Blocking: close the index; the process that checked it marks the stop clean."""
        closed = index.close()
        if self._checked and closed is not None:
            cleanstop.write(index.path, *closed, self.quotas)

    def _after_commit(self, batch: Batch) -> None:
        """Writer thread: drop the files of what the transaction removed."""
        if batch.unlink:
            self.blobs.unlink([self.blobs.path(*u) for u in batch.unlink])
        if batch.evicted_objects:
            metrics.EVICTIONS.inc(batch.evicted_objects)
            metrics.EVICTED_BYTES.inc(batch.evicted_bytes)

    @property
    def _idx(self) -> Index:
        assert self.index is not None, "cache not open"
        return self.index

    # -- reads (on the loop: short LMDB read transactions) ------------------------------------
    def lookup(self, oid: bytes) -> tuple[Record | None, bytes | None]:
        return self._idx.get_with_data(oid)

    def raw_lookup(self, oid: bytes) -> tuple[bytes | None, bytes | None]:
        """The record's raw bytes and its inline bytes, unparsed (Index.raw_with_data)."""
        return self._idx.raw_with_data(oid)

    def parsed(self, raw: bytes) -> Record:
        """A raw record (raw_lookup) parsed, shared with lookup's parsed records (read-only)."""
        return self._idx.parsed(raw)

    def missing(self, oids: list[bytes]) -> list[bool]:
        return self._idx.missing(oids)

    def chunk_path(self, oid: bytes, rec: Record, index: int) -> Path:
        return self.blobs.path(oid, rec.gen, index)

    def watch_waiters(self) -> None:
        """Other processes fill this cache too: a read's commit lingering for company ends
        when one of them begins to wait for a fill (FillLocks.stamp)."""
        assert self.index is not None and self.locks is not None, "cache not open"
        self.index.stirred = self.locks.stamp

    def hurry(self) -> None:
        """Somebody waits on fills' commits already queued (Index.hurry)."""
        self._idx.hurry()

    def note_hit(self, oid: bytes, rec: Record, now: float) -> None:
        if rec.atime == UNREAD_REFUSED and oid not in self._leaving:
            self._first_read_of_refused(oid, now)
            return
        # S3-FIFO only asks whether an object was read again, so the record is written when
        # the answer changes (freq 0 -> n) and for access times at most every ten minutes; the
        # use count admission compares (eviction.place) is raised once an era, beside it.
        if rec.freq == 0 or now - rec.atime > ATIME_REFRESH:
            self._hits[oid] = self._hits.get(oid, 0) + 1
            return
        if self._counted_era != self._era:
            self._counted.clear()
            self._counted_era = self._era
        if self._counted.get(oid) is rec:
            return  # this record's use count was already seen raised in this era
        if self._idx.uses_era(oid, rec) != self._era:
            self._reads[oid] = self._reads.get(oid, 0) + 1
        else:
            remember(self._counted, oid, rec, COUNTED_MAX)

    def _first_read_of_refused(self, oid: bytes, now: float) -> None:
        """The read a refused job's fill was kept for (Txn.insert): it goes first in line now,
        not at the next hit flush, as a second of an epoch's reads of such objects would keep
        their room from the residents meanwhile. The read is the use its fill counted; a read
        of it after this one is a read again."""

        def op(t: Txn) -> None:
            rec = t.get(oid)
            if rec is None:
                return
            if rec.atime == UNREAD_REFUSED:
                t.first_in_line(oid, rec)
            else:  # (a reader's older copy of the record): a read again
                t.count_hits(oid, rec, 1)
            rec.atime = now
            t.put(oid, rec)

        def done(fut: asyncio.Future[Any]) -> None:
            self._leaving.discard(oid)
            if not fut.cancelled() and fut.exception() is not None:
                log.cache.warning("a first read's commit failed: %r", fut.exception())

        self._leaving.add(oid)
        self._idx.submit(op, lazy=True).add_done_callback(done)

    def totals(self) -> tuple[int, int]:
        return self._idx.totals()

    async def pin(self, target: pins.Target) -> pins.Counts:
        """A pin rule for ``target`` (later fills under it are pinned) and what it holds now."""
        return await pins.pin(self._idx, target)

    async def pin_objects(self, oids: list[bytes]) -> pins.Counts:
        return await pins.pin_objects(self._idx, oids)

    def quota_room(self, bucket: str) -> int | None:
        """The bytes ``bucket`` may still add under its cache.quotas entry; None: none."""
        return quota.room(self._idx, bucket)

    def write_mark(self) -> int:
        """Note this before asking the store: the ``seen`` of what the answer is committed with.
        Whatever a read learnt is dropped if a write of the object committed after this (in any
        process); a write's copy is dropped if another write committed meanwhile, as nobody
        knows which of them the store kept."""
        return self._idx.write_mark()

    # -- writes -----------------------------------------------------------------------------
    async def put_meta(self, oid: bytes, new: Record, *, seen: int) -> Record | None:
        """Record what a HEAD or revalidation learnt; a changed version drops the old bytes.
        None (nothing changed) when a write committed since ``seen``: the answer is older; or
        when the index could not take it (full): the caller reads from the store."""

        def op(t: Txn) -> Record | None:
            if _stale(t, oid, new, seen):
                return None
            cur = t.get(oid)
            if cur is not None and cur.etag == new.etag and cur.size == new.size:
                cur.validated = max(cur.validated, new.validated)
                t.put(oid, cur)
                return cur
            if cur is not None:
                t.remove(oid, cur)
            t.insert(oid, new)
            return new

        return await self._try_submit(op)

    async def commit_inline(
        self,
        oid: bytes,
        new: Record,
        data: bytes,
        *,
        seen: int,
        write: bool = False,
        urgent: Urgent = None,
        ahead: bool = False,
    ) -> bool:
        """Keep a small object inside the index. ``write``: the store just confirmed a write of
        exactly ``new`` (its metadata too, whatever the old record held); else a read's fill,
        whose commit may linger for company unless ``urgent()`` says somebody waits on it.
        ``ahead``: a job's fill before any read (see unread). False if not cached (see
        write_mark for ``seen``)."""

        def op(t: Txn) -> bool:
            cur = t.get(oid)
            if not _write_wins(t, oid, cur, new, seen, write):
                return False
            if cur is not None:
                if cur.etag == new.etag and cur.size == new.size:
                    if cur.inline and not write and t.txn.get(oid, db=t.index.data) is not None:
                        return True  # (a record that lost its value is replaced below)
                    new.freq, new.hits = cur.freq, cur.hits
                t.remove(oid, cur)
            if not t.fits(oid, new, len(data)):
                return False
            new.inline, new.stored, new.chunks = True, len(data), 0
            if ahead:
                unread(new)
            t.txn.put(oid, data, db=t.index.data)
            # (its readers hold ``new`` only to read it, and no later op here has it)
            t.index.seed_parsed(t.insert(oid, new, ahead), new)
            return True

        lazy = not (write or (urgent and urgent()))
        return bool(await self._try_submit(op, lazy, len(data)))

    async def commit_chunk(
        self,
        oid: bytes,
        new: Record,
        index: int,
        data: memoryview,
        *,
        seen: int,
        urgent: Urgent = None,
        ahead: bool = False,
    ) -> bool:
        """Publish one chunk file a fill read, then mark it present (lingering for company
        unless ``urgent()``, asked once the file is written, as in commit_inline; ``ahead``:
        see unread). False if it could not be cached (see write_mark for ``seen``)."""
        try:
            await self._write_chunk(oid, new.gen, index, data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                metrics.CACHE_WRITE_ERRORS.labels("disk_full").inc()
                disk_full.warning("cannot cache a chunk (disk_full): %s", exc.strerror)
            else:
                metrics.CACHE_WRITE_ERRORS.labels("disk_error").inc()
                log.cache.warning("cannot cache a chunk (disk_error): %s", exc.strerror)
            return False
        size = len(data)

        def op(t: Txn) -> bool:  # whether the index holds the chunk (its file is kept)
            cur = t.get(oid)
            if _stale(t, oid, new, seen):  # a write's record of the same version keeps it
                return cur is not None and cur.gen == new.gen and cur.has_chunk(index)
            if cur is not None and not (cur.etag == new.etag and cur.size == new.size):
                t.remove(oid, cur)
                cur = None
            adding = cur is None or not cur.has_chunk(index)
            if adding and not t.fits(oid, new, size):
                return False
            if cur is None:
                new.chunks, new.stored = 1 << index, 0
                if ahead:
                    unread(new)
                t.insert(oid, new, ahead)
                t.grow(oid, new, size)
            elif not cur.has_chunk(index):
                cur.chunks |= 1 << index
                cur.validated = max(cur.validated, new.validated)
                t.grow(oid, cur, size)
            return True

        ok = bool(await self._try_submit(op, lazy=not (urgent and urgent())))
        if not ok:
            await asyncio.to_thread(self.blobs.unlink, [self.blobs.path(oid, new.gen, index)])
        return ok

    async def _write_chunk(self, oid: bytes, gen: str, index: int, data: memoryview) -> None:
        """Write one chunk file where the volume has room for it beyond its reserve, evicting
        to make that room first (also after a write met a full disk)."""
        for attempt in range(MAKE_ROOM_TRIES + 1):
            short = await asyncio.to_thread(self._write_if_room, oid, gen, index, data)
            if short <= 0:
                return
            if attempt < MAKE_ROOM_TRIES:
                await self._idx.make_room(short)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _write_if_room(self, oid: bytes, gen: str, index: int, data: memoryview) -> int:
        """Blocking: write the chunk file and return 0, or return the bytes to free first."""
        volume = self._idx.volume
        short = len(data) - volume.spare() if volume is not None else 0
        if short > 0:
            return short
        try:
            self.blobs.write(oid, gen, index, data)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return len(data)  # others wrote meanwhile, or the disk lies about its free space
        return 0

    async def commit_files(
        self, oid: bytes, new: Record, files: list[tuple[int, Path, int]], *, seen: int
    ) -> bool:
        """Publish a whole object from fsynced temp files (a write-through copy): rename each
        into place, then index every chunk in one transaction, replacing any older version.
        False if not cached (another write committed since ``seen``: see write_mark)."""
        try:
            for index, tmp, _ in files:
                final = self.blobs.path(oid, new.gen, index)
                await asyncio.to_thread(_publish, tmp, final)
        except OSError as exc:
            metrics.CACHE_WRITE_ERRORS.labels("disk_error").inc()
            warn = disk_full.warning if exc.errno == errno.ENOSPC else log.cache.warning
            warn("cannot publish a write-through copy: %s", exc.strerror)
            return False

        placed = {(oid, new.gen, index) for index, _, _ in files}

        def op(t: Txn) -> bool:
            cur = t.get(oid)
            if not _write_wins(t, oid, cur, new, seen, True):
                t.batch.unlink += [u for u in placed if u not in t.batch.unlink]
                return False
            if cur is not None:
                t.remove(oid, cur)
                if cur.gen == new.gen:  # same version rewritten: keep the files just placed
                    t.batch.unlink = [u for u in t.batch.unlink if u not in placed]
            if not t.fits(oid, new, sum(length for _, _, length in files)):
                t.batch.unlink += [u for u in placed if u not in t.batch.unlink]
                return False
            new.inline, new.chunks, new.stored = False, 0, 0
            for index, _, _ in files:
                new.chunks |= 1 << index
            t.insert(oid, new)
            t.grow(oid, new, sum(length for _, _, length in files))
            return True

        return bool(await self._try_submit(op))

    async def publish_upload(
        self, oid: bytes, new: Record, upload_id: str, numbers: list[int], *, seen: int
    ) -> bool:
        """A completed multipart upload's staged parts (``numbers``, in order) become the
        cached copy of ``new``; the staging goes either way. True if cached."""
        files = await self.uploads.rechunk(oid, upload_id, numbers, new.size)
        ok = files is not None and await self.commit_files(oid, new, files, seen=seen)
        await self.uploads.discard(oid, upload_id)
        return ok

    async def drop(self, oid: bytes, *, seen: int | None = None) -> None:
        """Forget the object. A write's drop (``seen`` None) also moves the object's write
        mark; a read's (the store said NoSuchKey) is skipped if a write committed since
        ``seen``."""

        def op(t: Txn) -> None:
            if seen is not None and t.written_since(oid, seen):
                return
            cur = t.get(oid)
            if cur is not None:
                t.remove(oid, cur)
            if seen is None:
                t.mark_written(oid)

        if seen is None:
            await self._idx.submit(op)  # a write's: it fails if the index cannot take it
        else:
            await self._try_submit(op)  # a read's: the record is checked again next time

    async def forget_chunk(self, oid: bytes, gen: str, index: int) -> None:
        """A chunk file went missing: clear its bit so it is fetched again."""

        def op(t: Txn) -> None:
            cur = t.get(oid)
            if cur is not None and cur.gen == gen and cur.has_chunk(index):
                cur.chunks &= ~(1 << index)
                size = min(self.cfg.chunk_size, cur.size - index * self.cfg.chunk_size)
                t.grow(oid, cur, -min(cur.stored, size))

        await self._try_submit(op)  # (if the index is full, the next read finds it gone too)

    async def _try_submit(
        self, op: Callable[[Txn], T], lazy: bool = False, nbytes: int = 0
    ) -> T | None:
        """What ``op`` answered, or None (counted) where the index could not take it (full).
        ``lazy``, ``nbytes``: see Index.submit."""
        try:
            result: T = await self._idx.submit(op, lazy, nbytes)
        except errors.IndexFull as exc:
            metrics.CACHE_WRITE_ERRORS.labels(exc.reason).inc()
            return None
        return result

    async def _flush_hits_forever(self) -> None:
        while True:
            await asyncio.sleep(HIT_FLUSH_INTERVAL)
            try:
                self._era = self._idx.era()
                await self._flush_hits()
            except Exception:
                log.cache.exception("flushing hit statistics failed")

    async def _flush_hits(self) -> None:
        if not (self._hits or self._reads) or self.index is None:
            return
        hits, self._hits = list(self._hits.items()), {}
        reads, self._reads = list(self._reads.items()), {}
        now = time.time()

        def op(t: Txn, hits: list[tuple[bytes, int]], reads: list[tuple[bytes, int]]) -> None:
            for oid, n in hits:
                rec = t.get(oid)
                if rec is not None:
                    if rec.atime == UNREAD:
                        n -= 1  # its first read: the use its fill counted, not a read again
                    if n:
                        t.count_hits(oid, rec, n)
                    rec.atime = now
                    t.put(oid, rec)
            for oid, n in reads:
                t.count_reads(oid, n)

        # A slice per transaction, each after the last commits: a second's hits of a training
        # epoch (thousands of first reads, each a record rewritten) held LMDB's write lock for
        # ~0.1 s in one transaction, and the fills of every worker queued behind it.
        for at in range(0, len(hits), HIT_FLUSH_SLICE):
            await self._try_submit(partial(op, hits=hits[at : at + HIT_FLUSH_SLICE], reads=[]))
        for at in range(0, len(reads), HIT_FLUSH_SLICE):
            await self._try_submit(partial(op, hits=[], reads=reads[at : at + HIT_FLUSH_SLICE]))

    # -- repair -----------------------------------------------------------------------------
    def fsck(self) -> dict[str, int]:
        """Blocking; run before serving: fsck.check (what it drops and repairs, and why a
        clean stop leaves nothing to walk)."""
        self._checked = True
        return fsck.check(self._idx, self.blobs, self.uploads)


def _stale(t: Txn, oid: bytes, new: Record, seen: int) -> bool:
    """Whether what was learnt at write mark ``seen`` no longer speaks for the object: a write
    of it committed since, or an evict fenced its prefix off (pins.fence)."""
    return t.written_since(oid, seen) or pins.fenced(t, new, seen)


def _write_wins(
    t: Txn, oid: bytes, cur: Record | None, new: Record, seen: int, write: bool
) -> bool:
    """Whether a commit of ``new`` noted at ``seen`` may replace ``cur``: no write committed
    and no evict fenced it off since. A write moves the object's mark; one that finds another
    write committed meanwhile drops ``cur`` too, as which of them the store kept is unknown."""
    stale = _stale(t, oid, new, seen)
    if write:
        t.mark_written(oid)
        if stale and cur is not None:
            t.remove(oid, cur)
    return not stale


def _publish(tmp: Path, final: Path) -> None:
    """Blocking."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


def unread(rec: Record) -> None:
    """Mark what a job fetched ahead of its reads (a prefetch's, a warm-up's) as read by
    nobody yet: its fill counted the use its first read will be (one that admission refuses
    is kept until that read, then goes first: Txn.insert, _first_read_of_refused), and that
    read is not a read again (S3-FIFO's freq, note_hit and the hit flush), or one prefetched
    pass over a dataset would look read twice and fill the main queue."""
    rec.atime = UNREAD


def record_for(
    meta: ObjectMeta, backend: str, bucket: str, key: str, now: float | None = None
) -> Record:
    return Record.from_meta(meta, backend, bucket, key, time.time() if now is None else now)


_FORMAT_KEY = b"record_format"


def _claim_format(index: Index, root: Path) -> None:
    """Blocking. Stop if a newer version wrote this index (its records may not parse here);
    else say that records of this version's form may be in it, for the versions after."""
    with index.env.begin(db=index.meta, write=True) as txn:
        raw = txn.get(_FORMAT_KEY)
        found = int.from_bytes(raw, "big") if raw else 0
        if found > FORMAT2:
            raise errors.CacheTooNew(
                f"{root} holds a cache index written by a newer Slipstream (record format"
                f" {found}; this version reads up to {FORMAT2}): run the newer version, or"
                " empty cache.dir (a cache: only its copies go)"
            )
        if found < FORMAT2:
            txn.put(_FORMAT_KEY, FORMAT2.to_bytes(2, "big"))
