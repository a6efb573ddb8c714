"""Eviction through a real proxy: the cache never holds more than max_size after a commit, a
re-read working set survives a one-pass scan of many cold objects, and shuffled epochs over a
dataset twice the cache's size keep what fits (admission, proxy/cache/eviction.py).

The policy alone is tested in tests/test_cache_eviction.py, over the LMDB index in
tests/test_cache_index.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import (
    get_body,
    new_bucket,
    payload,
    proxy_config,
    scrape,
    store_env,
    wait_until,
)
from tests.relay import CountingRelay
from tests.servers import S3Endpoint

KIB = 1024

# -- through the proxy ----------------------------------------------------------------------


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url) as r:
        yield r


def test_cache_stays_under_max_size(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    tmp_path: Path,
) -> None:
    chunk = 64 * KIB
    max_size = 4 * chunk
    bucket = new_bucket("evict")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    objects = {f"o/{n}": payload(chunk - 100 * n, seed=200 + n) for n in range(12)}
    objects["two-chunks"] = payload(chunk + 5000, seed=300)
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cache = {"chunk_size": chunk, "inline_max": "8KiB", "max_size": max_size}
    cache_dir = tmp_path / "cache"
    proxy = proxy_factory(
        proxy_config(relay.url, bucket, cache_dir, cache=cache), store_env(seaweedfs)
    )
    committed = 0.0
    for key, body in objects.items():
        status, got = get_body(f"{proxy.url}/{bucket}/{key}")
        assert status == 200 and got == body, key

        def next_commit(seen: float = committed) -> bool:
            return scrape(proxy.admin_url).get("slipstream_fills_total") > seen

        assert wait_until(next_commit, 5), proxy.log()
        m = scrape(proxy.admin_url)
        committed = m.get("slipstream_fills_total")
        assert m.get("slipstream_cache_bytes") <= max_size, key
        on_disk = sum(p.stat().st_size for p in (cache_dir / "blobs").rglob("*") if p.is_file())
        assert on_disk <= max_size + chunk, key  # files of an evicted chunk go after commit
    m = scrape(proxy.admin_url)
    assert m.get("slipstream_evictions_total") > 0
    assert m.get("slipstream_evicted_bytes_total") > 0
    # Evicted objects are fetched again, correctly.
    relay.reset()
    status, got = get_body(f"{proxy.url}/{bucket}/o/0")
    assert status == 200 and got == objects["o/0"]
    assert relay.count_of("GET", f"/{bucket}/o/0") == 1


def test_hot_set_survives_a_scan(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    tmp_path: Path,
) -> None:
    size = 32 * KIB
    bucket = new_bucket("scan")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    hot = {f"hot/{n}": payload(size, seed=400 + n) for n in range(6)}
    cold = {f"cold/{n}": payload(size, seed=500 + n) for n in range(48)}
    for key, body in {**hot, **cold}.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    # 1 MiB holds 32 objects: the hot set (6) fits easily; the scan (48) does not.
    cache = {"chunk_size": "64KiB", "inline_max": "8KiB", "max_size": "1MiB"}
    proxy = proxy_factory(
        proxy_config(relay.url, bucket, tmp_path / "cache", cache=cache), store_env(seaweedfs)
    )
    for _ in range(3):
        for key, body in hot.items():
            status, got = get_body(f"{proxy.url}/{bucket}/{key}")
            assert status == 200 and got == body
    time.sleep(1.5)  # hit counts reach the index once a second
    for key, body in cold.items():
        status, got = get_body(f"{proxy.url}/{bucket}/{key}")
        assert status == 200 and got == body
    assert wait_until(lambda: scrape(proxy.admin_url).get("slipstream_evictions_total") > 0, 5)
    relay.reset()
    for key, body in hot.items():
        status, got = get_body(f"{proxy.url}/{bucket}/{key}")
        assert status == 200 and got == body
    assert relay.count == 0, f"hot objects were evicted by the scan: {relay.counts}"
    # Not vacuous: most of the scan could not stay.
    relay.reset()
    for key in list(cold)[:8]:
        get_body(f"{proxy.url}/{bucket}/{key}")
    assert relay.count > 0


def test_shuffled_epochs_over_twice_the_cache_keep_what_fits(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    tmp_path: Path,
) -> None:
    """400 objects of 16 KiB (6.4 MiB) through a cache of 3.2 MiB, read in a new order each
    epoch by two workers: the hit ratio of each epoch, from the store's GET counts, stays
    above 0.4 from the second epoch on (plain S3-FIFO gave about 0.2 in some epochs)."""
    size, objects = 16 * KIB, 400
    bucket = new_bucket("epochs")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    keys = [f"shard/{n:04d}" for n in range(objects)]
    for n, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=payload(size, seed=n))
    cache = {
        "max_size": objects * size // 2,
        "metadata_ttl": "10m",
        "chunk_size": "64KiB",
        "inline_max": "8KiB",
    }
    proxy = proxy_factory(
        proxy_config(relay.url, bucket, tmp_path / "cache", cache=cache, workers=2),
        store_env(seaweedfs),
    )
    rng = random.Random(11)
    ratios = []
    for _ in range(4):
        rng.shuffle(keys)
        relay.reset()
        for key in keys:
            status, got = get_body(f"{proxy.url}/{bucket}/{key}")
            assert status == 200 and got == payload(size, seed=int(key[6:])), key
        fetched = sum(relay.count_of("GET", f"/{bucket}/{key}") for key in keys)
        ratios.append(1 - fetched / objects)
        time.sleep(1.2)  # hit counts reach the index once a second
        assert scrape(proxy.admin_url).get("slipstream_cache_bytes") <= objects * size // 2
    assert ratios[0] == 0, ratios
    assert min(ratios[1:]) > 0.4, ratios
