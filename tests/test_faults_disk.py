"""A full cache disk (ENOSPC) never breaks reads (B.1 #2).

The cache directory sits on a 2 MiB tmpfs while the objects read total several MiB: reads keep
answering from the store with the right bytes, failed chunk writes are counted, and nothing
the index references is missing or short.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import (
    audit_cache,
    get_body,
    new_bucket,
    payload,
    proxy_config,
    scrape,
    store_env,
    wait_until,
)
from tests.servers import S3Endpoint

KIB = 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs; skipped where mounting is not permitted."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize(
    "inline_max",
    ["16KiB", "256KiB"],
    ids=["chunk-files-fill-the-disk", "inline-values-fill-the-index"],
)
def test_disk_full_reads_still_correct(
    inline_max: str,
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    small_disk: Path,
) -> None:
    bucket = new_bucket("diskfull")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    size = 600 * KIB if inline_max == "16KiB" else 200 * KIB
    objects = {f"obj/{n}": payload(size + n, seed=100 + n) for n in range(12)}
    objects["tiny/inline"] = payload(3 * KIB, seed=99)
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cache = {
        "chunk_size": "256KiB",
        "inline_max": inline_max,
        "max_size": "64MiB",
        "metadata_ttl": "1s",  # the second pass also revalidates, which writes the index
    }
    proxy = proxy_factory(
        proxy_config(seaweedfs.url, bucket, small_disk, cache=cache), store_env(seaweedfs)
    )
    try:
        for n in range(2):  # the second pass reads what could and could not be cached
            if n:
                time.sleep(1.1)
            for key, body in objects.items():
                status, got = get_body(f"{proxy.url}/{bucket}/{key}")
                assert status == 200, (key, got[:300])
                assert got == body, key

        def disk_full_counted() -> bool:
            m = scrape(proxy.admin_url)
            return m.get("slipstream_cache_write_errors_total", reason="disk_full") > 0

        assert wait_until(disk_full_counted, 5), proxy.log()
        assert "Traceback" not in proxy.log(), proxy.log()
        audit = audit_cache(small_disk)
        assert audit.missing_or_wrong_size(256 * KIB) == []
        assert audit.unreferenced() == []
        assert all(not files for files in audit.tmp_files.values()), audit.tmp_files
    finally:
        proxy.stop()
