"""Writes through the proxy, over S3 on moto, S3 on SeaweedFS and the fs backend (a directory).

What one stage writes, the next reads hot: after a PutObject the object is in the cache, so a
GET reaches no store (a counting relay sits between proxy and S3 store; the fs backend counts
its own requests in ``slipstream_backend_requests_total``). Writes and deletes invalidate at
once. Where the store can be read directly, the stored bytes are checked there too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import mimetypes
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3.s3.transfer
import botocore.exceptions
import pytest

from tests.conformance import body_of, metric, raw_request, sha256, store_side
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint, make_s3_client

STORE_KINDS = ["moto", "seaweedfs", "fs"]
KiB, MiB = 1024, 1024 * 1024
CHUNK = 256 * KiB
INLINE_MAX = 4 * KiB
PART = 5 * MiB  # S3's smallest part but the last

ONLY_S3 = pytest.mark.parametrize("w", ["moto", "seaweedfs"], indirect=True)


@dataclass
class W:
    """A proxy over one store, with what the tests need to look at the store directly."""

    kind: str
    proxy: ProxyProcess
    client: Any  # boto3, through the proxy
    bucket: str  # "*"-mapped: the store's bucket of the same name
    other: str  # a second "*"-mapped bucket
    ro: str  # a read_only mount over ``bucket``
    store: Any | None  # boto3 straight to the store; None for fs
    relay: CountingRelay | None
    root: Path | None  # fs data root
    _seq: list[int] = field(default_factory=lambda: [0])

    @property
    def is_fs(self) -> bool:
        return self.kind == "fs"

    def key(self, stem: str) -> str:
        """``stem`` made unique, keeping its extension: ``a/b.txt`` -> ``a/b-7.txt``."""
        self._seq[0] += 1
        head, dot, ext = stem.rpartition(".")
        if not dot or "/" in ext:
            return f"{stem}-{self._seq[0]}"
        return f"{head}-{self._seq[0]}.{ext}"

    def stored(self, key: str, bucket: str | None = None) -> bytes | None:
        """The object's bytes as the store holds them (None: no such object)."""
        bucket = bucket or self.bucket
        if self.store is None:
            assert self.root is not None
            path = self.root / bucket / key
            return path.read_bytes() if path.is_file() else None
        try:
            return bytes(self.store.get_object(Bucket=bucket, Key=key)["Body"].read())
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def store_reads(self, key: str, bucket: str | None = None) -> int:
        """GET/HEAD requests for this object that reached the store (fs: all of its reads)."""
        if self.relay is not None:
            path = f"/{bucket or self.bucket}/{key}"
            return self.relay.count_of("GET", path) + self.relay.count_of("HEAD", path)
        url = self.proxy.admin_url
        name = "slipstream_backend_requests_total"
        return int(
            metric(url, name, operation="GetObject") + metric(url, name, operation="HeadObject")
        )

    def get(self, key: str, bucket: str | None = None, **kw: Any) -> bytes:
        resp = self.client.get_object(Bucket=bucket or self.bucket, Key=key, **kw)
        return bytes(resp["Body"].read())


@pytest.fixture(scope="module", params=STORE_KINDS)
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[W]:
    kind: str = request.param
    tag = uuid.uuid4().hex[:8]
    bucket, other, ro = f"wr-{tag}", f"wr2-{tag}", f"ro-{tag}"
    workdir = tmp_path_factory.mktemp(f"writes-{kind}")
    side = store_side(kind, request, workdir / "root", (bucket, other))
    backend, proxy_env = side.backend, side.env
    config = {
        "cache": {
            "dir": "cache",
            "chunk_size": CHUNK,
            "inline_max": INLINE_MAX,
            "max_size": "256MiB",
            "metadata_ttl": "1h",
        },
        "backends": {"store": backend},
        "buckets": {
            "*": {"backend": "store"},
            ro: {"backend": "store", "bucket": bucket, "read_only": True},
        },
        "log": {"level": "warning", "access_log": False},
    }
    proxy = ProxyProcess(config, workdir / "proxy", proxy_env)
    try:
        proxy.start()
        yield W(
            kind=kind,
            proxy=proxy,
            client=make_s3_client(proxy.url, "any-key", "any-secret"),
            bucket=bucket,
            other=other,
            ro=ro,
            store=side.store,
            relay=side.relay,
            root=side.root,
        )
    finally:
        proxy.stop()
        side.close()


