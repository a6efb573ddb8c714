"""S3-FIFO eviction (Yang et al., SOSP 2023), as a pure policy over two FIFO queues.

Why S3-FIFO: training epochs scan the whole dataset once per epoch. Objects enter a small
probationary queue (10% of capacity); one that is not read again before it reaches the head is
evicted at once, so a one-pass scan flushes only the small queue and never the main queue that
holds the re-read working set. Objects re-read while in the small queue move to the main queue,
which runs CLOCK-like (a read earns one more pass, up to 3). It needs no per-hit list moves, so
hits only bump a counter, which suits a multi-process LMDB index where hits must not write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Queue = Literal["S", "M"]
SMALL_FRACTION = 0.10
MAX_FREQ = 3


@dataclass(slots=True)
class Entry:
    id: bytes
    size: int
    freq: int
    pinned: bool = False


class Queues(Protocol):
    """The storage the policy walks: two FIFO queues of entries."""

    def head(self, queue: Queue) -> Entry | None: ...

    def pop_head(self, queue: Queue) -> None: ...

    def push_tail(self, queue: Queue, entry: Entry) -> None: ...

    def queue_bytes(self, queue: Queue) -> int: ...

    def evict(self, entry: Entry) -> None: ...


def insert_queue(remembered_in_ghost: bool) -> Queue:
    """New objects go to the small queue, unless evicted from it recently (then main)."""
    return "M" if remembered_in_ghost else "S"


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
