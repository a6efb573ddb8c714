"""replicas: 2 on three nodes over SeaweedFS (behind a CountingRelay): objects read through
random nodes are fetched from the store once each and end up cached on exactly their two
owners (the second owner fills from the first, never from the store); reads through every node
keep it so; kill -9 one node and every object is still read through the others with no store
fetch (its other owner holds it); a write through the non-owner reaches both owners at once."""

from __future__ import annotations

import random
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.cache.record import Record, object_id
from proxy.cluster import ring
from tests.conftest import S3ClientFactory
from tests.faultkit import audit_cache, get_body, payload, wait_until
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.test_cluster import (  # noqa: F401 (the fixtures)
    Cluster,
    ClusterFactory,
    admin,
    make_cluster,
    relay,
    wait_live,
)

KEYS = 30


@pytest.fixture
def cluster2(make_cluster: ClusterFactory) -> Cluster:  # noqa: F811
    return make_cluster(2)


def store_gets(relay: CountingRelay) -> Counter[str]:  # noqa: F811
    return Counter({p: n for (m, p), n in relay.counts.items() if m == "GET"})


def record_on(node: ProxyProcess, oid: bytes) -> Record | None:
    """The node's index record of ``oid`` (read from its LMDB index)."""
    return audit_cache(Path(node.config["cache"]["dir"])).records.get(oid)


def _whole(rec: Record | None) -> bool:
    return rec is not None and (rec.inline or rec.chunks != 0)


def held_by(nodes: list[ProxyProcess]) -> Callable[[], dict[str, int]]:
    return lambda: {n.config["listen"]: admin(n, "/admin/v1/cache")["objects"] for n in nodes}


def test_each_object_on_exactly_its_two_owners_and_a_dead_owner_costs_no_refetch(
    cluster2: Cluster,
    relay: CountingRelay,  # noqa: F811
    s3_client_factory: S3ClientFactory,
) -> None:
    bucket, bodies, nodes = cluster2
    keys = list(bodies)[:KEYS]
    members = [n.config["listen"] for n in nodes]
    owners = {k: ring.owners(object_id("store", bucket, k), members, 2) for k in keys}
    rnd = random.Random(11)
    for key in keys:
        assert get_body(f"{rnd.choice(nodes).url}/{bucket}/{key}") == (200, bodies[key]), key
    expected = dict(Counter(m for k in keys for m in owners[k]))
    held = held_by(nodes)
    assert wait_until(lambda: held() == expected, timeout=20), (held(), expected)
    once = Counter({f"/{bucket}/{k}": 1 for k in keys})
    assert store_gets(relay) == once, relay.counts
    for key in keys:  # through every node: nothing more from the store, nothing more cached
        for node in nodes:
            assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key]), key
    assert store_gets(relay) == once and held() == expected, (relay.counts, held())

    # a write through the node that owns none of it reaches both owners before the answer;
    # then the new version is fetched once and cached on both again
    key = keys[0]
    writer = next(n for n in nodes if n.config["listen"] not in owners[key])
    new = payload(1234, seed=99)
    relay.reset()
    s3_client_factory(writer.url).put_object(Bucket=bucket, Key=key, Body=new)
    for node in nodes:
        assert get_body(f"{node.url}/{bucket}/{key}") == (200, new)
    assert wait_until(lambda: held() == expected, timeout=20), (held(), expected)
    assert store_gets(relay) == Counter({f"/{bucket}/{key}": 1}), relay.counts
    bodies = {**bodies, key: new}

    victim, survivors = nodes[0], nodes[1:]
    relay.reset()
    victim.kill9()
    for key in keys:  # at once (the ring still holds the victim) and after it left
        for node in survivors:
            assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key]), key
    wait_live(survivors, members[1:], timeout=10)
    for key in keys:
        for node in survivors:
            assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key]), key
    assert store_gets(relay) == Counter(), relay.counts  # every object's other owner had it

    # a cold object read first through its second owner (filled from the first) and through
    # it again: the response-* overrides of the client's query are honoured both times
    key = list(bodies)[KEYS + 5]
    second = ring.owners(object_id("store", bucket, key), members[1:], 2)[1]
    node = next(n for n in survivors if n.config["listen"] == second)
    for _ in range(2):
        url = f"{node.url}/{bucket}/{key}?response-content-type=text%2Fx-check"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.read() == bodies[key] and resp.headers["Content-Type"] == "text/x-check"
    assert store_gets(relay) == Counter({f"/{bucket}/{key}": 1}), relay.counts

    # a HEAD first through the first owner caches the metadata there; its GET next still has
    # the other owner fill its replica (from the first owner: one store GET), unasked
    key = list(bodies)[KEYS + 6]
    first, second = ring.owners(object_id("store", bucket, key), members[1:], 2)
    node = next(n for n in survivors if n.config["listen"] == first)
    other = next(n for n in survivors if n.config["listen"] == second)
    oid = object_id("store", bucket, key)
    relay.reset()
    with urllib.request.urlopen(
        urllib.request.Request(f"{node.url}/{bucket}/{key}", method="HEAD")
    ):
        pass
    # by this object's own records, not by counts: the survivors' warming after the kill above
    # may still move other objects between them meanwhile
    assert wait_until(lambda: record_on(node, oid) is not None, timeout=10)  # its metadata
    assert record_on(other, oid) is None
    assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key])
    assert wait_until(lambda: _whole(record_on(other, oid)), timeout=20), record_on(other, oid)
    assert get_body(f"{other.url}/{bucket}/{key}") == (200, bodies[key])
    assert store_gets(relay) == Counter({f"/{bucket}/{key}": 1}), relay.counts