def _error(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str]:
    resp = exc.value.response
    return int(resp["ResponseMetadata"]["HTTPStatusCode"]), str(resp["Error"]["Code"])


def _md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


# -- PutObject: write-through -----------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1000, 3 * CHUNK + 17, 2 * MiB], ids=lambda s: f"{s}B")
def test_put_then_get_served_from_cache(w: W, size: int) -> None:
    key = w.key(f"put/obj-{size}.bin")
    body = body_of(size, size)
    put = w.client.put_object(Bucket=w.bucket, Key=key, Body=body)
    assert w.stored(key) == body
    if not w.is_fs:
        assert put["ETag"] == _md5_etag(body)
    before = w.store_reads(key)
    assert w.get(key) == body
    head = w.client.head_object(Bucket=w.bucket, Key=key)
    assert head["ContentLength"] == size and head["ETag"] == put["ETag"]
    if size > CHUNK:  # ranges across chunk boundaries, from the cached chunks
        for first, last in ((CHUNK - 3, CHUNK + 3), (size - 10, size - 1), (0, 0)):
            got = w.get(key, Range=f"bytes={first}-{last}")
            assert got == body[first : last + 1]
    assert w.store_reads(key) == before, "a read after a write-through reached the store"


@pytest.mark.parametrize("size", [100, 3 * CHUNK + 5], ids=["inline", "chunked"])
def test_put_metadata_round_trips(w: W, size: int) -> None:
    key = w.key("meta/data.json")
    body = body_of(size, 3)
    w.client.put_object(
        Bucket=w.bucket,
        Key=key,
        Body=body,
        ContentType="application/x-slipstream",
        Metadata={"color": "blue", "Owner": "ml"},
        CacheControl="max-age=60",
    )
    before = w.store_reads(key)
    got = w.client.get_object(Bucket=w.bucket, Key=key)
    assert got["Body"].read() == body
    head = w.client.head_object(Bucket=w.bucket, Key=key)
    assert w.store_reads(key) == before
    if w.is_fs:  # documented: a directory keeps no metadata; the type is guessed from the name
        for resp in (got, head):
            assert resp["ContentType"] == mimetypes.guess_type(key)[0]
            assert resp["Metadata"] == {}
        return
    assert w.store is not None
    direct = w.store.head_object(Bucket=w.bucket, Key=key)
    assert direct["Metadata"] == {"color": "blue", "owner": "ml"}
    for resp in (got, head):
        assert resp["ContentType"] == "application/x-slipstream"
        assert resp["Metadata"] == {"color": "blue", "owner": "ml"}
        assert resp["CacheControl"] == "max-age=60"
        assert resp["ETag"] == direct["ETag"]
        assert resp["LastModified"] == direct["LastModified"]


# -- overwrite and delete invalidate ----------------------------------------------------------
@pytest.mark.parametrize("cold", [False, True], ids=["written-v1", "read-through-v1"])
def test_overwrite_is_seen_at_once(w: W, cold: bool) -> None:
    key = w.key("over/object.bin")
    v1, v2 = body_of(3 * CHUNK + 11, 10), body_of(2 * CHUNK - 5, 11)
    if cold and w.store is not None:  # v1 reaches the cache by a read-through fill
        w.store.put_object(Bucket=w.bucket, Key=key, Body=v1)
    elif cold:
        assert w.root is not None
        (w.root / w.bucket / key).parent.mkdir(parents=True, exist_ok=True)
        (w.root / w.bucket / key).write_bytes(v1)
    else:
        w.client.put_object(Bucket=w.bucket, Key=key, Body=v1)
    for _ in range(2):  # the second read is a hit
        assert w.get(key) == v1
        assert w.get(key, Range="bytes=10-20") == v1[10:21]
        assert w.get(key, Range=f"bytes={CHUNK}-") == v1[CHUNK:]
    w.client.put_object(Bucket=w.bucket, Key=key, Body=v2)
    assert w.get(key, Range="bytes=10-20") == v2[10:21]
    assert w.get(key, Range=f"bytes={CHUNK}-") == v2[CHUNK:]
    assert w.get(key) == v2
    head = w.client.head_object(Bucket=w.bucket, Key=key)
    assert head["ContentLength"] == len(v2)
    assert w.stored(key) == v2
    # and back to a small, inline object
    w.client.put_object(Bucket=w.bucket, Key=key, Body=b"v3")
    assert w.get(key) == b"v3"
    assert w.get(key, Range="bytes=1-") == b"3"


