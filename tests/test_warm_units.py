"""The warm-up runner in-process over the fs store (the core built as tests/test_core_units.py
builds it): listing and fetching overlap, the queue between them is bounded, a token bucket
caps the rate, client reads go first (a client read joins a job's fetch in flight; jobs yield
fill slots to client misses), and a large object's chunks are fetched several at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.config import CacheConfig, MountConfig
from proxy.jobs.gate import JobGate
from proxy.jobs.registry import Jobs
from proxy.jobs.spec import WarmSpec
from proxy.jobs.throttle import TokenBucket
from proxy.jobs.warm import JobCore, WarmJob, drain, drain_chunk
from proxy.model import GetResult
from proxy.routing import Router
from tests.faultkit import eventually
from tests.test_core_units import (  # noqa: F401
    BUCKET,
    CHUNK,
    Core,
    _data,
    _read,
    _requests,
    core,
)


async def test_the_first_fetch_starts_before_the_listing_ends(core: Core) -> None:  # noqa: F811
    for i in range(40):
        core.put_file(f"k{i:02d}", bytes([i]) * 2000)
    core.store.gate.clear()  # the store holds every GET until the gate opens
    router = Router({}, {}, CacheConfig(dir=core.cache.root))
    job = WarmJob(
        "t", WarmSpec(bucket="data", concurrency=2), JobCore(router, core.reads), core.mount
    )
    job.start()
    for _ in range(1000):  # up to 10 s for both workers to reach the store
        if core.store.gets >= 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    p = job.progress
    # two GETs in flight, the lister stopped at the queue's bound (4 per worker), not at the end
    assert core.store.gets == 2 and not p.listing_done
    assert p.total_known <= 2 + 2 * 4 + 1, p
    core.store.gate.set()
    await job.wait()
    assert job.state == "done" and job.progress.objects_done == 40 and p.listing_done
    assert core.store.gets == 40


async def test_token_bucket_caps_the_rate() -> None:
    bucket = TokenBucket(100_000)  # 100 kB/s, one second of burst
    started = time.monotonic()
    for _ in range(30):
        await bucket.take(10_000)  # 300 kB: 100 kB of burst, then 2 s of waiting
    assert time.monotonic() - started >= 1.8


JOB_KEYS = 40


class Order:
    """Wraps the store's ``get``: the keys of the store GETs in the order they began."""

    def __init__(self, c: Core) -> None:
        self.keys: list[str] = []
        inner = c.store.get

        async def get(bucket: str, key: str, *args: Any, **kw: Any) -> GetResult:
            self.keys.append(key)
            result: GetResult = await inner(bucket, key, *args, **kw)
            return result

        c.store.get = get  # type: ignore[method-assign]


async def _jobs(c: Core, gate: JobGate | None = None) -> Jobs:
    router = Router({BUCKET: MountConfig(name=BUCKET, backend="fs")}, {"fs": c.store}, c.cache.cfg)  # type: ignore[dict-item]
    jobs = Jobs()
    await jobs.attach(JobCore(router, c.reads, gate))
    return jobs


async def _client_position(c: Core, top: str, gate: JobGate | None) -> int:
    """A job (concurrency 16) over 40 objects saturates the 8 fill slots while the store
    holds every GET; then a client misses: how many GETs began before the client's."""
    for i in range(JOB_KEYS):
        c.put_file(f"{top}-{i:02d}", _data(CHUNK))
    c.put_file(f"{top}-client", _data(CHUNK))
    order = Order(c)
    jobs = await _jobs(c, gate)
    c.store.gate.clear()
    job = jobs.warm(WarmSpec(bucket=BUCKET, prefix=f"{top}-", concurrency=16))
    await eventually(lambda: len(order.keys) >= 6, interval=0.005)
    await asyncio.sleep(0.05)  # every job fetch that can start has started
    client = asyncio.create_task(_read(c, f"{top}-client"))
    await asyncio.sleep(0.05)
    c.store.gate.set()
    _, body = await client
    assert body == _data(CHUNK)
    await job.wait()
    # the prefix holds the client's key too: the job found it cached or joined its fill (still
    # committing), so each of the 41 objects took one store GET
    assert job.state == "done" and job.progress.objects_done == JOB_KEYS + 1
    assert sorted(order.keys) == sorted({*order.keys}) and len(order.keys) == JOB_KEYS + 1
    await jobs.close()
    return order.keys.index(f"{top}-client")


