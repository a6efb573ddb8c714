"""A node that dies and comes back (replicas: 2 on three nodes over SeaweedFS behind a
CountingRelay): objects read while it was down land on the two survivors; once it is back and
owns some of them again, it fills its copies from the nodes that hold them (a handoff: asked
for their cached copy only), so reading everything through every node costs no store GET.
Each object ends on its owners, and on any node that owned it while the other was down (a
node keeps a copy it no longer owns until it evicts it)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from proxy.cache.record import object_id
from proxy.cluster import ring
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import get_body, scrape, wait_until
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint
from tests.test_cluster import relay, start_cluster, wait_live  # noqa: F401
from tests.test_cluster_replicas import held_by, store_gets

HALF = 30


def test_a_restarted_node_takes_its_share_back_from_the_others_not_the_store(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,  # noqa: F811
    tmp_path: Path,
) -> None:
    bucket, bodies, nodes = start_cluster(
        seaweedfs, s3_client_factory, proxy_factory, relay, tmp_path, 2
    )
    keys = list(bodies)
    before, during = keys[:HALF], keys[HALF : 2 * HALF]
    members = [n.config["listen"] for n in nodes]
    owners = {k: ring.owners(object_id("store", bucket, k), members, 2) for k in keys}
    victim, survivors = nodes[0], nodes[1:]
    rnd = random.Random(12)

    def read(some: list[str], through: list[ProxyProcess]) -> None:
        for key in some:
            node = rnd.choice(through)
            assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key]), key

    read(before, nodes)
    assert store_gets(relay) == Counter({f"/{bucket}/{k}": 1 for k in before}), relay.counts

    victim.kill9()
    wait_live(survivors, members[1:], timeout=10)
    relay.reset()
    read(during, survivors)  # the fresh ones: once each, onto both survivors
    assert store_gets(relay) == Counter({f"/{bucket}/{k}": 1 for k in during}), relay.counts

    victim.start()  # the same cache directory: it still holds what it owned before
    wait_live(nodes, members, timeout=15)
    relay.reset()
    for key in keys:
        for node in nodes:
            assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key]), key
    assert store_gets(relay) == Counter(), relay.counts  # every object was on a survivor

    # the rule: an object is on its owners, and stays on each node that cached it as an owner
    # before (here: what was read while the victim was down is on both survivors too)
    holders = {k: set(owners[k]) | (set(members[1:]) if k in during else set()) for k in keys}
    expected = dict(Counter(m for k in keys for m in holders[k]))
    held = held_by(nodes)
    assert wait_until(lambda: held() == expected, timeout=20), (held(), expected)
    # the path this covers: objects whose first owner is the victim, read while it was down
    assert any(owners[k][0] == members[0] for k in during)
    # the victim's fills were handed off: answered from a survivor's cache (a fill asks a range)
    handed = [scrape(n.admin_url) for n in survivors]
    served = sum(
        m.get("slipstream_requests_total", operation="PeerHandoff", status=status)
        for m in handed
        for status in ("200", "206")
    )
    assert served > 0
