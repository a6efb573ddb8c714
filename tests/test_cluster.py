"""Three proxies as one cache over SeaweedFS (static membership, replicas 1), each its own cache
dir and loopback address (127.0.0.2, .3, .4: one port number on all, as in a deployment), with
the store behind a CountingRelay: each object is fetched from the store once for the whole
cluster and cached on its owner only; a node killed with -9 during a read loop costs the
clients nothing and leaves the others' live members within seconds; the peer route refuses
requests without a valid, fresh, unreplayed signature. Two nodes find each other through a real
etcd (leases), and a node with DNS membership resolves its name."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from proxy.cache.record import object_id
from proxy.cluster import peers, ring
from proxy.jobs.client import AdminClient
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.etcd_server import EtcdServer
from tests.faultkit import get_body, new_bucket, payload, proxy_config, scrape, store_env
from tests.proxyproc import REPO_ROOT, ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint, free_port, loopback_nodes

SECRET = "cluster-test-secret"
OBJECTS = 60
SIZE = 40 * 1024


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url) as r:
        yield r


def admin(node: ProxyProcess, path: str) -> Any:
    with urllib.request.urlopen(f"{node.admin_url}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def wait_live(nodes: list[ProxyProcess], want: list[str], timeout: float = 15.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(admin(n, "/admin/v1/cluster")["live"] == sorted(want) for n in nodes):
            return time.monotonic() - started
        time.sleep(0.1)
    views = [admin(n, "/admin/v1/cluster")["live"] for n in nodes]
    raise AssertionError(f"live members never became {sorted(want)}: {views}")


def job_ended(client: AdminClient, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """The warm job's record once it left "queued" and "running"."""
    deadline = time.monotonic() + timeout
    while (job := client.job(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


Cluster = tuple[str, dict[str, bytes], list[ProxyProcess]]


class ClusterFactory(Protocol):
    def __call__(self, replicas: int, objects: int = OBJECTS, **cluster: Any) -> Cluster: ...


@pytest.fixture
def make_cluster(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    tmp_path: Path,
) -> ClusterFactory:
    """Three nodes over this test's ``relay`` (its counts reset once they see each other),
    ``objects`` objects of SIZE (obj/000, obj/001, ...) in a new bucket; ``replicas`` and any
    other ``cluster`` keys make their cluster section (the static members list added)."""

    def make(replicas: int, objects: int = OBJECTS, **cluster: Any) -> Cluster:
        bucket = new_bucket("cluster")
        s3 = s3_client_factory(seaweedfs)
        s3.create_bucket(Bucket=bucket)
        bodies = {f"obj/{i:03d}": payload(SIZE, seed=i) for i in range(objects)}
        for key, body in bodies.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        section = {"replicas": replicas, **cluster}
        nodes = start_nodes(seaweedfs, proxy_factory, relay.url, bucket, tmp_path, 3, section)
        relay.reset()
        return bucket, bodies, nodes

    return make


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> Cluster:
    return make_cluster(1)


def placement(
    bucket: str, nodes: list[ProxyProcess], keys: Iterable[str], replicas: int
) -> tuple[list[str], dict[str, list[str]]]:
    """The nodes' member names (their listen addresses) and each key's ``replicas`` owners
    among them."""
    members = [n.config["listen"] for n in nodes]
    return members, {k: ring.owners(object_id("store", bucket, k), members, replicas) for k in keys}


def start_nodes(
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    store_url: str,
    bucket: str,
    tmp_path: Path,
    count: int,
    cluster: dict[str, Any],
    workers: int = 1,
    cache: dict[str, Any] | None = None,
) -> list[ProxyProcess]:
    """``count`` nodes serving ``bucket`` from ``store_url``, each on its own loopback address
    (127.0.0.2, .3, ...) and the same port numbers, ``cluster`` their cluster section (the
    static members list added unless it names another membership); started, and live in each
    other's view."""
    addrs = loopback_nodes(count)
    listens = [a.listen for a in addrs]
    if "etcd" not in cluster and "dns" not in cluster:
        cluster = {**cluster, "members": listens}
    env = {**store_env(seaweedfs), "CLUSTER_SECRET": SECRET}
    nodes = []
    for i, addr in enumerate(addrs):
        cfg = proxy_config(store_url, bucket, tmp_path / f"cache{i}", workers=workers, cache=cache)
        cfg["listen"], cfg["admin_listen"] = addr.listen, addr.admin_listen
        cfg["cluster"] = {"secret_env": "CLUSTER_SECRET", **cluster}  # self: listen (default)
        nodes.append(proxy_factory(cfg, env, wait=False))  # all start at once
    for node in nodes:
        node.wait_ready()
    wait_live(nodes, listens)
    return nodes


def test_each_object_is_fetched_once_and_cached_on_its_owner_only(
    cluster: tuple[str, dict[str, bytes], list[ProxyProcess]], relay: CountingRelay
) -> None:
    bucket, bodies, nodes = cluster
    members = [n.config["listen"] for n in nodes]
    rnd = random.Random(7)
    forwarded = 0  # reads through a node that does not own the object: the owner streams it
    for _ in range(2):
        for key, body in bodies.items():
            node = rnd.choice(nodes)
            status, got = get_body(f"{node.url}/{bucket}/{key}")
            assert (status, got == body) == (200, True), key
            owner = ring.owners(object_id("store", bucket, key), members, 1)[0]
            forwarded += SIZE if node.config["listen"] != owner else 0
    # what owners sent their peers is what the others received from them, each read's bytes
    peer = [scrape(n.admin_url) for n in nodes]
    sent = sum(m.get("slipstream_peer_bytes_total", direction="sent") for m in peer)
    received = sum(m.get("slipstream_peer_bytes_total", direction="received") for m in peer)
    assert forwarded > 0 and sent == received == forwarded, (forwarded, sent, received)
    gets = Counter({path: n for (method, path), n in relay.counts.items() if method == "GET"})
    assert gets == Counter({f"/{bucket}/{key}": 1 for key in bodies}), relay.counts
    # each node on its own loopback address, all on one port: nothing tells them apart by port
    assert len({m.rpartition(":")[0] for m in members}) == 3, members
    assert len({m.rpartition(":")[2] for m in members}) == 1, members
    expected = Counter(ring.owners(object_id("store", bucket, k), members, 1)[0] for k in bodies)
    held = {n.config["listen"]: admin(n, "/admin/v1/cache")["objects"] for n in nodes}
    assert held == dict(expected)  # each object on exactly its owner, nowhere else
    assert sum(held.values()) == OBJECTS
    assert all(n > 0 for n in held.values()), held  # (the ring's 20% spread: test_cluster_units)
    # the cluster view: each node's share of ownership and what it caches (peers' as their
    # last health answer said: wait a check round)
    time.sleep(1.5)
    view = {n["address"]: n for n in admin(nodes[0], "/admin/v1/cluster")["nodes"]}
    assert {m: view[m]["cached_objects"] for m in members} == held, view
    assert all(0.2 < view[m]["share"] < 0.47 for m in members), view  # ~1/3 each
    # a ranged read through a node that does not own the object goes to the owner, and the
    # Range with it
    key = next(iter(bodies))
    owner = ring.owners(object_id("store", bucket, key), members, 1)[0]
    other = next(n for n in nodes if n.config["listen"] != owner)
    req = urllib.request.Request(f"{other.url}/{bucket}/{key}", headers={"Range": "bytes=10-99"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206 and resp.read() == bodies[key][10:100]
        assert resp.headers["Content-Range"] == f"bytes 10-99/{SIZE}"
    missing = get_body(f"{other.url}/{bucket}/no-such-key")
    assert missing[0] == 404 and b"NoSuchKey" in missing[1]
    assert sum(relay.counts.values()) >= 1


def test_kill_9_one_node_during_reads_no_client_errors_and_it_leaves_live(
    cluster: tuple[str, dict[str, bytes], list[ProxyProcess]], relay: CountingRelay
) -> None:
    bucket, bodies, nodes = cluster
    victim, survivors = nodes[2], nodes[:2]
    errors: list[str] = []
    reads = 0
    stop = threading.Event()

    def loop() -> None:
        nonlocal reads
        rnd = random.Random(3)
        while not stop.is_set():
            key = rnd.choice(list(bodies))
            status, got = get_body(f"{rnd.choice(survivors).url}/{bucket}/{key}")
            reads += 1
            if status != 200 or got != bodies[key]:
                errors.append(f"{key}: {status}")

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        victim.kill9()
        gone_after = wait_live(survivors, [n.config["listen"] for n in survivors], timeout=10)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert reads > 100 and errors == [], (reads, errors[:10])
    assert gone_after < 10
    status = admin(survivors[0], "/admin/v1/cluster")
    assert status["self"] == survivors[0].config["listen"] and status["replicas"] == 1
    assert len(status["members"]) == 3 and len(status["live"]) == 2
    shown = subprocess.run(
        [sys.executable, "-m", "proxy", "cluster", "status", "--admin", survivors[0].admin_url],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "2/3 live" in shown.stdout and f"{victim.config['listen']}  DOWN" in shown.stdout
    owns = [int(p) for p in re.findall(r"  live  owns (\d+)%", shown.stdout)]
    assert len(owns) == 2 and all(40 <= p <= 60 for p in owns), shown.stdout  # half each now
    assert f"{victim.config['listen']}  DOWN  owns 0%" in shown.stdout


def test_the_peer_route_needs_a_valid_fresh_signature(
    cluster: tuple[str, dict[str, bytes], list[ProxyProcess]],
) -> None:
    bucket, bodies, nodes = cluster
    key = next(iter(bodies))
    path = peers.object_path(bucket, key)
    url = f"{nodes[0].url}{path}"

    def call(headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    assert call({}) == (403, b"Forbidden: peer request without a cluster signature\n")
    bad = peers.sign(b"not-the-secret", "GET", path)
    assert call(bad) == (403, b"Forbidden: peer request with a bad signature\n")
    old = peers.sign(SECRET.encode(), "GET", path, now=time.time() - 120)
    assert call(old)[0] == 403 and b"replay window" in call(old)[1]
    good = peers.sign(SECRET.encode(), "GET", path)
    assert call(good) == (200, bodies[key])
    assert call(good) == (403, b"Forbidden: peer request replayed\n")
    # the health route too, and never an S3 answer for the reserved prefix
    status, body = get_body(f"{nodes[0].url}{peers.HEALTH_PATH}")
    assert (status, body) == (403, b"Forbidden: peer request without a cluster signature\n")


def test_nodes_find_each_other_through_etcd_and_dns(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    etcd: EtcdServer,
    tmp_path: Path,
) -> None:
    bucket = new_bucket("cluster-etcd")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"e/{i}", Body=payload(SIZE, seed=i))
    etcd_cfg = {"endpoints": [etcd.url], "prefix": "/slipstream-test/", "ttl": "3s"}
    nodes = start_nodes(
        seaweedfs, proxy_factory, relay.url, bucket, tmp_path, 2, {"etcd": etcd_cfg}
    )
    listens = [n.config["listen"] for n in nodes]
    assert admin(nodes[0], "/admin/v1/cluster")["membership"] == "etcd"
    relay.reset()
    for i in range(12):  # through either node: one store fetch per object for both
        for node in nodes:
            assert get_body(f"{node.url}/{bucket}/e/{i}") == (200, payload(SIZE, seed=i))
    gets = Counter(p for (m, p), n in relay.counts.items() if m == "GET" for _ in range(n))
    assert all(gets[f"/{bucket}/e/{i}"] == 1 for i in range(12)), gets
    nodes[1].stop()  # a clean stop revokes its lease: it leaves at once
    wait_live(nodes[:1], listens[:1], timeout=10)

    port = free_port()  # "localhost" resolves to 127.0.0.1 (and ::1): this node listens there
    env = {**store_env(seaweedfs), "CLUSTER_SECRET": SECRET}
    cfg = proxy_config(relay.url, bucket, tmp_path / "cache-dns")
    cfg["listen"] = f"127.0.0.1:{port}"
    cfg["cluster"] = {"secret_env": "CLUSTER_SECRET", "dns": f"localhost:{port}"}
    node = proxy_factory(cfg, env)
    view = admin(node, "/admin/v1/cluster")
    assert view["membership"] == "dns" and view["live"] == [f"127.0.0.1:{port}"], view
