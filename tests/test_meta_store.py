"""What the cache keeps about an object is what the store holds, over moto and SeaweedFS, with
a proxy of two workers sharing one cache:

- an overwrite's record is exactly the new PUT's (metadata, content type, stored headers,
  checksums), also with the same bytes, also when metadata becomes empty;
- user metadata that is not US-ASCII round-trips in the form S3 answers with (RFC 2047), and
  what cannot be named at all is a 400, never a 503;
- HEADs racing PUTs and DELETEs never leave a record older than the last write.
"""

from __future__ import annotations

import base64
import email.header
import hashlib
import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from botocore.exceptions import ParamValidationError

from proxy.backends.s3.codec import map_client_error
from tests.conformance import Raw, body_of, raw_request, store_side
from tests.proxyproc import ProxyProcess
from tests.servers import make_s3_client

KiB = 1024
CHUNK = 256 * KiB
INLINE_MAX = 4 * KiB
SIZES = pytest.mark.parametrize("size", [100, 3 * CHUNK + 5], ids=["inline", "chunked"])


@dataclass
class M:
    kind: str
    proxy: ProxyProcess
    client: Any  # boto3 through the proxy
    store: Any  # boto3 straight to the store
    bucket: str
    _seq: list[int]

    def key(self, stem: str) -> str:
        self._seq[0] += 1
        return f"{stem}-{self._seq[0]}"

    def path(self, key: str) -> str:
        return f"/{self.bucket}/{key}"


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def m(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[M]:
    kind: str = request.param
    bucket = f"meta-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp(f"meta-{kind}")
    side = store_side(kind, request, workdir / "root", (bucket,))
    config = {
        "workers": 2,
        "cache": {
            "dir": "cache",
            "chunk_size": CHUNK,
            "inline_max": INLINE_MAX,
            "max_size": "256MiB",
            "metadata_ttl": "never",
        },
        "backends": {"store": side.backend},
        "buckets": {"*": {"backend": "store"}},
        "log": {"level": "warning", "access_log": False},
    }
    proxy = ProxyProcess(config, workdir / "proxy", side.env)
    try:
        proxy.start()
        client = make_s3_client(proxy.url, "any-key", "any-secret")
        yield M(kind, proxy, client, side.store, bucket, [0])
    finally:
        proxy.stop()
        side.close()


# -- finding 4: an overwrite's record is the new PUT's ---------------------------------------
_FIELDS = ("ETag", "ContentType", "Metadata", "CacheControl", "ContentDisposition", "Expires")


def _seen(resp: dict[str, Any]) -> dict[str, Any]:
    return {f: resp.get(f) for f in _FIELDS}


def _assert_as_stored(m: M, key: str, body: bytes, checksum: str | None) -> None:
    """GET and HEAD through the proxy (each worker) answer as the store does, with the
    checksum the last PUT sent (the proxy keeps what it verified, whether the store does)."""
    direct = _seen(m.store.head_object(Bucket=m.bucket, Key=key))
    for _ in range(4):  # new connections: both workers
        got = m.client.get_object(Bucket=m.bucket, Key=key, ChecksumMode="ENABLED")
        assert got["Body"].read() == body
        head = m.client.head_object(Bucket=m.bucket, Key=key, ChecksumMode="ENABLED")
        for resp in (got, head):
            assert _seen(resp) == direct
            assert resp.get("ChecksumSHA1") == checksum


@SIZES
def test_overwrite_with_the_same_bytes_keeps_nothing_of_the_old_record(m: M, size: int) -> None:
    key = m.key("over/same")
    body = body_of(size, 4)
    m.client.put_object(
        Bucket=m.bucket,
        Key=key,
        Body=body,
        ContentType="text/x-first",
        Metadata={"meta1": "bar"},
        CacheControl="max-age=60",
        ContentDisposition="attachment",
        ChecksumSHA1=_sha1_b64(body),
    )
    _assert_as_stored(m, key, body, _sha1_b64(body))  # cached, the first PUT's record
    m.client.put_object(Bucket=m.bucket, Key=key, Body=body)  # no metadata at all
    assert m.store.head_object(Bucket=m.bucket, Key=key)["Metadata"] == {}
    _assert_as_stored(m, key, body, None)
    m.client.put_object(Bucket=m.bucket, Key=key, Body=body, Metadata={"meta1": "bar"})
    _assert_as_stored(m, key, body, None)
    m.client.put_object(Bucket=m.bucket, Key=key, Body=body, Metadata={"meta1": ""})
    _assert_as_stored(m, key, body, None)


def _sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()


# -- finding 9: user metadata that is not US-ASCII --------------------------------------------
def _raw_put(m: M, key: str, body: bytes, headers: dict[str, bytes]) -> Raw:
    """A PUT with header values sent as the given bytes (http.client would send str values as
    Latin-1)."""
    parts = urlsplit(m.proxy.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest("PUT", m.path(key))
        conn.putheader("Content-Length", str(len(body)))
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@SIZES
def test_utf8_metadata_round_trips_as_s3_answers_it(m: M, size: int) -> None:
    key = m.key("utf8/obj")
    body = body_of(size, 5)
    city, greeting = "caf\u00e9", "\u043f\u0440\u0438\u0432\u0435\u0442 \U0001f600"
    got = _raw_put(
        m,
        key,
        body,
        {
            "x-amz-meta-city": city.encode(),
            "x-amz-meta-greeting": greeting.encode(),
            "x-amz-meta-plain": b"ascii",
            "x-amz-meta-encoded": b"=?UTF-8?B?Y2Fmw6k=?=",  # already encoded: kept as sent
        },
    )
    assert got.status == 200, got.body
    stored = m.store.head_object(Bucket=m.bucket, Key=key)["Metadata"]
    expected = {
        "city": "=?UTF-8?B?Y2Fmw6k=?=",
        "greeting": "=?UTF-8?B?0L/RgNC40LLQtdGCIPCfmIA=?=",
        "plain": "ascii",
        "encoded": "=?UTF-8?B?Y2Fmw6k=?=",
    }
    assert stored == expected
    for _ in range(4):
        resp = raw_request(m.proxy.url, "GET", m.path(key))
        assert resp.status == 200 and resp.body == body
        assert {k[len("x-amz-meta-") :]: v for k, v in resp.headers.items() if "-meta-" in k} == (
            expected
        )
    decoded = email.header.make_header(email.header.decode_header(expected["greeting"]))
    assert str(decoded) == greeting


def test_metadata_that_is_not_utf8_is_a_400(m: M) -> None:
    key = m.key("utf8/bad")
    got = _raw_put(m, key, b"x", {"x-amz-meta-bad": b"\xff\xfe"})
    assert got.status == 400
    assert b"<Code>InvalidArgument</Code>" in got.body
    with pytest.raises(botocore.exceptions.ClientError):
        m.store.head_object(Bucket=m.bucket, Key=key)


def test_a_store_client_validation_error_is_a_400_not_a_503() -> None:
    failure = map_client_error(ParamValidationError(report="Non ascii characters"), "b", "k")
    assert (failure.status, failure.code) == (400, "InvalidArgument")


# -- finding 3: HEADs racing writes, two workers ----------------------------------------------
def _hammer(m: M, key: str, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        seen.append(raw_request(m.proxy.url, "HEAD", m.path(key)).status)


def _race(m: M, key: str, write: Any, offset: float) -> None:
    """HEADs of ``key`` (new connections: both workers) from ``offset`` seconds after
    ``write()`` starts until it is done."""
    stop, seen = threading.Event(), []
    writer = threading.Thread(target=write)
    heads = [threading.Thread(target=_hammer, args=(m, key, stop, seen)) for _ in range(3)]
    writer.start()
    time.sleep(offset)
    for t in heads:
        t.start()
    writer.join(timeout=60)
    stop.set()
    for t in heads:
        t.join(timeout=60)


@pytest.mark.parametrize("size", [100, CHUNK + 5], ids=["inline", "chunked"])
def test_heads_racing_puts_never_reinstall_the_old_version(m: M, size: int) -> None:
    for round_ in range(12):
        key = m.key("race/put")
        m.store.put_object(Bucket=m.bucket, Key=key, Body=body_of(size, round_))  # behind us
        new = body_of(size + 1, 1000 + round_)
        etags: list[str] = []

        def put(key: str = key, new: bytes = new, etags: list[str] = etags) -> None:
            etags.append(m.client.put_object(Bucket=m.bucket, Key=key, Body=new)["ETag"])

        _race(m, key, put, round_ * 0.002)
        for _ in range(4):
            got = raw_request(m.proxy.url, "GET", m.path(key))
            assert (got.status, got.headers.get("etag")) == (200, etags[0]), f"round {round_}"
            assert got.body == new, f"round {round_}: an aborted or stale body"


def test_heads_racing_deletes_never_reinstall_the_object(m: M) -> None:
    for round_ in range(12):
        key = m.key("race/delete")
        m.store.put_object(Bucket=m.bucket, Key=key, Body=body_of(100, round_))

        def delete(key: str = key) -> None:
            m.client.delete_object(Bucket=m.bucket, Key=key)

        _race(m, key, delete, round_ * 0.002)
        for _ in range(4):
            assert raw_request(m.proxy.url, "HEAD", m.path(key)).status == 404, f"round {round_}"
