"""The store fails: unreachable, 5xx, or a body cut short (B.1 #5).

A miss answers a quick S3-XML 503; a cached entry keeps being served past its TTL while the
store is away (stale-if-error); a truncated store body reaches the client as an error and is
never committed, so the next read (store healthy again) is byte-exact.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import (
    audit_cache,
    get_body,
    new_bucket,
    payload,
    proxy_config,
    scrape,
    store_env,
)
from tests.relay import CountingRelay
from tests.servers import S3Endpoint, free_port

KIB = 1024
FAST = {"retries": 0, "connect_timeout": "1s", "read_timeout": "3s"}


@pytest.fixture
def bucket(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> str:
    name = new_bucket("store")
    s3_client_factory(seaweedfs).create_bucket(Bucket=name)
    return name


def _s3_error(body: bytes) -> str:
    root = ET.fromstring(body)
    assert root.tag == "Error", body[:300]
    code = root.findtext("Code")
    assert code is not None
    return code


@pytest.fixture
def dead_store_relay() -> Iterator[CountingRelay]:
    """A relay whose target is a closed port: the store answers 502 to everything."""
    with CountingRelay(f"http://127.0.0.1:{free_port()}") as relay:
        yield relay


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A store address that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("how", ["closed-port", "store-5xx", "black-hole"])
def test_miss_with_store_down_is_a_quick_503(
    how: str,
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    dead_store_relay: CountingRelay,
    black_hole: str,
    tmp_path: Path,
) -> None:
    backend = dict(FAST)
    limit = 3.0
    if how == "closed-port":
        url = f"http://127.0.0.1:{free_port()}"
    elif how == "store-5xx":
        url = dead_store_relay.url
    else:
        url, backend["read_timeout"] = black_hole, "1500ms"
        limit = 1.5 + 2.0
    proxy = proxy_factory(
        proxy_config(url, "gone", tmp_path / "cache", backend=backend), store_env(seaweedfs)
    )
    for path in ("/gone/some/key", "/gone/other"):
        started = time.monotonic()
        status, body = get_body(f"{proxy.url}{path}", timeout=15)
        elapsed = time.monotonic() - started
        assert status == 503, body[:300]
        assert _s3_error(body) in ("ServiceUnavailable", "SlowDown")
        assert elapsed < limit, f"a dead store took {elapsed:.1f}s to report"
    if how == "store-5xx":
        assert dead_store_relay.count == 2, dead_store_relay.counts  # retries: 0: one attempt
    with urllib.request.urlopen(f"{proxy.admin_url}/readyz", timeout=5) as resp:
        assert resp.status == 200  # the proxy itself stays up


def test_cached_entries_served_stale_while_store_is_away(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    bucket: str,
    tmp_path: Path,
) -> None:
    objects = {"inline": payload(2 * KIB, seed=600), "chunked": payload(300 * KIB, seed=601)}
    s3 = s3_client_factory(seaweedfs)
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    relay = CountingRelay(seaweedfs.url)
    relay.start_thread()
    try:
        cache = {"metadata_ttl": "1s", "stale_if_error": "60s", "chunk_size": "128KiB"}
        cache["inline_max"] = "16KiB"
        proxy = proxy_factory(
            proxy_config(relay.url, bucket, tmp_path / "cache", cache=cache, backend=FAST),
            store_env(seaweedfs),
        )
        for key, body in objects.items():
            status, got = get_body(f"{proxy.url}/{bucket}/{key}")
            assert status == 200 and got == body
    finally:
        relay.stop_thread()  # the store's address now refuses connections
    time.sleep(1.5)  # past metadata_ttl: every read must revalidate, and the store is gone
    before = scrape(proxy.admin_url).get("slipstream_cache_stale_served_total")
    for _ in range(2):
        for key, body in objects.items():
            status, got = get_body(f"{proxy.url}/{bucket}/{key}", timeout=15)
            assert status == 200, got[:300]
            assert got == body, key
        time.sleep(1.1)
    after = scrape(proxy.admin_url).get("slipstream_cache_stale_served_total")
    assert after > before
    status, body = get_body(f"{proxy.url}/{bucket}/never-cached", timeout=15)
    assert status == 503 and _s3_error(body) in ("ServiceUnavailable", "SlowDown")


def test_stale_entries_expire_after_stale_if_error(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    bucket: str,
    tmp_path: Path,
) -> None:
    body = payload(50 * KIB, seed=602)
    s3_client_factory(seaweedfs).put_object(Bucket=bucket, Key="k", Body=body)
    with CountingRelay(seaweedfs.url) as relay:
        cache = {"metadata_ttl": "1s", "stale_if_error": "1s", "inline_max": "16KiB"}
        proxy = proxy_factory(
            proxy_config(relay.url, bucket, tmp_path / "cache", cache=cache, backend=FAST),
            store_env(seaweedfs),
        )
        assert get_body(f"{proxy.url}/{bucket}/k") == (200, body)
    time.sleep(2.3)  # past metadata_ttl + stale_if_error
    status, got = get_body(f"{proxy.url}/{bucket}/k", timeout=15)
    assert status == 503, "served an entry older than its TTL plus stale_if_error"
    assert _s3_error(got) in ("ServiceUnavailable", "SlowDown")


async def _read_all_or_error(url: str, n: int) -> list[bytes | None]:
    """``n`` concurrent GETs: each body, or None where the transfer broke."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def one() -> bytes | None:
            try:
                async with session.get(url) as resp:
                    return await resp.read()
            except aiohttp.ClientError:
                return None

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("size", [200 * KIB, 700 * KIB], ids=["one-chunk", "three-chunks"])
def test_truncated_store_body_is_never_committed(
    size: int,
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    bucket: str,
    tmp_path: Path,
) -> None:
    body = payload(size, seed=size)
    s3_client_factory(seaweedfs).put_object(Bucket=bucket, Key="cut", Body=body)
    cache_dir = tmp_path / "cache"
    with CountingRelay(seaweedfs.url, cut_after=100 * KIB) as relay:
        cache = {"chunk_size": "256KiB", "inline_max": "16KiB"}
        proxy = proxy_factory(
            proxy_config(relay.url, bucket, cache_dir, cache=cache, backend=FAST),
            store_env(seaweedfs),
        )
        url = f"{proxy.url}/{bucket}/cut"
        try:
            with urllib.request.urlopen(url, timeout=15) as resp:
                got = resp.read()
        except Exception as exc:  # noqa: BLE001 - a broken body is the expected outcome
            got = f"<{exc!r}>".encode()
        assert got != body, "a cut store body reached the client as a whole one"
        # Readers coalesced on a fill that breaks all get the error, promptly (no hang).
        started = time.monotonic()
        outcomes = asyncio.run(_read_all_or_error(url, 20))
        assert all(o != body for o in outcomes)
        assert time.monotonic() - started < 10
        time.sleep(0.3)
        audit = audit_cache(cache_dir)
        assert all(r.chunks == 0 and not r.inline for r in audit.records.values()), audit
        assert audit.blob_files == {}

        relay.cut_after = None
        relay.reset()
        status, got = get_body(url)
        assert status == 200 and got == body
        assert relay.count_of("GET", f"/{bucket}/cut") == -(-size // (256 * KIB))
