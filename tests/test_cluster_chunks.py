"""Per-chunk ownership (issue 11: "each chunk, for large objects"): three nodes over SeaweedFS
behind a CountingRelay, replicas 1, cache.chunk_size 1MiB. An object of seven chunks read
through each node, whole and by Range, comes back right; each node then caches exactly the
chunks the ring gives it (chunk i: ring.chunk_owners(oid, i)), the chunks lie on all three
nodes, and the store was asked for each chunk once. Objects of one chunk stay on their
object-level owner, fetched once."""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from proxy.cache.record import object_id
from proxy.cluster import ring
from proxy.jobs.client import AdminClient
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import audit_cache, get_body, new_bucket, payload
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint
from tests.test_cluster import job_ended, start_nodes, wait_live

CHUNK = 1024 * 1024
BIG = 6 * CHUNK + 123_457  # seven chunks, the last a short one
CHUNKS = -(-BIG // CHUNK)
SMALL = 40 * 1024


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url) as r:
        yield r


def ranged(node: ProxyProcess, bucket: str, key: str, spec: str) -> tuple[int, str, bytes]:
    """A ranged GET on a keep-alive HTTP/1.1 connection (as S3 clients send them: the proxy
    writes some answers whole only then)."""
    host, port = node.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", f"/{bucket}/{key}", headers={"Range": spec})
        resp = conn.getresponse()
        return resp.status, resp.headers["Content-Range"], resp.read()
    finally:
        conn.close()


def held_chunks(cache_dir: Path, oid: bytes) -> set[int]:
    rec = audit_cache(cache_dir).records.get(oid)
    return set() if rec is None else {i for i in range(CHUNKS) if rec.has_chunk(i)}


def held_everywhere(
    tmp_path: Path, oid: bytes, wanted: dict[int, set[int]], timeout: float = 15
) -> dict[int, set[int]]:
    """The chunks each node's cache holds, once they are ``wanted`` (fills commit just after
    their answers) or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        held = {i: held_chunks(tmp_path / f"cache{i}", oid) for i in range(len(wanted))}
        if held == wanted or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


Setup = tuple[str, str, dict[str, bytes], list[ProxyProcess], list[str]]
Factory = Callable[..., Setup]


@pytest.fixture
def cluster(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    tmp_path: Path,
) -> Factory:
    """setup() with this test's servers: ``cluster(replicas=2)``."""
    return partial(setup, seaweedfs, s3_client_factory, proxy_factory, relay, tmp_path)


def setup(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    tmp_path: Path,
    replicas: int = 1,
    count: int = 3,
    workers: int = 1,
) -> Setup:
    """``count`` nodes (chunk_size 1MiB, ``replicas``) and a bucket holding a large object
    whose chunks lie on all of them (its key found for these members: their names change with
    the port) and three small ones: (bucket, the large key, bodies, nodes, each chunk's owner)."""
    bucket = new_bucket("chunks")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    cache: dict[str, Any] = {"chunk_size": "1MiB"}
    nodes = start_nodes(
        seaweedfs,
        proxy_factory,
        relay.url,
        bucket,
        tmp_path,
        count,
        {"replicas": replicas},
        workers=workers,
        cache=cache,
    )
    members = [n.config["listen"] for n in nodes]

    def owner_of(key: str) -> list[str]:
        oid = object_id("store", bucket, key)
        return [ring.chunk_owners(oid, i, members, 1)[0] for i in range(CHUNKS)]

    big = next(k for k in (f"big/{j}" for j in range(1000)) if len(set(owner_of(k))) == count)
    bodies = {big: payload(BIG, seed=1)}
    bodies.update({f"small/{i}": payload(SMALL, seed=10 + i) for i in range(3)})
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    relay.reset()
    return bucket, big, bodies, nodes, owner_of(big)


