"""A full cache disk (ENOSPC) never breaks reads (B.1 #2), nor caching (issue 8, finding 2).

The cache directory sits on a small tmpfs while the objects read total several times its size:
reads keep answering with the right bytes, nothing the index references is missing or short,
the cache evicts to keep cache.min_free free on the volume (whatever max_size says), keeps
caching once the disk was full, and warns about it at most once a minute.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from asyncio import gather
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.cache.index import Index
from proxy.cache.space import Volume
from proxy.config_values import SizeOrShare
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
from tests.test_cache_index import all_records, insert, oid

KIB = 1024
MIB = 1024 * KIB


def _tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax); skipped where mounting is not permitted, but not
    in CI (tests/conftest.py): the CI machine runs as root, and the disk-full behaviour is
    tested nowhere else."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    yield from _tmpfs(tmp_path, "2m")


@pytest.fixture
def disk_16m(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs."""
    yield from _tmpfs(tmp_path, "16m")


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

        def evicted_for_room() -> bool:  # max_size is far off: the disk's size bound it
            return scrape(proxy.admin_url).get("slipstream_evictions_total") > 0

        assert wait_until(evicted_for_room, 5), proxy.log()
        assert "Traceback" not in proxy.log(), proxy.log()
        # a read's chunk file is published before its index commit, which may wait a moment for
        # company (index.LINGER): once the last commits land, every file is referenced
        assert wait_until(lambda: audit_cache(small_disk).unreferenced() == [], 5)
        audit = audit_cache(small_disk)
        assert audit.missing_or_wrong_size(256 * KIB) == []
        assert audit.unreferenced() == []
        assert all(not files for files in audit.tmp_files.values()), audit.tmp_files
    finally:
        proxy.stop()


def test_disk_full_keeps_caching(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    disk_16m: Path,
) -> None:
    """Issue 8's 40 MB volume scaled down: max_size left at 10 GiB on a 16 MiB volume, 20 x 2 MiB
    and 600 x 20 KiB objects read twice. The cache evicts to keep min_free (5%) free: after
    the second pass it holds many objects, small ones included, and warned once or twice."""
    bucket = new_bucket("diskfill")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    objects = {f"big/{n}": payload(2 * MIB, seed=n) for n in range(20)}  # these fill the disk
    objects.update({f"small/{n}": payload(20 * KIB, seed=1000 + n) for n in range(600)})
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    proxy = proxy_factory(proxy_config(seaweedfs.url, bucket, disk_16m), store_env(seaweedfs))
    held: list[tuple[int, int]] = []  # (small, big) objects cached after each pass
    try:
        for _ in range(2):
            for key, body in objects.items():
                status, got = get_body(f"{proxy.url}/{bucket}/{key}")
                assert (status, got == body) == (200, True), (key, got[:300])
            time.sleep(1.5)  # the hit statistics flush; the writes settle
            records = audit_cache(disk_16m).records.values()
            small = sum(r.size == 20 * KIB and r.inline for r in records)
            big = sum(r.size == 2 * MIB and r.has_chunk(0) for r in records)
            held.append((small, big))
        log = proxy.log(limit=1_000_000)
    finally:
        proxy.stop()
    warnings = [
        line
        for line in log.splitlines()
        if "WARNING" in line and ("No space left" in line or "disk" in line)
    ]
    print(f"cached (small, big) after each pass: {held}; disk warnings: {len(warnings)}")
    small, big = held[-1]
    assert small >= 200, (held, warnings[:5])  # cached after the big ones filled the disk
    assert len(warnings) <= 2, warnings[:5]
    st = os.statvfs(disk_16m)
    assert st.f_bavail * st.f_frsize >= 0.04 * st.f_blocks * st.f_frsize, "min_free kept free"
    audit = audit_cache(disk_16m)
    assert audit.missing_or_wrong_size(8 * MIB) == []
    assert audit.unreferenced() == []


async def test_the_index_evicts_and_keeps_caching_after_its_disk_filled_up(
    small_disk: Path,
) -> None:
    """Another writer takes the last free block of the volume (the reserve included) while the
    index's values fill most of it. The next batch of values cannot commit: the index evicts,
    and that eviction has to commit on the blocks the index file keeps past its end
    (IndexTail), since LMDB reuses the pages a transaction frees only two commits later. Then
    values are cached again. Without the tail the eviction itself failed for room, and so did
    every write after it, for good."""
    volume = Volume(small_disk, SizeOrShare(percent=5.0))
    index = Index(small_disk / "index", 64 * MIB, 64 * MIB, volume)
    evicted: list[int] = []
    index.on_commit = lambda batch: evicted.append(batch.evicted_objects)
    index.start()
    value = 200 * KIB

    async def add(first: int, count: int) -> list[bool]:
        futs = [
            index.submit(insert(oid(n), value, data=os.urandom(value)), lazy=True)
            for n in range(first, first + count)
        ]
        done = await gather(*futs, return_exceptions=True)
        return [not isinstance(r, BaseException) for r in done]

    try:
        assert all(await add(0, 6))  # 1.2 MiB of the 2 MiB volume
        fd = os.open(small_disk / "neighbour", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # the rest, to the last block
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        assert os.statvfs(small_disk).f_bavail == 0
        cached = [await add(100 + 10 * n, 2) for n in range(6)]
        assert sum(evicted) > 0, cached
        assert any(cached[-1]) or any(cached[-2]), cached  # caching again
        assert len(all_records(index)) >= 3
    finally:
        index.close()
