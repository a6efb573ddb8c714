"""Disk outside the budget (issue 8, finding 6): the staging of multipart uploads is swept
after ``cache.upload_staging_ttl``, counted (``slipstream_upload_staging_bytes``; the cache's
part copies bounded by ``cache.max_size``), and a request body that stops arriving is cut after
``server.body_idle_timeout`` with S3's 400 RequestTimeout."""

from __future__ import annotations

import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from proxy.config import from_mapping as config_from_mapping
from proxy.errors import ConfigError
from tests.conformance import metric, store_side
from tests.proxyproc import ProxyProcess
from tests.servers import make_s3_client

KiB, MiB = 1024, 1024 * 1024


def _proxy(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    *,
    cache: dict[str, Any],
    server: dict[str, Any] | None = None,
) -> tuple[ProxyProcess, str, Path]:
    bucket = f"stg-{uuid.uuid4().hex[:8]}"
    side = store_side(kind, request, tmp_path / "root", (bucket,))
    request.addfinalizer(side.close)
    cache_dir = tmp_path / "cache"
    config: dict[str, Any] = {
        "workers": 1,
        "cache": {
            "dir": str(cache_dir),
            "chunk_size": "64KiB",
            "inline_max": "4KiB",
            "metadata_ttl": "1h",
            **cache,
        },
        "backends": {"store": side.backend},
        "buckets": {"*": {"backend": "store"}},
        "log": {"access_log": False},
    }
    if server:
        config["server"] = server
    proxy = ProxyProcess(config, tmp_path / "proxy", side.env)
    proxy.start()
    request.addfinalizer(proxy.stop)
    return proxy, bucket, cache_dir


def _upload_dirs(cache_dir: Path) -> list[Path]:
    """Every upload's staging directory: the store's (staging/<backend>/<id>) and the cache's
    part copies (uploads/<hash>)."""
    out = [p for p in (cache_dir / "uploads").glob("*") if p.is_dir()]
    out += [p for p in (cache_dir / "staging").glob("*/*") if p.is_dir()]
    return out