def test_a_large_object_is_cached_chunk_by_chunk_on_each_chunks_owner(
    cluster: Factory, relay: CountingRelay, tmp_path: Path
) -> None:
    bucket, big, bodies, nodes, owner_of = cluster()
    members = [n.config["listen"] for n in nodes]
    oid = object_id("store", bucket, big)
    assert owner_of[0] == ring.owners(oid, members, 1)[0]  # chunk 0: the object's own owner

    # cold, on chunk 0's owner: 10 bytes of chunk 0 read there, 10 of chunk 1 from its owner
    entry = next(n for n in nodes if n.config["listen"] == owner_of[0])
    first, last = CHUNK - 10, CHUNK + 9
    got = ranged(entry, bucket, big, f"bytes={first}-{last}")
    assert got == (206, f"bytes {first}-{last}/{BIG}", bodies[big][first : last + 1])
    want = hashlib.sha256(bodies[big]).hexdigest()
    spans = [(0, 99), (CHUNK - 10, CHUNK + 9), (3 * CHUNK + 5, BIG - 1), (BIG - 1000, BIG - 1)]
    for node in nodes:
        status, got = get_body(f"{node.url}/{bucket}/{big}")
        assert (status, len(got), hashlib.sha256(got).hexdigest()) == (200, BIG, want), node
        for first, last in spans:
            status, crange, got = ranged(node, bucket, big, f"bytes={first}-{last}")
            assert (status, crange) == (206, f"bytes {first}-{last}/{BIG}")
            assert got == bodies[big][first : last + 1], (node, first, last)
        status, crange, got = ranged(node, bucket, big, "bytes=-2000000")  # a suffix: 2 chunks
        assert (status, got) == (206, bodies[big][-2000000:]) and crange.endswith(f"/{BIG}")
        for key in bodies:
            if key != big:
                assert get_body(f"{node.url}/{bucket}/{key}") == (200, bodies[key]), key

    # each node caches the chunks it owns and no other (fills commit just after their answers)
    wanted = {i: {c for c in range(CHUNKS) if owner_of[c] == m} for i, m in enumerate(members)}
    held = held_everywhere(tmp_path, oid, wanted)
    assert held == wanted, (held, owner_of)
    assert all(held.values())  # the chunks lie on every node
    for i in range(3):
        assert audit_cache(tmp_path / f"cache{i}").missing_or_wrong_size(CHUNK) == []
    # a small object: on its object-level owner only, as before
    for key in bodies:
        if key == big:
            continue
        owner = ring.owners(object_id("store", bucket, key), members, 1)[0]
        small_oid = object_id("store", bucket, key)
        on = {
            m
            for i, m in enumerate(members)
            if small_oid in audit_cache(tmp_path / f"cache{i}").records
        }
        assert on == {owner}, key
    # the store was asked once per chunk of the large object (each owner's ranged read of its
    # own chunk), once per small object
    gets = {path: n for (method, path), n in relay.counts.items() if method == "GET"}
    assert gets == {f"/{bucket}/{k}": CHUNKS if k == big else 1 for k in bodies}, gets


def test_a_dead_chunk_owner_is_replaced_by_the_store_and_a_changed_object_aborts(
    cluster: Factory,
    relay: CountingRelay,
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
) -> None:
    bucket, big, bodies, nodes, owner_of = cluster()
    by_name = {n.config["listen"]: n for n in nodes}
    entry = by_name[owner_of[0]]  # it keeps the metadata (fresh for metadata_ttl)
    assert get_body(f"{entry.url}/{bucket}/{big}") == (200, bodies[big])
    victim = next(by_name[m] for m in owner_of if m != owner_of[0])
    lost = [i for i, m in enumerate(owner_of) if m == victim.config["listen"]]
    victim.kill9()
    # its chunks come from the store now (ranged, If-Match): right bytes, whole and by Range
    before = relay.count_of("GET", f"/{bucket}/{big}")
    assert get_body(f"{entry.url}/{bucket}/{big}") == (200, bodies[big])
    first, last = lost[0] * CHUNK + 7, min(BIG - 1, lost[0] * CHUNK + CHUNK + 7)
    assert ranged(entry, bucket, big, f"bytes={first}-{last}")[2] == bodies[big][first : last + 1]
    assert relay.count_of("GET", f"/{bucket}/{big}") > before
    # the object changes in the store behind the cluster's back (same size): the chunks the
    # live owners cache are the old object's, the store's are the new one's. A read through
    # the cluster may not mix them: the store refuses If-Match, the connection is cut short.
    s3 = s3_client_factory(seaweedfs)
    s3.put_object(Bucket=bucket, Key=big, Body=payload(BIG, seed=2))
    req = urllib.request.Request(f"{entry.url}/{bucket}/{big}")
    with pytest.raises(http.client.IncompleteRead):
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            resp.read()


def test_with_two_replicas_each_chunk_lies_on_its_two_owners_fetched_once(
    cluster: Factory, relay: CountingRelay, tmp_path: Path
) -> None:
    """replicas 2: the first owner of each chunk reads it from the store, the second fills its
    replica from the first (not the store), whichever node the client asked."""
    bucket, big, bodies, nodes, _ = cluster(replicas=2)
    members = [n.config["listen"] for n in nodes]
    oid = object_id("store", bucket, big)
    owners = [ring.chunk_owners(oid, i, members, 2) for i in range(CHUNKS)]
    for node in nodes:
        assert get_body(f"{node.url}/{bucket}/{big}") == (200, bodies[big]), node
    first, last = 2 * CHUNK + 3, 4 * CHUNK + 3  # a range over three chunks, from the last node
    assert (
        ranged(nodes[2], bucket, big, f"bytes={first}-{last}")[2] == bodies[big][first : last + 1]
    )

    wanted = {i: {c for c in range(CHUNKS) if m in owners[c]} for i, m in enumerate(members)}
    held = held_everywhere(tmp_path, oid, wanted)
    assert held == wanted, (held, owners)
    assert relay.count_of("GET", f"/{bucket}/{big}") == CHUNKS  # one store read per chunk


