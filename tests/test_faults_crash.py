"""kill -9 in the middle of a large fill, then restart on the same cache (B.1 #1).

After every crash the restarted proxy must have swept the dead process's temp files, hold no
chunk file its index does not reference (fsck), reference no missing or short file, and serve
every object byte-exact; entries committed before the crash survive it.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

from proxy.cache.record import object_id
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import audit_cache, get_body, new_bucket, payload, proxy_config, sha, store_env
from tests.relay import CountingRelay
from tests.servers import S3Endpoint

MIB = 1024 * 1024
BIG = "big/forty-mib"
KILL_AFTER = (0.3, 0.9, 1.6)  # seconds into the big GET


def _drain(url: str, got: list[int]) -> None:
    """Read ``url`` to the end or until the connection dies; record how much arrived."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            while block := resp.read(256 * 1024):
                got.append(len(block))
    except Exception:  # noqa: BLE001 - the proxy is killed under us on purpose
        pass


def _plant_crash_debris(cache_dir: Path, dead_pid: int, bucket: str) -> list[Path]:
    """What a crash between publish steps can leave, beyond what this kill happened to leave:
    a half-written temp file, and a chunk file renamed into place whose index commit never
    happened (for a chunk of the big object the index does not have yet)."""
    tmp = cache_dir / "tmp" / str(dead_pid)
    tmp.mkdir(parents=True, exist_ok=True)
    half = tmp / "deadbeef.partial"
    half.write_bytes(b"x" * 1000)
    oid = object_id("store", bucket, BIG)
    big = audit_cache(cache_dir).records.get(oid)
    gen = big.gen if big is not None else "0123456789ab"
    missing = next(i for i in range(40) if big is None or not big.has_chunk(i))
    h = oid.hex()
    uncommitted = cache_dir / "blobs" / h[:2] / h[2:4] / f"{h}.{gen}.{missing}"
    uncommitted.parent.mkdir(parents=True, exist_ok=True)
    uncommitted.write_bytes(b"y" * MIB)
    return [half, uncommitted]


def test_kill9_mid_fill_then_restart(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    tmp_path: Path,
) -> None:
    bucket = new_bucket("crash")
    s3 = s3_client_factory(seaweedfs)
    s3.create_bucket(Bucket=bucket)
    objects = {
        "small/inline": payload(10 * 1024, seed=1),
        "small/one-chunk": payload(700 * 1024, seed=2),
        "mid/three-chunks": payload(3 * MIB + 12345, seed=3),
        BIG: payload(40 * MIB, seed=4),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    cache_dir = tmp_path / "cache"
    with CountingRelay(seaweedfs.url) as relay:
        proxy = proxy_factory(
            proxy_config(relay.url, bucket, cache_dir, cache={"chunk_size": "1MiB"}),
            store_env(seaweedfs),
        )
        for key, body in objects.items():
            if key != BIG:
                status, got = get_body(f"{proxy.url}/{bucket}/{key}")
                assert status == 200 and got == body
        time.sleep(0.3)  # let the last commit land

        relay.bandwidth = 4 * MIB  # per store response: a 1 MiB chunk takes ~0.25 s
        for n, delay in enumerate(KILL_AFTER):
            if n:
                proxy.start()
            received: list[int] = []
            reader = threading.Thread(
                target=_drain, args=(f"{proxy.url}/{bucket}/{BIG}", received), daemon=True
            )
            reader.start()
            time.sleep(delay)
            dead = proxy.pid
            proxy.kill9()
            reader.join(10)
            assert sum(received) < len(objects[BIG]), "the fill ended before the kill"
            planted = _plant_crash_debris(cache_dir, dead, bucket)

            relay.reset()
            proxy.start()
            audit = audit_cache(cache_dir)
            assert str(dead) not in audit.tmp_files, "the dead process's temp dir survived"
            assert all(not files for files in audit.tmp_files.values()), audit.tmp_files
            assert audit.unreferenced() == [], "fsck left orphan chunk files"
            assert not any(p.exists() for p in planted)
            assert audit.odd_files == []
            assert audit.missing_or_wrong_size(MIB) == []
            for key, body in objects.items():
                if key != BIG:
                    status, got = get_body(f"{proxy.url}/{bucket}/{key}")
                    assert status == 200 and sha(got) == sha(body), key
                    assert relay.count_of("GET", f"/{bucket}/{key}") == 0, (
                        f"{key} was committed before the crash but refetched"
                    )
            proxy.kill9()

        relay.bandwidth = 0
        proxy.start()
        for key, body in objects.items():
            status, got = get_body(f"{proxy.url}/{bucket}/{key}")
            assert status == 200 and sha(got) == sha(body), key
        time.sleep(0.5)
        assert proxy.stop() == 0
    audit = audit_cache(cache_dir)
    assert audit.unreferenced() == [] and audit.missing_or_wrong_size(MIB) == []
    big = next(r for r in audit.records.values() if r.key == BIG)
    assert big.chunks == (1 << 40) - 1, "every chunk of the big object is cached after a read"