def _wait(cond: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def test_abandoned_upload_staging_is_swept(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """fs has no native multipart: a part is staged for the store and copied for the cache.
    Abandoned, both go after the TTL, and the upload is gone as S3's lifecycle rule leaves it."""
    proxy, bucket, cache_dir = _proxy(
        "fs", request, tmp_path, cache={"max_size": "64MiB", "upload_staging_ttl": "3s"}
    )
    client = make_s3_client(proxy.url, "k", "s")
    uid = client.create_multipart_upload(Bucket=bucket, Key="big.bin")["UploadId"]
    client.upload_part(Bucket=bucket, Key="big.bin", UploadId=uid, PartNumber=1, Body=b"p" * MiB)
    dirs = _upload_dirs(cache_dir)
    assert len(dirs) == 2, dirs  # one staged for the store, one copied for the cache
    assert _wait(
        lambda: metric(proxy.admin_url, "slipstream_upload_staging_bytes", kind="store") >= MiB,
        timeout=10,
    ) or not _upload_dirs(cache_dir), "staged bytes are reported"
    assert _wait(lambda: not _upload_dirs(cache_dir)), _upload_dirs(cache_dir)
    assert [
        u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    ] == []
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.upload_part(Bucket=bucket, Key="big.bin", UploadId=uid, PartNumber=2, Body=b"x")
    assert exc.value.response["Error"]["Code"] == "NoSuchUpload"
    assert metric(proxy.admin_url, "slipstream_upload_staging_swept_total") >= 2
    assert _wait(lambda: metric(proxy.admin_url, "slipstream_upload_staging_bytes") == 0)


def test_upload_in_progress_survives_the_sweep(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    proxy, bucket, cache_dir = _proxy(
        "fs", request, tmp_path, cache={"max_size": "64MiB", "upload_staging_ttl": "4s"}
    )
    client = make_s3_client(proxy.url, "k", "s")
    uid = client.create_multipart_upload(Bucket=bucket, Key="slow.bin")["UploadId"]
    parts = []
    for n in (1, 2, 3):  # a part every 2s: each keeps the upload younger than the TTL
        body = bytes([n]) * (5 * MiB if n < 3 else 10)
        etag = client.upload_part(
            Bucket=bucket, Key="slow.bin", UploadId=uid, PartNumber=n, Body=body
        )["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
        time.sleep(2)
    client.complete_multipart_upload(
        Bucket=bucket, Key="slow.bin", UploadId=uid, MultipartUpload={"Parts": parts}
    )
    got = client.get_object(Bucket=bucket, Key="slow.bin")["Body"].read()
    assert len(got) == 10 * MiB + 10


def test_cache_part_copies_count_against_max_size(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Parts copied for the cache beyond max_size go, least recently touched first; the
    upload itself (to an S3 store) is not affected, only its caching."""
    proxy, bucket, cache_dir = _proxy(
        "moto", request, tmp_path, cache={"max_size": "2MiB", "upload_staging_ttl": "1h"}
    )
    client = make_s3_client(proxy.url, "k", "s")
    uploads = []
    for i in range(4):  # 4 x 400 KiB copies (each part under a quarter of max_size is copied)
        key = f"k{i}"
        uid = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        etag = client.upload_part(
            Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=bytes([i]) * (400 * KiB)
        )["ETag"]
        uploads.append((key, uid, etag))
        time.sleep(1.1)  # distinct mtimes
    copies = lambda: sorted((cache_dir / "uploads").glob("*"))  # noqa: E731
    assert len(copies()) == 4
    # the bound: 1.6 MiB fits in 2 MiB, nothing goes; one more copy of 600 KiB does not
    key = "k4"
    uid = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = client.upload_part(
        Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"5" * (500 * KiB)
    )["ETag"]
    uploads.append((key, uid, etag))
    # swept a second after the new copy (the periodic sweep alone would take up to a minute)
    assert _wait(lambda: len(copies()) == 4, timeout=20), copies()
    assert metric(proxy.admin_url, "slipstream_upload_staging_bytes", kind="cache") <= 2 * MiB
    for key, uid, etag in uploads:  # every upload still completes in the store
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
        assert len(client.get_object(Bucket=bucket, Key=key)["Body"].read()) > 0


def _stalled_put(proxy: ProxyProcess, path: str, sent: int, declared: int) -> tuple[int, bytes]:
    """A PUT that sends ``sent`` of ``declared`` body bytes, then nothing: (status, body)."""
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {declared}\r\n"
            "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * sent)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            assert piece, f"connection closed without an answer: {data!r}"
            data += piece
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
    return int(lines[0].split(" ", 2)[1]), body


@pytest.mark.parametrize("kind", ["fs", "moto"])
def test_idle_request_body_is_cut(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    proxy, bucket, _ = _proxy(
        kind, request, tmp_path, cache={"max_size": "64MiB"}, server={"body_idle_timeout": "1s"}
    )
    client = make_s3_client(proxy.url, "k", "s")
    uid = client.create_multipart_upload(Bucket=bucket, Key="part.bin")["UploadId"]
    targets = [f"/{bucket}/obj.bin", f"/{bucket}/part.bin?partNumber=1&uploadId={uid}"]
    for path in targets:
        started = time.monotonic()
        status, body = _stalled_put(proxy, path, 100, 1000)
        assert time.monotonic() - started < 30
        assert status == 400, body
        assert ET.fromstring(body).findtext("Code") == "RequestTimeout", body
    with pytest.raises(botocore.exceptions.ClientError):
        client.head_object(Bucket=bucket, Key="obj.bin")
    assert client.list_parts(Bucket=bucket, Key="part.bin", UploadId=uid).get("Parts", []) == []
    client.put_object(Bucket=bucket, Key="ok.bin", Body=b"a" * 1000)  # a live body still works


def _config(**sections: Any) -> Any:
    raw = {
        "backends": {"local": {"type": "fs", "root": "./data"}},
        "buckets": {"*": {"backend": "local"}},
        **sections,
    }
    return config_from_mapping(raw, "test.yaml", environ={})


def test_config_keys_are_validated() -> None:
    cfg = _config()
    assert cfg.cache.upload_staging_ttl == 86400 and cfg.server.body_idle_timeout == 60
    cfg = _config(cache={"upload_staging_ttl": "2h"}, server={"body_idle_timeout": "5s"})
    assert cfg.cache.upload_staging_ttl == 7200 and cfg.server.body_idle_timeout == 5
    for sections, field in [
        ({"cache": {"upload_staging_ttl": "soon"}}, "cache.upload_staging_ttl"),
        ({"cache": {"upload_staging_ttl": "0s"}}, "cache.upload_staging_ttl"),
        ({"server": {"body_idle_timeout": "0s"}}, "server.body_idle_timeout"),
        ({"server": {"body_idle_timeout": "x"}}, "server.body_idle_timeout"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            _config(**sections)
