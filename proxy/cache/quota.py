"""Per-bucket quotas (``cache.quotas``): the bytes one client-facing bucket may hold.

Each cached object of a bucket with a quota counts toward it (its record names the bucket
and holds its place in that bucket's FIFO, kept in the ``queues`` db under ``Q``). A fill
that would take the bucket over its quota evicts that bucket's oldest unpinned entries
first, never another bucket's; when pinned bytes alone leave no room, the fill is served
but not cached.

One more group, ``LOCAL`` (``cluster.local_copy``), holds a cluster node's copies of objects
it does not own, kept for its own clients: its records are put in it by the fill that makes
them (their ``quota`` preset to LOCAL by their mount's ``group``, see cluster/node.py), not
by their bucket. It is bounded and evicted as a bucket's quota is.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy import log
from proxy.cache.record import Record
from proxy.cache.space import Throttled
from proxy.config import Config

if TYPE_CHECKING:
    from proxy.cache.index import Index, Txn

_U64 = struct.Struct(">Q")
MAX_STEPS = 100_000  # queue entries one fill may walk (pinned ones are skipped)
_no_room = Throttled(log.cache)
LOCAL = "cluster.local_copy"  # not a valid bucket name (no "_" in one): never a bucket's quota


@dataclass(frozen=True, slots=True)
class QuotaRule:
    name: str  # the client-facing bucket
    backend: str
    bucket: str  # the remote bucket
    prefix: str  # the mount's prefix in it
    limit: int


def group_of(rules: Sequence[QuotaRule], backend: str, bucket: str, key: str) -> QuotaRule | None:
    """The quota an object (by its remote name) counts toward: the longest matching mount."""
    best: QuotaRule | None = None
    for r in rules:
        if (
            r.name != LOCAL
            and r.backend == backend
            and r.bucket == bucket
            and key.startswith(r.prefix)
        ):
            if best is None or len(r.prefix) > len(best.prefix):
                best = r
    return best


def rule_of(t: Txn, rec: Record) -> QuotaRule | None:
    """The group ``rec`` counts toward: LOCAL when the record says so and the group is
    configured, else its bucket's quota (if any)."""
    if rec.quota == LOCAL:
        for r in t.index.quotas:
            if r.name == LOCAL:
                return r
    return group_of(t.index.quotas, rec.backend, rec.bucket, rec.key)


def used_key(name: str) -> bytes:
    return b"quota:" + name.encode()


def pinned_key(name: str) -> bytes:
    return b"qpinned:" + name.encode()


def fifo_key(name: str, gseq: int) -> bytes:
    return b"Q" + name.encode() + b"\x00" + _U64.pack(gseq)


def join(t: Txn, oid: bytes, rec: Record) -> None:
    """Put a record being inserted (its bytes not counted yet) in its group's FIFO."""
    rule = rule_of(t, rec)
    rec.quota = rule.name if rule is not None else ""
    if rule is not None:
        rec.gseq = t.next_seq()
        t.txn.put(fifo_key(rule.name, rec.gseq), oid, db=t.index.queues)


def regroup(t: Txn, oid: bytes, rec: Record) -> None:
    """Start-up repair: move a cached record to the quota the configuration gives it now (a
    quota was added, removed or renamed since it was cached), with its bytes."""
    rule = rule_of(t, rec)
    if rec.quota == (rule.name if rule is not None else ""):
        return
    t.account(rec, -rec.stored)
    if rec.quota:
        t.txn.delete(fifo_key(rec.quota, rec.gseq), db=t.index.queues)
    join(t, oid, rec)
    t.account(rec, rec.stored)
    t.put(oid, rec)


def fits(t: Txn, oid: bytes, rec: Record, nbytes: int) -> bool:
    """Whether ``nbytes`` more of object ``oid`` (``rec``) fit its group, evicting that group's
    oldest unpinned entries (never ``oid`` itself) to make room. Runs in a write txn."""
    rule = rule_of(t, rec)
    if rule is None:
        return True
    name, limit = rule.name, rule.limit
    used = t.counter(used_key(name))
    if used + nbytes <= limit:
        return True
    if t.counter(pinned_key(name)) + nbytes <= limit:
        prefix = b"Q" + name.encode() + b"\x00"
        cur = t.txn.cursor(db=t.index.queues)
        pos, steps, cycled = prefix, 0, b""
        while used + nbytes > limit and steps < MAX_STEPS and cur.set_range(pos):
            qkey, victim = bytes(cur.key()), bytes(cur.value())
            if not qkey.startswith(prefix) or (cycled and qkey >= cycled):
                break  # the end, or round to the pinned entries this walk moved
            pos, steps = qkey + b"\x00", steps + 1
            held = t.get(victim)
            if held is None or held.quota != name or fifo_key(name, held.gseq) != qkey:
                t.txn.delete(qkey, db=t.index.queues)  # stale: the record went or moved
                continue
            if victim == oid:
                continue
            if held.pinned:  # to the tail, so the next fill does not walk it again
                t.txn.delete(qkey, db=t.index.queues)
                held.gseq = t.next_seq()
                moved = fifo_key(name, held.gseq)
                t.txn.put(moved, victim, db=t.index.queues)
                t.put(victim, held)
                cycled = cycled or moved
                continue
            t.remove(victim, held)
            t.batch.evicted_objects += 1
            t.batch.evicted_bytes += held.stored
            used = t.counter(used_key(name))
        if used + nbytes <= limit:
            return True
    _no_room.warning(
        "%s is full of pinned bytes (or smaller than the object): new fills of what it holds"
        " are served but not cached",
        name if name == LOCAL else f"cache.quotas.{name}",
    )
    return False


def rules_of(cfg: Config) -> list[QuotaRule]:
    """cache.quotas as rules over the names the index keeps (backend, remote bucket, key)."""
    found = []
    for name, limit in cfg.cache.quotas.items():
        m = cfg.buckets[name]
        found.append(QuotaRule(name, m.backend, m.bucket or name, m.prefix, limit))
    if cfg.cluster is not None and cfg.cluster.local_copy:
        found.append(QuotaRule(LOCAL, "", "", "", cfg.cluster.local_copy))
    return found


def usage(index: Index) -> dict[str, Any]:
    """Pinned bytes, and per quota its limit, the bytes it holds and the pinned ones among
    them (a short read transaction)."""
    names = [n for r in index.quotas for n in (used_key(r.name), pinned_key(r.name))]
    values = index.counters(b"pinned", *names)
    quotas = {
        r.name: {"limit": r.limit, "used": values[1 + 2 * i], "pinned": values[2 + 2 * i]}
        for i, r in enumerate(index.quotas)
    }
    return {"pinned_bytes": values[0], "quotas": quotas}


def room(index: Index, name: str) -> int | None:
    """The bytes bucket ``name`` may still add under its quota; None: it has none."""
    for r in index.quotas:
        if r.name == name:
            return max(0, r.limit - index.counters(used_key(name))[0])
    return None
