"""What a job fetches ahead of its reads (a prefetch's, a warm-up's), in a real CacheStore over
its LMDB index: committed unread; when admission refuses it, kept until the read it was
fetched for and first in line to go once that read came (store.unread, Txn.insert)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.cache.record import UNREAD, UNREAD_REFUSED, Record
from proxy.cache.store import CacheStore, record_for
from proxy.config import CacheConfig
from proxy.model import ObjectMeta

SIZE = 1000
DATA = b"x" * SIZE


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[CacheStore]:
    store = CacheStore(
        CacheConfig(dir=tmp_path / "cache", max_size=10 * SIZE, index_map_size=1 << 26)
    )
    await store.open()
    yield store
    await store.close()


def _oid(name: str) -> bytes:
    return name.encode().rjust(16, b"\0")


async def _commit(cache: CacheStore, name: str, *, ahead: bool = False) -> Record | None:
    meta = ObjectMeta(size=SIZE, etag=f'"{name}"', last_modified=0.0)
    rec = record_for(meta, "store", "b", name)
    ok = await cache.commit_inline(_oid(name), rec, DATA, seen=cache.write_mark(), ahead=ahead)
    assert ok
    return cache.lookup(_oid(name))[0]


async def _settled(cache: CacheStore) -> None:
    """Every op queued before this one has committed (ops commit in order)."""
    await cache._idx.submit(lambda t: None)


async def test_a_refused_fill_ahead_waits_for_its_read_then_goes_first(
    cache: CacheStore,
) -> None:
    await _commit(cache, "once")
    n = 0
    while cache.lookup(_oid("once"))[0] is not None:  # the cache fills and evicts it
        await _commit(cache, f"k{n}")
        n += 1
    assert await _commit(cache, "back") is not None
    admitted = cache.lookup(_oid("back"))[0]
    assert admitted is not None and admitted.atime != UNREAD_REFUSED  # a read's fill

    kept = await _commit(cache, "once", ahead=True)  # back, used no more than the victim
    assert kept is not None and kept.atime == UNREAD_REFUSED and kept.queue == "S"

    cache.note_hit(_oid("once"), kept, time.time())  # the read it was kept for
    await _settled(cache)
    read = cache.lookup(_oid("once"))[0]
    assert read is not None and read.atime > 0 and read.freq == 0
    # Room for new objects: the read one goes first, before "back", which sits just ahead of
    # it in the small queue (where it waited at the tail for its read).
    count = cache.totals()[1]
    while cache.totals()[1] >= count:
        count = cache.totals()[1]
        n += 1
        await _commit(cache, f"k{n}")
    assert cache.lookup(_oid("once"))[0] is None, "read, it did not go first"
    assert cache.lookup(_oid("back"))[0] is not None


async def test_an_admitted_fill_ahead_is_unread_until_its_first_read(cache: CacheStore) -> None:
    rec = await _commit(cache, "ahead", ahead=True)
    assert rec is not None and rec.atime == UNREAD
    cache.note_hit(_oid("ahead"), rec, time.time())
    await cache._flush_hits()
    read = cache.lookup(_oid("ahead"))[0]
    assert read is not None and read.atime > 0 and read.freq == 0  # the use its fill counted
    cache.note_hit(_oid("ahead"), read, time.time())
    await cache._flush_hits()
    again = cache.lookup(_oid("ahead"))[0]
    assert again is not None and again.freq == 1
