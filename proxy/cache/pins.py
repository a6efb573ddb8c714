"""Pin rules and the by-prefix operations of the admin API: pin, unpin, evict.

A pin rule is (backend, remote bucket, remote key prefix), kept in the index's ``meta`` db so
it holds across restarts and in every process: an object cached under it later is inserted
pinned (Txn.insert asks ``covered``), and pinned objects are never evicted (S3-FIFO cycles
them; quota eviction skips them).

pin, unpin and evict walk the whole ``objects`` db (records are keyed by a hash of the name,
so a prefix is not a key range): a scan, ``SCAN_BATCH`` records per write transaction on the
index's writer thread, so no transaction is huge and the event loop never waits on one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.cache.counters import U64
from proxy.cache.record import Record

if TYPE_CHECKING:
    from proxy.cache.index import Index, Txn

SCAN_BATCH = 1000
_RULE = b"pin\x00"
# An evict's fence: (backend, bucket, prefix) -> the write mark it moved to. A fill that noted
# an older mark commits nothing under it, a cold one too (it has no record to mark). The
# newest fence's mark is b"fseq" (a commit checks it first); the oldest fences beyond
# FENCE_LIMIT go, raising b"ffloor": a fill older than that floor commits nothing anywhere.
_FENCE = b"fence\x00"
FENCE_LIMIT = 256
_KEY_FIELD = b'{"key":'


@dataclass(frozen=True, slots=True)
class Target:
    """A prefix of one store's bucket, as the index names objects."""

    backend: str
    bucket: str
    prefix: str

    def rule_key(self) -> bytes:
        return _bucket_key(self.backend, self.bucket) + _enc(self.prefix)

    def needle(self) -> bytes:
        """What a record's JSON starts with if its key may start with the prefix: Record.dumps
        writes the key first, escaped as json.dumps does here (one character at a time)."""
        return _KEY_FIELD + json.dumps(self.prefix)[:-1].encode()

    def holds(self, rec: Record) -> bool:
        return (
            rec.backend == self.backend
            and rec.bucket == self.bucket
            and rec.key.startswith(self.prefix)
        )


@dataclass(slots=True)
class Counts:
    objects: int = 0
    bytes: int = 0


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _bucket_key(backend: str, bucket: str) -> bytes:
    return _RULE + _enc(backend) + b"\x00" + _enc(bucket) + b"\x00"


def covered(t: Txn, backend: str, bucket: str, key: str) -> bool:
    """Whether a pin rule covers the object. The prefixes of its bucket's rules are read once
    per transaction (a cursor over them), kept in ``t.pin_rules`` for the fills after it;
    add_rule and drop_rule forget them."""
    start = _bucket_key(backend, bucket)
    prefixes = t.pin_rules.get(start)
    if prefixes is None:
        rules = _entries(t.txn.cursor(db=t.index.meta), start)
        prefixes = t.pin_rules[start] = [rule[len(start) :] for rule, _ in rules]
    if not prefixes:
        return False
    name = _enc(key)
    return any(name.startswith(prefix) for prefix in prefixes)


def add_rule(t: Txn, target: Target) -> None:
    t.pin_rules.clear()
    t.txn.put(target.rule_key(), b"", db=t.index.meta)


def drop_rule(t: Txn, target: Target) -> bool:
    """Whether there was such a rule."""
    t.pin_rules.clear()
    return bool(t.txn.delete(target.rule_key(), db=t.index.meta))


def set_pinned(t: Txn, oid: bytes, rec: Record, pinned: bool) -> None:
    """Flip one record's flag, moving its bytes in or out of the pinned counters."""
    if rec.pinned == pinned:
        return
    t.account(rec, -rec.stored)
    rec.pinned = pinned
    t.account(rec, rec.stored)
    t.put(oid, rec)


async def scan(index: Index, target: Target, visit: Callable[[Txn, bytes, Record], None]) -> None:
    """Call ``visit`` for every record that may be under ``target`` (see Target.may_hold),
    SCAN_BATCH records per write transaction (writer thread)."""
    after, needle = b"", target.needle()
    while True:

        def op(t: Txn, start: bytes = after) -> bytes | None:
            cur = t.txn.cursor(db=t.index.objects)
            found = cur.set_range(start + b"\x00") if start else cur.first()
            items: list[tuple[bytes, bytes]] = []
            while found and len(items) < SCAN_BATCH:
                items.append((bytes(cur.key()), bytes(cur.value())))
                found = cur.next()
            for oid, raw in items:
                # a cheap test before parsing; a record of another layout is parsed
                if raw.startswith(needle) or not raw.startswith(_KEY_FIELD):
                    visit(t, oid, Record.loads(raw))
            return items[-1][0] if found and items else None

        last: bytes | None = await index.submit(op)
        if last is None:
            return
        after = last