def test_overwrite_and_delete_seen_by_every_worker(w: W) -> None:
    """Each GET on a new connection, so reads land on every worker (SO_REUSEPORT spreads
    connections): none may keep serving a version it had cached or memoised."""
    key = w.key("workers/obj.bin")
    path = f"/{w.bucket}/{key}"
    for version in range(4):
        body = body_of(CHUNK + 100 * version, 200 + version)
        w.client.put_object(Bucket=w.bucket, Key=key, Body=body)
        for _ in range(6):
            got = raw_request(w.proxy.url, "GET", path)
            assert got.status == 200 and got.body == body, f"stale read of version {version}"
            part = raw_request(w.proxy.url, "GET", path, {"Range": "bytes=-5"})
            assert part.body == body[-5:]
    w.client.delete_object(Bucket=w.bucket, Key=key)
    for _ in range(6):
        assert raw_request(w.proxy.url, "GET", path).status == 404


def test_delete_object_leaves_nothing_cached(w: W) -> None:
    small, big = w.key("del/small.txt"), w.key("del/big.bin")
    w.client.put_object(Bucket=w.bucket, Key=small, Body=b"small")
    w.client.put_object(Bucket=w.bucket, Key=big, Body=body_of(2 * CHUNK + 1, 5))
    for key in (small, big):
        w.get(key)
        resp = w.client.delete_object(Bucket=w.bucket, Key=key)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            w.get(key)
        assert _error(exc) == (404, "NoSuchKey")
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            w.client.head_object(Bucket=w.bucket, Key=key)
        assert _error(exc)[0] == 404
        assert w.stored(key) is None
    # S3 answers 204 for a key that does not exist
    resp = w.client.delete_object(Bucket=w.bucket, Key=w.key("del/never-there"))
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_delete_with_a_subresource_never_deletes_the_object(w: W) -> None:
    """DeleteObjectTagging and a delete of another version are not DeleteObject."""
    key = w.key("del/tagged.txt")
    w.client.put_object(Bucket=w.bucket, Key=key, Body=b"keep me")
    for call in (
        lambda: w.client.delete_object_tagging(Bucket=w.bucket, Key=key),
        lambda: w.client.delete_object(Bucket=w.bucket, Key=key, VersionId="3HL4kqtJlcpXroDTDmJ"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            call()
        assert _error(exc) == (501, "NotImplemented")
        assert w.stored(key) == b"keep me"
        assert w.get(key) == b"keep me"
    # the one version of an object in an unversioned bucket is "null"
    w.client.delete_object(Bucket=w.bucket, Key=key, VersionId="null")
    assert w.stored(key) is None


@pytest.mark.parametrize("quiet", [False, True], ids=["verbose", "quiet"])
def test_delete_objects_batch(w: W, quiet: bool) -> None:
    keys = [w.key(f"batch/{i}.bin") for i in range(4)]
    for i, key in enumerate(keys):
        w.client.put_object(Bucket=w.bucket, Key=key, Body=body_of(CHUNK + i, i))
        w.get(key)  # cached
    missing = w.key("batch/missing.bin")
    resp = w.client.delete_objects(
        Bucket=w.bucket,
        Delete={"Objects": [{"Key": k} for k in [*keys, missing]], "Quiet": quiet},
    )
    assert resp.get("Errors", []) == []
    if quiet:
        assert resp.get("Deleted", []) == []
    else:
        assert sorted(d["Key"] for d in resp["Deleted"]) == sorted([*keys, missing])
    for key in keys:
        assert w.stored(key) is None
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            w.get(key)
        assert _error(exc) == (404, "NoSuchKey")
    listed = w.client.list_objects_v2(Bucket=w.bucket, Prefix="batch/")
    assert not set(keys) & {o["Key"] for o in listed.get("Contents", [])}


# -- CopyObject -------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same-bucket", "other-bucket"])
def test_copy_object(w: W, where: str) -> None:
    src, dst = w.key("copy/src.bin"), w.key("copy/dst.bin")
    dst_bucket = w.bucket if where == "same-bucket" else w.other
    body = body_of(3 * CHUNK + 1, 21)
    w.client.put_object(
        Bucket=w.bucket, Key=src, Body=body, ContentType="text/x-src", Metadata={"k": "v"}
    )
    w.client.put_object(Bucket=dst_bucket, Key=dst, Body=b"old destination")
    assert w.get(dst, dst_bucket) == b"old destination"  # cached
    resp = w.client.copy_object(
        Bucket=dst_bucket, Key=dst, CopySource={"Bucket": w.bucket, "Key": src}
    )
    assert resp["CopyObjectResult"]["ETag"]
    assert w.get(dst, dst_bucket) == body
    assert w.get(dst, dst_bucket, Range="bytes=5-9") == body[5:10]
    assert w.stored(dst, dst_bucket) == body
    head = w.client.head_object(Bucket=dst_bucket, Key=dst)
    if not w.is_fs:  # COPY keeps the source's metadata
        assert head["ContentType"] == "text/x-src"
        assert head["Metadata"] == {"k": "v"}
        assert head["ETag"] == _md5_etag(body)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.copy_object(
            Bucket=dst_bucket, Key=dst, CopySource={"Bucket": w.bucket, "Key": w.key("nope")}
        )
    assert _error(exc) == (404, "NoSuchKey")


def test_copy_metadata_replace(w: W) -> None:
    key = w.key("replace/obj.txt")
    body = body_of(2000, 31)
    w.client.put_object(
        Bucket=w.bucket, Key=key, Body=body, ContentType="text/plain", Metadata={"a": "1"}
    )
    w.client.head_object(Bucket=w.bucket, Key=key)  # cached metadata
    # onto itself without REPLACE: S3 refuses
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.copy_object(Bucket=w.bucket, Key=key, CopySource={"Bucket": w.bucket, "Key": key})
    assert _error(exc) == (400, "InvalidRequest")
    w.client.copy_object(
        Bucket=w.bucket,
        Key=key,
        CopySource={"Bucket": w.bucket, "Key": key},
        MetadataDirective="REPLACE",
        ContentType="application/x-replaced",
        Metadata={"b": "2"},
    )
    got = w.client.get_object(Bucket=w.bucket, Key=key)
    assert got["Body"].read() == body
    if w.is_fs:
        assert got["Metadata"] == {}
        return
    assert got["ContentType"] == "application/x-replaced"
    assert got["Metadata"] == {"b": "2"}
    assert w.store is not None
    assert w.store.head_object(Bucket=w.bucket, Key=key)["Metadata"] == {"b": "2"}
    # REPLACE into another key
    dst = w.key("replace/dst.txt")
    w.client.copy_object(
        Bucket=w.bucket,
        Key=dst,
        CopySource={"Bucket": w.bucket, "Key": key},
        MetadataDirective="REPLACE",
        Metadata={"c": "3"},
    )
    head = w.client.head_object(Bucket=w.bucket, Key=dst)
    assert head["Metadata"] == {"c": "3"}


def test_copy_across_stores(seaweedfs: S3Endpoint, tmp_path: Path, proxy_factory: Any) -> None:
    """Bucket A on fs, bucket B on SeaweedFS, one proxy: copies stream through it."""
    tag = uuid.uuid4().hex[:8]
    a, b = f"fsa-{tag}", f"swb-{tag}"
    root = tmp_path / "root"
    (root / a).mkdir(parents=True)
    store = make_s3_client(seaweedfs)
    store.create_bucket(Bucket=b)
    proxy = proxy_factory(
        {
            "cache": {"dir": "cache", "chunk_size": CHUNK, "inline_max": INLINE_MAX},
            "backends": {
                "disk": {"type": "fs", "root": str(root)},
                "sw": {
                    "type": "s3",
                    "endpoint": seaweedfs.url,
                    "access_key_env": "SW_KEY",
                    "secret_key_env": "SW_SECRET",
                },
            },
            "buckets": {a: {"backend": "disk"}, b: {"backend": "sw"}},
            "log": {"level": "warning", "access_log": False},
        },
        {"SW_KEY": seaweedfs.access_key, "SW_SECRET": seaweedfs.secret_key},
    )
    client = make_s3_client(proxy.url)
    body = body_of(3 * CHUNK + 9, 41)
    client.put_object(Bucket=a, Key="from-fs.bin", Body=body)
    client.copy_object(Bucket=b, Key="on-sw.bin", CopySource={"Bucket": a, "Key": "from-fs.bin"})
    assert store.get_object(Bucket=b, Key="on-sw.bin")["Body"].read() == body
    assert client.get_object(Bucket=b, Key="on-sw.bin")["Body"].read() == body
    client.copy_object(
        Bucket=a,
        Key="back/on-fs.bin",
        CopySource={"Bucket": b, "Key": "on-sw.bin"},
        MetadataDirective="REPLACE",
        ContentType="application/x-ignored-by-fs",
    )
    assert (root / a / "back" / "on-fs.bin").read_bytes() == body
    client.copy_object(
        Bucket=b,
        Key="meta.bin",
        CopySource={"Bucket": a, "Key": "from-fs.bin"},
        MetadataDirective="REPLACE",
        ContentType="text/x-copied",
        Metadata={"via": "proxy"},
    )
    direct = store.head_object(Bucket=b, Key="meta.bin")
    assert direct["ContentType"] == "text/x-copied" and direct["Metadata"] == {"via": "proxy"}
    assert client.get_object(Bucket=b, Key="meta.bin")["Body"].read() == body


# -- multipart upload -------------------------------------------------------------------------
def test_upload_file_download_file(w: W, tmp_path: Path) -> None:
    key = w.key("mpu/big.bin")
    body = body_of(2 * PART + 123_456, 51)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(body)
    cfg = boto3.s3.transfer.TransferConfig(
        multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=3
    )
    w.client.upload_file(str(src), w.bucket, key, Config=cfg)
    w.client.download_file(w.bucket, key, str(dst), Config=cfg)
    assert sha256(dst.read_bytes()) == sha256(body)
    stored = w.stored(key)
    assert stored is not None and sha256(stored) == sha256(body)
    head = w.client.head_object(Bucket=w.bucket, Key=key)
    assert head["ContentLength"] == len(body)
    if not w.is_fs:  # MD5 of the parts' MD5s, "-3"
        digests = b"".join(
            hashlib.md5(body[i : i + PART], usedforsecurity=False).digest()
            for i in range(0, len(body), PART)
        )
        want = f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-3"'
        assert head["ETag"] == want


def test_multipart_low_level(w: W) -> None:
    key = w.key("mpu/low.bin")
    p1, p2 = body_of(PART, 61), body_of(1000, 62)
    up = w.client.create_multipart_upload(
        Bucket=w.bucket, Key=key, ContentType="application/x-mpu", Metadata={"m": "1"}
    )
    uid = up["UploadId"]
    assert up["Bucket"] == w.bucket and up["Key"] == key
    e1 = w.client.upload_part(Bucket=w.bucket, Key=key, UploadId=uid, PartNumber=1, Body=p1)
    e2 = w.client.upload_part(Bucket=w.bucket, Key=key, UploadId=uid, PartNumber=2, Body=p2)
    assert e1["ETag"] == _md5_etag(p1) and e2["ETag"] == _md5_etag(p2)
    parts = w.client.list_parts(Bucket=w.bucket, Key=key, UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [
        (1, e1["ETag"], PART),
        (2, e2["ETag"], 1000),
    ]
    uploads = w.client.list_multipart_uploads(Bucket=w.bucket, Prefix="mpu/low")
    assert (key, uid) in {(u["Key"], u["UploadId"]) for u in uploads.get("Uploads", [])}
    # a wrong ETag, then parts out of order: refused, and the upload stays usable
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.complete_multipart_upload(
            Bucket=w.bucket,
            Key=key,
            UploadId=uid,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": 1, "ETag": e1["ETag"]},
                    {"PartNumber": 2, "ETag": _md5_etag(b"not this part")},
                ]
            },
        )
    assert _error(exc) == (400, "InvalidPart")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.complete_multipart_upload(
            Bucket=w.bucket,
            Key=key,
            UploadId=uid,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": 2, "ETag": e2["ETag"]},
                    {"PartNumber": 1, "ETag": e1["ETag"]},
                ]
            },
        )
    assert _error(exc) == (400, "InvalidPartOrder")
    assert w.stored(key) is None
    done = w.client.complete_multipart_upload(
        Bucket=w.bucket,
        Key=key,
        UploadId=uid,
        MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1["ETag"]}, {"PartNumber": 2, "ETag": e2["ETag"]}]
        },
    )
    assert done["Key"] == key and done["ETag"]
    got = w.client.get_object(Bucket=w.bucket, Key=key)
    assert sha256(got["Body"].read()) == sha256(p1 + p2)
    if not w.is_fs:
        assert got["ContentType"] == "application/x-mpu" and got["Metadata"] == {"m": "1"}
        assert got["ETag"].endswith('-2"')
    uploads = w.client.list_multipart_uploads(Bucket=w.bucket, Prefix="mpu/low")
    assert uid not in {u["UploadId"] for u in uploads.get("Uploads", [])}


