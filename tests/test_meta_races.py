"""A write wins over any read that started before it: forced interleavings, in-process.

A read that learns about an object from the store (a HEAD, a revalidation, a fill) and a
write-through PUT or DELETE of that object race: the read's store answer is held at a gate
while the write completes, then released. Whatever the read learnt is older than the write
and must not replace the write's record (which would drop the freshly cached bytes and
reinstall the old ETag: GETs would then abort mid-body until the TTL, forever with
``metadata_ttl: never``).

Each "worker" here is its own Reads/Writes (its own in-process tables) over the one
CacheStore, so only what the workers share, the LMDB index, can keep them consistent.
The core is built as tests/test_core_units.py builds it: a real CacheStore on ``tmp_path``
and a real fs backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy import backends, errors
from proxy.cache.record import Record
from proxy.cache.store import CacheStore
from proxy.config import BackendConfig, CacheConfig
from proxy.core.fills import Fills
from proxy.core.metadata import oid_of
from proxy.core.reads import Reads
from proxy.core.writes import Writes
from proxy.model import GetResult, ObjectMeta
from proxy.routing import Mount
from tests.test_core_units import _body, _collect

CHUNK = 4096
INLINE_MAX = 1024
BUCKET = "data"
# a record that never expires is never revalidated: these run with metadata_ttl 0 only
REVALIDATED = pytest.mark.parametrize("core", [0.0], ids=["ttl-0"], indirect=True)


class HeldStore:
    """A backend whose HEAD and GET answers, once the store has given them, wait at ``gate``
    (while it is clear) before reaching the proxy; ``answered`` is set when one is held."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.answered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _hold(self) -> None:
        if not self.gate.is_set():
            self.answered.set()
            await self.gate.wait()

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        try:
            meta: ObjectMeta = await self.inner.head(bucket, key)
        finally:  # an error answer is held too
            await self._hold()
        return meta

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        result: GetResult = await self.inner.get(bucket, key, start, end, if_match)
        body = [bytes(piece) async for piece in result.body]  # the store's answer, read now
        await result.aclose()
        await self._hold()

        async def replay() -> AsyncIterator[bytes]:
            for piece in body:
                yield piece

        return GetResult(result.meta, result.start, result.end, replay(), _noop)


async def _noop() -> None:
    return None


@dataclass
class Worker:
    reads: Reads
    writes: Writes


@dataclass
class Core:
    cache: CacheStore
    store: HeldStore
    mount: Mount
    a: Worker  # the reader
    b: Worker  # the writer
    root: Path

    def put_file(self, key: str, data: bytes) -> None:
        (self.root / BUCKET / key).write_bytes(data)

    def record(self, key: str) -> Record | None:
        return self.cache.lookup(oid_of(self.mount, key))[0]

    async def settle(self) -> None:
        for w in (self.a, self.b):
            await w.reads.fills.wait_idle()
            await w.reads.metadata.wait_idle()


def _worker(cache: CacheStore, cfg: CacheConfig) -> Worker:
    reads = Reads(cache, cfg, Fills(cache, cfg))
    return Worker(reads, Writes(cache, reads))


@pytest.fixture(params=[None, 0.0], ids=["ttl-never", "ttl-0"])
async def core(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Core]:
    root = tmp_path / "store"
    (root / BUCKET).mkdir(parents=True)
    cfg = CacheConfig(
        dir=tmp_path / "cache",
        max_size=64 * 1024**2,
        chunk_size=CHUNK,
        inline_max=INLINE_MAX,
        metadata_ttl=request.param,
        max_fills=8,
        index_map_size=64 * 1024**2,
    )
    cache = CacheStore(cfg)
    await cache.open()
    fs = backends.create(BackendConfig(name="fs", type="fs", root=root), cache.root / "staging")
    await fs.start()
    store = HeldStore(fs)
    mount = Mount(name=BUCKET, backend=store, bucket=BUCKET, prefix="", metadata_ttl=request.param)
    core = Core(cache, store, mount, _worker(cache, cfg), _worker(cache, cfg), root)
    yield core
    for w in (core.a, core.b):
        await w.reads.close()
    await cache.close()
    await fs.close()


