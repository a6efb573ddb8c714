"""Coalescing across a cluster: three proxies (static membership, replicas 1, two workers each)
over SeaweedFS behind a CountingRelay that adds 200 ms to every store request, so that reads
overlap. 64 concurrent cold GETs of one key spread over the three nodes cost the store one GET
and every client gets the object's bytes; a GET through a node that does not own the object,
sent while the owner is mid-fill, joins that fill instead of starting another."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxy.cache.record import object_id
from proxy.cluster import ring
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import get_body, new_bucket, payload
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint
from tests.test_cluster import start_nodes

SIZE = 256 * 1024
CLIENTS = 64


@pytest.fixture
def slow_relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url, latency=0.2) as r:
        yield r


@pytest.fixture
def cluster(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    slow_relay: CountingRelay,
    tmp_path: Path,
) -> tuple[str, list[ProxyProcess]]:
    bucket = new_bucket("cluster-coalesce")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    for i in range(4):
        s3.put_object(Bucket=bucket, Key=f"k/{i}", Body=payload(SIZE, seed=i))
    static = {"replicas": 1}
    nodes = start_nodes(seaweedfs, proxy_factory, slow_relay.url, bucket, tmp_path, 3, static, 2)
    # wait_live reads each supervisor's view; each worker checks its peers on its own (every
    # second) and may still lack a node started after it for a round or two: a worker with
    # another ring sends the key to another owner, a second store GET
    time.sleep(2.5)
    slow_relay.reset()
    return bucket, nodes


def store_gets(relay: CountingRelay) -> Counter[str]:
    return Counter({path: n for (method, path), n in relay.counts.items() if method == "GET"})


def owner_of(bucket: str, key: str, nodes: list[ProxyProcess]) -> ProxyProcess:
    members = [n.config["listen"] for n in nodes]
    owner = ring.owners(object_id("store", bucket, key), members, 1)[0]
    return next(n for n in nodes if n.config["listen"] == owner)


def test_64_concurrent_cold_gets_over_three_nodes_cost_one_store_get(
    cluster: tuple[str, list[ProxyProcess]], slow_relay: CountingRelay
) -> None:
    bucket, nodes = cluster
    key, body = "k/0", payload(SIZE, seed=0)
    gate = threading.Barrier(CLIENTS)

    def one(i: int) -> tuple[int, bytes]:
        gate.wait(30)
        return get_body(f"{nodes[i % 3].url}/{bucket}/{key}", timeout=60)

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(CLIENTS)))
    assert [status for status, _ in results] == [200] * CLIENTS
    assert all(got == body for _, got in results)
    said = [ln for n in nodes for ln in n.log(200_000).splitlines() if "cluster" in ln]
    assert store_gets(slow_relay) == Counter({f"/{bucket}/{key}": 1}), (slow_relay.counts, said)
    # and again, warm: no store request at all
    slow_relay.reset()
    assert all(get_body(f"{n.url}/{bucket}/{key}") == (200, body) for n in nodes)
    assert store_gets(slow_relay) == Counter(), slow_relay.counts


def test_a_forwarded_get_during_the_owners_fill_joins_it(
    cluster: tuple[str, list[ProxyProcess]], slow_relay: CountingRelay
) -> None:
    bucket, nodes = cluster
    key, body = "k/1", payload(SIZE, seed=1)
    owner = owner_of(bucket, key, nodes)
    other = next(n for n in nodes if n is not owner)
    slow_relay.bandwidth = SIZE / 2.0  # the fill's body takes about 2 s
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(get_body, f"{owner.url}/{bucket}/{key}", 60)
        deadline = time.monotonic() + 30
        while slow_relay.count_of("GET", f"/{bucket}/{key}") == 0:
            assert time.monotonic() < deadline, "the owner never started its fill"
            time.sleep(0.01)
        time.sleep(0.3)  # past the relay's latency: the body is streaming
        assert not first.done()
        second = pool.submit(get_body, f"{other.url}/{bucket}/{key}", 60)
        assert first.result() == (200, body)
        assert second.result() == (200, body)
    assert store_gets(slow_relay) == Counter({f"/{bucket}/{key}": 1}), slow_relay.counts
