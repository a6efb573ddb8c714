"""Thundering herd: many concurrent cold reads cost one store GET per chunk (B.1 #6)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import fetch_many, new_bucket, payload, proxy_config, scrape, store_env
from tests.relay import CountingRelay
from tests.servers import S3Endpoint

KIB = 1024
READERS = 500


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    # A little store latency widens the window in which every reader piles onto one fill.
    with CountingRelay(seaweedfs.url, latency=0.05) as r:
        yield r


@pytest.fixture
def bucket(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> str:
    name = new_bucket("herd")
    s3_client_factory(seaweedfs).create_bucket(Bucket=name)
    return name


def _seed(seaweedfs: S3Endpoint, factory: S3ClientFactory, bucket: str, key: str, n: int) -> bytes:
    body = payload(n, seed=n)
    factory(seaweedfs).put_object(Bucket=bucket, Key=key, Body=body)
    return body


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
async def test_500_cold_readers_one_store_get(
    workers: int,
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    body = _seed(seaweedfs, s3_client_factory, bucket, "cold/one", 100 * KIB)
    proxy = proxy_factory(
        proxy_config(relay.url, bucket, tmp_path / "cache", workers=workers),
        store_env(seaweedfs),
    )
    relay.reset()
    results = await fetch_many(f"{proxy.url}/{bucket}/cold/one", READERS)
    assert [s for s, _ in results] == [200] * READERS
    assert all(b == body for _, b in results)
    assert relay.counts == {("GET", f"/{bucket}/cold/one"): 1}, proxy.log()
    if workers > 1:
        served = scrape(proxy.admin_url).get("slipstream_requests_total", operation="GetObject")
        assert served == READERS


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
async def test_500_cold_readers_multi_chunk_one_get_per_chunk(
    workers: int,
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    chunk = 128 * KIB
    size = 5 * chunk + 1000  # six chunks, the last one short
    body = _seed(seaweedfs, s3_client_factory, bucket, "cold/chunks", size)
    cache = {"chunk_size": "128KiB", "inline_max": "16KiB"}
    proxy = proxy_factory(
        proxy_config(relay.url, bucket, tmp_path / "cache", cache=cache, workers=workers),
        store_env(seaweedfs),
    )
    relay.reset()
    results = await fetch_many(f"{proxy.url}/{bucket}/cold/chunks", READERS)
    assert [s for s, _ in results] == [200] * READERS
    assert all(b == body for _, b in results)
    assert relay.counts == {("GET", f"/{bucket}/cold/chunks"): 6}, proxy.log()


async def test_concurrent_cold_range_reads_one_get_per_chunk(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    chunk = 128 * KIB
    size = 5 * chunk + 1000
    body = _seed(seaweedfs, s3_client_factory, bucket, "cold/ranges", size)
    cache = {"chunk_size": "128KiB", "inline_max": "16KiB"}
    proxy = proxy_factory(
        proxy_config(relay.url, bucket, tmp_path / "cache", cache=cache), store_env(seaweedfs)
    )
    rng = random.Random(7)
    spans = []
    for _ in range(200):
        first = rng.randrange(size)
        spans.append((first, min(size - 1, first + rng.randrange(3 * chunk))))
    url = f"{proxy.url}/{bucket}/cold/ranges"
    relay.reset()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(first: int, last: int) -> tuple[int, bytes]:
            async with session.get(url, headers={"Range": f"bytes={first}-{last}"}) as resp:
                return resp.status, await resp.read()

        results = await asyncio.gather(*(one(a, b) for a, b in spans))
    for (first, last), (status, got) in zip(spans, results, strict=True):
        assert status == 206
        assert got == body[first : last + 1], (first, last)
    per_chunk = relay.count_of("GET", f"/{bucket}/cold/ranges")
    assert per_chunk == 6, f"{per_chunk} store GETs for 6 chunks"
