"""Per-bucket policy: a pass-through bucket (`cache: false`) caches nothing and always reads
the store; a cached bucket over the same directory serves from the cache."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tests.conformance import metric
from tests.conftest import ProxyFactory


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_pass_through_bucket_reads_the_store_every_time(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    (root / "shared").mkdir(parents=True)
    obj = root / "shared" / "file.bin"
    obj.write_bytes(b"version one" * 1000)
    proxy = proxy_factory(
        {
            "workers": 1,
            "cache": {"dir": str(tmp_path / "cache"), "metadata_ttl": "never"},
            "backends": {"local": {"type": "fs", "root": str(root)}},
            "buckets": {
                "cached": {"backend": "local", "bucket": "shared"},
                "direct": {"backend": "local", "bucket": "shared", "cache": False},
            },
        }
    )

    def store_gets() -> float:
        return metric(proxy.admin_url, "slipstream_backend_requests_total", operation="GetObject")

    before = store_gets()
    for _ in range(3):
        assert _get(f"{proxy.url}/direct/file.bin") == (200, b"version one" * 1000)
    assert store_gets() - before == 3, "every pass-through read goes to the store"
    assert metric(proxy.admin_url, "slipstream_cache_objects") == 0

    assert _get(f"{proxy.url}/cached/file.bin")[0] == 200
    warm = store_gets()
    assert _get(f"{proxy.url}/cached/file.bin")[0] == 200
    assert store_gets() == warm, "the cached bucket serves the second read from the cache"

    obj.write_bytes(b"version two")
    assert _get(f"{proxy.url}/direct/file.bin") == (200, b"version two")
    assert _get(f"{proxy.url}/direct/file.bin", {"Range": "bytes=-3"}) == (206, b"two")
    assert _get(f"{proxy.url}/direct/file.bin", {"Range": "bytes=8-"}) == (206, b"two")
    status, body = _get(f"{proxy.url}/direct/file.bin", {"Range": "bytes=100-"})
    assert status == 416 and b"<Code>InvalidRange</Code>" in body
    status, _ = _get(f"{proxy.url}/direct/file.bin", {"If-None-Match": '"nope", *'})
    assert status == 304
    status, body = _get(f"{proxy.url}/direct/missing.bin")
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body
    # the immutable cached bucket still holds version one: the two policies really differ
    assert _get(f"{proxy.url}/cached/file.bin")[1] == b"version one" * 1000