def _data(size: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


async def _put(core: Core, key: str, data: bytes) -> ObjectMeta:
    return await core.b.writes.put(core.mount, key, _body(data), len(data), "text/plain", {}, {})


async def _read_body(core: Core, key: str) -> tuple[str, bytes, str]:
    read = await core.a.reads.read(core.mount, key, None, {})
    body, _ = await _collect(read)
    return read.source, body, read.meta.etag


async def _held(core: Core, coro: Any) -> asyncio.Task[Any]:
    """Start ``coro`` with the store's answers held; return once one is held."""
    core.store.gate.clear()
    core.store.answered.clear()
    task = asyncio.ensure_future(coro)
    await asyncio.wait_for(core.store.answered.wait(), 10)
    return task


async def _release(core: Core, task: asyncio.Task[Any]) -> None:
    core.store.gate.set()
    await asyncio.gather(task, return_exceptions=True)
    await core.settle()


async def _assert_cached(core: Core, key: str, data: bytes, etag: str) -> None:
    rec = core.record(key)
    assert rec is not None and rec.etag == etag, "a read older than the write replaced it"
    assert rec.inline or all(rec.has_chunk(i) for i in range(rec.chunk_count(CHUNK)))
    source, body, got = await _read_body(core, key)
    assert (source, body, got) == ("cache", data, etag)


@pytest.mark.parametrize("size", [300, 2 * CHUNK + 5], ids=["inline", "chunked"])
async def test_head_older_than_a_put_keeps_the_put(core: Core, size: int) -> None:
    v1, v2 = _data(size, 1), _data(size + 1, 2)
    core.put_file("obj", v1)
    head = await _held(core, core.a.reads.head(core.mount, "obj"))  # the store said v1
    meta = await _put(core, "obj", v2)
    await _release(core, head)
    await _assert_cached(core, "obj", v2, meta.etag)


async def test_head_older_than_a_delete_leaves_nothing(core: Core) -> None:
    core.put_file("obj", _data(300, 1))
    head = await _held(core, core.a.reads.head(core.mount, "obj"))
    await core.b.writes.delete(core.mount, "obj")
    await _release(core, head)
    assert core.record("obj") is None
    with pytest.raises(errors.NoSuchKey):
        await core.a.reads.head(core.mount, "obj")


@REVALIDATED
@pytest.mark.parametrize("size", [300, 2 * CHUNK + 5], ids=["inline", "chunked"])
async def test_revalidation_older_than_a_put_keeps_the_put(core: Core, size: int) -> None:
    v1, v2 = _data(size, 1), _data(size + 1, 2)
    core.put_file("obj", v1)
    assert (await _read_body(core, "obj"))[1] == v1
    await core.settle()
    head = await _held(core, core.a.reads.head(core.mount, "obj"))  # revalidates v1
    meta = await _put(core, "obj", v2)
    await _release(core, head)
    await _assert_cached(core, "obj", v2, meta.etag)


@REVALIDATED
async def test_revalidation_finding_no_object_keeps_a_later_put(core: Core) -> None:
    core.put_file("obj", _data(300, 1))
    assert (await _read_body(core, "obj"))[1] == _data(300, 1)
    await core.settle()
    (core.root / BUCKET / "obj").unlink()  # gone behind the proxy's back
    head = await _held(core, core.a.reads.head(core.mount, "obj"))  # will say NoSuchKey
    v2 = _data(300, 2)
    meta = await _put(core, "obj", v2)
    await _release(core, head)
    await _assert_cached(core, "obj", v2, meta.etag)


@pytest.mark.parametrize("size", [300, 2 * CHUNK + 5], ids=["inline", "chunked"])
async def test_fill_older_than_a_put_in_another_worker_keeps_the_put(core: Core, size: int) -> None:
    v1, v2 = _data(size, 1), _data(size + 1, 2)
    core.put_file("obj", v1)
    read = await _held(core, _read_body(core, "obj"))  # a cold read's fill got v1
    meta = await _put(core, "obj", v2)  # worker b: a's in-process tables know nothing
    await _release(core, read)
    await _assert_cached(core, "obj", v2, meta.etag)
