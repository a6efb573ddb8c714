"""The LMDB index: object records, inline object bytes, the S3-FIFO queues and the totals.

Reads are short read transactions on the caller's thread (a few microseconds on mapped pages).
Every write runs on one dedicated thread per process, batched into one transaction, so the
event loop never waits on a commit's fsync. LMDB serialises writers across processes.
"""

from __future__ import annotations

import asyncio
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from proxy import errors, log, metrics
from proxy.cache import budget, eviction, pins, quota
from proxy.cache.batch import Batch, Settled, hand_back
from proxy.cache.budget import LOW_WATER
from proxy.cache.counters import U64, Counters
from proxy.cache.lmdb_queues import LmdbQueues
from proxy.cache.record import UNREAD_REFUSED, Record
from proxy.cache.space import IndexTail, Throttled, Volume, disk_full
from proxy.memo import remember

T = TypeVar("T")

_GHOST = struct.Struct(">QII")  # a ghost's value: its seq, use count and the count's era
# A record's use count and the count's era live beside it in their own tree (``uses``), so
# counting a hit rewrites eight bytes, not the record: the parsed-record cache of the readers
# stays valid and no JSON is encoded. Until its first counted hit a record carries them as
# fields (as records written before the tree do): a fill's insert then dirties one random page
# of the index fewer, ~a quarter of its writer's I/O.
_USES = struct.Struct(">II")
GHOST_LIMIT = 200_000
# A read's fill commits after its readers have its bytes: the writer waits this long for more
# to join the transaction, or until BATCH_FULL more are queued. A transaction costs ~0.4 ms of
# CPU besides its fills' ~45 us each: at ~1,500 fills a second, 5 ms made ~8 fills a commit,
# 20 ms ~30. A write's op never waits, and ends the wait of those before it (as hurry does).
LINGER = 0.02
BATCH_FULL = 64
STIR_POLL = 0.002  # how often a lingering batch looks whether another process began to wait
WRITTEN_LIMIT = 200_000  # objects whose last write's mark is kept; older ones share a floor
DECODED_CACHE_MAX = 50_000
EVICT_STEP, EVICT_STEPS = 64, 32  # what _evict_some does in one transaction at most, and in all
_index_full = Throttled(log.cache)


Op = Callable[["Txn"], Any]
Queued = tuple[Op, "asyncio.Future[Any]", bool, int]  # an op, its future, lazy, value bytes


