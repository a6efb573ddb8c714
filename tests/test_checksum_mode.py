"""x-amz-checksum-mode: the checksum a client uploaded (verified by the proxy) comes back on
whole-object GET and HEAD when asked, and never on a ranged read."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import boto3
from botocore.config import Config

from tests.conftest import ProxyFactory


def test_uploaded_checksum_is_returned_when_asked(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    (tmp_path / "data" / "demo").mkdir(parents=True)
    proxy = proxy_factory(
        {
            "workers": 1,
            "cache": {"dir": str(tmp_path / "cache")},
            "backends": {"local": {"type": "fs", "root": str(tmp_path / "data")}},
            "buckets": {"*": {"backend": "local"}},
        }
    )
    client = boto3.client(
        "s3",
        endpoint_url=proxy.url,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=Config(s3={"addressing_style": "path"}),
    )
    body = b"checksum me, please" * 100
    want = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    put = client.put_object(Bucket="demo", Key="ck.bin", Body=body, ChecksumAlgorithm="CRC32")
    assert put["ChecksumCRC32"] == want

    got = client.get_object(Bucket="demo", Key="ck.bin", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumCRC32"] == want
    head = client.head_object(Bucket="demo", Key="ck.bin", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == want

    ranged = client.get_object(
        Bucket="demo", Key="ck.bin", Range="bytes=0-9", ChecksumMode="ENABLED"
    )
    assert ranged["Body"].read() == body[:10]
    assert "ChecksumCRC32" not in ranged

    plain = Config(s3={"addressing_style": "path"}, response_checksum_validation="when_required")
    quiet = boto3.client(
        "s3",
        endpoint_url=proxy.url,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=plain,
    )
    assert "ChecksumCRC32" not in quiet.get_object(Bucket="demo", Key="ck.bin")
