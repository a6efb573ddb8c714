"""S3-FIFO eviction (Yang et al., SOSP 2023), as a pure policy over two FIFO queues.

Why S3-FIFO: training epochs scan the whole dataset once per epoch. Objects enter a small
probationary queue (10% of capacity); one that is not read again before it reaches the head is
evicted at once, so a one-pass scan flushes only the small queue and never the main queue that
holds the re-read working set. Objects re-read while in the small queue move to the main queue,
which runs CLOCK-like (a read earns one more pass, up to 3). It needs no per-hit list moves, so
hits only bump a counter, which suits a multi-process LMDB index where hits must not write.

Admission (TinyLFU-like, Einziger et al. 2017): plain S3-FIFO lets every object that comes back
after an eviction (a ghost hit) into the main queue, where it displaces a resident. Epochs that
scan a dataset larger than the cache are all ghost hits, so the cache keeps what the last
stretch of the scan read and hits fall where the next epoch reads what just left: with a cache
of half the dataset, 17%, 42%, 15%, 21% hits in epochs 2-5 (``loadtest/epochs.py``). So each
object carries a use count (fills and hits, capped at COUNT_MAX; a reader notes a hit once an
era at most) that halves every era (ERA_LENGTH accesses per object held), kept in the ghost
set after it leaves. Once the cache is full, a returning object enters main only if its count
before this access beats that of main's head (the next victim there; ties keep the
resident); else it is refused: evicted again at the end of its commit, its count raised for
this access. The cache then keeps what fits: 50%, 50%, 48%, 48% hits in epochs 2-5.
Trade-off: a returning object must out-count a resident, so a working set made of objects the
cache evicted recently settles in over a few passes where S3-FIFO took one (a set of 80% of
the cache, read in passes after another: 13%, 32%, 64%, 95% hits on passes 2-5 of the new set
against 13%, 100%, 100%, 100%); objects never seen (or forgotten by the ghost set) enter as
before. Skewed re-reads lose a point (Zipf s=1 over 4x the cache's objects: 81% against 82%).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Queue = Literal["S", "M"]
SMALL_FRACTION = 0.10
MAX_FREQ = 3
COUNT_MAX = 15  # the use count's cap
ERA_LENGTH = 1  # an era lasts this many accesses per object held; use counts halve each era


@dataclass(slots=True)
class Entry:
    id: bytes
    size: int
    freq: int
    pinned: bool = False
    count: int = 0  # the use count, aged to the current era (what admission compares)


class Queues(Protocol):
    """The storage the policy walks: two FIFO queues of entries."""

    def head(self, queue: Queue) -> Entry | None: ...

    def pop_head(self, queue: Queue) -> None: ...

    def push_tail(self, queue: Queue, entry: Entry) -> None: ...

    def queue_bytes(self, queue: Queue) -> int: ...

    def evict(self, entry: Entry) -> None: ...


@dataclass(slots=True, frozen=True)
class Placement:
    """Where a new entry goes: ``queue``, at its head (next to be evicted) or its tail, with
    the use count it starts with."""

    queue: Queue
    at_head: bool
    count: int


def aged(count: int, era: int, now: int) -> int:
    """A use count last updated in ``era``, halved once for every era since."""
    return count >> min(32, max(0, now - era))


def counted(count: int, uses: int) -> int:
    return min(COUNT_MAX, count + uses)


def era_length(objects: int) -> int:
    """Accesses per era, with ``objects`` held."""
    return int(ERA_LENGTH * max(64, objects))


def place(
    queues: Queues, capacity: int, remembered: int | None, *, full: bool, uses: int = 1
) -> Placement:
    """Where a new object goes. ``remembered``: its use count from the ghost set (aged), None
    if not remembered; ``full``: whether the cache is at its low-water mark (admitting it
    means evicting something); ``uses``: what this fill adds to the count (0 for a fill that
    continues one already counted). New objects enter the small queue; remembered ones enter
    main while there is room, and once full only if they out-count the next victim."""
    count = counted(remembered or 0, uses)
    if remembered is None:
        return Placement("S", False, count)
    if not full:
        return Placement("M", False, count)
    victim = queues.head(victim_queue(queues, capacity))
    score = -1 if victim is None or victim.pinned else victim.count
    return Placement("M", False, count) if remembered > score else Placement("S", True, count)


def victim_queue(queues: Queues, capacity: int) -> Queue:
    """Whose head a returning object has to out-count: main's, which admission guards (the
    small queue's while main is empty)."""
    return "M" if queues.head("M") is not None else "S"


def evict_until(queues: Queues, capacity: int, target: int, max_steps: int = 100_000) -> int:
    """Evict until both queues hold at most ``target`` bytes; returns the bytes freed.

    ``capacity`` sizes the small queue. Pinned entries are never evicted (they are cycled).
    """
    freed = 0
    small_cap = int(capacity * SMALL_FRACTION)
    steps = 0
    # Main-queue entries cycled with nothing changed (pinned, freq 0) since main last changed:
    # meeting one again means main holds nothing evictable, so the small queue has to give.
    stalled: set[bytes] = set()
    while queues.queue_bytes("S") + queues.queue_bytes("M") > target and steps < max_steps:
        steps += 1
        main_head = queues.head("M")
        if main_head is not None and main_head.id in stalled:
            main_head = None
        if queues.queue_bytes("S") > small_cap or main_head is None:
            entry = queues.head("S")
            if entry is None:
                break
            queues.pop_head("S")
            if entry.freq > 0 or entry.pinned:
                entry.freq = 0
                queues.push_tail("M", entry)
                if not entry.pinned:
                    stalled.clear()  # main now holds an evictable entry
            else:
                queues.evict(entry)
                freed += entry.size
        else:
            entry = main_head
            queues.pop_head("M")
            if entry.freq > 0 or entry.pinned:
                if entry.freq == 0:
                    stalled.add(entry.id)
                else:
                    stalled.clear()
                entry.freq = max(0, entry.freq - 1)
                queues.push_tail("M", entry)
            else:
                queues.evict(entry)
                freed += entry.size
                stalled.clear()
    return freed


def bump(freq: int, hits: int) -> int:
    return min(MAX_FREQ, freq + hits)
