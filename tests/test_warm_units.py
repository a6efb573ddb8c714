"""The warm-up runner in-process over the fs store (the core built as tests/test_core_units.py
builds it): listing and fetching overlap, the queue between them is bounded, and a token
bucket caps the rate."""

from __future__ import annotations

import asyncio
import time

from proxy.config import CacheConfig
from proxy.jobs.spec import WarmSpec
from proxy.jobs.throttle import TokenBucket
from proxy.jobs.warm import JobCore, WarmJob
from proxy.routing import Router
from tests.test_core_units import Core, core  # noqa: F401  (the fixture)


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
