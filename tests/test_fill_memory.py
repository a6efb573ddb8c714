"""The fill-memory ceiling in-process: claims go back when buffers are freed, the ceiling is
never passed, and a read whose memory stays spent streams from the store uncached. The fill
slots (``max_fills``): first come, first served, none lost to a waiter that gives up."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy import backends, config
from proxy.cache.store import CacheStore
from proxy.config import BackendConfig, CacheConfig
from proxy.core import fills as fills_module
from proxy.core.body import FileSlice, ObjectRead, read_slice
from proxy.core.budget import MemoryBudget
from proxy.core.fills import Fill, Fills
from proxy.core.metadata import oid_of
from proxy.core.reads import Reads
from proxy.errors import ConfigError
from proxy.model import ByteRange, ObjectMeta
from proxy.routing import Mount
from proxy.slots import Slots

CHUNK = 64 * 1024
CEILING = 4 * CHUNK
BUCKET = "data"


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[tuple[Reads, Mount, Path]]:
    root = tmp_path / "store"
    (root / BUCKET).mkdir(parents=True)
    cfg = CacheConfig(
        dir=tmp_path / "cache",
        max_size=256 * 1024**2,
        chunk_size=CHUNK,
        inline_max=1024,
        metadata_ttl=None,
        fill_memory=CEILING,
        index_map_size=64 * 1024**2,
    )
    cache = CacheStore(cfg)
    await cache.open()
    fs = backends.create(BackendConfig(name="fs", type="fs", root=root), cache.root / "staging")
    await fs.start()
    mount = Mount(name=BUCKET, backend=fs, bucket=BUCKET, prefix="", metadata_ttl=None)
    reads = Reads(cache, cfg, Fills(cache, cfg))
    yield reads, mount, root / BUCKET
    await reads.close()
    await cache.close()
    await fs.close()


def _data(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


async def _body(read: ObjectRead, pause: float = 0.0) -> bytes:
    out = bytearray()
    if read.body is not None:
        return read.body
    async for part in read.parts:
        if isinstance(part, FileSlice):
            data = await asyncio.to_thread(read_slice, part)
            assert data is not None
            out += data
        else:
            out += part
        del part
        await asyncio.sleep(pause)
    return bytes(out)


async def test_many_readers_never_pass_the_ceiling_and_give_it_all_back(
    core: tuple[Reads, Mount, Path],
) -> None:
    reads, mount, store = core
    budget = reads.fills.memory
    objects = {f"obj{i}": _data(20 * CHUNK + 123, seed=i) for i in range(6)}
    for key, data in objects.items():
        (store / key).write_bytes(data)
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, budget.used)
            await asyncio.sleep(0)

    async def one(key: str) -> bytes:
        return await _body(await reads.read(mount, key, None, {}), pause=0.001)

    watcher = asyncio.create_task(watch())
    bodies = await asyncio.gather(*(one(k) for k in objects))
    done.set()
    await watcher
    assert bodies == list(objects.values())
    assert 0 < peak <= CEILING
    await reads.fills.wait_idle()
    gc.collect()
    assert budget.used == 0


async def test_a_reader_that_stops_halfway_gives_its_memory_back(
    core: tuple[Reads, Mount, Path],
) -> None:
    reads, mount, store = core
    (store / "big").write_bytes(_data(10 * CHUNK))
    read = await reads.read(mount, "big", None, {})
    parts = read.parts
    got = 0
    async for part in parts:
        got += len(part) if not isinstance(part, FileSlice) else part.length
        if got > CHUNK:
            break
    del part
    await parts.aclose()  # type: ignore[attr-defined]
    del read, parts
    await reads.fills.wait_idle()
    gc.collect()
    assert reads.fills.memory.used == 0


async def test_spent_memory_streams_uncached(
    core: tuple[Reads, Mount, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone holds every byte of the ceiling: cold and partly cached reads still answer the
    right bytes (straight from the store, after a short wait) and cache nothing new."""
    reads, mount, store = core
    monkeypatch.setattr(fills_module, "FILL_MEMORY_WAIT", 0.05)
    data = _data(5 * CHUNK + 7)
    (store / "k").write_bytes(data)
    first = await reads.read(mount, "k", ByteRange(0, 10), {})
    assert await _body(first) == data[:11]  # chunk 0 cached, the record written
    await reads.fills.wait_idle()
    hog = reads.fills.memory.claim_now(CEILING - reads.fills.memory.used)
    assert hog is not None
    try:
        assert await _body(await reads.read(mount, "k", None, {})) == data
        (store / "cold").write_bytes(data)
        assert await _body(await reads.read(mount, "cold", None, {})) == data
        rec = reads.cache.lookup(oid_of(mount, "k"))[0]
        assert rec is not None and [i for i in range(6) if rec.has_chunk(i)] == [0]
        assert reads.cache.lookup(oid_of(mount, "cold"))[0] is None
    finally:
        hog.release()
    assert reads.fills.memory.used == 0


