"""S3 answers where the proxy used to be stricter or weaker than the store behind it (issue 8).

Each test goes through the proxy with boto3 (or raw HTTP where boto3 hides the wire) over
SeaweedFS and moto, and over the fs store where the behaviour is the proxy's own, and asserts
what S3 answers; where a store itself departs from S3 the test says so.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

import botocore.exceptions
import pytest

from tests.conformance import S3_NS, body_of, raw_request, store_side
from tests.proxyproc import ProxyProcess
from tests.servers import make_s3_client

KiB, MiB = 1024, 1024 * 1024
PART = 5 * MiB

ONLY_S3 = pytest.mark.parametrize("b", ["moto", "seaweedfs"], indirect=True)


@dataclass
class B:
    kind: str
    proxy: ProxyProcess
    client: Any  # boto3 on the proxy
    store: Any  # boto3 on the store (None for fs)
    bucket: str

    def key(self, stem: str) -> str:
        return f"{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=["moto", "seaweedfs", "fs"])
def b(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[B]:
    kind: str = request.param
    bucket = f"beh-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp(f"behaviour-{kind}")
    side = store_side(kind, request, workdir / "root", (bucket,))
    config = {
        "cache": {
            "dir": "cache",
            "chunk_size": "1MiB",
            "inline_max": "4KiB",
            "max_size": "256MiB",
            "metadata_ttl": "1h",
        },
        "backends": {"store": side.backend},
        "buckets": {"*": {"backend": "store"}},
        "log": {"level": "warning", "access_log": False},
    }
    proxy = ProxyProcess(config, workdir / "proxy", side.env)
    try:
        proxy.start()
        yield B(kind, proxy, make_s3_client(proxy.url, "k", "s"), side.store, bucket)
    finally:
        proxy.stop()
        side.close()


def _error(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str]:
    resp = exc.value.response
    return resp["ResponseMetadata"]["HTTPStatusCode"], resp["Error"]["Code"]


# -- CreateBucket ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "ab", "UpperCase", "-dash-first", "under_score_", "a..b"])
def test_create_bucket_invalid_name(b: B, name: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        b.client.create_bucket(Bucket=name)
    assert _error(exc) == (400, "InvalidBucketName")


# -- listings ----------------------------------------------------------------------------------
def test_list_v1_prefix_is_echoed(b: B) -> None:
    """boto3 asks for encoding-type=url and decodes Key, Marker, NextMarker, Delimiter and
    CommonPrefixes in v1, not Prefix: S3 sends Prefix as it is."""
    for prefix in ("\n", "a b/", "x+y%"):
        assert b.client.list_objects(Bucket=b.bucket, Prefix=prefix)["Prefix"] == prefix
        assert b.client.list_objects_v2(Bucket=b.bucket, Prefix=prefix)["Prefix"] == prefix


def _list_raw(b: B, query: str) -> ET.Element:
    raw = raw_request(b.proxy.url, "GET", f"/{b.bucket}?{query}")
    assert raw.status == 200, raw.body
    return ET.fromstring(raw.body)


def test_list_url_encoding_covers_exactly_s3s_fields(b: B) -> None:
    key = b.key("enc dir/a b")
    b.client.put_object(Bucket=b.bucket, Key=key, Body=b"x")
    q = "prefix=enc%20dir%2F&delimiter=%20&encoding-type=url&marker=enc%20dir%2F"
    v1 = _list_raw(b, q)
    assert v1.findtext(f"{S3_NS}Prefix") == "enc dir/"  # v1 Prefix: as sent
    assert v1.findtext(f"{S3_NS}Marker") == "enc%20dir/"
    assert v1.findtext(f"{S3_NS}Delimiter") == "%20"
    v2 = _list_raw(b, "list-type=2&" + q.replace("marker", "start-after"))
    assert v2.findtext(f"{S3_NS}Prefix") == "enc%20dir/"  # v2 Prefix: encoded
    assert v2.findtext(f"{S3_NS}StartAfter") == "enc%20dir/"
    assert v2.findtext(f"{S3_NS}Delimiter") == "%20"
    prefixes = [p.text for p in v2.iter(f"{S3_NS}Prefix")]
    assert "enc%20dir/a%20" in prefixes


def test_list_v2_empty_continuation_token_is_echoed(b: B) -> None:
    root = _list_raw(b, "list-type=2&continuation-token=")
    token = root.find(f"{S3_NS}ContinuationToken")
    assert token is not None and (token.text or "") == ""
    if b.kind == "seaweedfs":  # the store itself answers so (moto refuses the empty token)
        assert (
            b.store.list_objects_v2(Bucket=b.bucket, ContinuationToken="")["ContinuationToken"]
            == ""
        )
    assert (
        b.client.list_objects_v2(Bucket=b.bucket, ContinuationToken="")["ContinuationToken"] == ""
    )


# -- CopyObject preconditions ------------------------------------------------------------------
def _http_date(dt: datetime.datetime) -> str:
    return format_datetime(dt.astimezone(datetime.UTC), usegmt=True)


def test_copy_source_preconditions(b: B) -> None:
    src = b.key("copy-src")
    etag = b.client.put_object(Bucket=b.bucket, Key=src, Body=b"source")["ETag"]
    lm = b.client.head_object(Bucket=b.bucket, Key=src)["LastModified"]
    past, future = lm - datetime.timedelta(days=1), lm + datetime.timedelta(days=1)
    failing: list[dict[str, Any]] = [
        {"CopySourceIfMatch": '"0123456789abcdef0123456789abcdef"'},
        {"CopySourceIfNoneMatch": etag},
        {"CopySourceIfModifiedSince": future},
        {"CopySourceIfUnmodifiedSince": past},
    ]
    for cond in failing:
        dst = b.key("copy-dst")
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            b.client.copy_object(Bucket=b.bucket, Key=dst, CopySource=f"{b.bucket}/{src}", **cond)
        assert _error(exc) == (412, "PreconditionFailed"), cond
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            b.client.head_object(Bucket=b.bucket, Key=dst)
        assert _error(exc)[0] == 404, f"nothing copied for {cond}"
    holding: list[dict[str, Any]] = [
        {"CopySourceIfMatch": etag},
        {"CopySourceIfNoneMatch": '"0123456789abcdef0123456789abcdef"'},
        {"CopySourceIfModifiedSince": past},
        {"CopySourceIfUnmodifiedSince": future},
        # S3: If-Match true and If-Unmodified-Since false -> the copy is made
        {"CopySourceIfMatch": etag, "CopySourceIfUnmodifiedSince": past},
    ]
    for cond in holding:
        dst = b.key("copy-dst")
        b.client.copy_object(Bucket=b.bucket, Key=dst, CopySource=f"{b.bucket}/{src}", **cond)
        assert b.client.get_object(Bucket=b.bucket, Key=dst)["Body"].read() == b"source"


def _upload(b: B, key: str) -> str:
    return str(b.client.create_multipart_upload(Bucket=b.bucket, Key=key)["UploadId"])


def test_upload_part_copy_range_checked(b: B) -> None:
    src = b.key("upc-src")
    b.client.put_object(Bucket=b.bucket, Key=src, Body=body_of(1000, 1))
    dst = b.key("upc-dst")
    uid = _upload(b, dst)
    try:

        def copy(rng: str) -> Any:
            return b.client.upload_part_copy(
                Bucket=b.bucket,
                Key=dst,
                UploadId=uid,
                PartNumber=1,
                CopySource=f"{b.bucket}/{src}",
                CopySourceRange=rng,
            )

        for beyond in ("bytes=0-1000", "bytes=1000-1001", "bytes=500-5000"):
            with pytest.raises(botocore.exceptions.ClientError) as exc:
                copy(beyond)
            assert _error(exc) == (400, "InvalidRange"), beyond
        for bad in ("garbage", "bytes=5-1", "bytes=-5", "bytes=5-", "bytes=1-2,4-5"):
            with pytest.raises(botocore.exceptions.ClientError) as exc:
                copy(bad)
            assert _error(exc) == (400, "InvalidArgument"), bad
        copy("bytes=10-19")
        parts = b.client.list_parts(Bucket=b.bucket, Key=dst, UploadId=uid)["Parts"]
        assert [p["Size"] for p in parts] == [10]
    finally:
        b.client.abort_multipart_upload(Bucket=b.bucket, Key=dst, UploadId=uid)


def test_upload_part_copy_preconditions(b: B) -> None:
    src = b.key("upc-src")
    b.client.put_object(Bucket=b.bucket, Key=src, Body=b"z" * 100)
    dst = b.key("upc-dst")
    uid = _upload(b, dst)
    try:
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            b.client.upload_part_copy(
                Bucket=b.bucket,
                Key=dst,
                UploadId=uid,
                PartNumber=1,
                CopySource=f"{b.bucket}/{src}",
                CopySourceIfMatch='"0123456789abcdef0123456789abcdef"',
            )
        assert _error(exc) == (412, "PreconditionFailed")
    finally:
        b.client.abort_multipart_upload(Bucket=b.bucket, Key=dst, UploadId=uid)


# -- CompleteMultipartUpload -------------------------------------------------------------------
def test_complete_with_a_part_listed_twice_is_the_stores_call(b: B) -> None:
    """A part re-sent while its first upload still ran may be listed twice: the proxy passes
    the list on, and answers what the store answers (SeaweedFS takes it, moto refuses it);
    staged uploads (fs) take the part once."""

    def attempt(client: Any) -> tuple[int, str]:
        key = b.key("dup")
        uid = client.create_multipart_upload(Bucket=b.bucket, Key=key)["UploadId"]
        etag = client.upload_part(
            Bucket=b.bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"q" * 100
        )["ETag"]
        parts = [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 1, "ETag": etag}]
        try:
            client.complete_multipart_upload(
                Bucket=b.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
            )
        except botocore.exceptions.ClientError as exc:
            client.abort_multipart_upload(Bucket=b.bucket, Key=key, UploadId=uid)
            return _error(pytest.ExceptionInfo.from_exc_info((type(exc), exc, None)))
        assert client.get_object(Bucket=b.bucket, Key=key)["Body"].read() == b"q" * 100
        return 200, "OK"

    assert attempt(b.client) == (attempt(b.store) if b.store is not None else (200, "OK"))


# -- Expires -----------------------------------------------------------------------------------
@ONLY_S3
def test_put_expires_is_stored_and_returned(b: B) -> None:
    key = b.key("expires")
    when = "Fri, 01 Dec 2034 16:00:00 GMT"
    b.client.put_object(Bucket=b.bucket, Key=key, Body=b"e", Expires=when)
    for _ in range(2):  # cold, then from the cache
        for op in (b.client.head_object, b.client.get_object):
            headers = op(Bucket=b.bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
            assert headers.get("expires") == when
    stored = b.store.head_object(Bucket=b.bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
    assert stored.get("expires") == when


# -- partNumber --------------------------------------------------------------------------------
def _multipart(b: B, key: str, sizes: list[int]) -> list[bytes]:
    uid = _upload(b, key)
    datas, parts = [], []
    for n, size in enumerate(sizes, 1):
        data = body_of(size, n)
        etag = b.client.upload_part(
            Bucket=b.bucket, Key=key, UploadId=uid, PartNumber=n, Body=data
        )["ETag"]
        datas.append(data)
        parts.append({"PartNumber": n, "ETag": etag})
    b.client.complete_multipart_upload(
        Bucket=b.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
    )
    return datas


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@ONLY_S3
@pytest.mark.parametrize("warm", [False, True])
def test_part_number_of_a_multipart_object(b: B, warm: bool) -> None:
    key = b.key("parts")
    datas = _multipart(b, key, [PART, PART + 3, 1234])
    whole = b"".join(datas)
    size = len(whole)
    if warm:
        assert b.client.get_object(Bucket=b.bucket, Key=key)["Body"].read() == whole
    offset = 0
    for n, data in enumerate(datas, 1):
        last = offset + len(data) - 1
        for op in ("head", "get"):
            resp = getattr(b.client, f"{op}_object")(Bucket=b.bucket, Key=key, PartNumber=n)
            assert resp["ResponseMetadata"]["HTTPStatusCode"] == 206
            assert resp["ContentLength"] == len(data)
            assert resp["PartsCount"] == 3
            assert resp["ContentRange"] == f"bytes {offset}-{last}/{size}"
            assert resp["ETag"].endswith('-3"')
            if op == "get":
                assert _md5(resp["Body"].read()) == _md5(data), f"part {n}"
        offset = last + 1
    for op in ("head", "get"):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            getattr(b.client, f"{op}_object")(Bucket=b.bucket, Key=key, PartNumber=4)
        status, code = _error(exc)
        assert status == 416 and code in ("InvalidPartNumber", "416"), (op, code)


def test_part_number_of_a_plain_object(b: B) -> None:
    key = b.key("plain")
    data = body_of(10 * KiB, 7)
    b.client.put_object(Bucket=b.bucket, Key=key, Body=data)
    resp = b.client.get_object(Bucket=b.bucket, Key=key, PartNumber=1)
    assert resp["Body"].read() == data
    assert resp["ContentRange"] == f"bytes 0-{len(data) - 1}/{len(data)}"
    head = b.client.head_object(Bucket=b.bucket, Key=key, PartNumber=1)
    assert head["ContentLength"] == len(data)
    for op in ("head", "get"):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            getattr(b.client, f"{op}_object")(Bucket=b.bucket, Key=key, PartNumber=2)
        assert _error(exc)[0] == 416
    raw = raw_request(b.proxy.url, "GET", f"/{b.bucket}/{key}?partNumber=2")
    assert raw.status == 416 and raw.error_code() == "InvalidPartNumber"
    for bad in ("0", "10001", "x"):
        raw = raw_request(b.proxy.url, "GET", f"/{b.bucket}/{key}?partNumber={bad}")
        assert raw.status == 400 and raw.error_code() == "InvalidArgument", bad


def test_part_number_before_completion_is_no_such_key(b: B) -> None:
    key = b.key("inprogress")
    uid = _upload(b, key)
    try:
        b.client.upload_part(Bucket=b.bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"z")
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            b.client.get_object(Bucket=b.bucket, Key=key, PartNumber=1)
        assert _error(exc) == (404, "NoSuchKey")
    finally:
        b.client.abort_multipart_upload(Bucket=b.bucket, Key=key, UploadId=uid)


@pytest.mark.parametrize("b", ["fs"], indirect=True)
def test_part_number_where_the_store_keeps_one_piece(b: B) -> None:
    """A store without native multipart keeps a completed upload as one object (its ETag the
    MD5 of the whole): partNumber=1 is the whole object, as for any single-part object."""
    key = b.key("staged")
    whole = b"".join(_multipart(b, key, [PART, 100]))
    resp = b.client.get_object(Bucket=b.bucket, Key=key, PartNumber=1)
    assert _md5(resp["Body"].read()) == _md5(whole)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        b.client.get_object(Bucket=b.bucket, Key=key, PartNumber=2)
    assert _error(exc)[0] == 416
