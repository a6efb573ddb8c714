"""The read/write core in-process, no subprocess: fills, read planning, write-through.

Each test builds the core as the composition root does (proxy/app.py, S3Server.start): a real
CacheStore on ``tmp_path`` and a real fs backend (``proxy.backends.create``), wrapped in
``CountingStore``, which counts the store GETs and can hold them at a gate so that a test
decides when the store answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from proxy import backends, errors, metrics
from proxy.cache import index as index_module
from proxy.cache import store as store_module
from proxy.cache.record import UNREAD
from proxy.cache.store import CacheStore
from proxy.config import BackendConfig, CacheConfig
from proxy.core.body import FileSlice, ObjectRead, read_slice
from proxy.core.fills import Fills
from proxy.core.hot import ROOM, HotObjects
from proxy.core.metadata import oid_of, record_of
from proxy.core.prefetch import warm
from proxy.core.reads import Reads
from proxy.core.writes import Writes
from proxy.model import ByteRange, GetResult
from proxy.routing import Mount

CHUNK = 4096
INLINE_MAX = 1024
BUCKET = "data"


class CountingStore:
    """A backend that counts ``get`` calls and, while ``gate`` is clear, holds them before the
    store answers; everything else goes to the wrapped backend."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets = 0
        self.gate = asyncio.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        self.gets += 1
        await self.gate.wait()
        result: GetResult = await self.inner.get(bucket, key, start, end, if_match)
        return result


@dataclass
class Core:
    cache: CacheStore
    store: CountingStore
    mount: Mount
    reads: Reads
    writes: Writes
    root: Path

    def put_file(self, key: str, data: bytes) -> None:
        """Put an object straight into the store, behind the proxy's back."""
        (self.root / BUCKET / key).write_bytes(data)

    def record(self, key: str) -> Any:
        return self.cache.lookup(oid_of(self.mount, key))[0]


@pytest.fixture(params=[False, True], ids=["workers", "sole"])
async def core(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Core]:
    """The core pieces, as a worker among others (fills take the chunk locks) and as the only
    process that fills the cache (``workers: 1``: no locks)."""
    root = tmp_path / "store"
    (root / BUCKET).mkdir(parents=True)
    cfg = CacheConfig(
        dir=tmp_path / "cache",
        max_size=64 * 1024**2,
        chunk_size=CHUNK,
        inline_max=INLINE_MAX,
        metadata_ttl=None,
        max_fills=8,
        index_map_size=64 * 1024**2,
    )
    cache = CacheStore(cfg)
    await cache.open()
    fs = backends.create(BackendConfig(name="fs", type="fs", root=root), cache.root / "staging")
    await fs.start()
    store = CountingStore(fs)
    mount = Mount(name=BUCKET, backend=store, bucket=BUCKET, prefix="", metadata_ttl=None)
    reads = Reads(cache, cfg, Fills(cache, cfg, sole=request.param))
    yield Core(cache, store, mount, reads, Writes(cache, reads), root)
    await reads.close()
    await cache.close()
    await fs.close()


def _data(size: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(size))


async def _collect(read: ObjectRead) -> tuple[bytes, list[str]]:
    """The read's body and the kind of each part: "inline", "file" or "memory"."""
    if read.body is not None:
        return read.body, ["inline"]
    out, kinds = bytearray(), []
    async for part in read.parts:
        if isinstance(part, FileSlice):
            data = await asyncio.to_thread(read_slice, part)
            assert data is not None
            out += data
            kinds.append("file")
        else:
            out += part
            kinds.append("memory")
    return bytes(out), kinds


async def _read(core: Core, key: str, rng: ByteRange | None = None) -> tuple[ObjectRead, bytes]:
    read = await core.reads.read(core.mount, key, rng, {})
    body, _ = await _collect(read)
    return read, body


