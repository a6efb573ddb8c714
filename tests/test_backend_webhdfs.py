"""The proxy over the webhdfs backend, through boto3.

The store is tests/fake_webhdfs.py: a FAKE of the documented WebHDFS REST API (NameNode ->
DataNode 307 redirects, or HttpFS mode without a DataNode), not a real HDFS; no HDFS server
can be installed here. Every test runs in both modes. The mount is
``logs: {backend: hd, bucket: /data/logs}``. Writes are tested on the backend directly in
test_backend_webhdfs_writes.py.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.conftest import ProxyFactory, S3ClientFactory
from tests.fake_webhdfs import FakeWebHdfs, ThreadedFakeWebHdfs

CHUNK = 64 * 1024
INLINE_MAX = 4 * 1024
BASE = "/data/logs"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int) -> bytes:
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{n}".encode()).digest() * 32
        n += 1
    return bytes(out[:size])


@pytest.fixture(params=["webhdfs", "httpfs"])
def hdfs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeWebHdfs]:
    server = ThreadedFakeWebHdfs(tmp_path / "hdfs", httpfs=request.param == "httpfs")
    fake = server.start()
    fake.mkdir(BASE)
    yield fake
    server.stop()


@pytest.fixture
def s3(hdfs: FakeWebHdfs, proxy_factory: ProxyFactory, s3_client_factory: S3ClientFactory) -> Any:
    config = {
        "workers": 1,
        "cache": {
            "dir": "cache",
            "chunk_size": CHUNK,
            "inline_max": INLINE_MAX,
            "max_size": "64MiB",
            "metadata_ttl": "1h",
        },
        "backends": {"hd": {"type": "webhdfs", "url": hdfs.url, "user": "alice", "retries": 1}},
        "buckets": {"logs": {"backend": "hd", "bucket": BASE}},
        "log": {"level": "warning", "access_log": False},
    }
    proxy = proxy_factory(config)
    return s3_client_factory(proxy.url)


def get(s3: Any, key: str, rng: str | None = None) -> tuple[bytes, dict[str, Any]]:
    kwargs = {"Range": rng} if rng else {}
    resp = s3.get_object(Bucket="logs", Key=key, **kwargs)
    return resp["Body"].read(), resp


def error_of(call: Any) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    err = info.value.response
    return str(err["Error"]["Code"]), int(err["ResponseMetadata"]["HTTPStatusCode"])


def test_get_whole_and_ranged_cold_then_warm(hdfs: FakeWebHdfs, s3: Any) -> None:
    small, big = payload(1000, 1), payload(3 * CHUNK + 12345, 2)
    hdfs.write(f"{BASE}/small.bin", small)
    hdfs.write(f"{BASE}/dir/big.bin", big)
    hdfs.write(f"{BASE}/dir/ranged.bin", big)

    for key, data in (("small.bin", small), ("dir/big.bin", big)):
        body, _ = get(s3, key)
        assert sha(body) == sha(data)
        opened = hdfs.count("OPEN", node="namenode")
        assert opened > 0
        body, _ = get(s3, key)  # warm: from the cache, no read from HDFS
        assert sha(body) == sha(data)
        assert hdfs.count("OPEN", node="namenode") == opened

    first, last = CHUNK - 100, 2 * CHUNK + 99  # spans three chunks
    body, resp = get(s3, "dir/ranged.bin", f"bytes={first}-{last}")
    assert sha(body) == sha(big[first : last + 1])
    assert resp["ContentRange"] == f"bytes {first}-{last}/{len(big)}"
    opened = hdfs.count("OPEN", node="namenode")
    body, _ = get(s3, "dir/ranged.bin", f"bytes={first + 7}-{last - 7}")  # warm, inside
    assert sha(body) == sha(big[first + 7 : last - 6])
    body, _ = get(s3, "dir/ranged.bin", "bytes=-5000")  # the tail: one more chunk, cold
    assert body == big[-5000:]
    assert hdfs.count("OPEN", node="namenode") == opened + 1

    if hdfs.httpfs:  # HttpFS streams the bytes itself
        assert hdfs.count("OPEN", node="datanode") == 0
    else:  # every read went NameNode -> 307 -> DataNode
        assert hdfs.count("OPEN", node="datanode") == hdfs.count("OPEN", node="namenode")


def test_head_has_hdfs_identity_not_md5(hdfs: FakeWebHdfs, s3: Any) -> None:
    data = b'{"a": 1}\n'
    hdfs.write(f"{BASE}/meta/doc.json", data)
    mtime = os.stat(hdfs.local(f"{BASE}/meta/doc.json")).st_mtime
    head = s3.head_object(Bucket="logs", Key="meta/doc.json")
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "application/json"
    assert abs(head["LastModified"].timestamp() - mtime) < 1.5
    etag = head["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert etag.strip('"') != hashlib.md5(data).hexdigest()  # HDFS has no MD5; never claim it
    listed = s3.list_objects_v2(Bucket="logs", Prefix="meta/")["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [
        ("meta/doc.json", len(data), etag)
    ]
    body, resp = get(s3, "meta/doc.json")
    assert body == data and resp["ETag"] == etag

    hdfs.write(f"{BASE}/meta/doc.json", data + b"more")  # a new length: a new identity
    os.utime(hdfs.local(f"{BASE}/meta/doc.json"), (mtime + 5, mtime + 5))
    fresh = s3.list_objects_v2(Bucket="logs", Prefix="meta/")["Contents"][0]
    assert fresh["ETag"] != etag and fresh["Size"] == len(data) + 4


TREE = [
    "tree/a.txt",
    "tree/b-c.txt",
    "tree/b.txt",
    "tree/b/1.txt",
    "tree/b/2.txt",
    "tree/c/d/e.txt",
    "tree/z.txt",
    "tree/ü.txt",
] + [f"tree/many/f{i:02d}.txt" for i in range(11)]


def test_list_objects_v2_order_prefix_delimiter_paging(hdfs: FakeWebHdfs, s3: Any) -> None:
    for key in TREE:
        hdfs.write(f"{BASE}/{key}", key.encode())
    hdfs.mkdir(f"{BASE}/tree/empty")  # an empty directory holds no keys
    hdfs.write(f"{BASE}/tree/.slipstream-tmp-0123", b"an upload in progress")

    resp = s3.list_objects_v2(Bucket="logs", Prefix="tree/", Delimiter="/")
    assert [o["Key"] for o in resp["Contents"]] == [
        "tree/a.txt",
        "tree/b-c.txt",
        "tree/b.txt",
        "tree/z.txt",
        "tree/ü.txt",
    ]
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["tree/b/", "tree/c/", "tree/many/"]

    resp = s3.list_objects_v2(Bucket="logs", Prefix="tree/b", Delimiter="/")
    assert [o["Key"] for o in resp["Contents"]] == ["tree/b-c.txt", "tree/b.txt"]
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["tree/b/"]

    batches = hdfs.count("LISTSTATUS_BATCH")
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="logs", Prefix="tree/", PaginationConfig={"PageSize": 2}
    )
    keys, n = [], 0
    for page in pages:
        n += 1
        assert page["KeyCount"] <= 2
        keys += [o["Key"] for o in page.get("Contents", [])]
    assert keys == sorted(TREE)  # S3 order: "b-c.txt" < "b.txt" < "b/1.txt"; "ü" last
    assert n == (len(TREE) + 1) // 2
    assert hdfs.count("LISTSTATUS_BATCH") - batches > n  # directories paged (3 per batch)

    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="logs", Prefix="tree/", Delimiter="/", PaginationConfig={"PageSize": 3}
    )
    items = []
    for page in pages:
        got = [o["Key"] for o in page.get("Contents", [])]
        got += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        assert len(got) <= 3
        items += sorted(got)
    assert items == sorted(
        ["tree/a.txt", "tree/b-c.txt", "tree/b.txt", "tree/z.txt", "tree/ü.txt"]
        + ["tree/b/", "tree/c/", "tree/many/"]
    )

    resp = s3.list_objects_v2(Bucket="logs", Prefix="tree/", StartAfter="tree/b/1.txt")
    assert [o["Key"] for o in resp["Contents"]] == [k for k in sorted(TREE) if k > "tree/b/1.txt"]
    resp = s3.list_objects_v2(Bucket="logs", Prefix="nothing/here/")
    assert resp["KeyCount"] == 0 and "Contents" not in resp


def test_missing_keys_and_directories_are_no_such_key(hdfs: FakeWebHdfs, s3: Any) -> None:
    hdfs.write(f"{BASE}/d/file.txt", b"x")
    for key in ("absent.txt", "d", "d/", "d/file.txt/x", "d/../d/file.txt"):
        assert error_of(lambda k=key: s3.get_object(Bucket="logs", Key=k)) == ("NoSuchKey", 404)
    assert error_of(lambda: s3.head_object(Bucket="logs", Key="d"))[1] == 404
    assert get(s3, "d/file.txt")[0] == b"x"


def test_keys_with_spaces_and_unicode(hdfs: FakeWebHdfs, s3: Any) -> None:
    keys = {
        "dir with space/naïve file+1.txt": payload(5000, 3),
        "中文/數據 (1).bin": payload(CHUNK + 1, 4),
        "pct/a%20b&c=d?.txt": b"percent",
        "emoji/🙂.txt": b"smile",
    }
    for key, data in keys.items():
        hdfs.write(f"{BASE}/{key}", data)
    for key, data in keys.items():
        assert sha(get(s3, key)[0]) == sha(data), key
        assert s3.head_object(Bucket="logs", Key=key)["ContentLength"] == len(data)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="logs")["Contents"]]
    assert listed == sorted(keys)
    assert hdfs.count("OPEN", node="namenode") >= len(keys)


def test_hdfs_errors_map_to_s3_errors(hdfs: FakeWebHdfs, s3: Any) -> None:
    hdfs.write(f"{BASE}/secret/x.txt", b"no")
    hdfs.write(f"{BASE}/flaky/x.txt", b"later")
    hdfs.write(f"{BASE}/blip/x.txt", b"once")
    denied = hdfs.fail(
        "AccessControlException",
        path=f"{BASE}/secret",
        message="Permission denied: user=alice, access=READ, inode=/data/logs/secret",
    )
    broken = hdfs.fail("RuntimeException", path=f"{BASE}/flaky")  # until cleared
    assert (denied.status, broken.status) == (403, 500)  # the documented statuses
    assert error_of(lambda: s3.get_object(Bucket="logs", Key="secret/x.txt")) == (
        "AccessDenied",
        403,
    )
    assert error_of(lambda: s3.list_objects_v2(Bucket="logs", Prefix="secret/")) == (
        "AccessDenied",
        403,
    )
    assert error_of(lambda: s3.get_object(Bucket="logs", Key="flaky/x.txt")) == (
        "ServiceUnavailable",
        503,
    )
    assert error_of(lambda: s3.head_object(Bucket="logs", Key="flaky/x.txt"))[1] == 503

    hdfs.fail("RuntimeException", path=f"{BASE}/blip", op="GETFILESTATUS", times=1)
    assert get(s3, "blip/x.txt")[0] == b"once"  # a single 500 is retried (retries: 1)
    hdfs.fail("StandbyException", path=f"{BASE}/blip", op="GETFILESTATUS")  # 403, try later
    assert error_of(lambda: s3.head_object(Bucket="logs", Key="blip/y.txt"))[1] == 503

    hdfs.faults.clear()
    assert get(s3, "flaky/x.txt")[0] == b"later"