async def test_budget_is_first_come_first_served() -> None:
    budget = MemoryBudget(100)
    a = budget.claim(60)
    b = budget.claim(60)  # waits for a
    assert a.granted and not b.granted
    assert budget.claim_now(10) is None  # b waits: nobody jumps the queue
    a.release()
    await asyncio.wait_for(b.wait(), 1)
    assert budget.used == 60
    b.shrink(20)
    assert budget.used == 20
    c = budget.claim(90)
    c.release()  # given up while queued
    assert budget.used == 20 and budget.claim_now(80) is not None


async def test_fill_slots_are_first_come_first_served_and_never_lost() -> None:
    slots = Slots(2)
    assert await slots.take(0.01) and await slots.take(0.01)
    assert not await slots.take(0.01)  # none free: the wait times out
    first = asyncio.create_task(slots.take(5))
    second = asyncio.create_task(slots.take(5))
    gone = asyncio.create_task(slots.take(5))
    await asyncio.sleep(0)
    slots.release()  # to the first in line
    assert await first and not second.done()
    gone.cancel()  # a waiter that goes away holds nothing
    await asyncio.gather(gone, return_exceptions=True)
    slots.release()
    assert await second
    slots.release()  # nobody waits: the slot is free again
    assert slots.free == 1 and await slots.take(0.01) and slots.free == 0
    handed = asyncio.create_task(slots.take(5))
    await asyncio.sleep(0)
    slots.release()  # handed over, then the waiter is cancelled before it runs
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    assert slots.free == 1  # it passed the slot on


def test_fill_memory_is_validated_and_documented() -> None:
    assert config.from_mapping({}, "t", {}).cache.fill_memory == 512 * 1024**2
    env = {"SLIPSTREAM_CACHE__FILL_MEMORY": "64MiB"}
    assert config.from_mapping({}, "t", env).cache.fill_memory == 64 * 1024**2
    for bad, why in (("4MiB", "at least one chunk"), ("lots", "size")):
        with pytest.raises(ConfigError, match=f"cache.fill_memory: .*{why}"):
            config.from_mapping({"cache": {"fill_memory": bad}}, "t", {})
    example = Path(__file__).parent.parent / "config" / "slipstream.example.yaml"
    assert "fill_memory: 512MiB" in example.read_text()


async def test_a_cold_read_in_one_chunk_names_its_fill_weakly(
    core: tuple[Reads, Mount, Path],
) -> None:
    """A cold read whose answer lies in one chunk names that fill (the handler takes the bytes
    whole from it); one that spans chunks names none; a read kept after its parts were
    dropped keeps no fill buffer."""
    reads, mount, store = core
    data = _data(2 * CHUNK + 5)
    (store / "k").write_bytes(data)
    read = await reads.read(mount, "k", ByteRange(CHUNK + 3, CHUNK + 99), {})
    assert read.fill is not None
    fill = read.fill()
    assert (
        fill is not None
        and await fill.whole(read.first, read.last) == data[CHUNK + 3 : CHUNK + 100]
    )
    del fill
    await reads.fills.wait_idle()
    read.parts = _no_parts()  # the unstarted parts held the fill: dropped, nothing holds it
    gc.collect()
    assert read.fill() is None and reads.fills.memory.used == 0
    spanning = await reads.read(mount, "k", ByteRange(CHUNK - 1, CHUNK), {})
    assert spanning.fill is None
    assert await _body(spanning) == data[CHUNK - 1 : CHUNK + 1]


async def _no_parts() -> AsyncIterator[FileSlice]:
    return
    yield


async def test_a_failed_fill_is_never_whole() -> None:
    """Fill.whole gives nothing for a fill that failed, even with every byte in: the caller
    streams what came and the cut, never a clean answer."""
    budget = MemoryBudget(100)
    claim = budget.claim(10)
    fill = Fill(b"o" * 16, 0, claim, 0)
    meta = ObjectMeta(size=10, etag='"e"', last_modified=0.0)
    fill.begin(meta, 0, 10, verified=True)
    fill.append(b"x" * 10)
    fill.finish(ConnectionError("the check failed"))
    assert await fill.whole(0, 9) is None
    ok = Fill(b"p" * 16, 0, budget.claim(10), 0)
    ok.begin(meta, 0, 10)
    ok.append(b"0123456789")
    ok.finish()
    assert await ok.whole(2, 4) == b"234" and await ok.whole(0, 9) == b"0123456789"