class Txn:
    """A write transaction with the index's helpers; ops run inside one (Index.writing).
    The ``meta`` counters go through counter/add/set_counter, never ``txn`` (counters.py)."""

    def __init__(self, index: Index, txn: lmdb.Transaction, batch: Batch) -> None:
        self.index = index
        self.txn = txn
        self.batch = batch
        self.counters = Counters(txn, index.meta)
        self.pin_rules: dict[bytes, list[bytes]] = {}  # pins.covered's, per bucket

    # -- records -------------------------------------------------------------------------
    def get(self, oid: bytes) -> Record | None:
        raw = self.txn.get(oid, db=self.index.objects)
        return Record.loads(raw) if raw is not None else None

    def put(self, oid: bytes, rec: Record) -> bytes:
        """Write ``rec``; returns its raw form as written."""
        raw = rec.dumps()
        self.txn.put(oid, raw, db=self.index.objects)
        return raw

    def counter(self, name: bytes) -> int:
        return self.counters.get(name)

    def set_counter(self, name: bytes, value: int) -> None:
        self.counters.set(name, value)

    def add(self, name: bytes, delta: int) -> None:
        self.counters.set(name, max(0, self.counters.get(name) + delta))

    def next_seq(self) -> int:
        seq = self.counters.get(b"seq") + 1
        self.counters.set(b"seq", seq)
        return seq

    def insert(self, oid: bytes, rec: Record, ahead: bool = False) -> bytes:
        """Add a new record to its queue and the totals (eviction.place: where, if at all, it
        may displace what the cache holds); pinned if a pin rule covers it (a pinned record is
        always admitted), and in its bucket's quota FIFO if that bucket has a quota. Returns
        the record's raw form as written. ``ahead``: a job fetched it for a read to come
        (store.unread): one that admission refuses is kept until that read, which would only
        fetch it again, in the small queue (marked UNREAD_REFUSED: its read sends it first in
        line to go, Txn.first_in_line)."""
        rec.pinned = rec.pinned or pins.covered(self, rec.backend, rec.bucket, rec.key)
        quota.join(self, oid, rec)
        self.account(rec, rec.stored)
        raw = self.txn.pop(oid, db=self.index.ghost)
        era = self.tick(1)
        remembered = None
        if raw is not None and len(raw) >= _GHOST.size:
            _, uses, uses_era = _GHOST.unpack(raw)
            remembered = eviction.aged(uses, uses_era, era)
        elif raw is not None:
            remembered = 0  # a ghost written before use counts
        queues = LmdbQueues(self)
        full = not rec.pinned and (
            budget.held(self) + rec.stored > int(self.index.max_bytes * LOW_WATER)
        )
        # A use is counted with the bytes of chunk 0 (or inline): a later chunk's fill continues
        # a read already counted (or is a range read), and a metadata-only record (a HEAD) is
        # followed by the GET it precedes.
        uses = 1 if rec.inline or rec.chunks & 1 else 0
        where = eviction.place(queues, self.index.max_bytes, remembered, full=full, uses=uses)
        if ahead and where.at_head:
            where = eviction.Placement("S", False, where.count)
            rec.atime = UNREAD_REFUSED
        rec.queue = where.queue
        rec.uses, rec.uses_era = where.count, era  # (no ``uses`` entry: see _USES)
        head = queues._head(where.queue) if where.at_head else None
        rec.qseq = head[2].qseq - 1 if head is not None and head[2].qseq > 1 else self.next_seq()
        if where.at_head:
            self.batch.refused.append(oid)
        self.txn.put(rec.queue.encode() + U64.pack(rec.qseq), oid, db=self.index.queues)
        self.add(b"bytes:" + rec.queue.encode(), rec.stored)
        self.add(b"objects", 1)
        return self.put(oid, rec)

    def first_in_line(self, oid: bytes, rec: Record) -> None:
        """Move ``rec``, in the small queue, to its head: the next to be evicted (the caller
        puts the record)."""
        head = LmdbQueues(self)._head("S")
        if rec.queue != "S" or head is None or head[1] == oid or head[2].qseq <= 1:
            return
        self.txn.delete(b"S" + U64.pack(rec.qseq), db=self.index.queues)
        rec.qseq = head[2].qseq - 1
        self.txn.put(b"S" + U64.pack(rec.qseq), oid, db=self.index.queues)

    def grow(self, oid: bytes, rec: Record, delta: int) -> None:
        rec.stored += delta
        self.account(rec, delta)
        self.add(b"bytes:" + rec.queue.encode(), delta)
        self.put(oid, rec)

    def remove(self, oid: bytes, rec: Record, *, to_ghost: bool = False) -> None:
        """Drop a record, its inline bytes and its chunk files (after commit)."""
        self.txn.delete(oid, db=self.index.objects)
        self.txn.delete(oid, db=self.index.data)
        count, count_era = self.uses_of(oid, rec)
        self.txn.delete(oid, db=self.index.uses)
        self.txn.delete(rec.queue.encode() + U64.pack(rec.qseq), db=self.index.queues)
        self.add(b"bytes:" + rec.queue.encode(), -rec.stored)
        self.add(b"objects", -1)
        self.account(rec, -rec.stored)
        if rec.quota:
            self.txn.delete(quota.fifo_key(rec.quota, rec.gseq), db=self.index.queues)
        self.batch.unlink.extend((oid, rec.gen, i) for i in rec.present_chunks())
        if not rec.inline:
            self.batch.file_bytes += rec.stored
        if to_ghost:
            seq, era = self.next_seq(), self.counter(b"era")
            uses = eviction.aged(count, count_era, era)
            self.txn.put(oid, _GHOST.pack(seq, uses, era), db=self.index.ghost)
            self.txn.put(b"G" + U64.pack(seq), oid, db=self.index.queues)
            self._trim_ghosts()

    def account(self, rec: Record, delta: int) -> None:
        """Move ``delta`` bytes of ``rec`` in or out of the pinned and quota counters."""
        if rec.pinned:
            self.add(b"pinned", delta)
        if rec.quota:
            self.add(quota.used_key(rec.quota), delta)
            if rec.pinned:
                self.add(quota.pinned_key(rec.quota), delta)

    def fits(self, oid: bytes, rec: Record, nbytes: int) -> bool:
        """Whether ``nbytes`` more of ``rec`` fit its group (see quota.fits)."""
        return quota.fits(self, oid, rec, nbytes)

    # -- use counts (eviction.place) ------------------------------------------------------------
    def tick(self, uses: int) -> int:
        """Count ``uses`` accesses; returns the era, which ends after eviction.era_length."""
        era, in_era = self.counter(b"era"), self.counter(b"in_era") + uses
        if in_era >= eviction.era_length(self.counter(b"objects")):
            era, in_era = era + 1, 0
            self.set_counter(b"era", era)
        self.set_counter(b"in_era", in_era)
        return era

    def uses_of(self, oid: bytes, rec: Record | None) -> tuple[int, int]:
        """The use count of ``oid`` and the era it was counted in."""
        raw = self.txn.get(oid, db=self.index.uses)
        if raw is not None:
            count, era = _USES.unpack(raw)
            return count, era
        return (rec.uses, rec.uses_era) if rec is not None else (0, 0)

    def set_uses(self, oid: bytes, count: int, era: int) -> None:
        self.txn.put(oid, _USES.pack(count, era), db=self.index.uses)

    def count_uses(self, oid: bytes, rec: Record | None, hits: int) -> None:
        era = self.tick(hits)
        count, count_era = self.uses_of(oid, rec)
        self.set_uses(oid, eviction.counted(eviction.aged(count, count_era, era), hits), era)

    def count_hits(self, oid: bytes, rec: Record, hits: int) -> None:
        """``hits`` reads of ``rec`` (batched by the readers); the caller puts the record."""
        rec.freq = eviction.bump(rec.freq, hits)
        rec.hits += hits
        self.count_uses(oid, rec, hits)

    def count_reads(self, oid: bytes, hits: int) -> None:
        """``hits`` reads of ``oid`` that only raise its use count (the record is untouched:
        see _USES). Nothing if the record went meanwhile."""
        if self.txn.get(oid, db=self.index.uses) is not None:
            self.count_uses(oid, None, hits)  # a uses entry lives exactly as long as its record
        else:
            rec = self.get(oid)  # written before the uses tree: move its count there
            if rec is not None:
                self.count_uses(oid, rec, hits)

    # -- write marks: a write wins over any read that started before it --------------------
    def next_mark(self) -> bytes:
        """Move the write mark on (Index.write_mark): its new value, packed."""
        mark = self.counter(b"wseq") + 1
        self.set_counter(b"wseq", mark)
        return U64.pack(mark)

    def mark_written(self, oid: bytes) -> None:
        """A write of ``oid`` (a PUT, a DELETE, a completed upload) commits in this txn: a read
        that noted an older write mark (Index.write_mark) no longer speaks for the object."""
        packed = self.next_mark()
        old = self.txn.get(oid, db=self.index.written)
        if old is not None:
            self.txn.delete(b"W" + old, db=self.index.queues)
        self.txn.put(oid, packed, db=self.index.written)
        self.txn.put(b"W" + packed, oid, db=self.index.queues)
        if self.txn.stat(self.index.written)["entries"] > WRITTEN_LIMIT:
            cur = self.txn.cursor(db=self.index.queues)
            if cur.set_range(b"W") and cur.key()[:1] == b"W":
                floor, victim = bytes(cur.key()[1:]), bytes(cur.value())
                cur.delete()
                self.txn.delete(victim, db=self.index.written)
                self.set_counter(b"wfloor", U64.unpack(floor)[0])

    def written_since(self, oid: bytes, seen: int) -> bool:
        """Whether a write of ``oid`` committed after the write mark ``seen`` was read (for an
        object whose own mark was trimmed: whether any trimmed one may have)."""
        if self.counter(b"wseq") <= seen:
            return False  # no write anywhere since: no mark (nor the floor) is above wseq
        raw = self.txn.get(oid, db=self.index.written)
        mark = U64.unpack(raw)[0] if raw is not None else self.counter(b"wfloor")
        return mark > seen

    def _trim_ghosts(self) -> None:
        if self.txn.stat(self.index.ghost)["entries"] <= GHOST_LIMIT:
            return
        cur = self.txn.cursor(db=self.index.queues)
        if cur.set_range(b"G") and cur.key()[:1] == b"G":
            oid = cur.value()
            cur.delete()
            self.txn.delete(oid, db=self.index.ghost)


