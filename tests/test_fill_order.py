"""A fill's readers are answered before its commit is prepared: nobody waits for the commit,
so the record, the copy of the bytes and the writer's queue come after the readers' turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy import backends
from proxy.cache.store import CacheStore
from proxy.config import BackendConfig, CacheConfig
from proxy.core.fills import Fills
from proxy.core.reads import Reads
from proxy.routing import Mount

BUCKET = "data"


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[tuple[Reads, Mount, Path, CacheStore]]:
    root = tmp_path / "store"
    (root / BUCKET).mkdir(parents=True)
    cfg = CacheConfig(
        dir=tmp_path / "cache",
        max_size=64 * 1024**2,
        chunk_size=64 * 1024,
        inline_max=32 * 1024,
        metadata_ttl=None,
        index_map_size=64 * 1024**2,
    )
    cache = CacheStore(cfg)
    await cache.open()
    fs = backends.create(BackendConfig(name="fs", type="fs", root=root), cache.root / "staging")
    await fs.start()
    mount = Mount(name=BUCKET, backend=fs, bucket=BUCKET, prefix="", metadata_ttl=None)
    reads = Reads(cache, cfg, Fills(cache, cfg))
    yield reads, mount, root / BUCKET, cache
    await reads.close()
    await cache.close()
    await fs.close()


@pytest.mark.parametrize("size", [16 * 1024, 40 * 1024])  # inline, and a chunk file
async def test_a_cold_reader_has_its_bytes_before_the_fill_commits(
    core: tuple[Reads, Mount, Path, CacheStore], monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    reads, mount, root, cache = core
    data = bytes(i % 251 for i in range(size))
    (root / "obj").write_bytes(data)
    order: list[str] = []
    kinds: list[str] = []
    for name in ("commit_inline", "commit_chunk"):
        real = getattr(cache, name)

        async def spy(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> bool:
            order.append("commit")
            kinds.append(_name)
            return bool(await _real(*args, **kw))

        monkeypatch.setattr(cache, name, spy)
    read = await reads.read(mount, "obj", None, {})
    assert read.fill is not None
    fill = read.fill()
    assert fill is not None
    got = await fill.whole(read.first, read.last)
    order.append("read")
    assert got == data
    await reads.fills.settled([fill.oid])
    assert order == ["read", "commit"]
    assert kinds == ["commit_inline" if size <= 32 * 1024 else "commit_chunk"]
    rec, _ = cache.lookup(fill.oid)
    assert rec is not None and rec.size == size  # committed all the same
