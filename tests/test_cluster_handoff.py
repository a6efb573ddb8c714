"""What a handoff costs a cold miss (replicas: 2 on three nodes over SeaweedFS behind a
CountingRelay; each node's PeerHandoff requests counted from its /metrics). On a cluster whose
members have seen one view since they started with empty caches, no node can hold an object it
does not own, so a cold read asks no one for a cached copy: 0 handoff requests, one store GET per
object. Once a node held objects across a view change (kill -9 and restart of one), a miss asks
the nodes that may hold a copy, each once, all at once: at most one handoff round per miss, and
a fresh object still costs one store GET. Once every node finished a warm pass under the new
view (warmer.py), the cluster is settled again: misses ask no one."""

from __future__ import annotations

import random
from collections import Counter

from tests.faultkit import get_body, scrape, wait_until
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.test_cluster import (  # noqa: F401 (the fixtures)
    ClusterFactory,
    admin,
    make_cluster,
    relay,
    wait_live,
)
from tests.test_cluster_replicas import store_gets

CANDIDATES = 2  # the nodes a handoff of one miss may ask on three nodes: every other one


def handoffs(nodes: list[ProxyProcess]) -> float:
    return sum(
        scrape(n.admin_url).get("slipstream_requests_total", operation="PeerHandoff") for n in nodes
    )


def served_handoffs(nodes: list[ProxyProcess]) -> float:
    """The handoff requests ``nodes`` answered with bytes (a fill asks a range: 200 or 206)."""
    return sum(
        scrape(n.admin_url).get("slipstream_requests_total", operation="PeerHandoff", status=s)
        for n in nodes
        for s in ("200", "206")
    )


def settled(nodes: list[ProxyProcess]) -> bool:
    return all(admin(n, "/admin/v1/cluster")["settled"] for n in nodes)


def wait_settled(nodes: list[ProxyProcess], timeout: float) -> None:
    assert wait_until(lambda: settled(nodes), timeout=timeout), [
        admin(n, "/admin/v1/cluster")["settled"] for n in nodes
    ]


def test_a_cold_miss_asks_for_handoffs_only_when_a_copy_may_exist_and_once_at_most(
    make_cluster: ClusterFactory,  # noqa: F811
    relay: CountingRelay,  # noqa: F811
) -> None:
    bucket, bodies, nodes = make_cluster(2)
    keys = list(bodies)
    first, second, third = keys[:20], keys[20:40], keys[40:]
    members = [n.config["listen"] for n in nodes]
    rnd = random.Random(11)

    def read(some: list[str], through: list[ProxyProcess]) -> None:
        for key in some:
            node = rnd.choice(through)
            assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key]), key

    # one view since each started, empty caches: settled once the health answers say so
    wait_settled(nodes, timeout=15)
    read(first, nodes)
    assert store_gets(relay) == Counter({f"/{bucket}/{k}": 1 for k in first}), relay.counts
    assert handoffs(nodes) == 0

    # a node that held objects goes and comes back: now copies may be anywhere
    nodes[0].kill9()
    wait_live(nodes[1:], members[1:], timeout=10)
    nodes[0].start()
    wait_live(nodes, members, timeout=15)
    relay.reset()
    before = handoffs(nodes)
    read(second, nodes)
    assert store_gets(relay) == Counter({f"/{bucket}/{k}": 1 for k in second}), relay.counts
    asked = handoffs(nodes) - before
    # each miss of a first owner (one per object) asks each other node once at most (the
    # replica's fill asks the first owner, which holds it by then: no handoff); the warm
    # passes ask once per object moved (0 when they settled the cluster before these reads)
    assert asked <= CANDIDATES * len(second) + len(first), asked

    # each node finished a warm pass under this view: settled again, a miss asks no one
    wait_settled(nodes, timeout=30)
    relay.reset()
    before = handoffs(nodes)
    read(third, nodes)
    assert store_gets(relay) == Counter({f"/{bucket}/{k}": 1 for k in third}), relay.counts
    assert handoffs(nodes) == before