# -- fills: one store GET per cold chunk ---------------------------------------------------------
@pytest.mark.parametrize("size", [100, CHUNK * 3 // 2], ids=["inline", "chunked"])
async def test_concurrent_cold_reads_make_one_store_get(core: Core, size: int) -> None:
    data = _data(size)
    core.put_file("obj", data)
    core.store.gate.clear()  # every reader arrives before the store answers
    readers = [asyncio.create_task(_read(core, "obj", ByteRange(0, 99))) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert core.store.gets == 1
    core.store.gate.set()
    results = await asyncio.gather(*readers)
    assert core.store.gets == 1
    for read, body in results:
        assert body == data[:100]
        assert (read.first, read.last, read.partial) == (0, 99, True)
    await core.reads.fills.wait_idle()
    rec = core.record("obj")
    assert rec is not None and (rec.inline or rec.has_chunk(0))


def _requests(result: str) -> float:
    """The bucket's GETs counted as ``result`` ("hit" or "miss"), its tallies flushed."""
    metrics.flush()
    value = REGISTRY.get_sample_value(
        "slipstream_bucket_requests_total", {"bucket": BUCKET, "result": result}
    )
    return value or 0.0


@pytest.mark.parametrize(
    "size, rng",
    [(100, None), (CHUNK * 3 // 2, ByteRange(0, 99)), (0, None)],
    ids=["inline", "chunk-range", "empty"],
)
async def test_a_read_of_a_fill_whose_bytes_are_in_is_a_hit_before_its_commit(
    core: Core, size: int, rng: ByteRange | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prefetched object read while its commit is still on its way: answered from the
    fill's verified bytes as a hit, at once, with no second store GET."""
    data = _data(size)
    core.put_file("obj", data)
    held, committing = asyncio.Event(), asyncio.Event()
    for name in ("commit_inline", "commit_chunk"):
        real = getattr(core.cache, name)

        async def wait_then(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            committing.set()
            await held.wait()
            return await _real(*args, **kwargs)

        monkeypatch.setattr(core.cache, name, wait_then)
    want = data if rng is None else data[rng.first : rng.last + 1]
    hits, misses = _requests("hit"), _requests("miss")
    first, body = await _read(core, "obj", rng)
    assert (first.source, body) == ("backend", want)
    await asyncio.wait_for(committing.wait(), 5)  # every byte is in; the commit waits
    assert core.record("obj") is None
    second, body = await _read(core, "obj", rng)
    assert (second.source, second.body, body) == ("cache", want, want)
    assert core.store.gets == 1
    assert (_requests("hit") - hits, _requests("miss") - misses) == (1, 1)
    held.set()
    await core.reads.fills.wait_idle()
    third, body = await _read(core, "obj", rng)
    assert (third.source, body, core.store.gets) == ("cache", want, 1)


@pytest.mark.parametrize("core", [False], ids=["workers"], indirect=True)
async def test_a_read_that_waited_for_another_workers_fill_is_a_hit(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold read whose chunk lock another worker holds waits, then serves the copy that
    worker committed: no store GET of its own, a hit. (Locks are per process, so here the
    other worker's hold is the lock refusing until its commit is in.)"""
    data = _data(300)
    core.put_file("obj", data)
    locks = core.cache.locks
    assert locks is not None
    elsewhere = True
    acquire = locks.try_acquire
    monkeypatch.setattr(locks, "try_acquire", lambda *a: not elsewhere and acquire(*a))
    hits, misses = _requests("hit"), _requests("miss")
    waiting = asyncio.create_task(_read(core, "obj"))
    await asyncio.sleep(0.05)
    assert not waiting.done() and core.store.gets == 0
    meta = await core.store.head(BUCKET, "obj")  # the other worker's fill, committed
    oid = oid_of(core.mount, "obj")
    record = record_of(core.mount, "obj", meta)
    assert await core.cache.commit_inline(oid, record, data, seen=core.cache.write_mark())
    elsewhere = False
    read, body = await asyncio.wait_for(waiting, 10)
    assert (read.source, body, core.store.gets) == ("cache", data, 0)
    assert (_requests("hit") - hits, _requests("miss") - misses) == (1, 0)


@pytest.mark.parametrize("core", [False], ids=["workers"], indirect=True)
async def test_a_failed_end_of_a_wait_neither_fails_the_fill_nor_keeps_its_lock(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read waits behind another worker's lock, takes it when that one lets go, and the
    end of its wait (unlocking its waiter byte) fails: the fill goes on, and its lock goes
    with it. (An error there once left the lock held, and the other workers waited on it.)"""
    data = _data(300)
    core.put_file("obj", data)
    locks = core.cache.locks
    assert locks is not None
    held: list[int] = []
    elsewhere = True
    acquire, release = locks.try_acquire, locks.release

    def try_acquire(oid: bytes, chunk: int) -> bool:
        if elsewhere or not acquire(oid, chunk):
            return False
        held.append(chunk)
        return True

    def wait_end(oid: bytes, chunk: int) -> None:
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(locks, "try_acquire", try_acquire)
    monkeypatch.setattr(
        locks, "release", lambda oid, chunk: held.remove(chunk) or release(oid, chunk)
    )
    monkeypatch.setattr(locks, "wait_end", wait_end)
    waiting = asyncio.create_task(_read(core, "obj"))
    await asyncio.sleep(0.05)
    assert not waiting.done() and core.store.gets == 0
    elsewhere = False  # the other worker gave up its fill: nothing committed
    read, body = await asyncio.wait_for(waiting, 10)
    assert (read.source, body, core.store.gets) == ("backend", data, 1)
    await core.reads.fills.wait_idle()
    assert held == []


async def test_the_first_read_after_a_fill_finds_its_record_parsed(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill's committed record is what its raw form parses to, and the first read of it (a
    prefetched object's reader) finds it parsed: no Record.loads on the way."""
    data = _data(300)
    core.put_file("obj", data)
    await _read(core, "obj")
    await core.reads.fills.wait_idle()
    raw, inline = core.cache.raw_lookup(oid_of(core.mount, "obj"))
    assert raw is not None and inline == data
    parses: list[bytes] = []
    loads = index_module.Record.loads
    monkeypatch.setattr(index_module.Record, "loads", lambda r: parses.append(r) or loads(r))
    rec = core.cache.parsed(raw)
    assert parses == [] and rec == loads(raw) and rec.inline and rec.etag
    read, body = await _read(core, "obj")
    assert (read.source, body, parses) == ("cache", data, [])


async def test_a_read_past_the_chunk_a_landed_fill_holds_reads_on(core: Core) -> None:
    """A whole read of a chunked object joining its first chunk's landed fill is no hit: its
    later chunks still come from the store."""
    data = _data(CHUNK * 3 // 2)
    core.put_file("obj", data)
    first, body = await _read(core, "obj", ByteRange(0, 99))  # fills chunk 0 only
    assert body == data[:100]
    second, body = await _read(core, "obj")
    assert (second.source, body) == ("backend", data)
    await core.reads.fills.wait_idle()


async def test_a_reader_that_cancels_does_not_cancel_the_fill(core: Core) -> None:
    data = _data(CHUNK)
    core.put_file("obj", data)
    core.store.gate.clear()
    first = asyncio.create_task(_read(core, "obj"))  # starts the fill, then goes away
    await asyncio.sleep(0.02)
    others = [asyncio.create_task(_read(core, "obj")) for _ in range(3)]
    await asyncio.sleep(0.02)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    core.store.gate.set()
    for _, body in await asyncio.gather(*others):
        assert body == data
    assert core.store.gets == 1
    await core.reads.fills.wait_idle()
    rec = core.record("obj")
    assert rec is not None and rec.has_chunk(0)  # committed although its first reader left


async def test_fill_errors_reach_every_reader(core: Core) -> None:
    core.store.gate.clear()
    readers = [asyncio.create_task(_read(core, "missing")) for _ in range(3)]
    await asyncio.sleep(0.02)
    core.store.gate.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(r, errors.NoSuchKey) for r in results)
    assert core.store.gets == 1


# -- read planning: range -> parts -----------------------------------------------------------------
async def test_inline_object_hit_is_one_body(core: Core) -> None:
    data = _data(500)
    core.put_file("small", data)
    read, body = await _read(core, "small")
    assert (read.source, body) == ("backend", data)
    await core.reads.fills.wait_idle()
    assert core.record("small").inline

    read = await core.reads.read(core.mount, "small", None, {})
    assert (read.source, read.body, read.partial) == ("cache", data, False)
    read = await core.reads.read(core.mount, "small", ByteRange(10, 19), {})
    assert (read.body, read.first, read.last, read.partial) == (data[10:20], 10, 19, True)
    read = await core.reads.read(core.mount, "small", ByteRange(None, 5), {})  # suffix
    assert (read.body, read.first, read.last) == (data[-5:], 495, 499)
    read = await core.reads.read(core.mount, "small", ByteRange(490, None), {})  # open
    assert (read.body, read.first, read.last) == (data[490:], 490, 499)
    assert core.store.gets == 1


async def test_an_inline_record_without_its_value_is_a_miss(core: Core) -> None:
    """The start-up walk walks the inline values only when their number differs from the
    inline records' (cache/store.py fsck): a record that lost its value anyway is read as a
    miss, fetched again and cached again, never answered short."""
    data = _data(300)
    core.put_file("gone", data)
    await _read(core, "gone")
    await core.reads.fills.wait_idle()
    oid = oid_of(core.mount, "gone")
    idx = core.cache.index
    assert idx is not None
    with idx.env.begin(write=True) as txn:
        assert txn.delete(oid, db=idx.data)
    assert core.cache.lookup(oid) == (core.record("gone"), None)

    read, body = await _read(core, "gone")
    assert (read.source, body, core.store.gets) == ("backend", data, 2)
    await core.reads.fills.wait_idle()
    read = await core.reads.read(core.mount, "gone", None, {})
    assert (read.source, read.body, core.store.gets) == ("cache", data, 2)


@pytest.mark.parametrize("size", [200, CHUNK * 3 // 2], ids=["inline", "chunked"])
async def test_waiting_on_a_fills_commit_ends_its_linger(
    core: Core, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read's fill commits lazily (index.LINGER), but a job that waits on the commit (a warm
    job's drain, a pin: Fills.settled) or a caller of wait_idle gets it at once, before or
    after the fill queued its commit."""
    monkeypatch.setattr(index_module, "LINGER", 60.0)  # a wait that outlasts the test
    for n, early in enumerate((False, True)):
        key = f"k{n}"
        core.put_file(key, _data(size))
        oid = oid_of(core.mount, key)
        if early:  # asked before the fill's bytes are in: its commit is queued eager
            read = await core.reads.read(core.mount, key, None, {})
            settling = asyncio.create_task(core.reads.fills.settled([oid]))
            body, _ = await _collect(read)
        else:  # asked after: the commit already lingers in the writer's queue
            _, body = await _read(core, key)
            await asyncio.sleep(0.1)
            assert core.record(key) is None, "the commit did not linger"
            settling = asyncio.create_task(core.reads.fills.settled([oid]))
        assert body == _data(size)
        async with asyncio.timeout(10):
            await settling
        assert core.record(key) is not None
    core.put_file("idle", _data(size))
    await _read(core, "idle")
    async with asyncio.timeout(10):
        await core.reads.fills.wait_idle()
    assert core.record("idle") is not None


@pytest.mark.parametrize("size", [200, CHUNK * 3 // 2], ids=["inline", "chunked"])
async def test_a_head_while_a_fills_commit_lingers_asks_the_store_nothing(
    core: Core, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HEAD right after a GET's fill, while its commit still waits for company, answers from
    that fill's metadata: no store HEAD, no metadata-only record racing the commit."""
    monkeypatch.setattr(index_module, "LINGER", 60.0)
    heads = 0
    head = core.store.inner.head

    async def counted(bucket: str, key: str) -> Any:
        nonlocal heads
        heads += 1
        return await head(bucket, key)

    monkeypatch.setattr(core.store.inner, "head", counted)
    core.put_file("k", _data(size))
    read, _ = await _read(core, "k")
    assert core.record("k") is None  # the commit lingers
    meta = await core.reads.head(core.mount, "k")
    assert (meta.size, meta.etag, heads) == (size, read.meta.etag, 0)
    await core.reads.fills.wait_idle()
    assert (await core.reads.head(core.mount, "k")).etag == read.meta.etag  # now the index's
    assert heads == 0 and core.store.gets == (1 if size < CHUNK else 2)


async def test_a_read_before_the_fills_commit_counts_as_a_use(core: Core) -> None:
    """A fill's commit may wait a moment for company (index.LINGER): a read of the object in
    that moment joins the finished fill and is counted as a use once the commit lands, so an
    object read again at once is not taken for a one-time read by eviction (S3-FIFO)."""
    for key in ("once", "twice"):
        core.put_file(key, _data(200))
        await _read(core, key)
    await _read(core, "twice")  # the fill is whole; its commit still waits
    await core.reads.fills.wait_idle()
    await core.cache._flush_hits()
    assert (core.record("once").freq, core.record("twice").freq) == (0, 1)
    assert core.store.gets == 2


async def test_single_chunk_object(core: Core) -> None:
    data = _data(CHUNK - 10)  # above inline_max: one chunk file
    core.put_file("one", data)
    read, body = await _read(core, "one", ByteRange(100, 199))
    assert (read.source, body, read.length) == ("backend", data[100:200], 100)
    await core.reads.fills.wait_idle()
    rec = core.record("one")
    assert not rec.inline and rec.has_chunk(0)

    read = await core.reads.read(core.mount, "one", ByteRange(None, 50), {})
    body, kinds = await _collect(read)
    assert (read.source, body, kinds) == ("cache", data[-50:], ["file"])
    assert core.store.gets == 1


@pytest.mark.parametrize(
    ("rng", "first", "last", "chunks", "fetched"),
    [
        (None, 0, CHUNK * 5 // 2 - 1, [0, 1, 2], [0, 1, 2]),
        (ByteRange(CHUNK - 1, CHUNK), CHUNK - 1, CHUNK, [0, 1], [0, 1]),  # across a boundary
        (ByteRange(CHUNK + 5, None), CHUNK + 5, CHUNK * 5 // 2 - 1, [1, 2], [1, 2]),  # open
        # a cold suffix range learns the size from chunk 0's GET, which is kept too
        (ByteRange(None, CHUNK // 4), CHUNK * 9 // 4, CHUNK * 5 // 2 - 1, [2], [0, 2]),
    ],
    ids=["whole", "boundary", "open", "suffix"],
)
async def test_multi_chunk_ranges(
    core: Core,
    rng: ByteRange | None,
    first: int,
    last: int,
    chunks: list[int],
    fetched: list[int],
) -> None:
    data = _data(CHUNK * 5 // 2)
    core.put_file("big", data)
    read, body = await _read(core, "big", rng)
    assert (read.first, read.last, read.source) == (first, last, "backend")
    assert body == data[first : last + 1]
    assert core.store.gets == len(fetched)  # one GET per chunk
    await core.reads.fills.wait_idle()
    rec = core.record("big")
    assert [i for i in range(3) if rec.has_chunk(i)] == fetched

    read = await core.reads.read(core.mount, "big", rng, {})
    body, kinds = await _collect(read)
    assert (read.source, body) == ("cache", data[first : last + 1])
    assert kinds == ["file"] * len(chunks)  # one slice per chunk the range touches
    assert core.store.gets == len(fetched)


async def test_partly_cached_object_mixes_files_and_fills(core: Core) -> None:
    data = _data(CHUNK * 3)
    core.put_file("mixed", data)
    await _read(core, "mixed", ByteRange(CHUNK, CHUNK + 1))  # caches chunk 1 only
    await core.reads.fills.wait_idle()
    assert core.store.gets == 1

    read = await core.reads.read(core.mount, "mixed", None, {})
    assert read.source == "backend"
    body, kinds = await _collect(read)
    assert body == data
    assert kinds[0] == "memory" and "file" in kinds and kinds[-1] == "memory"
    assert core.store.gets == 3  # chunks 0 and 2 only
    await core.reads.fills.wait_idle()
    assert all(core.record("mixed").has_chunk(i) for i in range(3))


async def test_empty_object(core: Core) -> None:
    core.put_file("empty", b"")
    read, body = await _read(core, "empty")
    assert (body, read.length, read.meta.size) == (b"", 0, 0)


async def test_unsatisfiable_range(core: Core) -> None:
    core.put_file("obj", _data(100))
    with pytest.raises(errors.InvalidRange):
        await core.reads.read(core.mount, "obj", ByteRange(500, None), {})


async def test_conditionals_are_checked_against_the_cached_version(core: Core) -> None:
    core.put_file("obj", _data(100))
    read, _ = await _read(core, "obj")
    await core.reads.fills.wait_idle()
    etag = read.meta.etag
    with pytest.raises(errors.NotModified):
        await core.reads.read(core.mount, "obj", None, {"If-None-Match": etag})
    with pytest.raises(errors.PreconditionFailed):
        await core.reads.read(core.mount, "obj", None, {"If-Match": '"other"'})
    assert core.store.gets == 1


# -- write-through --------------------------------------------------------------------------------
def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _body(data: bytes) -> AsyncIterator[bytes]:
    for piece in _chunks(data):
        yield piece


@pytest.mark.parametrize("size", [300, CHUNK * 2 + 7], ids=["inline", "chunked"])
async def test_put_then_read_is_a_hit(core: Core, size: int) -> None:
    data = _data(size)
    meta = await core.writes.put(core.mount, "new", _body(data), size, "text/plain", {}, {})
    assert meta.size == size
    read = await core.reads.read(core.mount, "new", None, {})
    body, _ = await _collect(read)
    assert (read.source, body, read.meta.etag) == ("cache", data, meta.etag)
    assert core.store.gets == 0


async def test_overwrite_replaces_the_cached_copy(core: Core) -> None:
    core.put_file("obj", _data(100))
    await _read(core, "obj")
    await core.reads.fills.wait_idle()
    new = b"fresh bytes"
    await core.writes.put(core.mount, "obj", _body(new), len(new), "text/plain", {}, {})
    read, body = await _read(core, "obj")
    assert (read.source, body) == ("cache", new)
    assert core.store.gets == 1


async def test_what_a_job_fetched_ahead_is_first_used_by_its_first_read(core: Core) -> None:
    """A job's fill ahead of the reads (a prefetch's, a warm-up's) is committed unread: its
    first read is the use the fill counted, not a read again (S3-FIFO's freq), and only a read
    after that is. Else one prefetched pass over a dataset would look read twice and fill the
    main queue. A read-through miss is its object's first use: its next read is a read again."""
    cache = core.cache
    for key in ("ahead", "read"):
        core.put_file(key, _data(300))
    assert await warm(core.reads, core.mount, "ahead") == 300
    await _read(core, "read")
    await core.reads.fills.wait_idle()
    assert core.record("ahead").atime == UNREAD
    assert core.record("read").atime != UNREAD
    assert (core.record("ahead").uses, core.record("read").uses) == (1, 1)

    await _read(core, "ahead")
    await _read(core, "read")
    await cache._flush_hits()
    assert (core.record("ahead").freq, core.record("read").freq) == (0, 1)
    assert core.record("ahead").atime != UNREAD

    await _read(core, "ahead")  # now a read again
    await cache._flush_hits()
    assert core.record("ahead").freq == 1
    assert core.store.gets == 2


async def test_a_read_that_joins_a_jobs_fill_makes_it_read(core: Core) -> None:
    """A read that joins a job's fill in flight is the object's first use: the fill commits
    it as read, and the next read is a read again."""
    core.put_file("joined", _data(300))
    core.store.gate.clear()  # the job's fetch waits until the read has joined it
    job = asyncio.create_task(warm(core.reads, core.mount, "joined"))
    await asyncio.sleep(0.05)
    reader = asyncio.create_task(_read(core, "joined"))
    await asyncio.sleep(0.05)
    core.store.gate.set()
    assert await job == 300
    _, body = await reader
    assert body == _data(300)
    await core.reads.fills.wait_idle()
    assert core.record("joined").atime != UNREAD
    await _read(core, "joined")
    await core.cache._flush_hits()
    assert core.record("joined").freq == 1
    assert core.store.gets == 1


async def test_hits_raise_a_use_count_once_an_era(core: Core) -> None:
    """A hit of a record already read once raises its use count at most once per era of use
    counts (S3-FIFO's frequency): noted for the next flush only while the uses entry is of an
    older era, and again once the era moves on."""
    core.put_file("hot", _data(500))
    await _read(core, "hot")
    await core.reads.fills.wait_idle()
    cache, oid = core.cache, oid_of(core.mount, "hot")
    await _read(core, "hot")  # the first hit of a fresh record: its freq is written
    await cache._flush_hits()
    rec = core.record("hot")
    assert rec.freq > 0
    era = cache._era = cache._idx.era()  # as the flusher does before each flush
    if cache._idx.uses_era(oid, rec) != era:
        await _read(core, "hot")
        assert cache._reads == {oid: 1}
        await cache._flush_hits()
    assert cache._idx.uses_era(oid, core.record("hot")) == era
    for _ in range(3):  # counted already in this era: nothing more to write
        await _read(core, "hot")
    assert cache._reads == {}
    cache._era = era + 1  # the index's era moved on (as the flusher would learn)
    for _ in range(2):
        await _read(core, "hot")
    assert cache._reads == {oid: 2}, "a hit in a new era did not raise the use count"


async def test_a_flush_of_many_hits_commits_a_slice_at_a_time(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush commits at most HIT_FLUSH_SLICE hits per transaction, one transaction after the
    other: the first reads of a training epoch (a record rewritten each) never hold LMDB's write
    lock, which every worker's fills wait for, in one long transaction. Every hit lands."""
    monkeypatch.setattr(store_module, "HIT_FLUSH_SLICE", 4)
    cache = core.cache
    assert cache._flusher is not None
    cache._flusher.cancel()  # this test flushes by hand
    keys = [f"obj{i}" for i in range(10)]
    for key in keys:
        core.put_file(key, _data(100))
        await _read(core, key)
    await core.reads.fills.wait_idle()
    for key in keys:
        await _read(core, key)  # each record's first hit: its freq is written at the flush
    assert len(cache._hits) == len(keys)
    before = cache._idx.identity()[1]
    await cache._flush_hits()
    assert cache._idx.identity()[1] - before == 3  # 4 + 4 + 2
    assert all(core.record(key).freq > 0 for key in keys)


# -- a fill whose chunk got cached after its reader looked ------------------------------------
async def test_a_chunk_cached_since_the_readers_lookup_is_not_fetched_again(core: Core) -> None:
    """A fill of a known object's chunk (its reader looked the cache up earlier) serves the
    copy another read committed meanwhile instead of asking the store again, whether or not
    this is the only process that fills."""
    data = _data(CHUNK * 2)
    core.put_file("big", data)
    read = await core.reads.read(core.mount, "big", ByteRange(0, 9), {})  # fills chunk 0
    await _collect(read)
    await core.reads.fills.wait_idle()
    meta, gets = read.meta, core.store.gets
    await _read(core, "big", ByteRange(CHUNK, CHUNK + 9))  # another read fills chunk 1
    await core.reads.fills.wait_idle()
    assert core.store.gets == gets + 1
    oid = oid_of(core.mount, "big")
    fill = core.reads.fills.get(core.mount, "big", oid, 1, meta)  # as a reader of the old view
    assert await fill.whole(CHUNK, CHUNK * 2 - 1) == data[CHUNK:]
    assert fill.from_cache and core.store.gets == gets + 1


async def test_a_worker_serves_a_chunk_another_worker_filled_meanwhile(core: Core) -> None:
    """With several processes filling one cache, a cold fill that finds the chunk committed
    by another worker once it holds the chunk's lock serves that copy: one store GET."""
    core.put_file("obj", _data(500))
    await _read(core, "obj")
    await core.reads.fills.wait_idle()
    assert core.store.gets == 1
    other = Fills(core.cache, core.reads.fills.cfg)  # another worker's fills over the same cache
    fill = other.get(core.mount, "obj", oid_of(core.mount, "obj"), 0, None)
    assert await fill.whole(0, 499) == _data(500)
    assert fill.from_cache and core.store.gets == 1
    await other.close()


@contextmanager
def writer_held(core: Core) -> Iterator[None]:
    """The index's writer thread kept in a transaction until the block ends: every commit
    submitted meanwhile waits."""
    release = threading.Event()
    core.cache._idx.submit(lambda t: release.wait(30))
    try:
        yield
    finally:
        release.set()


async def test_a_fill_waiting_for_its_commit_leaves_its_slot_to_the_next(core: Core) -> None:
    """``max_fills`` bounds the store fetches in flight, not the commits that follow them: a
    fill whose bytes are in gives its slot to the next fill while its commit waits."""
    core.put_file("a", b"a" * 100)
    core.put_file("b", b"b" * 100)
    cfg = dataclasses.replace(core.reads.fills.cfg, max_fills=1)
    fills = Fills(core.cache, cfg, sole=core.reads.fills.sole)
    with writer_held(core):
        a = fills.get(core.mount, "a", oid_of(core.mount, "a"), 0, None)
        assert await asyncio.wait_for(a.whole(0, 99), 5) == b"a" * 100
        b = fills.get(core.mount, "b", oid_of(core.mount, "b"), 0, None)
        assert await asyncio.wait_for(b.whole(0, 99), 5) == b"b" * 100
        assert core.record("a") is None and core.record("b") is None  # neither committed yet
    await asyncio.wait_for(fills.wait_idle(), 10)
    assert core.record("a") is not None and core.record("b") is not None
    assert core.store.gets == 2
    await fills.close()


def _render(meta: Any) -> tuple[dict[str, str], dict[str, str]]:
    return {"ETag": meta.etag}, {}


async def test_hot_table_keeps_entries_while_it_has_room_then_names_asked_before(
    core: Core,
) -> None:
    """HotObjects.enter answers every cached inline object (a miss or a large object: None).
    It keeps each entry while the table has room; once full, only an entry whose name was
    asked before (a one-pass scan does not cycle the table), the oldest dropped for it."""
    keys = [f"hot-{i}" for i in range(6)]
    for key in keys:
        core.put_file(key, _data(INLINE_MAX // 2))
    core.put_file("large", _data(INLINE_MAX * 2))
    table = HotObjects(core.reads, 0)
    assert table.enter("missed", core.mount, keys[0], _render) is None  # not cached yet
    for key in [*keys, "large"]:
        await _read(core, key)
    await core.reads.fills.wait_idle()
    assert table.enter("large", core.mount, "large", _render) is None  # not inline
    entry = table.enter("probe", core.mount, keys[0], _render)
    assert entry is not None and entry[1] == _data(INLINE_MAX // 2)
    table = HotObjects(core.reads, entry[0].cost * 2 + ROOM)  # room for two before it is full
    for key in keys[:3]:
        found = table.enter(key, core.mount, key, _render)
        assert found is not None and found[0].fields == {"ETag": found[0].rec.etag}
    assert len(table) == 2  # the third answered, not kept: the table was full
    assert table.find(keys[0]) is not None and table.find(keys[2]) is None
    assert table.enter(keys[2], core.mount, keys[2], _render) is not None  # asked before: kept
    assert table.find(keys[2]) is not None
    for key in keys[3:]:  # each kept on its second answer, the oldest dropped for room
        for _ in range(2):
            assert table.enter(key, core.mount, key, _render) is not None
    assert table.find(keys[0]) is None and table.find(keys[-1]) is not None
    assert 2 <= len(table) < len(keys) and entry[0].cost * len(table) <= table.max_bytes
    core.put_file("late", _data(INLINE_MAX // 2))
    assert table.enter("late", core.mount, "late", _render) is None  # a miss: asked
    await _read(core, "late")
    await core.reads.fills.wait_idle()
    assert table.enter("late", core.mount, "late", _render) is not None
    assert table.find("late") is not None  # kept, the table full as it is
