"""What a write transaction of the index does before it commits to keep the cache within its
budget: max_size, the reserve on the volume (cache.min_free), and the room the index file may
span. Blocking (statvfs): the index's writer thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lmdb

from proxy.cache import eviction
from proxy.cache.lmdb_queues import LmdbQueues

if TYPE_CHECKING:
    from proxy.cache.index import Txn

LOW_WATER = 0.95  # over budget, evict down to this share of it
# LMDB needs free pages even to delete (copy-on-write), so a full map could never be emptied:
# past the high-water mark of pages in use a commit evicts ahead, down to about the low one.
MAP_HIGH_WATER = 0.80
MAP_LOW_WATER = 0.70


def keep(t: Txn) -> None:
    """Keep the budget: max_size; the reserve on the volume (evicting chunk files, which give
    their room back at once); and the map's high-water mark, where the map is what the index
    file may span: map_size, or less where the volume ends first."""
    index = t.index
    low = int(index.max_bytes * LOW_WATER)
    for oid in t.batch.refused:  # first in line: they go before anything admitted
        rec = t.get(oid)
        if rec is not None and not rec.pinned and held(t) > low:
            t.remove(oid, rec, to_ghost=True)
            t.batch.evicted_objects += 1
            t.batch.evicted_bytes += rec.stored
    if held(t) > index.max_bytes:
        eviction.evict_until(LmdbQueues(t), index.max_bytes, low)
    map_limit = index.map_size
    used, span = pages(t, *index.trees)
    if index.volume is not None:
        spare = index.volume.spare() - (index.tail.short(span) if index.tail is not None else 0)
        if spare < 0:
            free_files(t, -spare + int(held(t) * (1 - LOW_WATER)))
            used, span = pages(t, *index.trees)
        # the file never shrinks: short of room, it stops growing
        room = index.tail.room(span, spare) if index.tail is not None else max(0, spare)
        map_limit = min(map_limit, span + room)
    if used > map_limit * MAP_HIGH_WATER:
        now = held(t)
        target = int(now * max(0, map_limit) * MAP_LOW_WATER / used)
        eviction.evict_until(LmdbQueues(t), now, target)


def free_files(t: Txn, nbytes: int) -> None:
    """Evict in S3-FIFO order until chunk files of ``nbytes`` go with this transaction
    (values held inside LMDB give no room back to the volume), or none are left."""
    queues = LmdbQueues(t)
    while t.batch.file_bytes < nbytes:
        now = held(t)
        if now <= pages(t, t.index.data)[0]:
            return  # what is left is (about) all inline values
        if not eviction.evict_until(queues, now, now - (nbytes - t.batch.file_bytes)):
            return  # all pinned


def held(t: Txn) -> int:
    """The bytes the cache holds, as ``t`` sees."""
    return t.counter(b"bytes:S") + t.counter(b"bytes:M")


def pages(t: Txn, *trees: Any) -> tuple[int, int]:
    """(bytes of the pages ``trees`` use, bytes the index file spans) as ``t`` sees."""
    txn: lmdb.Transaction = t.txn
    count = 0
    for tree in trees:
        st = txn.stat(tree)
        count += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
    return count * t.index.psize, t.index.map_usage()[0]
