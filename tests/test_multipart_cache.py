"""Multipart write-through: an object uploaded in parts (as Spark or `aws s3 cp` write large
files) is in the cache once the store completes it, so the next stage reads it without a
single store GET; an aborted upload leaves no staging behind."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import boto3.s3.transfer
import pytest

from tests.conformance import metric, store_side
from tests.proxyproc import ProxyProcess
from tests.servers import make_s3_client

MiB = 1024 * 1024


@pytest.mark.parametrize("kind", ["fs", "moto"])
def test_multipart_upload_is_read_hot(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bucket = f"mp-{uuid.uuid4().hex[:8]}"
    side = store_side(kind, request, tmp_path / "root", (bucket,))
    proxy = ProxyProcess(
        {
            "workers": 2,
            "cache": {
                "dir": str(tmp_path / "cache"),
                "chunk_size": "1MiB",
                "max_size": "256MiB",
                "metadata_ttl": "1h",
            },
            "backends": {"store": side.backend},
            "buckets": {"*": {"backend": "store"}},
            "log": {"access_log": False},
        },
        tmp_path / "proxy",
        side.env,
    )
    try:
        proxy.start()
        client = make_s3_client(proxy.url, "any-key", "any-secret")
        data = os.urandom(17 * MiB + 12345)
        config = boto3.s3.transfer.TransferConfig(
            multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4
        )
        client.upload_fileobj(io.BytesIO(data), bucket, "big.bin", Config=config)

        def store_gets() -> float:
            return metric(
                proxy.admin_url, "slipstream_backend_requests_total", operation="GetObject"
            )

        before = store_gets()
        got = client.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        ranged = client.get_object(Bucket=bucket, Key="big.bin", Range="bytes=5242000-7340100")
        assert ranged["Body"].read() == data[5242000:7340101]
        assert store_gets() == before, "a completed multipart object is read from the cache"

        upload = client.create_multipart_upload(Bucket=bucket, Key="gone.bin")["UploadId"]
        client.upload_part(
            Bucket=bucket, Key="gone.bin", UploadId=upload, PartNumber=1, Body=b"x" * MiB
        )
        client.abort_multipart_upload(Bucket=bucket, Key="gone.bin", UploadId=upload)
        staging = tmp_path / "cache" / "uploads"
        assert not staging.exists() or not any(staging.iterdir()), "aborted staging remains"
    finally:
        proxy.stop()
        side.close()