def test_multipart_abort(w: W) -> None:
    key = w.key("mpu/aborted.bin")
    w.client.put_object(Bucket=w.bucket, Key=key, Body=b"the old object")
    assert w.get(key) == b"the old object"
    uid = w.client.create_multipart_upload(Bucket=w.bucket, Key=key)["UploadId"]
    w.client.upload_part(Bucket=w.bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"x" * 100)
    w.client.abort_multipart_upload(Bucket=w.bucket, Key=key, UploadId=uid)
    uploads = w.client.list_multipart_uploads(Bucket=w.bucket, Prefix="mpu/aborted")
    assert uid not in {u["UploadId"] for u in uploads.get("Uploads", [])}
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.list_parts(Bucket=w.bucket, Key=key, UploadId=uid)
    assert _error(exc) == (404, "NoSuchUpload")
    if w.kind != "moto":  # moto itself answers 500 here (a KeyError on the upload id)
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            w.client.upload_part(Bucket=w.bucket, Key=key, UploadId=uid, PartNumber=2, Body=b"y")
        assert _error(exc) == (404, "NoSuchUpload")
    assert w.get(key) == b"the old object"
    assert w.stored(key) == b"the old object"


def test_upload_part_copy(w: W) -> None:
    src, key = w.key("mpu/copy-src.bin"), w.key("mpu/copied.bin")
    body = body_of(PART + 3 * CHUNK, 71)
    w.client.put_object(Bucket=w.bucket, Key=src, Body=body)
    tail = body_of(777, 72)
    uid = w.client.create_multipart_upload(Bucket=w.bucket, Key=key)["UploadId"]
    c1 = w.client.upload_part_copy(
        Bucket=w.bucket,
        Key=key,
        UploadId=uid,
        PartNumber=1,
        CopySource={"Bucket": w.bucket, "Key": src},
        CopySourceRange=f"bytes=0-{PART - 1}",
    )
    assert c1["CopyPartResult"]["ETag"] == _md5_etag(body[:PART])
    c2 = w.client.upload_part_copy(
        Bucket=w.bucket,
        Key=key,
        UploadId=uid,
        PartNumber=2,
        CopySource={"Bucket": w.bucket, "Key": src},
        CopySourceRange=f"bytes={PART}-{PART + 99}",
    )
    e3 = w.client.upload_part(Bucket=w.bucket, Key=key, UploadId=uid, PartNumber=3, Body=tail)
    with pytest.raises(botocore.exceptions.ClientError) as exc:  # part 2 is too small
        w.client.complete_multipart_upload(
            Bucket=w.bucket,
            Key=key,
            UploadId=uid,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": 1, "ETag": c1["CopyPartResult"]["ETag"]},
                    {"PartNumber": 2, "ETag": c2["CopyPartResult"]["ETag"]},
                    {"PartNumber": 3, "ETag": e3["ETag"]},
                ]
            },
        )
    assert _error(exc) == (400, "EntityTooSmall")
    w.client.complete_multipart_upload(
        Bucket=w.bucket,
        Key=key,
        UploadId=uid,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": c1["CopyPartResult"]["ETag"]},
                {"PartNumber": 3, "ETag": e3["ETag"]},
            ]
        },
    )
    assert sha256(w.get(key)) == sha256(body[:PART] + tail)
    stored = w.stored(key)
    assert stored is not None and sha256(stored) == sha256(body[:PART] + tail)


