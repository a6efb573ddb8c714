"""The S3-FIFO policy (proxy/cache/eviction.py) on its own, over in-memory queues.

``evict_until`` never evicts a pinned entry, ends at or under its target unless everything
left is pinned, and accounts for every byte it frees. Around it, a model of what the index
does (insert, hit, evict once over capacity, remember what left the small queue): the cache
stays within its byte budget, and a one-pass scan of new objects does not evict objects that
were read again. The same over the real LMDB index: tests/test_cache_index.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.cache import eviction
from proxy.cache.eviction import Entry, Queue


class MemQueues:
    """eviction.Queues in memory. Like the LMDB one, head() hands out a fresh Entry."""

    def __init__(self, entries: list[tuple[Queue, Entry]]) -> None:
        self.queues: dict[Queue, deque[Entry]] = {"S": deque(), "M": deque()}
        for q, e in entries:
            self.queues[q].append(e)
        self.evicted: list[Entry] = []
        self.evicted_from: list[Queue] = []
        self.popped: Entry | None = None
        self.popped_from: Queue = "S"

    def head(self, queue: Queue) -> Entry | None:
        q = self.queues[queue]
        return replace(q[0]) if q else None

    def pop_head(self, queue: Queue) -> None:
        assert self.popped is None, "popped twice without push or evict"
        self.popped = self.queues[queue].popleft()
        self.popped_from = queue

    def push_tail(self, queue: Queue, entry: Entry) -> None:
        assert self.popped is not None and self.popped.id == entry.id
        assert entry.size == self.popped.size and entry.pinned == self.popped.pinned
        self.popped = None
        self.queues[queue].append(replace(entry))

    def queue_bytes(self, queue: Queue) -> int:
        return sum(e.size for e in self.queues[queue])

    def evict(self, entry: Entry) -> None:
        assert self.popped is not None and self.popped.id == entry.id, "evicted a non-head"
        self.popped = None
        self.evicted.append(entry)
        self.evicted_from.append(self.popped_from)

    def total(self) -> int:
        return self.queue_bytes("S") + self.queue_bytes("M")

    def remaining(self) -> list[Entry]:
        return [*self.queues["S"], *self.queues["M"]]


entries_st = st.lists(
    st.tuples(
        st.sampled_from(["S", "M"]),
        st.integers(1, 1000),  # size
        st.integers(0, eviction.MAX_FREQ),
        st.booleans(),  # pinned
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(entries=entries_st, cap_frac=st.floats(0.0, 1.5), target_frac=st.floats(0.0, 1.0))
def test_evict_until_properties(
    entries: list[tuple[Queue, int, int, bool]], cap_frac: float, target_frac: float
) -> None:
    items = [
        (q, Entry(id=n.to_bytes(4, "big"), size=size, freq=freq, pinned=pinned))
        for n, (q, size, freq, pinned) in enumerate(entries)
    ]
    queues = MemQueues(items)
    before = queues.total()
    capacity = max(1, int(before * cap_frac))
    target = int(capacity * target_frac)

    freed = eviction.evict_until(queues, capacity, target)

    assert queues.popped is None, "an entry was popped and neither pushed back nor evicted"
    evicted_ids = [e.id for e in queues.evicted]
    remaining_ids = [e.id for e in queues.remaining()]
    assert len(set(evicted_ids)) == len(evicted_ids)
    assert sorted(evicted_ids + remaining_ids) == sorted(e.id for _, e in items)
    assert not any(e.pinned for e in queues.evicted), "evicted a pinned entry"
    assert freed == sum(e.size for e in queues.evicted)
    assert queues.total() == before - freed
    if not all(e.pinned for e in queues.remaining()):
        assert queues.total() <= target, "stopped above target with evictable entries left"


def test_evict_until_scan_keeps_reread_entries() -> None:
    """A re-read entry at the small queue's head moves to main; unread ones are evicted."""
    hot = [("S", Entry(id=b"hot%d" % i, size=10, freq=1)) for i in range(3)]
    cold = [("S", Entry(id=b"cold%d" % i, size=10, freq=0)) for i in range(20)]
    queues = MemQueues([*hot, *cold])  # type: ignore[list-item]
    eviction.evict_until(queues, capacity=100, target=95)
    assert {e.id for e in queues.queues["M"]} == {b"hot0", b"hot1", b"hot2"}
    assert all(e.id.startswith(b"cold") for e in queues.evicted)
    assert queues.total() <= 95


