"""What one write transaction of the index keeps in Python: its counters (cache/counters.py),
read once and put back when it commits, and the pin rules of a bucket (pins.covered). What an
op sets is what the ops after it in the same transaction see, and what commits; an op that
fails takes its counts with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.cache import index as index_module
from proxy.cache import pins
from proxy.cache.counters import U64
from proxy.cache.index import Index, Txn
from tests.test_cache_index import (
    BIG_MAP,
    UNLIMITED,
    all_records,
    assert_totals_consistent,
    insert,
    oid,
)
from tests.test_pin_quota import _rec


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(tmp_path / "index", BIG_MAP, UNLIMITED)
    yield idx
    idx.close()


def committed(index: Index, name: bytes) -> int | None:
    """The counter as the index file holds it (None: never written)."""
    with index.env.begin(db=index.meta) as txn:
        raw = txn.get(name)
    return None if raw is None else U64.unpack(raw)[0]


def test_a_fence_is_seen_by_what_follows_it_in_its_transaction(index: Index) -> None:
    """A fill batched after an evict's fence commits nothing under it, though a fill before
    the fence in the same transaction read the fence mark already."""
    rec = _rec("b", "ev/key", 10)
    seen = index.write_mark()

    def op(t: Txn) -> tuple[bool, bool]:
        before = pins.fenced(t, rec, seen)  # reads the fence mark: kept for the transaction
        pins.fence(t, pins.Target("store", "b", "ev/"))
        return before, pins.fenced(t, rec, seen)

    assert index.run_sync(op) == (False, True)
    assert committed(index, b"fseq") == index.write_mark() == seen + 1
    assert index.run_sync(lambda t: pins.fenced(t, rec, seen))


def test_trimmed_write_marks_leave_their_floor(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past WRITTEN_LIMIT objects with a write mark, the oldest's mark goes and becomes the
    floor: a read that began before it may have missed a write of any trimmed object; seen
    in the same transaction as after it."""
    monkeypatch.setattr(index_module, "WRITTEN_LIMIT", 3)
    start = index.write_mark()

    def op(t: Txn) -> list[bool]:
        found = [t.written_since(oid(0), start)]  # no mark, no floor yet: reads the floor
        for n in range(5):
            t.mark_written(oid(n))
        found += [t.written_since(oid(0), start + 1), t.written_since(oid(0), start + 2)]
        return found + [t.written_since(oid(4), start + 4), t.written_since(oid(4), start + 5)]

    assert index.run_sync(op) == [False, True, False, True, False]
    assert committed(index, b"wfloor") == start + 2  # the marks of objects 0 and 1 went
    assert committed(index, b"wseq") == start + 5
    assert index.run_sync(lambda t: t.written_since(oid(1), start + 1))  # by the floor


def test_a_batch_commits_every_op_s_counts_once(index: Index) -> None:
    """Many fills in one transaction: the totals, the sequence and the era's accesses are
    written once, with every op's share in them."""
    index.run_sync(insert(oid("first"), 7))
    seq = committed(index, b"seq")
    assert seq is not None

    def many(t: Txn) -> None:
        for n in range(50):
            insert(oid(n), n)(t)
        assert committed(index, b"objects") == 1, "a counter was written before the commit"

    index.run_sync(many)
    assert index.totals() == (7 + sum(range(50)), 51)
    assert committed(index, b"seq") == seq + 50
    assert committed(index, b"in_era") == 51
    assert_totals_consistent(index)


async def test_a_failed_op_s_counts_go_with_it(index: Index) -> None:
    """An op that counts and then fails: its batch is committed op by op without it, and
    nothing it counted is in the totals."""
    index.start()
    gate = threading.Event()
    first = index.submit(lambda t: gate.wait(10))
    await asyncio.sleep(0.05)  # the writer waits inside the first transaction

    def bad(t: Txn) -> None:
        t.add(b"objects", 1000)
        t.add(b"bytes:S", 1000)
        raise ValueError("broken op")

    futures = [index.submit(insert(oid(1), 10)), index.submit(bad)]
    futures.append(index.submit(insert(oid(2), 20)))
    gate.set()
    await first
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert index.totals() == (30, 2)
    assert_totals_consistent(index)


def test_a_pin_rule_is_seen_by_the_fills_after_it_in_its_transaction(index: Index) -> None:
    """Fills batched with a pin and an unpin: those between the two are pinned, the ones
    before and after are not (the bucket's rules are read once, then forgotten at a change)."""
    target = pins.Target("store", "b", "p/")

    def op(t: Txn) -> None:
        for name, stored, change in (("a", 1, True), ("b", 10, False), ("c", 100, None)):
            rec = _rec("b", "p/" + name, stored)
            rec.inline = False
            t.insert(oid(name), rec)
            if change is True:
                pins.add_rule(t, target)
            elif change is False:
                assert pins.drop_rule(t, target)

    index.run_sync(op)
    held = all_records(index)
    assert [held[oid(name)].pinned for name in "abc"] == [False, True, False]
    assert index.counters(b"pinned") == [10]
    assert pins.rules(index) == []
