"""The LMDB index in-process (proxy/cache/index.py): records, inline values, the writer
thread's batches, a full map, and S3-FIFO eviction over the real queues."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from proxy import errors
from proxy.cache import index as index_module
from proxy.cache.batch import Batch
from proxy.cache.index import Index, Txn
from proxy.cache.record import UNREAD_REFUSED, Record
from tests.proxyproc import REPO_ROOT

MIB = 1024 * 1024
BIG_MAP = 64 * MIB
UNLIMITED = 1 << 50


def oid(n: int | str) -> bytes:
    return str(n).encode().rjust(16, b"\0")


def record(stored: int = 0, *, pinned: bool = False) -> Record:
    """A record whose entry holds ``stored`` bytes."""
    return Record(
        key="k",
        backend="store",
        bucket="b",
        etag="e1",
        size=stored,
        mtime=0.0,
        ctype="application/octet-stream",
        validated=0.0,
        gen="g",
        stored=stored,
        pinned=pinned,
    )


def insert(
    key: bytes, stored: int, *, data: bytes | None = None, pinned: bool = False, ahead: bool = False
) -> Callable[[Txn], Record]:
    """An op that adds a record holding ``stored`` bytes (inline ``data`` when given; a job's
    fill ahead of its read with ``ahead``)."""

    def op(t: Txn) -> Record:
        rec = record(stored, pinned=pinned)
        if data is not None:
            rec.inline = True
            t.txn.put(key, data, db=t.index.data)
        t.insert(key, rec, ahead)
        return rec

    return op


def remove(key: bytes) -> Callable[[Txn], None]:
    def op(t: Txn) -> None:
        rec = t.get(key)
        if rec is not None:
            t.remove(key, rec)

    return op


def hit(key: bytes) -> Callable[[Txn], None]:
    """What the cache's hit flusher does for one read."""

    def op(t: Txn) -> None:
        rec = t.get(key)
        if rec is not None:
            t.count_hits(key, rec, 1)
            t.put(key, rec)

    return op


def all_records(index: Index) -> dict[bytes, Record]:
    with index.env.begin(db=index.objects) as txn:
        return {bytes(k): Record.loads(v) for k, v in txn.cursor()}


def assert_totals_consistent(index: Index) -> None:
    recs = all_records(index)
    assert index.totals() == (sum(r.stored for r in recs.values()), len(recs))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(tmp_path / "index", BIG_MAP, UNLIMITED)
    yield idx
    idx.close()


# -- records and inline values (one transaction each, on this thread) -----------------------


def test_put_get_remove(index: Index) -> None:
    assert index.get(oid(1)) is None
    index.run_sync(insert(oid(1), 500))
    index.run_sync(insert(oid(2), 700))
    got = index.get(oid(1))
    assert got is not None and got.stored == 500 and got.queue == "S" and got.qseq > 0
    assert index.get_with_data(oid(2))[1] is None  # not inline: no value
    assert index.totals() == (1200, 2)
    index.run_sync(remove(oid(1)))
    assert index.get(oid(1)) is None and index.get(oid(2)) is not None
    assert index.totals() == (700, 1)


def test_inline_value_is_read_with_its_record_and_removed_with_it(index: Index) -> None:
    index.run_sync(insert(oid("inline"), 5, data=b"hello"))
    rec, data = index.get_with_data(oid("inline"))
    assert rec is not None and rec.inline and bytes(data or b"") == b"hello"
    index.run_sync(remove(oid("inline")))
    assert index.get_with_data(oid("inline")) == (None, None)
    with index.env.begin(db=index.data) as txn:
        assert txn.get(oid("inline")) is None, "the inline value outlived its record"


def test_a_changed_record_is_read_afresh(index: Index) -> None:
    index.run_sync(insert(oid(1), 10))
    first, _ = index.get_with_data(oid(1))
    again, _ = index.get_with_data(oid(1))
    assert first is again  # unchanged: the parsed record is shared

    def change(t: Txn) -> None:
        rec = t.get(oid(1))
        assert rec is not None
        rec.etag = "e2"
        t.put(oid(1), rec)

    index.run_sync(change)
    changed, _ = index.get_with_data(oid(1))
    assert changed is not None and changed.etag == "e2"


def test_removed_chunks_are_unlinked_after_commit(index: Index) -> None:
    seen: list[tuple[list[tuple[bytes, str, int]], Record | None]] = []
    index.on_commit = lambda batch: seen.append((list(batch.unlink), index.get(oid(1))))

    def add_chunks(t: Txn) -> None:
        rec = record(300)
        rec.chunks = 0b101  # chunks 0 and 2 are on disk
        t.insert(oid(1), rec)

    index.run_sync(add_chunks)
    index.run_sync(remove(oid(1)))
    unlink, visible = seen[-1]
    assert sorted(unlink) == [(oid(1), "g", 0), (oid(1), "g", 2)]
    assert visible is None, "on_commit ran before the removal was committed"


