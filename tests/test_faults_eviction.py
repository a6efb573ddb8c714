"""Eviction: the S3-FIFO policy alone (Hypothesis), then a small cache under a real proxy.

The policy (proxy/cache/eviction.py) runs over an in-memory Queues here: it never evicts a
pinned entry, ends at or under its target unless everything left is pinned, and accounts for
every byte it frees. Through the proxy: the cache never holds more than max_size after a
commit, and a re-read working set survives a one-pass scan of many cold objects.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache import eviction
from proxy.cache.eviction import Entry, Queue
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

# -- the policy over in-memory queues ---------------------------------------------------------


class MemQueues:
    """eviction.Queues in memory. Like the LMDB one, head() hands out a fresh Entry."""

    def __init__(self, entries: list[tuple[Queue, Entry]]) -> None:
        self.queues: dict[Queue, deque[Entry]] = {"S": deque(), "M": deque()}
        for q, e in entries:
            self.queues[q].append(e)
        self.evicted: list[Entry] = []
        self.popped: Entry | None = None

    def head(self, queue: Queue) -> Entry | None:
        q = self.queues[queue]
        return replace(q[0]) if q else None

    def pop_head(self, queue: Queue) -> None:
        assert self.popped is None, "popped twice without push or evict"
        self.popped = self.queues[queue].popleft()

    def push_tail(self, queue: Queue, entry: Entry) -> None:
        assert self.popped is not None and self.popped.id == entry.id
        assert entry.size == self.popped.size and entry.pinned == self.popped.pinned
        self.popped = None
        self.queues[queue].append(replace(entry))

    def queue_bytes(self, queue: Queue) -> int:
        return sum(e.size for e in self.queues[queue])

    def evict(self, entry: Entry) -> None:
        assert self.popped is not None and self.popped.id == entry.id, "evicted a non-head"
        self.popped = None
        self.evicted.append(entry)

    def total(self) -> int:
        return self.queue_bytes("S") + self.queue_bytes("M")

    def remaining(self) -> list[Entry]:
        return [*self.queues["S"], *self.queues["M"]]


entries_st = st.lists(
    st.tuples(
        st.sampled_from(["S", "M"]),
        st.integers(1, 1000),  # size
        st.integers(0, eviction.MAX_FREQ),
        st.booleans(),  # pinned
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(entries=entries_st, cap_frac=st.floats(0.0, 1.5), target_frac=st.floats(0.0, 1.0))
def test_evict_until_properties(
    entries: list[tuple[Queue, int, int, bool]], cap_frac: float, target_frac: float
) -> None:
    items = [
        (q, Entry(id=n.to_bytes(4, "big"), size=size, freq=freq, pinned=pinned))
        for n, (q, size, freq, pinned) in enumerate(entries)
    ]
    queues = MemQueues(items)
    before = queues.total()
    capacity = max(1, int(before * cap_frac))
    target = int(capacity * target_frac)

    freed = eviction.evict_until(queues, capacity, target)

    assert queues.popped is None, "an entry was popped and neither pushed back nor evicted"
    evicted_ids = [e.id for e in queues.evicted]
    remaining_ids = [e.id for e in queues.remaining()]
    assert len(set(evicted_ids)) == len(evicted_ids)
    assert sorted(evicted_ids + remaining_ids) == sorted(e.id for _, e in items)
    assert not any(e.pinned for e in queues.evicted), "evicted a pinned entry"
    assert freed == sum(e.size for e in queues.evicted)
    assert queues.total() == before - freed
    if not all(e.pinned for e in queues.remaining()):
        assert queues.total() <= target, "stopped above target with evictable entries left"


def test_evict_until_scan_keeps_reread_entries() -> None:
    """A re-read entry at the small queue's head moves to main; unread ones are evicted."""
    hot = [("S", Entry(id=b"hot%d" % i, size=10, freq=1)) for i in range(3)]
    cold = [("S", Entry(id=b"cold%d" % i, size=10, freq=0)) for i in range(20)]
    queues = MemQueues([*hot, *cold])  # type: ignore[list-item]
    eviction.evict_until(queues, capacity=100, target=95)
    assert {e.id for e in queues.queues["M"]} == {b"hot0", b"hot1", b"hot2"}
    assert all(e.id.startswith(b"cold") for e in queues.evicted)
    assert queues.total() <= 95


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