# -- integrity --------------------------------------------------------------------------------
def test_bad_content_md5_writes_nothing(w: W) -> None:
    key = w.key("md5/obj.bin")
    w.client.put_object(Bucket=w.bucket, Key=key, Body=b"the good version")
    assert w.get(key) == b"the good version"
    bad = base64.b64encode(hashlib.md5(b"something else", usedforsecurity=False).digest())
    for body in (b"a bad version", body_of(2 * CHUNK + 3, 81)):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            w.client.put_object(Bucket=w.bucket, Key=key, Body=body, ContentMD5=bad.decode())
        assert _error(exc) == (400, "BadDigest")
        assert w.stored(key) == b"the good version"
        assert w.get(key) == b"the good version"
    good = base64.b64encode(hashlib.md5(b"v2", usedforsecurity=False).digest()).decode()
    w.client.put_object(Bucket=w.bucket, Key=key, Body=b"v2", ContentMD5=good)
    assert w.get(key) == b"v2"


def test_bad_checksum_header_writes_nothing(w: W) -> None:
    key = w.key("crc/obj.bin")
    w.client.put_object(Bucket=w.bucket, Key=key, Body=b"the good version")
    wrong = base64.b64encode(b"\x00\x00\x00\x01").decode()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.put_object(Bucket=w.bucket, Key=key, Body=b"bad", ChecksumCRC32=wrong)
    assert _error(exc) == (400, "BadDigest")
    assert w.stored(key) == b"the good version"


