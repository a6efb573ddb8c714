"""The S3-FIFO queues (cache/eviction.py's Queues) kept in the index's ``queues`` tree, over
one write transaction: a key is the queue's letter and the record's sequence number, its value
the object id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.cache import eviction
from proxy.cache.counters import U64
from proxy.cache.record import Record

if TYPE_CHECKING:
    from proxy.cache.index import Txn


class LmdbQueues:
    """eviction.Queues over one write transaction."""

    def __init__(self, t: Txn) -> None:
        self.t = t
        self._heads: dict[str, tuple[bytes, Record] | None] = {}

    def _head(self, q: eviction.Queue) -> tuple[bytes, bytes, Record] | None:
        cur = self.t.txn.cursor(db=self.t.index.queues)
        prefix = q.encode()
        while cur.set_range(prefix) and cur.key()[:1] == prefix:
            qkey, oid = bytes(cur.key()), bytes(cur.value())
            rec = self.t.get(oid)
            if rec is not None and rec.queue == q and U64.pack(rec.qseq) == qkey[1:]:
                return qkey, oid, rec
            cur.delete()  # stale queue entry: the record moved or went
        return None

    def head(self, queue: eviction.Queue) -> eviction.Entry | None:
        found = self._head(queue)
        if found is None:
            return None
        _, oid, rec = found
        uses = eviction.aged(*self.t.uses_of(oid, rec), self.t.counter(b"era"))
        return eviction.Entry(id=oid, size=rec.stored, freq=rec.freq, pinned=rec.pinned, count=uses)

    def pop_head(self, queue: eviction.Queue) -> None:
        found = self._head(queue)
        if found is not None:
            qkey, _, rec = found
            self.t.txn.delete(qkey, db=self.t.index.queues)
            self.t.add(b"bytes:" + queue.encode(), -rec.stored)

    def push_tail(self, queue: eviction.Queue, entry: eviction.Entry) -> None:
        rec = self.t.get(entry.id)
        if rec is None:
            return
        rec.queue = queue
        rec.qseq = self.t.next_seq()
        rec.freq = entry.freq
        self.t.txn.put(queue.encode() + U64.pack(rec.qseq), entry.id, db=self.t.index.queues)
        self.t.add(b"bytes:" + queue.encode(), rec.stored)
        self.t.put(entry.id, rec)

    def queue_bytes(self, queue: eviction.Queue) -> int:
        return self.t.counter(b"bytes:" + queue.encode())

    def evict(self, entry: eviction.Entry) -> None:
        rec = self.t.get(entry.id)
        if rec is None:
            return
        # pop_head already took its bytes off the queue total; remove() takes them again
        self.t.add(b"bytes:" + rec.queue.encode(), rec.stored)
        self.t.remove(entry.id, rec, to_ghost=True)  # remembered with its use count
        self.t.batch.evicted_objects += 1
        self.t.batch.evicted_bytes += rec.stored
