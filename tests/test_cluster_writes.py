"""Writes and deletes through any node of a three-node cluster (over SeaweedFS) reach every
node before the client is answered: the owners drop their copies, so a read through any node
right after sees the new bytes (PUT, CopyObject, CompleteMultipartUpload, DELETE). HEAD goes to
the owner as GET does, so the nodes agree and the store is not asked. An owner that does not
answer the invalidation (stopped with SIGSTOP) does not fail the write; the writer logs it."""

from __future__ import annotations

import base64
import os
import signal
import time
import urllib.request
import zlib
from typing import Any

from proxy.cache.record import object_id
from proxy.cluster import peers, ring
from tests.conftest import S3ClientFactory
from tests.faultkit import get_body, payload, wait_until
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.test_cluster import SIZE, cluster, make_cluster, relay  # noqa: F401 (the fixtures)

Cluster = tuple[str, dict[str, bytes], list[ProxyProcess]]


def head(url: str) -> tuple[int, str | None, str | None, str | None]:
    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            h = resp.headers
            return int(resp.status), h["ETag"], h["Content-Length"], h["Last-Modified"]
    except urllib.error.HTTPError as exc:
        return int(exc.code), None, None, None


def owner_of(nodes: list[ProxyProcess], bucket: str, key: str) -> ProxyProcess:
    members = [n.config["listen"] for n in nodes]
    first = ring.owners(object_id("store", bucket, key), members, 1)[0]
    return next(n for n in nodes if n.config["listen"] == first)


def everywhere(nodes: list[ProxyProcess], bucket: str, key: str) -> set[tuple[int, bytes]]:
    return {get_body(f"{n.url}/{bucket}/{key}") for n in nodes}


def test_writes_through_a_non_owner_reach_every_node_before_the_answer(
    cluster: Cluster,  # noqa: F811
    relay: CountingRelay,  # noqa: F811
    s3_client_factory: S3ClientFactory,
) -> None:
    bucket, bodies, nodes = cluster
    keys = list(bodies)[:8]
    for key in keys:  # cached on each owner
        assert everywhere(nodes, bucket, key) == {(200, bodies[key])}
    relay.reset()
    for key in keys:  # HEAD: every node agrees, the owners answer it from their caches
        seen = {head(f"{n.url}/{bucket}/{key}") for n in nodes}
        assert len(seen) == 1, seen
        status, etag, length, _ = seen.pop()
        assert (status, length) == (200, str(SIZE)) and etag, key
    assert relay.counts == {}, relay.counts  # no node asked the store
    other = next(n for n in nodes if n is not owner_of(nodes, bucket, keys[0]))
    query = "?response-content-type=text%2Fx-check&response-cache-control=no-store"
    with urllib.request.urlopen(f"{other.url}/{bucket}/{keys[0]}{query}", timeout=10) as resp:
        assert resp.read() == bodies[keys[0]]  # from the owner, with the client's overrides
        assert resp.headers["Content-Type"] == "text/x-check"
        assert resp.headers["Cache-Control"] == "no-store"
    checksum_mode_is_forwarded(nodes, bucket, s3_client_factory)
    unsigned = urllib.request.Request(
        nodes[0].url + peers.object_path(bucket, keys[0], peers.INVALIDATE_PATH), method="POST"
    )
    try:
        urllib.request.urlopen(unsigned, data=b"", timeout=10)
        raise AssertionError("an unsigned invalidation was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403

    for i, key in enumerate(keys):
        owner = owner_of(nodes, bucket, key)
        writers = [n for n in nodes if n is not owner]
        s3: Any = s3_client_factory(writers[i % 2].url)
        new = payload(SIZE + 7 * i + 1, seed=1000 + i)
        if i % 4 == 0:
            s3.put_object(Bucket=bucket, Key=key, Body=new)
        elif i % 4 == 1:
            src = f"src/{i}"
            s3.put_object(Bucket=bucket, Key=src, Body=new)
            s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": src})
        elif i % 4 == 2:
            up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=1, Body=new)[
                "ETag"
            ]
            s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=up,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
            )
        else:
            s3.delete_object(Bucket=bucket, Key=key)
            assert {s for s, _ in everywhere(nodes, bucket, key)} == {404}, key
            assert {head(f"{n.url}/{bucket}/{key}")[0] for n in nodes} == {404}
            continue
        # at once, through every node: the new bytes, and one answer to HEAD
        assert everywhere(nodes, bucket, key) == {(200, new)}, (i, key)
        heads = {head(f"{n.url}/{bucket}/{key}") for n in nodes}
        assert len(heads) == 1 and heads.pop()[2] == str(len(new)), (i, key)
        # and again through the other non-owner (the first one kept no copy of its write)
        newer = payload(SIZE, seed=2000 + i)
        s3_client_factory(writers[(i + 1) % 2].url).put_object(Bucket=bucket, Key=key, Body=newer)
        assert everywhere(nodes, bucket, key) == {(200, newer)}, (i, key)


def checksum_mode_is_forwarded(
    nodes: list[ProxyProcess], bucket: str, s3_client_factory: S3ClientFactory
) -> None:
    """A GET or HEAD with x-amz-checksum-mode through a node that does not own the object gets
    the checksum the owner keeps (uploaded through it, verified, cached with the copy); a
    ranged read none, as from one node."""
    key = "checksummed"
    owner = owner_of(nodes, bucket, key)
    body = payload(SIZE, seed=5)
    want = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    put = s3_client_factory(owner.url).put_object(
        Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="CRC32"
    )
    assert put["ChecksumCRC32"] == want
    for other in (n for n in nodes if n is not owner):
        s3: Any = s3_client_factory(other.url)
        got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert got["Body"].read() == body and got.get("ChecksumCRC32") == want, got
        assert (
            s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["ChecksumCRC32"] == want
        )
        ranged = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-9", ChecksumMode="ENABLED")
        assert ranged["Body"].read() == body[:10] and "ChecksumCRC32" not in ranged
        with urllib.request.urlopen(f"{other.url}/{bucket}/{key}", timeout=10) as resp:
            assert resp.read() == body  # not asked (botocore asks by default): none
            assert "x-amz-checksum-crc32" not in resp.headers


def test_an_owner_that_does_not_answer_does_not_fail_the_write(
    cluster: Cluster,  # noqa: F811
    s3_client_factory: S3ClientFactory,
) -> None:
    bucket, bodies, nodes = cluster
    key = next(iter(bodies))
    assert everywhere(nodes, bucket, key) == {(200, bodies[key])}
    owner = owner_of(nodes, bucket, key)
    writer = next(n for n in nodes if n is not owner)
    new = payload(SIZE, seed=77)
    os.killpg(owner.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        s3_client_factory(writer.url).put_object(Bucket=bucket, Key=key, Body=new)
        assert time.monotonic() - started < 20  # INVALIDATE_TIMEOUT (2 s), not forever
    finally:
        os.killpg(owner.pid, signal.SIGCONT)
    assert wait_until(lambda: "did not confirm dropping" in writer.log(), timeout=10)
    # the owner may have left the ring meanwhile (its health checks failed): either way the
    # other nodes read the store's bytes now
    assert get_body(f"{writer.url}/{bucket}/{key}")[1] in (new, bodies[key])