@pytest.mark.parametrize("workers", [1, 2])
def test_a_warm_job_fills_each_chunk_on_its_owners_once(
    cluster: Factory, relay: CountingRelay, tmp_path: Path, workers: int
) -> None:
    """A warm job posted to any node: the large object's chunks land on their owners (each
    on its two owners, replicas 2), one store GET per chunk; then reads through any node
    cost no store GET. With 2 workers the job runs in the supervisor, which must know the
    chunk size too."""
    bucket, big, bodies, nodes, _ = cluster(replicas=2, workers=workers)
    members = [n.config["listen"] for n in nodes]
    oid = object_id("store", bucket, big)
    owners = [ring.chunk_owners(oid, i, members, 2) for i in range(CHUNKS)]
    client = AdminClient(nodes[1].admin_url)
    job = job_ended(client, client.warm({"bucket": bucket, "prefix": "", "concurrency": 4}))
    assert job["state"] == "done", job
    assert (job["objects_done"], job["failed"]) == (len(bodies), 0), job
    assert job["bytes_done"] == sum(len(b) for b in bodies.values()), job
    wanted = {i: {c for c in range(CHUNKS) if m in owners[c]} for i, m in enumerate(members)}
    assert held_everywhere(tmp_path, oid, wanted) == wanted
    gets = {p: n for (method, p), n in relay.counts.items() if method == "GET" and "/" in p[1:]}
    assert gets == {f"/{bucket}/{k}": CHUNKS if k == big else 1 for k in bodies}, gets
    relay.reset()
    for node in nodes:
        assert get_body(f"{node.url}/{bucket}/{big}") == (200, bodies[big]), node
    assert relay.count_of("GET", f"/{bucket}/{big}") == 0


def test_a_restarted_node_is_warmed_with_its_chunks_from_the_others(
    cluster: Factory, relay: CountingRelay, tmp_path: Path
) -> None:
    """A node is down while the large object is read: its chunks land on the survivors (the
    ring without it). It restarts: its warmer pulls the chunks it owns again from them, with
    no client read and no store GET."""
    bucket, big, bodies, nodes, owner_of = cluster()
    members = [n.config["listen"] for n in nodes]
    oid = object_id("store", bucket, big)
    at = max(range(3), key=lambda i: owner_of.count(members[i]))
    victim, survivors = nodes[at], [n for i, n in enumerate(nodes) if i != at]
    victim.kill9()
    wait_live(survivors, [m for m in members if m != members[at]], timeout=10)
    assert get_body(f"{survivors[0].url}/{bucket}/{big}") == (200, bodies[big])
    assert relay.count_of("GET", f"/{bucket}/{big}") == CHUNKS

    relay.reset()
    victim.start()
    wait_live(nodes, members, timeout=15)
    want = {c for c in range(CHUNKS) if owner_of[c] == members[at]}
    deadline = time.monotonic() + 30
    while held_chunks(tmp_path / f"cache{at}", oid) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held_chunks(tmp_path / f"cache{at}", oid) == want
    assert relay.count_of("GET", f"/{bucket}/{big}") == 0
    assert get_body(f"{victim.url}/{bucket}/{big}") == (200, bodies[big])
    assert relay.count_of("GET", f"/{bucket}/{big}") == 0


def test_a_write_through_any_node_drops_every_chunk_before_its_answer(
    cluster: Factory, relay: CountingRelay
) -> None:
    """Every chunk cached (on four nodes), then the object rewritten through one node: a read
    through any node right after the answer, of any chunk, whole or by Range, is the new
    object's: every node was told to drop its copy, not only the object's owners and the two
    ranked next (the fourth node holds chunks of it too)."""
    bucket, big, bodies, nodes, owner_of = cluster(count=4)
    for node in nodes:
        assert get_body(f"{node.url}/{bucket}/{big}") == (200, bodies[big])
    writer = next(n for n in nodes if n.config["listen"] != owner_of[0])
    new = payload(BIG, seed=3)
    req = urllib.request.Request(f"{writer.url}/{bucket}/{big}", data=new, method="PUT")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    for node in nodes:
        for index in range(CHUNKS):
            first = index * CHUNK + 11
            last = min(BIG - 1, first + 1000)
            got = ranged(node, bucket, big, f"bytes={first}-{last}")[2]
            assert got == new[first : last + 1], (node, index)
        assert get_body(f"{node.url}/{bucket}/{big}") == (200, new), node
