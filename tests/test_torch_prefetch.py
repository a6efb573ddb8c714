"""The PyTorch helper (proxy/contrib/torch_prefetch.py), with a plain sampler-like iterable
(torch is not installed): each epoch's order is posted and fetched ahead of the reads, and an
unreachable proxy does not break iteration."""

from __future__ import annotations

import json
import logging
import random
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.contrib.torch_prefetch import PrefetchSampler
from proxy.core.prefetch import DEFAULT_CONCURRENCY, DEFAULT_WINDOW
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import get_body, new_bucket, payload, proxy_config, store_env, wait_until
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint

N = 16
WINDOW = 4


class ShardSampler:
    """Like a DistributedSampler: a shuffled share of range(n) per rank, reshuffled by epoch."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world, self.epoch = n, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n))
        random.Random(self.epoch).shuffle(order)
        return iter(order[self.rank :: self.world])

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url, latency=0.01) as r:
        yield r


@pytest.fixture
def bucket(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> str:
    name = new_bucket("torch")
    client = s3_client_factory(seaweedfs)
    client.create_bucket(Bucket=name)
    for i in range(N):
        client.put_object(Bucket=name, Key=f"img/{i:03d}", Body=payload(2000 + i, seed=i))
    return name


@pytest.fixture
def proxy(
    proxy_factory: ProxyFactory,
    seaweedfs: S3Endpoint,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> ProxyProcess:
    return proxy_factory(proxy_config(relay.url, bucket, tmp_path / "cache"), store_env(seaweedfs))


def job_progress(proxy: ProxyProcess, job: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{proxy.admin_url}/admin/v1/prefetch/{job}", timeout=10) as r:
        return dict(json.loads(r.read()))


def ready(proxy: ProxyProcess, job: str, n: int) -> Callable[[], bool]:
    """``n`` keys of the order fetched, or found cached already, by ``job``."""

    def check() -> bool:
        p = job_progress(proxy, job)
        return int(p["fetched"]) + int(p["cached"]) >= n

    return check


def store_gets(relay: CountingRelay) -> int:
    return sum(n for (m, p), n in relay.counts.items() if m == "GET" and "/img/" in p)


def test_each_epoch_is_posted_and_read_ahead(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str
) -> None:
    sampler = ShardSampler(N, rank=1, world=2)
    helper = PrefetchSampler(
        sampler, lambda i: f"img/{i:03d}", bucket=bucket, admin_url=proxy.admin_url, window=WINDOW
    )
    assert len(helper) == N // 2
    relay.reset()
    seen: list[list[int]] = []
    for epoch in range(2):
        helper.set_epoch(epoch)
        indices = []
        for n, i in enumerate(helper):
            job = helper.wait_posted(30)
            assert job is not None and job["keys"] == N // 2, job
            assert job["concurrency"] == DEFAULT_CONCURRENCY  # not told: the server's default
            assert wait_until(ready(proxy, job["id"], min(N // 2, n + WINDOW)))
            status, body = get_body(f"{proxy.url}/{bucket}/img/{i:03d}")
            assert status == 200 and body == payload(2000 + i, seed=i)
            indices.append(i)
        seen.append(indices)
        assert indices == list(sampler)  # the sampler's order, unchanged
        assert job is not None
        done = job_progress(proxy, job["id"])
        assert done["used"] == N // 2, done
        new = set(indices) - set(seen[0]) if epoch else set(indices)
        assert done["fetched"] == len(new) and done["cached"] == N // 2 - len(new), done
    assert seen[0] != seen[1]  # reshuffled: the epoch was passed on
    # every read was a hit: each key fetched once from the store, ahead of its read
    assert store_gets(relay) == len(set(seen[0]) | set(seen[1]))


def test_the_window_is_the_servers_unless_given(proxy: ProxyProcess, bucket: str) -> None:
    helper = PrefetchSampler(
        range(3), lambda i: f"img/{i:03d}", bucket=bucket, admin_url=proxy.admin_url
    )
    assert list(helper) == [0, 1, 2]
    job = helper.wait_posted(30)
    assert job is not None and job["window"] == DEFAULT_WINDOW and job["window_bytes"] is None


def test_an_unreachable_proxy_does_not_break_iteration(caplog: pytest.LogCaptureFixture) -> None:
    helper = PrefetchSampler(
        list(range(5)), str, bucket="b", admin_url="http://127.0.0.1:9", timeout=2
    )
    with caplog.at_level(logging.WARNING, logger="proxy.contrib.torch_prefetch"):
        for _ in range(2):
            assert list(helper) == [0, 1, 2, 3, 4]
            assert helper.wait_posted(10) is None
    warnings = [r for r in caplog.records if "prefetch unavailable" in r.getMessage()]
    assert len(warnings) == 1