async def pin(index: Index, target: Target) -> Counts:
    """Add the rule, then pin what is cached under it. Counts: the objects now pinned there."""
    counts = Counts()

    def visit(t: Txn, oid: bytes, rec: Record) -> None:
        if target.holds(rec):
            set_pinned(t, oid, rec, True)
            counts.objects += 1
            counts.bytes += rec.stored

    await index.submit(lambda t: add_rule(t, target))
    await scan(index, target, visit)
    return counts


async def pin_objects(index: Index, oids: list[bytes]) -> Counts:
    """Pin these cached objects (no rule: one that is evicted by hand and cached again is not
    pinned again). Oids not cached are skipped."""
    counts = Counts()

    def op(t: Txn) -> None:
        for oid in oids:
            rec = t.get(oid)
            if rec is not None:
                set_pinned(t, oid, rec, True)
                counts.objects += 1
                counts.bytes += rec.stored

    await index.submit(op)
    return counts


async def unpin(index: Index, target: Target) -> tuple[bool, Counts]:
    """Drop the rule (False if there was none), then unpin what it covered that no other rule
    still covers. Counts: the objects unpinned."""
    counts = Counts()

    def visit(t: Txn, oid: bytes, rec: Record) -> None:
        if rec.pinned and target.holds(rec) and not covered(t, rec.backend, rec.bucket, rec.key):
            set_pinned(t, oid, rec, False)
            counts.objects += 1
            counts.bytes += rec.stored

    existed: bool = await index.submit(lambda t: drop_rule(t, target))
    if existed:
        await scan(index, target, visit)
    return existed, counts


async def evict(index: Index, target: Target) -> Counts:
    """Drop every cached copy under the prefix, pinned ones too (their rule stays: a later
    read caches them pinned again). A fence goes up first (``fence``), so a fill in flight
    from before commits nothing, of an object cached or not; a read already streaming a chunk
    file keeps its open file."""
    counts = Counts()
    await index.submit(lambda t: fence(t, target))

    def visit(t: Txn, oid: bytes, rec: Record) -> None:
        if target.holds(rec):
            t.remove(oid, rec)
            t.mark_written(oid)
            counts.objects += 1
            counts.bytes += rec.stored

    await scan(index, target, visit)
    return counts


def fence(t: Txn, target: Target) -> None:
    """Fills in flight from before now of objects under ``target`` commit nothing."""
    mark = t.next_mark()
    t.set_counter(b"fseq", U64.unpack(mark)[0])
    t.txn.put(_FENCE + target.rule_key()[len(_RULE) :], mark, db=t.index.meta)
    fences = _fences(t)
    if len(fences) > FENCE_LIMIT:
        key, oldest = min(fences, key=lambda f: f[1])
        t.txn.delete(key, db=t.index.meta)
        t.set_counter(b"ffloor", max(oldest, t.counter(b"ffloor")))


def fenced(t: Txn, rec: Record, seen: int) -> bool:
    """Whether an evict fenced ``rec``'s object off after the write mark ``seen`` was noted."""
    if t.counter(b"fseq") <= seen:
        return False  # the common case: no evict since
    if t.counter(b"ffloor") > seen:
        return True
    name = _bucket_key(rec.backend, rec.bucket)[len(_RULE) :] + _enc(rec.key)
    return any(mark > seen and name.startswith(key[len(_FENCE) :]) for key, mark in _fences(t))


def _fences(t: Txn) -> list[tuple[bytes, int]]:
    cur = t.txn.cursor(db=t.index.meta)
    return [(key, U64.unpack(value)[0]) for key, value in _entries(cur, _FENCE)]


def rules(index: Index) -> list[Target]:
    """Every pin rule (a short read transaction; blocking)."""
    found: list[Target] = []
    with index.env.begin(db=index.meta) as txn:
        for key, _ in _entries(txn.cursor(), _RULE):
            backend, bucket, prefix = key[len(_RULE) :].split(b"\x00", 2)
            found.append(Target(backend.decode(), bucket.decode(), prefix.decode()))
    return found


def _entries(cur: Any, prefix: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of ``cur``'s db whose keys start with ``prefix``."""
    found: list[tuple[bytes, bytes]] = []
    if cur.set_range(prefix):
        for raw, value in cur:
            key = bytes(raw)
            if not key.startswith(prefix):
                break
            found.append((key, bytes(value)))
    return found