def test_boto3_default_checksums_never_stored(w: W) -> None:
    """boto3's default config (request_checksum_calculation=when_supported): over plain HTTP it
    sends a CRC32 header with the plain body; the stored bytes are exactly the uploaded ones."""
    client = make_s3_client(w.proxy.url, "any-key", "any-secret")
    key = w.key("crc/default.bin")
    body = body_of(3 * CHUNK + 7, 91)
    client.put_object(Bucket=w.bucket, Key=key, Body=body)
    assert w.stored(key) == body
    assert w.get(key) == body


def _as_over_tls(params: dict[str, Any], **_: Any) -> None:
    """What boto3 does by default over HTTPS: the checksum goes in a trailer of an aws-chunked
    body (STREAMING-UNSIGNED-PAYLOAD-TRAILER). botocore keeps it to TLS; this forces it."""
    algorithm = params.get("context", {}).get("checksum", {}).get("request_algorithm")
    if isinstance(algorithm, dict):
        algorithm["in"] = "trailer"


def _tls_style_client(w: W, seen: list[str]) -> Any:
    client = make_s3_client(w.proxy.url, "any-key", "any-secret")

    def note(request: Any, **_: Any) -> None:
        sha = request.headers.get("x-amz-content-sha256", b"")
        seen.append(sha.decode() if isinstance(sha, bytes) else sha)

    for op in ("PutObject", "UploadPart"):
        client.meta.events.register(f"before-call.s3.{op}", _as_over_tls)
        client.meta.events.register(f"before-send.s3.{op}", note)
    return client