# -- a cache around the policy, as the index runs it -------------------------------------------


class ModelCache:
    """What proxy/cache/index.py does around the policy: a new object enters the small queue
    (main when it left the small queue recently: a ghost hit), a hit bumps its frequency, and
    a write that takes the cache over capacity evicts down to the low-water mark."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.low_water = int(capacity * 0.95)
        self.queues = MemQueues([])
        self.ghosts: set[bytes] = set()

    def insert(self, oid: bytes, size: int, *, pinned: bool = False) -> Queue:
        queue = eviction.insert_queue(oid in self.ghosts)
        self.ghosts.discard(oid)
        self.queues.queues[queue].append(Entry(id=oid, size=size, freq=0, pinned=pinned))
        if self.queues.total() > self.capacity:
            start = len(self.queues.evicted)
            eviction.evict_until(self.queues, self.capacity, self.low_water)
            for entry, source in zip(
                self.queues.evicted[start:], self.queues.evicted_from[start:], strict=True
            ):
                if source == "S":
                    self.ghosts.add(entry.id)
        return queue

    def hit(self, oid: bytes) -> None:
        for entry in self.queues.remaining():
            if entry.id == oid:
                entry.freq = eviction.bump(entry.freq, 1)

    def held(self) -> set[bytes]:
        return {e.id for e in self.queues.remaining()}


ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(1, 400), st.booleans()),
        st.tuples(st.just("hit"), st.integers(0, 60), st.just(False)),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops_st, capacity=st.integers(100, 3000), pin_rate=st.integers(0, 10))
def test_cache_stays_within_budget(
    ops: list[tuple[str, int, bool]], capacity: int, pin_rate: int
) -> None:
    cache = ModelCache(capacity)
    inserted: list[bytes] = []
    pinned: set[bytes] = set()
    for kind, n, flag in ops:
        if kind == "insert":
            oid = len(inserted).to_bytes(4, "big")
            pin = flag and pin_rate > 0 and len(inserted) % pin_rate == 0
            cache.insert(oid, n, pinned=pin)
            inserted.append(oid)
            if pin:
                pinned.add(oid)
        elif inserted:
            cache.hit(inserted[n % len(inserted)])
        assert pinned <= cache.held(), "a pinned object was evicted"
        if not all(e.pinned for e in cache.queues.remaining()):
            assert cache.queues.total() <= capacity, "over budget with evictable objects left"


@settings(max_examples=300, deadline=None)
@given(
    hot=st.lists(st.integers(1, 200), min_size=1, max_size=10),
    scan=st.lists(st.integers(1, 400), min_size=1, max_size=80),
    capacity=st.integers(200, 4000),
)
def test_one_pass_scan_keeps_objects_read_twice(
    hot: list[int], scan: list[int], capacity: int
) -> None:
    """Objects read again after their fill are promoted to main when they reach the small
    queue's head; a scan of objects read once only ever flushes the small queue, so a working
    set that fits beside it (in the low-water mark, less the small queue) stays whole."""
    assume(sum(hot) + int(capacity * eviction.SMALL_FRACTION) <= int(capacity * 0.95))
    cache = ModelCache(capacity)
    hot_ids = [b"hot%d" % n for n in range(len(hot))]
    for oid, size in zip(hot_ids, hot, strict=True):
        cache.insert(oid, size)
        cache.hit(oid)  # the second read
    for n, size in enumerate(scan):
        cache.insert(b"scan%d" % n, size)
        assert set(hot_ids) <= cache.held(), f"the scan evicted a hot object at scan {n}"
    assert cache.queues.total() <= capacity


def test_an_object_back_soon_after_eviction_goes_to_main() -> None:
    """A ghost hit: an object evicted from the small queue and filled again enters main."""
    cache = ModelCache(1000)
    assert cache.insert(b"first", 100) == "S"
    n = 0
    while b"first" in cache.held():
        cache.insert(b"filler%d" % n, 100)
        n += 1
    assert cache.insert(b"first", 100) == "M"
    assert cache.insert(b"new", 100) == "S"
