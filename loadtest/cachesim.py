"""An in-memory model of the cache index around the eviction policy (proxy/cache/eviction.py),
fast enough to replay long traces: what proxy/cache/index.py does on a fill (ghost set, use
counts, eras, admission), a hit (noted while the entry's frequency is 0 or its count is from an
earlier era, as proxy/cache/store.py's note_hit does) and a commit over budget (evict to the
low-water mark; a refused object first).

``policy="s3fifo"`` is the policy before admission: a ghost hit always enters main, and only
objects evicted from the small queue are remembered. ``prefetch`` is a job's fill ahead of the
reads: it counts the use its first read will be, and that read is no read again; one that
admission refuses is kept until that read (its read would only fetch it again), then goes
first (``ahead_is_use=True``: a fill like a read's, as until 2026-12-01). Used by
loadtest/epochs.py and the tests.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Literal

from proxy.cache import eviction
from proxy.cache.eviction import Entry, Queue

Policy = Literal["s3fifo", "admission"]
LOW_WATER = 0.95  # as proxy/cache/budget.py
GHOST_LIMIT = 200_000


class _Rec:
    __slots__ = ("count", "era", "freq", "pinned", "queue", "refused", "seq", "size", "unread")

    def __init__(self, queue: Queue, seq: int, size: int, count: int, era: int) -> None:
        self.queue, self.seq, self.size = queue, seq, size
        self.count, self.era, self.freq, self.pinned = count, era, 0, False
        self.unread = False  # a job fetched it ahead and no read came yet
        self.refused = False  # admission refused it: its read sends it first in line to go


class SimCache:
    """eviction.Queues in memory, with the index's bookkeeping around the policy."""

    def __init__(
        self, capacity: int, policy: Policy = "admission", ahead_is_use: bool = False
    ) -> None:
        self.capacity = capacity
        self.ahead_is_use = ahead_is_use
        self.low = int(capacity * LOW_WATER)
        self.policy = policy
        self.queues: dict[Queue, deque[tuple[bytes, int]]] = {"S": deque(), "M": deque()}
        self.bytes: dict[Queue, int] = {"S": 0, "M": 0}
        self.recs: dict[bytes, _Rec] = {}
        self.ghost: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # oid -> (count, era)
        self.seq = 0
        self.era = 0
        self.in_era = 0

    # -- eviction.Queues -------------------------------------------------------------------
    def head(self, queue: Queue) -> Entry | None:
        q = self.queues[queue]
        while q:
            oid, seq = q[0]
            rec = self.recs.get(oid)
            if rec is not None and rec.queue == queue and rec.seq == seq:
                count = eviction.aged(rec.count, rec.era, self.era)
                return Entry(id=oid, size=rec.size, freq=rec.freq, pinned=rec.pinned, count=count)
            q.popleft()  # stale: moved or gone
        return None

    def pop_head(self, queue: Queue) -> None:
        if self.head(queue) is not None:
            oid, _ = self.queues[queue].popleft()
            self.bytes[queue] -= self.recs[oid].size

    def push_tail(self, queue: Queue, entry: Entry) -> None:
        rec = self.recs[entry.id]
        self.seq += 1
        rec.queue, rec.seq, rec.freq = queue, self.seq, entry.freq
        self.queues[queue].append((entry.id, self.seq))
        self.bytes[queue] += rec.size

    def queue_bytes(self, queue: Queue) -> int:
        return self.bytes[queue]

    def evict(self, entry: Entry) -> None:
        rec = self.recs.pop(entry.id)
        if self.policy == "admission" or rec.queue == "S":
            self.ghost[entry.id] = (eviction.aged(rec.count, rec.era, self.era), self.era)
            if len(self.ghost) > GHOST_LIMIT:
                self.ghost.popitem(last=False)

    # -- what the index does -----------------------------------------------------------------
    def held(self) -> int:
        return self.bytes["S"] + self.bytes["M"]

    def _tick(self, uses: int) -> None:
        self.in_era += uses
        if self.in_era >= eviction.era_length(len(self.recs)):
            self.era, self.in_era = self.era + 1, 0

    def read(self, oid: bytes, size: int, *, pinned: bool = False) -> bool:
        """One GET: True on a hit; a miss fills the object."""
        rec = self.recs.get(oid)
        if rec is not None and rec.unread:  # its first use, counted at its fill: no read again
            rec.unread = False
            if rec.refused and rec.queue == "S":  # kept only for this read: next to go
                q = self.queues["S"]
                self.head("S")
                rec.seq = (q[0][1] if q else self.seq) - 1
                q.appendleft((oid, rec.seq))
            return True
        if rec is not None:
            # note_hit writes only then (and, with admission, once an era to refresh the count)
            if rec.freq == 0 or (self.policy == "admission" and rec.era != self.era):
                self._tick(1)
                rec.freq = eviction.bump(rec.freq, 1)
                rec.count = eviction.counted(eviction.aged(rec.count, rec.era, self.era), 1)
                rec.era = self.era
            return True
        self.fill(oid, size, pinned=pinned)
        return False

    def prefetch(self, oid: bytes, size: int) -> bool:
        """A job's fetch ahead of the reads: True when it had to fill the object (a cached
        one costs nothing and is not touched). With ``ahead_is_use``, a fill like a read's."""
        if oid in self.recs:
            return False
        self.fill(oid, size, ahead=not self.ahead_is_use)
        return True

    def fill(self, oid: bytes, size: int, *, pinned: bool = False, ahead: bool = False) -> Queue:
        self._tick(1)
        ghost = self.ghost.pop(oid, None)
        remembered = eviction.aged(*ghost, self.era) if ghost is not None else None
        refused = False
        if self.policy == "s3fifo":
            where = eviction.Placement("M" if ghost is not None else "S", False, 0)
        else:
            full = self.held() + size > self.low
            where = eviction.place(self, self.capacity, remembered, full=full)
            refused = ahead and where.at_head
            if refused:  # a job's fill ahead of its read is kept until that read
                where = eviction.Placement("S", False, where.count)
        rec = _Rec(where.queue, 0, size, where.count, self.era)
        rec.refused = refused
        rec.pinned, rec.unread = pinned, ahead
        q = self.queues[where.queue]
        self.head(where.queue)  # drop stale entries before the head
        if where.at_head and q:
            rec.seq = q[0][1] - 1
            q.appendleft((oid, rec.seq))
        else:
            self.seq += 1
            rec.seq = self.seq
            q.append((oid, rec.seq))
        self.recs[oid] = rec
        self.bytes[where.queue] += size
        if where.at_head and self.held() > self.low:  # refused: evicted first
            self.pop_head(where.queue)
            self.evict(Entry(id=oid, size=size, freq=0))
        if self.held() > self.capacity:
            eviction.evict_until(self, self.capacity, self.low)
        return where.queue