# -- the writer thread ----------------------------------------------------------------------


async def test_queued_writes_commit_in_one_transaction(index: Index) -> None:
    index.start()
    gate = threading.Event()
    txns: list[Txn] = []  # kept alive, so that no two share an id()

    def blocker(t: Txn) -> None:
        assert gate.wait(10)

    def op_n(n: int) -> Callable[[Txn], int]:
        def op(t: Txn) -> int:
            txns.append(t)
            t.insert(oid(n), record(1))
            return n

        return op

    first = index.submit(blocker)
    await asyncio.sleep(0.05)  # the writer is now inside the blocker's transaction
    futures = [index.submit(op_n(n)) for n in range(100)]
    gate.set()
    await first
    assert await asyncio.gather(*futures) == list(range(100))
    assert len({id(t.txn) for t in txns}) == 1, "queued writes were not batched together"
    assert index.totals() == (100, 100)


async def test_lazy_writes_linger_for_company_until_a_batch_is_full_or_hurried(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read's fill commits lazily: the writer waits up to LINGER for more, but a full batch
    (BATCH_FULL queued) or a waiter's hurry() ends the wait at once."""
    monkeypatch.setattr(index_module, "LINGER", 60.0)  # a wait that outlasts the test
    monkeypatch.setattr(index_module, "BATCH_FULL", 4)
    index.start()
    ops = [index.submit(insert(oid(0), 1), lazy=True)]
    await asyncio.sleep(0.2)  # the writer took it and lingers
    ops += [index.submit(insert(oid(n), 1), lazy=True) for n in range(1, 4)]
    await asyncio.sleep(0.2)
    assert not any(op.done() for op in ops), "a batch with 3 queued behind it did not linger"
    ops.append(index.submit(insert(oid(4), 1), lazy=True))  # 4 queued: the batch is full
    async with asyncio.timeout(10):
        await asyncio.gather(*ops)
    assert index.totals() == (5, 5)

    lone = index.submit(insert(oid(5), 1), lazy=True)
    await asyncio.sleep(0.2)
    assert not lone.done()
    index.hurry()
    async with asyncio.timeout(10):
        await lone
    assert index.totals() == (6, 6)


async def test_a_lingering_batch_commits_once_another_process_begins_to_wait(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``stirred`` (FillLocks.stamp: other processes fill the cache too), a lingering
    batch looks at it every STIR_POLL and commits as soon as it moves; unmoved, it lingers."""
    monkeypatch.setattr(index_module, "LINGER", 60.0)
    stamp = [b"0"]
    index.stirred = lambda: stamp[0]
    index.start()
    lone = index.submit(insert(oid(0), 1), lazy=True)
    await asyncio.sleep(0.3)
    assert not lone.done(), "a batch whose stamp stood still did not linger"
    stamp[0] = b"1"  # another process began to wait for a fill
    async with asyncio.timeout(10):
        await lone
    assert index.totals() == (1, 1)


async def test_a_failing_write_does_not_sink_its_batch(index: Index) -> None:
    index.start()
    gate = threading.Event()
    first = index.submit(lambda t: gate.wait(10))
    await asyncio.sleep(0.05)

    def bad(t: Txn) -> None:
        t.insert(oid("bad"), record(1))
        raise ValueError("broken op")

    futures = [
        index.submit(insert(oid(1), 10)),
        index.submit(bad),
        index.submit(insert(oid(2), 20)),
    ]
    gate.set()
    await first
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert index.get(oid(1)) is not None and index.get(oid(2)) is not None
    assert index.get(oid("bad")) is None, "the failed op's writes were committed"
    assert_totals_consistent(index)


async def test_full_map_fails_the_write_and_frees_room(tmp_path: Path) -> None:
    index = Index(tmp_path / "index", MIB, UNLIMITED)
    batches: list[Batch] = []
    index.on_commit = batches.append
    index.start()
    try:
        for n in range(150):
            await index.submit(insert(oid(n), 3000, data=b"x" * 3000))
        before = index.totals()
        with pytest.raises(errors.IndexFull) as failure:
            await index.submit(insert(oid("huge"), 400_000, data=b"y" * 400_000))
        assert failure.value.reason == "index_full"
        assert index.get(oid("huge")) is None
        assert_totals_consistent(index)
        # The index made room by evicting about a tenth of what it held ...
        evicted = sum(b.evicted_bytes for b in batches)
        assert before[0] * 0.05 <= evicted <= before[0] * 0.2, (before, evicted)
        assert index.totals()[0] == before[0] - evicted
        # ... so a write of that size fits again.
        await index.submit(insert(oid("after"), 30_000, data=b"z" * 30_000))
        assert index.get(oid("after")) is not None
    finally:
        index.close()


async def test_writes_keep_succeeding_after_the_map_fills(tmp_path: Path) -> None:
    """A map filled gradually by inline values: older entries are evicted ahead, so no write
    fails (LMDB needs free pages even to delete, so a map let fill up could not recover)."""
    index = Index(tmp_path / "index", MIB, UNLIMITED)
    index.start()
    failed: list[int] = []
    try:
        for n in range(600):  # about 2.3 times what the map holds
            try:
                await index.submit(insert(oid(n), 3000, data=b"x" * 3000))
            except errors.IndexFull:
                failed.append(n)
        assert failed == []
        held = all_records(index)
        assert 100 < len(held) < 600, len(held)
        assert oid(599) in held and oid(0) not in held, "the oldest go first"
        assert_totals_consistent(index)
        used, _ = index.map_usage()
        assert used <= MIB
    finally:
        index.close()


# -- eviction over the LMDB queues ----------------------------------------------------------


async def _fill_until_evicted(index: Index, key: bytes) -> None:
    """Add ``key``, then objects of 1000 bytes until the index (full) evicted it."""
    await index.submit(insert(key, 1000))
    n = 0
    while index.get(key) is not None:
        await index.submit(insert(oid(n), 1000))
        n += 1
        assert index.totals()[0] <= index.max_bytes


async def test_an_evicted_object_back_displaces_nothing_it_does_not_outcount(
    tmp_path: Path,
) -> None:
    """Admission (eviction.place): once full, an object back after its eviction displaces a
    resident only if it was used more; else it goes first in line to be evicted again. While
    there is room it enters the main queue."""
    index = Index(tmp_path / "index", BIG_MAP, 10_000)
    index.start()
    try:
        await _fill_until_evicted(index, oid("once"))
        held = set(all_records(index))
        again = await index.submit(insert(oid("once"), 1000))
        assert again.queue == "S"
        assert set(all_records(index)) == held, "refused, yet kept or displacing a resident"
        fresh = await index.submit(insert(oid("fresh"), 1000))
        assert fresh.queue == "S" and index.get(oid("fresh")) is not None
        for key in all_records(index):
            await index.submit(remove(key))
        back = await index.submit(insert(oid("once"), 1000))
        assert back.queue == "M", "a ghost hit with room did not enter the main queue"
        assert_totals_consistent(index)
    finally:
        index.close()


async def test_an_object_a_job_fetched_ahead_is_kept_until_its_read_then_goes_first(
    tmp_path: Path,
) -> None:
    """A job's fill ahead of its read (a prefetch's) of an object admission refuses (back after
    its eviction, used no more than the next victim) is kept, at the small queue's tail:
    refused, it would be gone before the read it was fetched for, which would fetch it again.
    Once read (Txn.first_in_line, from the hit flush) it is the next to go, not a resident."""
    index = Index(tmp_path / "index", BIG_MAP, 10_000)
    index.start()
    try:
        await _fill_until_evicted(index, oid("once"))
        held = set(all_records(index))
        back = await index.submit(insert(oid("once"), 1000, ahead=True))
        assert back.queue == "S" and back.atime == UNREAD_REFUSED
        assert index.get(oid("once")) is not None, "refused: its read would fetch it again"
        assert index.totals()[0] <= 10_000
        kept = set(all_records(index))

        def read(t: Txn) -> None:
            rec = t.get(oid("once"))
            assert rec is not None
            t.first_in_line(oid("once"), rec)
            t.put(oid("once"), rec)

        await index.submit(read)
        await index.submit(insert(oid("next"), 1000))
        assert index.get(oid("once")) is None, "read, it did not go first"
        assert index.get(oid("next")) is not None
        assert len(held - kept) <= 1  # room for it while it waited for its read
        assert_totals_consistent(index)
    finally:
        index.close()


async def test_shuffled_epochs_over_twice_the_cache_keep_what_fits(tmp_path: Path) -> None:
    """Epochs reading a dataset twice the cache's size in a new order each time: from the
    second epoch on, about half the reads hit (plain S3-FIFO fell to 15-20% in some epochs).
    Hits are flushed as the cache's hit flusher does: noted while freq is 0, in batches."""
    size, objects = 1000, 400
    index = Index(tmp_path / "index", BIG_MAP, objects * size // 2)
    index.start()
    rng = random.Random(7)
    ratios = []
    try:
        ids = list(range(objects))
        for _ in range(4):
            rng.shuffle(ids)
            hits, batch = 0, []
            for n in ids:
                rec = index.get(oid(n))
                if rec is None:
                    await index.submit(insert(oid(n), size))
                    continue
                hits += 1
                stale = rec.freq == 0 or index.uses_era(oid(n), rec) != index.era()
                if stale and oid(n) not in batch:
                    batch.append(oid(n))
                if len(batch) >= 20:
                    await asyncio.gather(*(index.submit(hit(k)) for k in batch))
                    batch = []
            await asyncio.gather(*(index.submit(hit(k)) for k in batch))
            ratios.append(hits / objects)
            assert index.totals()[0] <= objects * size // 2
        assert_totals_consistent(index)
    finally:
        index.close()
    assert ratios[0] == 0
    assert min(ratios[1:]) > 0.4, ratios


async def test_a_scan_keeps_objects_read_twice(tmp_path: Path) -> None:
    index = Index(tmp_path / "index", BIG_MAP, 100_000)
    index.start()
    try:
        hot = [oid(f"hot{n}") for n in range(6)]
        for key in hot:
            await index.submit(insert(key, 5000))
            await index.submit(hit(key))
        for n in range(200):  # a one-pass scan of 10x the cache
            await index.submit(insert(oid(f"scan{n}"), 5000))
            assert index.totals()[0] <= 100_000
        assert all(index.get(key) is not None for key in hot), "the scan evicted a hot object"
        assert sum(index.get(oid(f"scan{n}")) is not None for n in range(200)) < 20
        assert_totals_consistent(index)
    finally:
        index.close()


ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(1, 3000), st.booleans()),
        st.tuples(st.sampled_from(["hit", "remove"]), st.integers(0, 80), st.just(False)),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(ops=ops_st, max_bytes=st.integers(2000, 20_000))
def test_index_keeps_budget_pins_and_totals(
    ops: list[tuple[str, int, bool]], max_bytes: int
) -> None:
    """Any sequence of writes: the totals match the records, pinned objects stay, and after
    every commit the cache is within max_bytes unless all it holds is pinned."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run_ops(Path(tmp), ops, max_bytes))


async def _run_ops(tmp: Path, ops: list[tuple[str, int, bool]], max_bytes: int) -> None:
    index = Index(tmp / "index", BIG_MAP, max_bytes)
    index.start()
    try:
        keys: list[bytes] = []
        pinned: set[bytes] = set()
        for kind, n, pin in ops:
            if kind == "insert":
                key = oid(len(keys))
                keys.append(key)
                pin = pin and len(keys) % 4 == 0
                await index.submit(insert(key, n, pinned=pin))
                if pin:
                    pinned.add(key)
            elif keys and kind == "hit":
                await index.submit(hit(keys[n % len(keys)]))
            elif keys:
                await index.submit(remove(keys[n % len(keys)]))
                pinned.discard(keys[n % len(keys)])
            recs = all_records(index)
            assert pinned <= set(recs), "a pinned object was evicted"
            assert_totals_consistent(index)
            used = index.totals()[0]
            assert used <= max_bytes or all(r.pinned for r in recs.values()), used
    finally:
        index.close()


WRITE_LOCK = """
import sys
import lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, subdir=True)
txn = env.begin(write=True)
print("holding", flush=True)
sys.stdin.readline()
txn.abort()
"""


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_transaction_times_its_wait_for_the_write_lock_and_its_hold(index: Index) -> None:
    """slipstream_index_lock_wait_seconds / _transaction_seconds: a write transaction that
    finds another process holding LMDB's write lock waits for it, and says how long; then
    how long it held the lock itself."""
    holder = subprocess.Popen(
        [sys.executable, "-c", WRITE_LOCK, str(index.path)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    waits = _sample("slipstream_index_lock_wait_seconds_count")
    waited = _sample("slipstream_index_lock_wait_seconds_sum")
    held = _sample("slipstream_index_transaction_seconds_count")
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        writer = threading.Thread(target=index.run_sync, args=(insert(oid(1), 10),))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "the write did not wait for the other process's lock"
        assert _sample("slipstream_index_transaction_seconds_count") == held
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
    writer.join(10)
    assert index.get(oid(1)) is not None
    assert _sample("slipstream_index_lock_wait_seconds_count") == waits + 1
    assert _sample("slipstream_index_lock_wait_seconds_sum") - waited >= 0.3
    assert _sample("slipstream_index_transaction_seconds_count") == held + 1