class Index:
    """``volume``, when given, also bounds what the cache holds: what it holds now plus the
    room the volume has beyond its reserve (cache.min_free)."""

    def __init__(
        self,
        path: Path,
        map_size: int,
        max_bytes: int,
        volume: Volume | None = None,
        quotas: Sequence[quota.QuotaRule] = (),
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=8,
            subdir=True,
            max_readers=1024,
            readahead=False,
            lock=True,
            sync=True,
            metasync=True,
        )
        self.objects = self.env.open_db(b"objects")
        self.data = self.env.open_db(b"data")
        self.queues = self.env.open_db(b"queues")
        self.ghost = self.env.open_db(b"ghost")
        self.meta = self.env.open_db(b"meta")
        self.written = self.env.open_db(b"written")  # oid -> the write mark of its last write
        self.uses = self.env.open_db(b"uses")  # oid -> its use count and era (_USES)
        trees = (self.objects, self.data, self.queues, self.ghost, self.meta, self.written)
        self.trees = (self.env.open_db(None), *trees, self.uses)  # every tree (budget.pages)
        self.map_size: int = self.env.info()["map_size"]
        self.psize: int = self.env.stat()["psize"]
        self.max_bytes = max_bytes
        self.volume = volume
        self.quotas = tuple(quotas)
        self.env.reader_check()
        self.tail: IndexTail | None = None
        if volume is not None and volume.reserve > 0:
            self.tail = IndexTail(path / "data.mdb", volume, self.psize)
            self.tail.top_up(self.map_usage()[0])
        self._ops: queue.SimpleQueue[Queued | None]
        self._ops = queue.SimpleQueue()
        self._eager = threading.Event()  # an op that must not wait was queued (or a close)
        self._thread: threading.Thread | None = None
        self.on_commit: Callable[[Batch], None] = lambda batch: None
        # what moves when another process begins to wait for a fill (FillLocks.stamp): a
        # lingering batch commits then (None: no other process fills this cache)
        self.stirred: Callable[[], bytes] | None = None
        self._decoded: dict[bytes, Record] = {}  # raw value -> parsed; hits skip json parsing

    # -- reads (any thread) ----------------------------------------------------------------
    def get(self, oid: bytes) -> Record | None:
        with self.env.begin(db=self.objects) as txn:
            raw = txn.get(oid)
        return Record.loads(raw) if raw is not None else None

    def missing(self, oids: list[bytes]) -> list[bool]:
        """For each oid, whether the index lacks it: one read transaction, nothing parsed
        (a listing page's thousand keys cost well under a millisecond)."""
        txn = self.env.begin(db=self.objects)
        try:
            return [txn.get(oid) is None for oid in oids]
        finally:
            txn.abort()

    def get_with_data(self, oid: bytes) -> tuple[Record | None, bytes | None]:
        """The record and, for inline objects, the bytes, read in one transaction.

        Callers must treat the returned Record as read-only: it is shared through the cache of
        parsed values, keyed by the raw bytes so a changed entry is parsed afresh.
        """
        raw, data = self.raw_with_data(oid)
        if raw is None:
            return None, None
        rec = self.parsed(raw)
        return rec, (data if rec.inline else None)

    def parsed(self, raw: bytes) -> Record:
        """``raw`` parsed, through the cache of parsed values (read-only: see get_with_data)."""
        rec = self._decoded.get(raw)
        if rec is None:
            rec = remember(self._decoded, raw, Record.loads(raw), DECODED_CACHE_MAX)
        return rec

    def seed_parsed(self, raw: bytes, rec: Record) -> None:
        """``rec`` is what ``raw`` parses to and nothing changes it any more: the first read
        of a record just written (a fill that a prefetch made ahead of its reader) finds it
        parsed. Any thread (a dict's item set is atomic)."""
        remember(self._decoded, raw, rec, DECODED_CACHE_MAX)

    def raw_with_data(self, oid: bytes) -> tuple[bytes | None, bytes | None]:
        """The record's raw bytes and the object's inline bytes (None where absent), read in
        one transaction and not parsed: the cheapest exact look at an entry."""
        txn = self.env.begin()  # abort() ends a read txn for half what the `with` form costs
        try:
            raw = txn.get(oid, db=self.objects)
            return raw, (txn.get(oid, db=self.data) if raw is not None else None)
        finally:
            txn.abort()

    def uses_era(self, oid: bytes, rec: Record) -> int:
        """The era of the use count of ``oid`` (whose record is ``rec``)."""
        txn = self.env.begin(db=self.uses)
        try:
            raw = txn.get(oid)
        finally:
            txn.abort()
        return _USES.unpack(raw)[1] if raw is not None else rec.uses_era

    def write_mark(self) -> int:
        """The mark of the last write committed by any process (Txn.mark_written)."""
        return self.counters(b"wseq")[0]

    def totals(self) -> tuple[int, int]:
        """(bytes, objects) held now."""
        small, main, objects = self.counters(b"bytes:S", b"bytes:M", b"objects")
        return small + main, objects

    def counters(self, *names: bytes) -> list[int]:
        """The named counters of the ``meta`` db (b"pinned", quota.used_key(...)), read in
        one transaction."""
        with self.env.begin(db=self.meta) as txn:
            raws = [txn.get(name) for name in names]
        return [U64.unpack(raw)[0] if raw else 0 for raw in raws]

    def era(self) -> int:
        """The era of use counts (Txn.tick)."""
        return self.counters(b"era")[0]

    def map_usage(self) -> tuple[int, int]:
        info = self.env.info()
        return (info["last_pgno"] + 1) * self.psize, info["map_size"]

    # -- writes (the writer thread) ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lmdb-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Op, lazy: bool = False, nbytes: int = 0) -> asyncio.Future[Any]:
        """Run ``op`` in the writer's next transaction. ``lazy``: nobody waits on it but the
        fill that keeps its bytes: its commit may wait up to LINGER for company. ``nbytes``:
        the bytes of the value it puts in the index (see _batch_cap)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops.put((op, fut, lazy, nbytes))
        if not lazy or self._ops.qsize() >= BATCH_FULL:
            self._eager.set()  # ends a lingering batch's wait
        return fut

    def hurry(self) -> None:
        """Somebody waits on a lazy op already queued: its batch commits without lingering."""
        self._eager.set()

    def make_room(self, nbytes: int) -> asyncio.Future[Any]:
        """Evict chunk files until the volume has room for ``nbytes`` beyond its reserve."""

        def op(t: Txn) -> None:
            if self.volume is not None:
                budget.free_files(t, nbytes - self.volume.spare())

        return self.submit(op)

    def run_sync(self, op: Op) -> Any:
        """Run one op in its own transaction on this thread (start-up and tools only)."""
        batch = Batch()
        with self.writing(batch) as t:
            result = op(t)
        self.on_commit(batch)
        return result

    @contextmanager
    def writing(self, batch: Batch) -> Iterator[Txn]:
        """A write transaction that commits when the block ends (aborts if it raises), with
        the counters its ops set put in it first (counters.py). Blocking. Its wait for LMDB's
        write lock and the time it held it (when it commits) are observed."""
        asked = time.monotonic()
        with self.env.begin(write=True) as txn:
            locked = time.monotonic()
            metrics.INDEX_LOCK_WAIT.observe(locked - asked)
            t = Txn(self, txn, batch)
            yield t
            t.counters.flush()
        metrics.INDEX_TRANSACTION.observe(time.monotonic() - locked)

    def identity(self) -> tuple[int, int]:
        """(the index file's inode, the last transaction id: an empty one commits nothing)."""
        return os.stat(self.path / "data.mdb").st_ino, self.env.info()["last_txnid"]

    def close(self) -> tuple[int, int] | None:
        """Close; identity() as of the close, None if the writer thread did not stop."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._ops.put(None)
            self._eager.set()
            thread.join(timeout=30)
        closed = self.identity() if thread is None or not thread.is_alive() else None
        self.env.close()
        if self.tail is not None:
            self.tail.close()
        return closed

    def _run(self) -> None:
        carried: Queued | None = None  # the op that would have taken its batch past the cap
        while True:
            first = carried if carried is not None else self._ops.get()
            if first is None:
                return
            items = [(first[0], first[1])]
            if first[2] and carried is None:  # (a carried op's batch is waiting already)
                self._linger()
            carried = None
            self._eager.clear()  # what set it is queued already: taken below or next round
            size, cap = first[3], self._batch_cap()
            while len(items) < 256:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._ops.put(None)
                    break
                if cap and size + nxt[3] > cap:
                    carried = nxt
                    break
                items.append((nxt[0], nxt[1]))
                size += nxt[3]
            self._commit(items)

    def _batch_cap(self) -> int:
        """The bytes of values one transaction may add (0: no cap): half the room the index
        file keeps past its end, so that a batch that has to grow the file (no run of free
        pages in it fits) leaves room for the eviction a full disk asks for (IndexTail)."""
        return self.tail.keep // 2 if self.tail is not None else 0

    def _linger(self) -> None:
        """Only lazy ops so far (a read's fill): wait up to LINGER for more to share the commit
        (its fsync and the pages it rewrites). An eager op ends the wait (one sleep, not a
        wake-up and a turn at the GIL per op queued), and so does another process that begins
        to wait for a fill (``stirred``, looked at every STIR_POLL): it may be one of these."""
        stirred = self.stirred
        if stirred is None:
            self._eager.wait(LINGER)
            return
        seen = stirred()
        end = time.monotonic() + LINGER
        while (left := end - time.monotonic()) > 0:
            if self._eager.wait(min(left, STIR_POLL)) or stirred() != seen:
                return

    def _commit(self, items: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        batch = Batch()
        results: list[Settled] = []
        try:
            with self.writing(batch) as t:
                for op, fut in items:
                    results.append((fut, op(t), None))
                budget.keep(t)
        except lmdb.MapFullError:
            if self._each_alone(items, evict=True):
                return
            _index_full.warning("cache index is full (map_size); a write is dropped")
            results = [(items[0][1], None, errors.IndexFull())]
            batch = Batch()
        except Exception as exc:  # one bad op must not sink the batch: retry one by one
            full = _disk_full(exc)
            if self._each_alone(items, evict=full):
                return
            if full:
                disk_full.warning(
                    "the disk under the cache index is full; these writes are dropped"
                )
            failure = errors.IndexFull("disk_full") if full else exc
            results = [(items[0][1], None, failure)]
            batch = Batch()
        self._after(batch)
        hand_back(results)

    def _after(self, batch: Batch) -> None:
        """What a commit leaves to do: the batch's (on_commit), and the index file's tail."""
        try:
            self.on_commit(batch)
            if self.tail is not None:
                self.tail.top_up(self.map_usage()[0])
        except Exception:
            log.cache.exception("post-commit work failed")

    def _each_alone(self, items: list[tuple[Op, asyncio.Future[Any]]], evict: bool) -> bool:
        """After a batch failed: free room first where ``evict`` (index full, or the disk
        under it: pages freed inside the index file are reused), then commit each op in its
        own transaction, so that fills batched with a small write do not sink it and one bad
        op does not sink the rest. False where the batch was one op: the caller settles it."""
        if evict:
            self._evict_some()
        if len(items) == 1:
            return False
        for item in items:
            self._commit([item])
        return True

    def _evict_some(self) -> None:
        """Free index space after MapFull or a full disk: evict a tenth of the bytes, in small
        transactions (each has to commit on the pages past the file's end: IndexTail)."""
        goal = -1
        for _ in range(EVICT_STEPS):
            batch = Batch()
            try:
                with self.writing(batch) as t:
                    held = budget.held(t)
                    goal = int(held * 0.9) if goal < 0 else goal
                    if held > goal:
                        eviction.evict_until(LmdbQueues(t), self.max_bytes, goal, EVICT_STEP)
            except lmdb.Error as exc:
                _index_full.warning("could not free index space: %s", exc)
                return
            self._after(batch)
            if held <= goal:
                return


def _disk_full(exc: BaseException) -> bool:
    # LMDB turns a short write into EIO ("short write, filesystem full?", mdb_page_flush).
    return isinstance(exc, lmdb.DiskError) or (
        isinstance(exc, lmdb.Error) and "Input/output error" in str(exc)
    )
