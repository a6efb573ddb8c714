"""Hot inline objects: a per-process table of whole answers, each checked exactly on use.

An entry names one inline cached object and holds the raw index record its answer's head was
rendered from. Each use reads the record's raw bytes and the object's bytes again in one LMDB
read transaction (no parsing) and compares the record byte for byte with the entry's: the
index is shared by every worker, so a fill, write, delete, eviction, revalidation, hit flush
or another process's commit is seen by the very next use, without a signal between processes.
The body is never held here: it is the one the index holds now, read with the record. A
record that changed only in what the answer is not rendered from (hit statistics, its queue,
the validation time) is parsed once and the entry keeps it; any other difference drops the
entry and the request takes the usual path, which may admit it again.

A use counts what a usual inline hit counts (the bucket's hit and bytes, the use count that
eviction reads, the prefetcher's read feed, first-byte time), so nothing observable moves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from proxy import metrics
from proxy.cache.record import Record
from proxy.core.metadata import oid_of
from proxy.core.reads import Reads
from proxy.model import ObjectMeta
from proxy.routing import Mount

ENTRY_OVERHEAD = 800  # bytes an entry costs beyond its texts (objects, dict slots, names)
ROOM = 4 * ENTRY_OVERHEAD  # free bytes under which the table counts as full
SEEN_MAX = 50_000  # hashes of names answered once (a few MB; cleared when full)


@dataclass(slots=True)
class HotEntry:
    oid: bytes
    raw: bytes  # the index record the fields were rendered from
    rec: Record  # that record parsed (for the use count)
    fields: dict[str, str]  # the answer's headers but the request ids and what aiohttp adds
    checksums: dict[str, str]  # added after them when the request asks (x-amz-checksum-mode)
    expires: float  # time.time() after which the record needs revalidation (metadata_ttl)
    ttl: float | None  # the mount's metadata_ttl
    bucket: str  # the client-facing bucket (the prefetcher's read feed)
    key: str  # the remote key
    stats: metrics.BucketMetrics
    cost: int


class HotObjects:
    """At most ``max_bytes`` of entries (their heads and records, not bodies), the oldest
    kept dropped first. An entry is made by the first request that finds its object cached
    inline (``enter``) and answers it. While the table has room it is kept; once the table
    is full, only for a name asked before (its entry was dropped for a change, or an earlier
    request missed or found the table full): a one-pass scan over more keys than the table
    holds does not cycle it, and each of its reads still takes the short path."""

    def __init__(self, reads: Reads, max_bytes: int) -> None:
        self.reads = reads  # its on_read (the prefetcher's feed) is set after start
        self.cache = reads.cache
        self.max_bytes = max_bytes
        self._entries: dict[Hashable, HotEntry] = {}
        self._bytes = 0
        self._seen: set[int] = set()  # a collision only admits a name one answer early

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, name: Hashable) -> tuple[HotEntry, bytes] | None:
        """The entry named ``name`` and the object's bytes, if its record is unchanged and
        fresh; else None (a changed or missing entry is dropped)."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        raw, body = self.cache.raw_lookup(entry.oid)
        if (raw != entry.raw and not self._same_answer(entry, raw)) or body is None:
            self._drop(name)
            self._remember(name)  # hot until now: back in at its next usual answer
            return None
        if time.time() >= entry.expires:
            return None  # due for revalidation: the usual path asks the store
        return entry, body

    def _same_answer(self, entry: HotEntry, raw: bytes | None) -> bool:
        """Whether ``raw`` renders the answer ``entry`` holds (a hit flush, a revalidation or a
        move between queues rewrote the record, not the object): if so the entry now holds it."""
        if raw is None:
            return False
        rec = self.cache.parsed(raw)
        if rec.answer() != entry.rec.answer():
            return False
        entry.raw, entry.rec = raw, rec
        entry.expires = float("inf") if entry.ttl is None else rec.validated + entry.ttl
        return True

    def count_get(self, entry: HotEntry, size: int, started: float) -> None:
        """What a usual whole inline GET hit counts (Reads.read and the read handler)."""
        on_read = self.reads.on_read
        if on_read is not None:
            on_read(entry.bucket, entry.key)
        entry.stats.hit()
        self.cache.note_hit(entry.oid, entry.rec, time.time())
        entry.stats.served("cache", size)
        metrics.FIRST_BYTE_HIT.observe(time.perf_counter() - started)

    def enter(
        self,
        name: Hashable,
        mount: Mount,
        key: str,
        render: Callable[[ObjectMeta], tuple[dict[str, str], dict[str, str]]],
    ) -> tuple[HotEntry, bytes] | None:
        """The entry of ``key`` of ``mount`` (a remote key) and its bytes, if the index holds it
        inline and fresh now (its head and checksums are ``render`` of the record read here);
        else None. The entry is kept under ``name`` while the table has room, and once it is
        full when the name was asked before: else it answers this request only."""
        if not mount.cacheable:
            return None
        oid = oid_of(mount, key)
        raw, body = self.cache.raw_lookup(oid)
        if raw is None or body is None:
            self._remember(name)  # a miss (its fill commits later) or not inline
            return None
        rec = self.cache.parsed(raw)
        if not rec.inline:  # (its bytes are the data table's only when it is)
            return None
        ttl = mount.metadata_ttl
        expires = float("inf") if ttl is None else rec.validated + ttl
        if time.time() >= expires:
            return None  # due for revalidation: the usual path asks the store
        fields, checksums = render(rec.to_meta())
        # the fields are rendered from the record: its bytes twice over bound their texts
        cost = ENTRY_OVERHEAD + 2 * len(raw) + 2 * len(key)
        stats = metrics.bucket(mount.name, mount.wildcard)
        entry = HotEntry(
            oid, raw, rec, fields, checksums, expires, ttl, mount.name, key, stats, cost
        )
        if self._bytes + cost + ROOM > self.max_bytes and hash(name) not in self._seen:
            self._remember(name)  # full: kept on its next answer (a scan does not cycle it)
        elif cost <= self.max_bytes:
            self._drop(name)
            while self._entries and self._bytes + cost > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[name] = entry
            self._bytes += cost
            self._seen.discard(hash(name))
        return entry, body

    def _remember(self, name: Hashable) -> None:
        if len(self._seen) >= SEEN_MAX:
            self._seen.clear()
        self._seen.add(hash(name))

    def _drop(self, name: Hashable) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry.cost