@pytest.mark.parametrize("size", [10, 3 * CHUNK + 7], ids=["small", "chunked"])
def test_aws_chunked_framing_never_stored(w: W, size: int) -> None:
    seen: list[str] = []
    client = _tls_style_client(w, seen)
    key = w.key("chunked/obj.bin")
    body = body_of(size, 92)
    client.put_object(Bucket=w.bucket, Key=key, Body=body, ContentEncoding="gzip")
    assert seen == ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"]
    assert w.stored(key) == body
    before = w.store_reads(key)
    assert w.get(key) == body  # the write-through copy holds the object's bytes, not the frames
    assert w.store_reads(key) == before
    head = w.client.head_object(Bucket=w.bucket, Key=key)
    assert head["ContentLength"] == size
    # aws-chunked is transport framing; only the object's own encoding is kept
    assert head.get("ContentEncoding") == (None if w.is_fs else "gzip")


def test_aws_chunked_multipart_never_stored(w: W) -> None:
    seen: list[str] = []
    client = _tls_style_client(w, seen)
    key = w.key("chunked/mpu.bin")
    body = body_of(PART + 1234, 93)
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
    client.upload_fileobj(io.BytesIO(body), w.bucket, key, Config=cfg)
    assert seen == ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"] * 2
    stored = w.stored(key)
    assert stored is not None and sha256(stored) == sha256(body)