async def test_client_misses_go_before_job_fetches(core: Core) -> None:  # noqa: F811
    max_fills = core.cache.cfg.max_fills  # 8
    # without priority the job takes every slot and queues more: the client waits behind them
    plain = await _client_position(
        core, "plain", JobGate(core.reads.fills, 1000, yield_to_clients=False)
    )
    assert plain >= max_fills + 4, plain
    # with it the jobs hold 6 of the 8 slots: the client's fill starts at once
    first = await _client_position(core, "first", None)
    assert first <= max_fills, first


async def test_a_client_read_joins_the_jobs_fetch_in_flight(core: Core) -> None:  # noqa: F811
    big = _data(CHUNK * 3 + 100)
    core.put_file("joined", big)
    order = Order(core)
    jobs = await _jobs(core)
    core.store.gate.clear()
    job = jobs.warm(WarmSpec(bucket=BUCKET, keys=("joined",)))
    await eventually(lambda: len(order.keys) >= 1, interval=0.005)
    client = asyncio.create_task(_read(core, "joined"))
    await asyncio.sleep(0.05)
    core.store.gate.set()
    read, body = await client
    assert body == big
    await job.wait()
    assert job.state == "done"
    assert order.keys.count("joined") == 4  # one GET per chunk, shared by the job and client
    await jobs.close()


async def test_a_large_object_is_warmed_several_chunks_at_once(core: Core) -> None:  # noqa: F811
    big = _data(CHUNK * 8 + 123)
    core.put_file("big", big)
    inner, now, most = core.store.get, [0], [0]

    async def get(bucket: str, key: str, *args: Any, **kw: Any) -> GetResult:
        now[0] += 1
        most[0] = max(most[0], now[0])
        try:
            await asyncio.sleep(0.05)  # a store some way off
            result: GetResult = await inner(bucket, key, *args, **kw)
            return result
        finally:
            now[0] -= 1

    core.store.get = get  # type: ignore[method-assign]
    jobs = await _jobs(core)
    job = jobs.warm(WarmSpec(bucket=BUCKET, keys=("big",), concurrency=1))
    await job.wait()
    assert job.state == "done" and job.progress.bytes_done == len(big)
    assert core.store.gets == 9  # one ranged GET per chunk, none twice
    assert most[0] >= 4, most  # several chunks of the one object in flight
    await core.reads.fills.wait_idle()  # the last chunks' commits
    read, body = await _read(core, "big")
    assert read.source == "cache" and body == big
    assert core.store.gets == 9
    await jobs.close()


async def test_a_jobs_reads_are_not_the_buckets_hits_or_misses(core: Core) -> None:  # noqa: F811
    """A warm-up job drains objects through the core, but it is no client: its reads neither
    count as the bucket's misses (nor hits, the second time) nor move a prefetch job's read
    position. The client's read after it is a hit."""
    noted: list[tuple[str, str]] = []
    core.reads.on_read = lambda bucket, key: noted.append((bucket, key))
    data = _data(CHUNK + 100)
    core.put_file("obj", data)
    hits, misses = _requests("hit"), _requests("miss")
    assert await drain(core.reads, core.mount, "obj") == ("backend", len(data))
    await core.reads.fills.wait_idle()
    assert await drain(core.reads, core.mount, "obj") == ("cache", len(data))
    # a cluster owner's fill of a chunk (a warm job's, or a replica's) is no client's either
    assert await drain_chunk(core.reads, core.mount, "obj", 1) == ("cache", 100, len(data))
    assert (_requests("hit") - hits, _requests("miss") - misses, noted) == (0, 0, [])
    read, body = await _read(core, "obj")
    assert (read.source, body) == ("cache", data)
    assert (_requests("hit") - hits, _requests("miss") - misses) == (1, 0)
    assert noted == [(BUCKET, "obj")]
