"""loadtest/baseline_server.py ``--mode store``, the floor arm of fills.py ``--floor``: against
real SeaweedFS (it checks signatures), each GET is the object's bytes and ETag, fetched with
Slipstream's own signed store client; a key the store lacks is no 200."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import S3ClientFactory
from tests.servers import S3Endpoint, free_port, wait_for_http

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def floor(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> Iterator[tuple[str, str]]:
    bucket = f"floor-{uuid.uuid4().hex[:8]}"
    s3_client_factory(seaweedfs).create_bucket(Bucket=bucket)
    port = free_port()
    env = {**os.environ, "FLOOR_AK": seaweedfs.access_key, "FLOOR_SK": seaweedfs.secret_key}
    cmd = [sys.executable, str(REPO_ROOT / "loadtest" / "baseline_server.py"), "--mode", "store"]
    cmd += ["--port", str(port), "--endpoint", seaweedfs.url]
    cmd += ["--access-key-env", "FLOOR_AK", "--secret-key-env", "FLOOR_SK"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/{bucket}/none", timeout=30)
        yield url, bucket
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_each_get_is_the_stores_object_through_a_signed_client(
    floor: tuple[str, str], seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory
) -> None:
    url, bucket = floor
    store = s3_client_factory(seaweedfs)
    bodies = {"a.bin": os.urandom(16 * 1024), "dir/b c.bin": os.urandom(300_001), "empty": b""}
    for key, body in bodies.items():
        store.put_object(Bucket=bucket, Key=key, Body=body)
    for key, body in bodies.items():
        quoted = urllib.request.quote(key)
        with urllib.request.urlopen(f"{url}/{bucket}/{quoted}", timeout=10) as resp:
            assert resp.read() == body
            assert resp.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{url}/{bucket}/nope", timeout=10)
    assert missing.value.code >= 400