# -- read-only mounts and buckets -------------------------------------------------------------
def test_read_only_mount(w: W) -> None:
    key = w.key("ro/object.txt")
    w.client.put_object(Bucket=w.bucket, Key=key, Body=b"readable")
    assert w.get(key, w.ro) == b"readable"
    listed = w.client.list_objects_v2(Bucket=w.ro, Prefix="ro/")
    assert key in {o["Key"] for o in listed.get("Contents", [])}
    refused: list[Callable[[], Any]] = [
        lambda: w.client.put_object(Bucket=w.ro, Key=key, Body=b"no"),
        lambda: w.client.put_object(Bucket=w.ro, Key=w.key("ro/new"), Body=b"no"),
        lambda: w.client.delete_object(Bucket=w.ro, Key=key),
        lambda: w.client.copy_object(
            Bucket=w.ro, Key=w.key("ro/copy"), CopySource={"Bucket": w.bucket, "Key": key}
        ),
        lambda: w.client.create_multipart_upload(Bucket=w.ro, Key=w.key("ro/mpu")),
    ]
    for call in refused:
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            call()
        assert _error(exc) == (403, "AccessDenied")
    resp = w.client.delete_objects(Bucket=w.ro, Delete={"Objects": [{"Key": key}]})
    assert [(e["Key"], e["Code"]) for e in resp.get("Errors", [])] == [(key, "AccessDenied")]
    assert w.stored(key) == b"readable"
    assert w.get(key, w.ro) == b"readable"
    # reading from a read-only mount into a writable one is fine
    dst = w.key("ro/copied-out")
    w.client.copy_object(Bucket=w.bucket, Key=dst, CopySource={"Bucket": w.ro, "Key": key})
    assert w.stored(dst) == b"readable"


def test_create_and_delete_bucket_through_wildcard(w: W) -> None:
    name = f"made-{uuid.uuid4().hex[:8]}"
    w.client.create_bucket(Bucket=name)
    if w.store is not None:
        w.store.head_bucket(Bucket=name)
    else:
        assert w.root is not None and (w.root / name).is_dir()
    w.client.head_bucket(Bucket=name)
    w.client.put_object(Bucket=name, Key="dir/inside.txt", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.delete_bucket(Bucket=name)
    assert _error(exc) == (409, "BucketNotEmpty")
    assert w.stored("dir/inside.txt", name) == b"x"
    w.client.delete_object(Bucket=name, Key="dir/inside.txt")
    resp = w.client.delete_bucket(Bucket=name)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.head_bucket(Bucket=name)
    assert _error(exc)[0] == 404
    if w.store is not None:
        with pytest.raises(botocore.exceptions.ClientError):
            w.store.head_bucket(Bucket=name)
    else:
        assert w.root is not None and not (w.root / name).exists()


def test_mapped_buckets_cannot_be_created_or_deleted(w: W) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.create_bucket(Bucket=w.ro)
    assert _error(exc)[1] in ("AccessDenied", "BucketAlreadyOwnedByYou")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        w.client.delete_bucket(Bucket=w.ro)
    assert _error(exc)[1] in ("AccessDenied", "InvalidRequest")
    w.client.head_bucket(Bucket=w.ro)
