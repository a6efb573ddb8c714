"""A node that dies and comes back (replicas: 2 on three nodes over SeaweedFS behind a
CountingRelay): objects read while it was down land on the two survivors; once it is back and
owns some of them again, it fills its copies from the nodes that hold them (a handoff: asked
for their cached copy only), so reading everything through every node costs no store GET.
Each object ends on its owners, and on any node that owned it while the other was down (a
node keeps a copy it no longer owns until it evicts it). With no client read at all, the
restarted node is warmed with its share from the survivors (warmer.py), no store GET; then
every node is settled again, and reading everything through any node asks no one for a
cached copy and the store for nothing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.faultkit import get_body, wait_until
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.test_cluster import (  # noqa: F401 (the fixtures)
    ClusterFactory,
    admin,
    make_cluster,
    placement,
    relay,
    wait_live,
)
from tests.test_cluster_handoff import handoffs, served_handoffs, wait_settled
from tests.test_cluster_replicas import held_by, store_gets

HALF = 30
Three = tuple[str, dict[str, bytes], list[ProxyProcess], list[str], dict[str, list[str]]]


@pytest.fixture
def three(make_cluster: ClusterFactory) -> Three:  # noqa: F811
    """Three nodes, replicas: 2; the bucket, its objects, the nodes, their member names and
    each object's two owners among them."""
    bucket, bodies, nodes = make_cluster(2)
    members, owners = placement(bucket, nodes, bodies, 2)
    return bucket, bodies, nodes, members, owners


def halves(bodies: dict[str, bytes]) -> tuple[list[str], list[str], list[str]]:
    """The keys, the first HALF (read before the victim goes) and the next (read while down)."""
    keys = list(bodies)
    return keys, keys[:HALF], keys[HALF : 2 * HALF]


def test_a_restarted_node_takes_its_share_back_from_the_others_not_the_store(
    three: Three,
    relay: CountingRelay,  # noqa: F811
) -> None:
    bucket, bodies, nodes, members, owners = three
    keys, before, during = halves(bodies)
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
    # before (what was read while the victim was down is on both survivors; the warmer may
    # have moved some of the rest onto them while they owned everything)
    least = dict(Counter(m for k in keys for m in owners[k]))
    least.update({m: least[m] + sum(1 for k in during if m not in owners[k]) for m in members[1:]})
    held = held_by(nodes)
    assert wait_until(lambda: all(least[m] <= n <= len(keys) for m, n in held().items()), 20), (
        held(),
        least,
    )
    # the path this covers: objects whose first owner is the victim, read while it was down
    assert any(owners[k][0] == members[0] for k in during)
    # the victim's fills were handed off: answered from a survivor's cache (a fill asks a range)
    assert served_handoffs(survivors) > 0


def test_a_restarted_node_is_warmed_with_its_share_without_any_client_read(
    three: Three,
    relay: CountingRelay,  # noqa: F811
) -> None:
    bucket, bodies, nodes, members, owners = three
    keys, before, during = halves(bodies)
    victim, survivors = nodes[0], nodes[1:]
    rnd = random.Random(13)
    for key in before:
        assert get_body(f"{rnd.choice(nodes).url}/{bucket}/{key}") == (200, bodies[key]), key
    victim.kill9()
    wait_live(survivors, members[1:], timeout=10)
    for key in during:
        assert get_body(f"{rnd.choice(survivors).url}/{bucket}/{key}") == (200, bodies[key])
    assert any(members[0] in owners[k] for k in during)

    relay.reset()
    victim.start()  # no client read from here on: the warmer moves its share to it
    wait_live(nodes, members, timeout=15)
    share = sum(1 for k in before + during if members[0] in owners[k])
    held = held_by([victim])
    assert wait_until(lambda: held() == {members[0]: share}, timeout=30), (held(), share)
    assert store_gets(relay) == Counter(), relay.counts
    moved = served_handoffs(survivors)
    assert moved >= share - sum(1 for k in before if members[0] in owners[k]), moved

    wait_settled(nodes, timeout=30)
    asked = handoffs(nodes)
    for key in keys:
        assert get_body(f"{rnd.choice(nodes).url}/{bucket}/{key}") == (200, bodies[key]), key
    assert store_gets(relay) == Counter(), relay.counts
    assert handoffs(nodes) == asked
