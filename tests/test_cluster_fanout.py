"""Warm jobs and pin/unpin/evict across three nodes (proxy/cluster/fanout.py), over SeaweedFS
behind a CountingRelay: a warm job posted to one node leaves each object cached on exactly its
owners and fetched from the store once; a pin made through one node holds on every node (the
objects each caches later are pinned, and an unpin through another node finds the rule on all
three); an evict through one node empties every node, and the next reads refetch."""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest

from proxy.jobs.client import AdminClient
from tests.faultkit import get_body, scrape
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.test_cluster import (  # noqa: F401 (the fixtures)
    OBJECTS,
    ClusterFactory,
    admin,
    job_ended,
    make_cluster,
    placement,
    relay,
)


def post(node: ProxyProcess, path: str, body: dict[str, Any]) -> Any:
    return AdminClient(node.admin_url).call("POST", path, body)


def object_gets(relay: CountingRelay, bucket: str) -> Counter[str]:  # noqa: F811
    prefix = f"/{bucket}/obj/"
    return Counter(
        {p: n for (m, p), n in relay.counts.items() if m == "GET" and p.startswith(prefix)}
    )


def held(nodes: list[ProxyProcess]) -> dict[str, int]:
    return {n.config["listen"]: admin(n, "/admin/v1/cache")["objects"] for n in nodes}


def settled(nodes: list[ProxyProcess]) -> None:
    """Until the second owners have filled their replicas (in the background) and the
    non-owners their local copies: every replica there, no fill in flight on any node, and
    the counts unchanged for a second: then the evict's count is exact (a fill still in
    flight would be fenced off by it, not counted)."""
    deadline = time.monotonic() + 30
    last: dict[str, int] = {}
    steady_since = time.monotonic()
    while True:
        now = held(nodes)
        busy = sum(scrape(n.admin_url).get("slipstream_inflight_fills") for n in nodes)
        if now != last or busy:
            last, steady_since = now, time.monotonic()
        elif sum(now.values()) >= 2 * OBJECTS and time.monotonic() - steady_since >= 1.0:
            return
        assert time.monotonic() < deadline, (now, busy)
        time.sleep(0.2)


def test_a_warm_job_fills_each_object_on_exactly_its_owners_once(
    make_cluster: ClusterFactory,  # noqa: F811
    relay: CountingRelay,  # noqa: F811
) -> None:
    bucket, bodies, nodes = make_cluster(replicas=2)
    _, owners = placement(bucket, nodes, bodies, 2)
    # the node the job is posted to: the one that owns the fewest objects (it owns some: R=2 of 3)
    per_member = Counter(m for o in owners.values() for m in o)
    poster = min(nodes, key=lambda n: per_member[n.config["listen"]])
    client = AdminClient(poster.admin_url)
    job = job_ended(client, client.warm({"bucket": bucket, "prefix": "obj/", "concurrency": 8}))
    assert job["state"] == "done", job
    assert (job["objects_done"], job["fetched"], job["failed"]) == (OBJECTS, OBJECTS, 0), job
    assert job["bytes_done"] == sum(len(b) for b in bodies.values())
    # one store GET per object for the whole cluster (the second owner filled from the first)
    assert object_gets(relay, bucket) == Counter({f"/{bucket}/{k}": 1 for k in bodies})
    assert held(nodes) == dict(per_member)  # each object on its 2 owners, nowhere else
    assert sum(held(nodes).values()) == 2 * OBJECTS
    # the same job again: every owner has every object, nothing is fetched
    relay.reset()
    job = job_ended(client, client.warm({"bucket": bucket, "prefix": "obj/"}))
    assert (job["state"], job["cached"], job["fetched"]) == ("done", OBJECTS, 0), job
    assert object_gets(relay, bucket) == Counter()
    # and reads through any node are served by the cluster, no store GET
    rnd = random.Random(5)
    for key, body in bodies.items():
        assert get_body(f"{rnd.choice(nodes).url}/{bucket}/{key}") == (200, body), key
    assert object_gets(relay, bucket) == Counter()
    # a missing key fails on the owner, and the job says which and why
    job = job_ended(client, client.warm({"bucket": bucket, "keys": ["obj/000", "obj/no-such-key"]}))
    assert job["state"] == "failed" and job["objects_done"] == 1, job
    assert [f["key"] for f in job["failures"]] == ["obj/no-such-key"], job
    assert job["failures"][0]["error"].startswith("NoSuchKey"), job


def test_pin_and_unpin_through_one_node_hold_on_every_node(
    make_cluster: ClusterFactory,  # noqa: F811
    relay: CountingRelay,  # noqa: F811
) -> None:
    bucket, bodies, nodes = make_cluster(replicas=1)
    answer = post(nodes[1], "/admin/v1/pin", {"bucket": bucket, "prefix": "obj/"})
    assert (answer["applied"], answer["failed"], answer["objects"]) == (3, 0, 0), answer
    for key, body in bodies.items():  # cached after the pin: pinned on whichever node owns it
        assert get_body(f"{nodes[0].url}/{bucket}/{key}") == (200, body), key
    for node in nodes:
        stats = admin(node, "/admin/v1/cache")
        assert stats["objects"] > 0 and stats["pinned_bytes"] == stats["bytes"], stats
    # the unpin through another node finds the rule on all three
    answer = post(nodes[2], "/admin/v1/unpin", {"bucket": bucket, "prefix": "obj/"})
    assert (answer["applied"], answer["failed"], answer["objects"]) == (3, 0, OBJECTS), answer
    assert all(n["existed"] for n in answer["nodes"]), answer
    assert all(admin(n, "/admin/v1/cache")["pinned_bytes"] == 0 for n in nodes)
    # no node has it now: 404, as on a single node
    req = urllib.request.Request(
        f"{nodes[0].admin_url}/admin/v1/unpin",
        data=json.dumps({"bucket": bucket, "prefix": "obj/"}).encode(),
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 404


def test_evict_through_one_node_drops_the_prefix_everywhere(
    make_cluster: ClusterFactory,  # noqa: F811
    relay: CountingRelay,  # noqa: F811
) -> None:
    bucket, bodies, nodes = make_cluster(replicas=2)
    rnd = random.Random(11)
    for key, body in bodies.items():
        assert get_body(f"{rnd.choice(nodes).url}/{bucket}/{key}") == (200, body), key
    settled(nodes)
    answer = post(nodes[0], "/admin/v1/evict", {"bucket": bucket, "prefix": "obj/"})
    assert (answer["applied"], answer["failed"], answer["objects"]) == (3, 0, 2 * OBJECTS)
    assert held(nodes) == {n.config["listen"]: 0 for n in nodes}
    relay.reset()
    for key, body in bodies.items():  # every read refetches (once per object)
        assert get_body(f"{rnd.choice(nodes).url}/{bucket}/{key}") == (200, body), key
    assert object_gets(relay, bucket) == Counter({f"/{bucket}/{k}": 1 for k in bodies})
