"""cluster.local_copy on three nodes (replicas: 1) over SeaweedFS behind a CountingRelay: a
node that does not own an object keeps a copy of what its own clients read, filled from the
owner (one store GET per object for the cluster); its second read asks neither a peer nor the
store; its copies stay under the bound (the cache group's used bytes, and what it holds);
a write through another node drops the copy before it is acknowledged, so the next read
through it returns the new bytes."""

from __future__ import annotations

import time
from collections import Counter

from tests.conftest import S3ClientFactory
from tests.faultkit import get_body, payload, scrape, wait_until
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.test_cluster import (  # noqa: F401 (the fixtures)
    SIZE,
    ClusterFactory,
    admin,
    make_cluster,
    placement,
    relay,
)

KEEP = 5  # objects of SIZE the local copies may hold


def peer_bytes(node: ProxyProcess) -> float:
    """The bytes ``node`` received from peers, once the count holds still for 1.2 s (a
    worker's metrics reach the admin listener up to a second late)."""

    def count() -> float:
        return scrape(node.admin_url).get("slipstream_peer_bytes_total", direction="received")

    last = count()
    for _ in range(20):
        time.sleep(1.2)
        now = count()
        if now == last:
            break
        last = now
    return last


def local_used(node: ProxyProcess) -> float:
    m = scrape(node.admin_url)
    return m.get("slipstream_cache_quota_used_bytes", bucket="cluster.local_copy")


def test_a_non_owner_keeps_a_bounded_local_copy_that_a_write_elsewhere_drops(
    make_cluster: ClusterFactory,  # noqa: F811
    relay: CountingRelay,  # noqa: F811
    s3_client_factory: S3ClientFactory,
) -> None:
    bucket, bodies, nodes = make_cluster(1, objects=40, local_copy=KEEP * SIZE)
    reader = nodes[0]
    _, owners = placement(bucket, nodes, bodies, 1)
    foreign = [k for k in bodies if owners[k][0] != reader.config["listen"]]
    assert len(foreign) > 2 * KEEP

    hot = foreign[:3]
    for key in hot:  # cold: through the owner (one store GET each), a copy kept here
        assert get_body(f"{reader.url}/{bucket}/{key}") == (200, bodies[key])
    gets = Counter({p: n for (m, p), n in relay.counts.items() if m == "GET"})
    assert gets == Counter({f"/{bucket}/{k}": 1 for k in hot}), relay.counts
    assert wait_until(lambda: local_used(reader) == 3 * SIZE), local_used(reader)  # persisted
    got_before = peer_bytes(reader)
    assert got_before >= 3 * SIZE  # the cold reads came from the owners
    relay.reset()
    for _ in range(3):  # again: local hits, no peer and no store request
        for key in hot:
            assert get_body(f"{reader.url}/{bucket}/{key}") == (200, bodies[key])
    assert peer_bytes(reader) == got_before
    assert not any(m == "GET" for m, _ in relay.counts), relay.counts

    # many more: the copies stay within the bound (the oldest go first), all read right
    for key in foreign:
        assert get_body(f"{reader.url}/{bucket}/{key}") == (200, bodies[key])
    assert 0 < local_used(reader) <= KEEP * SIZE
    held = admin(reader, "/admin/v1/cache")["objects"]
    assert held <= KEEP, held  # it read nothing it owns: it holds local copies only

    # a write through another node drops the copy here before it is acknowledged
    key = foreign[-1]  # the newest copy: still held
    before = peer_bytes(reader)
    assert get_body(f"{reader.url}/{bucket}/{key}") == (200, bodies[key])
    assert peer_bytes(reader) == before  # a local hit
    writer = next(n for n in nodes[1:] if n.config["listen"] != owners[key][0])
    new = payload(SIZE + 7, seed=99)
    s3_client_factory(writer.url).put_object(Bucket=bucket, Key=key, Body=new)
    assert get_body(f"{reader.url}/{bucket}/{key}") == (200, new)
    assert get_body(f"{reader.url}/{bucket}/{key}") == (200, new)
    # and a delete too
    s3_client_factory(writer.url).delete_object(Bucket=bucket, Key=key)
    assert get_body(f"{reader.url}/{bucket}/{key}")[0] == 404


def test_local_copy_is_off_by_default_and_a_bad_size_names_the_field() -> None:
    from proxy.cluster.config import parse_cluster
    from proxy.errors import ConfigError

    base = {"secret_env": "S", "members": ["127.0.0.1:9000"]}
    cfg = parse_cluster(base, "127.0.0.1:9000")
    assert cfg is not None and cfg.local_copy == 0
    cfg = parse_cluster({**base, "local_copy": "2MiB"}, "127.0.0.1:9000")
    assert cfg is not None and cfg.local_copy == 2 * 1024 * 1024
    for bad in ("lots", -1, True):
        try:
            parse_cluster({**base, "local_copy": bad}, "127.0.0.1:9000")
        except ConfigError as exc:
            assert "cluster.local_copy" in str(exc)
        else:
            raise AssertionError(bad)
