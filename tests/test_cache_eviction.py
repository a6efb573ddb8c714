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

from loadtest.cachesim import SimCache
from loadtest.epochs import SIZE, epochs, prefetched, ratios, shifting, zipf
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


class ModelCache(SimCache):
    """What proxy/cache/index.py does around the policy (loadtest/cachesim.py), with the
    test's view of it: a hit always counts (as a flush of hits does), what is held."""

    def insert(self, oid: bytes, size: int, *, pinned: bool = False) -> Queue:
        return self.fill(oid, size, pinned=pinned)

    def hit(self, oid: bytes) -> None:
        rec = self.recs.get(oid)
        if rec is not None:
            rec.freq = eviction.bump(rec.freq, 1)
            rec.count = eviction.counted(eviction.aged(rec.count, rec.era, self.era), 1)
            rec.era = self.era

    def held_ids(self) -> set[bytes]:
        return set(self.recs)

    def pinned_held(self) -> bool:
        return all(r.pinned for r in self.recs.values())


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
        assert pinned <= cache.held_ids(), "a pinned object was evicted"
        if not cache.pinned_held():
            assert cache.held() <= capacity, "over budget with evictable objects left"


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
        assert set(hot_ids) <= cache.held_ids(), f"the scan evicted a hot object at scan {n}"
    assert cache.held() <= capacity


def test_an_object_back_after_eviction_enters_main_if_it_outcounts_the_victim() -> None:
    """Admission: once the cache is full, an object back after its eviction (a ghost hit)
    enters main only if its use count beats the next victim's; a tie keeps the resident."""
    cache = ModelCache(1000)
    cache.insert(b"once", 100)
    n = 0
    while b"once" in cache.held_ids():
        cache.insert(b"filler%d" % n, 100)
        n += 1
    held = cache.held_ids()
    assert cache.insert(b"once", 100) == "S"
    assert cache.held_ids() == held, "refused, yet kept or displacing a resident"
    cache.ghost[b"once"] = (3, cache.era)  # used more than any resident
    assert cache.insert(b"once", 100) == "M"


def test_place_compares_with_the_victim() -> None:
    small = [("S", Entry(id=b"s%d" % i, size=10, freq=0, count=2)) for i in range(5)]
    queues = MemQueues([*small, ("M", Entry(id=b"m", size=10, freq=0, count=5))])  # type: ignore[list-item]
    assert eviction.place(queues, 100, None, full=True) == eviction.Placement("S", False, 1)
    assert eviction.place(queues, 100, 1, full=False) == eviction.Placement("M", False, 2)
    # main's head is the victim: a tie keeps it
    assert eviction.place(queues, 100, 5, full=True) == eviction.Placement("S", True, 6)
    assert eviction.place(queues, 100, 6, full=True) == eviction.Placement("M", False, 7)
    assert eviction.place(queues, 100, 6, full=True, uses=0).count == 6
    # main empty: the small queue's head
    queues = MemQueues(small)  # type: ignore[arg-type]
    assert eviction.place(queues, 100, 2, full=True).at_head
    assert eviction.place(queues, 100, 3, full=True).queue == "M"
    # a pinned head is no victim
    queues = MemQueues([("M", Entry(id=b"p", size=10, freq=0, count=9, pinned=True))])
    assert eviction.place(queues, 100, 0, full=True).queue == "M"


def test_shuffled_epochs_over_twice_the_cache() -> None:
    """The simulation of loadtest/epochs.py, small: with admission about half the reads hit
    from the second epoch on; plain S3-FIFO (the policy before) thrashes."""
    objects = 2000
    workload = epochs(objects, 4)
    admitted = ratios("admission", objects * SIZE // 2, workload, seed=3)
    plain = ratios("s3fifo", objects * SIZE // 2, workload, seed=3)
    assert min(admitted[1:]) > 0.45, admitted
    assert min(plain[1:]) < 0.3, plain  # what admission is for


def test_prefetched_epochs_over_twice_the_cache_fetch_nothing_twice() -> None:
    """The simulation of loadtest/epochs.py's prefetched epochs, small: a prefetch job's fill
    that admission refuses is kept until its read and goes first after it, and that first
    read is no read again, so each epoch fetches each object at most once and nearly what fits
    beside the job's lead (7/8 of the cache: ~44% of the reads) stays from epoch to epoch. As
    a read's fills (until 2026-12-01), an object back after its eviction was refused, gone
    before its read, and fetched again by it: more fetches per epoch than objects."""
    objects = 2000
    now = prefetched(objects * SIZE // 2, objects, 4, seed=3)
    before = prefetched(objects * SIZE // 2, objects, 4, seed=3, ahead_is_use=True)
    assert min(now) >= 0 and min(now[1:]) > 0.4, now
    assert max(before) < 0, before  # what the change is for


def test_a_new_working_set_that_fits_settles_in() -> None:
    held = 1000
    workload = shifting(int(held * 0.8), 10)
    got = ratios("admission", held * SIZE, workload, seed=5)
    assert got[5] == 0 and got[5] < got[6] < got[7] < got[8] < got[9], got
    assert got[9] > 0.9, got


def test_skewed_reads_do_as_well_as_before() -> None:
    workload = zipf(4000, 4, 4000)
    admitted = ratios("admission", 2000 * SIZE, workload, seed=9)
    plain = ratios("s3fifo", 2000 * SIZE, workload, seed=9)
    assert admitted[-1] >= plain[-1] - 0.02, (admitted, plain)  # within two points
