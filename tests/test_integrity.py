"""Integrity on misses: a store whose bytes fail their MD5 check never yields a clean answer.

The store is a tiny fake S3 server (below) that serves fixed bytes with a plain-MD5 ETag; for
keys starting ``bad`` the ETag is the MD5 of other bytes, as a store that corrupted an object
would answer. The proxy must hold back the end of such a whole-object miss, cut the connection
when the check fails (a short body), and keep nothing in the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess

BUCKET = "data"
KEY_ENV, SECRET_ENV = "INTEGRITY_STORE_KEY", "INTEGRITY_STORE_SECRET"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def _bytes(size: int) -> bytes:
    return bytes(i * 13 % 251 for i in range(size))


class WrongBytesStore:
    """A fake S3 store in a thread: GET and HEAD of ``/data/<key>`` with ``objects[key]`` as the
    body and a plain-MD5 ETag; for keys starting ``bad`` that ETag is the MD5 of other bytes
    (the body with its first byte changed). It serves only what a proxy's object read needs
    (Range, Content-Range, ETag, Last-Modified) and counts the GETs per key."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: Counter[str] = Counter()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    def _etag(self, key: str) -> str:
        body = self.objects[key]
        if key.startswith("bad"):
            body = bytes([body[0] ^ 1]) + body[1:]
        return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if key not in self.objects:
            return web.Response(status=404, body=b"<Error><Code>NoSuchKey</Code></Error>")
        body = self.objects[key]
        headers = {
            "ETag": self._etag(key),
            "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT",
            "Content-Type": "application/octet-stream",
        }
        status, first, last = 200, 0, len(body) - 1
        m = _RANGE.fullmatch(request.headers.get("Range", ""))
        if m is not None:
            first = int(m[1])
            last = min(int(m[2]) if m[2] else last, last)
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=200, headers=headers)
        self.gets[key] += 1
        return web.Response(status=status, headers=headers, body=body[first : last + 1])

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/data/{key}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def __enter__(self) -> WrongBytesStore:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


SMALL, MID = 500, 300 * 1024  # an inline object and a one-chunk file


@pytest.fixture
def store() -> Iterator[WrongBytesStore]:
    objects = {
        "bad-small": _bytes(SMALL),
        "bad-mid": _bytes(MID),
        "good-mid": _bytes(MID),
    }
    with WrongBytesStore(objects) as s:
        yield s


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, store: WrongBytesStore, tmp_path: Path) -> ProxyProcess:
    config = {
        "workers": 1,
        "cache": {"dir": str(tmp_path / "cache"), "chunk_size": "1MiB", "inline_max": "4KiB"},
        "backends": {
            "store": {
                "type": "s3",
                "endpoint": store.url,
                "access_key_env": KEY_ENV,
                "secret_key_env": SECRET_ENV,
                "retries": 0,
            }
        },
        "buckets": {BUCKET: {"backend": "store"}},
    }
    return proxy_factory(config, {KEY_ENV: "k", SECRET_ENV: "s"})


def _get(proxy: ProxyProcess, key: str) -> tuple[int, bytes, bool]:
    """(status, the body bytes that arrived, whether the body was whole)."""
    host, port = proxy.config["listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", f"/{BUCKET}/{key}")
        resp = conn.getresponse()
        try:
            return resp.status, resp.read(), True
        except http.client.IncompleteRead as exc:
            return resp.status, exc.partial, False
    finally:
        conn.close()


@pytest.mark.parametrize("key", ["bad-small", "bad-mid"])
def test_bytes_that_fail_the_md5_never_arrive_whole(
    proxy: ProxyProcess, store: WrongBytesStore, key: str
) -> None:
    for attempt in (1, 2):
        status, body, whole = _get(proxy, key)
        assert status == 200
        assert not whole, f"a clean answer with bytes that fail their MD5 ({attempt})"
        assert len(body) < len(store.objects[key])
        # Nothing was cached: the second read goes to the store again.
        assert store.gets[key] == attempt, proxy.log()
    assert "does not match its ETag" in proxy.log()


def test_bytes_that_pass_stream_whole_and_are_cached(
    proxy: ProxyProcess, store: WrongBytesStore
) -> None:
    for _ in range(2):
        assert _get(proxy, "good-mid") == (200, store.objects["good-mid"], True)
    assert store.gets["good-mid"] == 1
