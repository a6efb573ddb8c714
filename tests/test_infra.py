"""The test infrastructure itself: servers start, authenticate, and the relay counts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import aiohttp
import botocore.exceptions
import pytest

from tests.conftest import S3ClientFactory
from tests.proxyproc import REPO_ROOT
from tests.relay import CountingRelay
from tests.servers import S3Endpoint, free_port, wait_for_http


def _bucket() -> str:
    return f"infra-{uuid.uuid4().hex[:12]}"


def test_moto_put_get(moto_server: S3Endpoint, s3_client_factory: S3ClientFactory) -> None:
    s3 = s3_client_factory(moto_server)
    bucket = _bucket()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="dir/a key", Body=b"moto")
    assert s3.get_object(Bucket=bucket, Key="dir/a key")["Body"].read() == b"moto"


def test_seaweedfs_put_get(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> None:
    s3 = s3_client_factory(seaweedfs)
    bucket = _bucket()
    s3.create_bucket(Bucket=bucket)
    body = bytes(range(256)) * (5 * 4096)  # 5 MiB: more than one 4 MiB filer chunk
    s3.put_object(Bucket=bucket, Key="dir/a key+plus", Body=body)
    span = "bytes=4194300-4194310"  # crosses the chunk boundary
    got = s3.get_object(Bucket=bucket, Key="dir/a key+plus", Range=span)
    assert got["Body"].read() == body[4194300:4194311]
    assert s3.get_object(Bucket=bucket, Key="dir/a key+plus")["Body"].read() == body


def test_seaweedfs_rejects_wrong_secret(
    seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory
) -> None:
    bad = s3_client_factory(seaweedfs, secret_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bad.list_buckets()
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_relay_preserves_sigv4_and_counts(
    seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory
) -> None:
    bucket = _bucket()
    direct = s3_client_factory(seaweedfs)
    direct.create_bucket(Bucket=bucket)
    direct.put_object(Bucket=bucket, Key="k", Body=b"via relay")
    with CountingRelay(seaweedfs.url) as relay:
        s3 = s3_client_factory(relay.url, seaweedfs.access_key, seaweedfs.secret_key)
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"via relay"
        assert relay.count == 1
        assert relay.counts == {("GET", f"/{bucket}/k"): 1}
        s3.put_object(Bucket=bucket, Key="big", Body=b"x" * (3 * 1024 * 1024))
        assert s3.head_object(Bucket=bucket, Key="big")["ContentLength"] == 3 * 1024 * 1024
        assert relay.count_of("PUT", f"/{bucket}/big") == 1
        assert relay.count == 3
        relay.reset()
        assert relay.count == 0 and relay.counts == {}
        wrong = s3_client_factory(relay.url, seaweedfs.access_key, "wrong")
        with pytest.raises(botocore.exceptions.ClientError) as err:
            wrong.get_object(Bucket=bucket, Key="k")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert relay.count == 1


async def test_relay_async_latency_and_concurrency(moto_server: S3Endpoint) -> None:
    async with CountingRelay(moto_server.url, latency=0.2) as relay:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with aiohttp.ClientSession() as session:

            async def fetch() -> int:
                async with session.get(f"{relay.url}/moto-api/?a=%2F&b=1") as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(fetch() for _ in range(20)))
        elapsed = loop.time() - start
    assert statuses == [200] * 20
    assert 0.2 <= elapsed < 2.0  # latency is per request, applied concurrently
    assert relay.counts == {("GET", "/moto-api/"): 20}


def test_relay_cli(moto_server: S3Endpoint) -> None:
    port = free_port()
    script = str(REPO_ROOT / "tests" / "relay.py")
    cmd = [sys.executable, script, "--listen", f"127.0.0.1:{port}", "--target", moto_server.url]
    proc = subprocess.Popen([*cmd, "--latency-ms", "5"])
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/moto-api/", timeout=20) == 200
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.parametrize("count", [2, 4])
def test_free_port_serves_every_xdist_share(count: int) -> None:
    """Each pytest-xdist worker gets ports of its own share (port // 2 % count == index), and
    promptly: Linux's bind() to port 0 hands out ports of one parity only, and with shares by
    port % count the workers of the other parity at 2 or 4 workers waited forever."""
    probe = (
        "import sys; from tests.servers import free_port; "
        "ports = [free_port() for _ in range(50)]; print(*ports)"
    )
    for index in range(count):
        env = {"PYTEST_XDIST_WORKER": f"gw{index}", "PYTEST_XDIST_WORKER_COUNT": str(count)}
        out = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        ports = [int(p) for p in out]
        assert len(set(ports)) == 50 and all(p // 2 % count == index for p in ports), (index, ports)
