"""Listing-driven prefetch (``prefetch: listing``): a ListObjects of such a bucket fetches the
listed objects (counted at the store, behind a CountingRelay) without a client reading them;
a bucket without the option fetches nothing."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import from_mapping
from proxy.errors import ConfigError
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

N = 12


@pytest.fixture(params=["seaweedfs", "moto"])
def store(request: pytest.FixtureRequest) -> S3Endpoint:
    name = "moto_server" if request.param == "moto" else "seaweedfs"
    endpoint: S3Endpoint = request.getfixturevalue(name)
    return endpoint


@pytest.fixture
def relay(store: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(store.url, latency=0.01) as r:
        yield r


@pytest.fixture
def bucket(store: S3Endpoint, s3_client_factory: S3ClientFactory) -> str:
    name = new_bucket("plist")
    client = s3_client_factory(store)
    client.create_bucket(Bucket=name)
    for prefix in ("listed", "plain"):
        for i in range(N):
            client.put_object(Bucket=name, Key=f"{prefix}/{i:03d}", Body=payload(3000 + i, seed=i))
    client.put_object(Bucket=name, Key="listed/dir/", Body=b"")
    return name


def gets(relay: CountingRelay, prefix: str) -> int:
    return sum(n for (m, p), n in relay.counts.items() if m == "GET" and prefix in p)


def list_page(url: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        resp.read()


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_a_listing_prefetches_the_listed_objects(
    workers: int,
    proxy_factory: ProxyFactory,
    store: S3Endpoint,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    cfg = proxy_config(relay.url, bucket, tmp_path / "cache", workers=workers)
    plain = f"{bucket}-plain"
    cfg["buckets"] = {
        bucket: {"backend": "store", "prefetch": "listing"},
        plain: {"backend": "store", "bucket": bucket},
    }
    proxy = proxy_factory(cfg, store_env(store))
    relay.reset()
    list_page(f"{proxy.url}/{plain}?list-type=2&prefix=plain/")  # no option: nothing fetched
    list_page(f"{proxy.url}/{bucket}?prefix=listed/&delimiter=/")  # v1: 'dir/' is a prefix
    list_page(f"{proxy.url}/{bucket}?list-type=2&prefix=listed/dir")  # only a directory marker
    assert wait_until(lambda: gets(relay, "/listed/") >= N, timeout=30), relay.counts
    assert gets(relay, "/listed/") == N  # each listed object once; not the directory marker
    assert gets(relay, "/plain/") == 0
    list_page(f"{proxy.url}/{bucket}?list-type=2&prefix=listed/")  # cached: not queued again
    for i in range(N):
        status, body = get_body(f"{proxy.url}/{bucket}/listed/{i:03d}")
        assert status == 200 and body == payload(3000 + i, seed=i)
    assert gets(relay, "/listed/") == N  # the reads were hits
    assert gets(relay, "/plain/") == 0

    def fills(process: str) -> float:
        m = scrape(proxy.admin_url)
        return m.get("slipstream_job_fills_total", kind="prefetch", process=process)

    if workers > 1:  # the workers filled what was listed; the supervisor none of it
        assert wait_until(lambda: fills("worker") > 0, timeout=10)
        with urllib.request.urlopen(f"{proxy.admin_url}/admin/v1/prefetch") as resp:
            jobs = json.loads(resp.read())["jobs"]
        assert fills("worker") >= sum(j["fetched"] for j in jobs) > 0, jobs
    assert fills("supervisor") == 0


def test_the_option_is_checked_at_start() -> None:
    def mapping(**bucket: object) -> dict[str, object]:
        return {
            "backends": {"s": {"type": "fs", "root": "/tmp"}},
            "buckets": {"data": {"backend": "s", **bucket}},
        }

    assert from_mapping(mapping(prefetch="listing"), "t").buckets["data"].prefetch == "listing"
    assert from_mapping(mapping(), "t").buckets["data"].prefetch == "off"
    for bad in ({"prefetch": "always"}, {"prefetch": "listing", "cache": False}):
        with pytest.raises(ConfigError, match=r"buckets\.data\.prefetch"):
            from_mapping(mapping(**bad), "t")
