"""Memory per read is a window, and all fills together stay under ``cache.fill_memory``.

The proxy runs as a subprocess (one worker: the measured process is the proxy itself) over an
fs store, with a 32 MiB fill ceiling; objects 8x that size are read cold by slow readers, so
the fills run ahead of them. The worker's peak RSS (``VmHWM``, reset after a warm-up where
the kernel allows) may grow by at most the ceiling plus a small constant.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess

MIB = 1024 * 1024
CEILING = 32 * MIB
SLACK = 64 * MIB  # interpreter, aiohttp and socket buffers, the allocator's slack
BIG = 8 * CEILING


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


class PeakRss:
    """The growth of ``pid``'s resident set over a block: the kernel's high-water mark after
    it minus the resident set before (reset where /proc/PID/clear_refs allows), and sampled
    meanwhile, so the figure holds even where the high-water mark cannot be reset."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _status(self.pid)["VmRSS"])

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM
            reset = True
        except OSError:
            reset = False
        now = _status(self.pid)
        self.base = now["VmRSS"]
        self.peak = now["VmHWM"] if reset else now["VmRSS"]
        self._reset = reset
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        now = _status(self.pid)
        self.peak = max(self.peak, now["VmRSS"], now["VmHWM"] if self._reset else 0)

    @property
    def growth(self) -> int:
        return self.peak - self.base

    def report(self, what: str) -> str:
        return (
            f"{what}: RSS before {self.base / MIB:.0f} MiB, peak {self.peak / MIB:.0f} MiB, "
            f"growth {self.growth / MIB:.0f} MiB (ceiling {CEILING / MIB:.0f} MiB + "
            f"{SLACK / MIB:.0f} MiB allowed)"
        )


def _write_object(path: Path, size: int, seed: int) -> str:
    """A file of distinct 1 MiB blocks; returns its MD5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    md5 = hashlib.md5(usedforsecurity=False)
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    with open(path, "wb") as f:
        for n in range(size // MIB):
            piece = n.to_bytes(8, "big") + block[8:]
            md5.update(piece)
            f.write(piece)
    return md5.hexdigest()


def _slow_get(proxy: ProxyProcess, path: str, pause: float = 0.002) -> tuple[int, str, int]:
    """GET ``path`` reading 256 KiB at a time with a pause between reads (a slow reader):
    (status, MD5 of the body, its length)."""
    host, port = proxy.config["listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        md5, n = hashlib.md5(usedforsecurity=False), 0
        while piece := resp.read(256 * 1024):
            md5.update(piece)
            n += len(piece)
            time.sleep(pause)
        return resp.status, md5.hexdigest(), n
    finally:
        conn.close()


def _in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # reported by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "store-a", tmp_path / "store-b"
    (a / "data").mkdir(parents=True)
    (b / "out").mkdir(parents=True)
    (a / "data" / "small").write_bytes(b"warm-up")
    return a, b


def _proxy(factory: ProxyFactory, stores: tuple[Path, Path], chunk: str) -> ProxyProcess:
    return factory(
        {
            "workers": 1,
            "cache": {
                "dir": "cache",
                "max_size": "2GiB",
                "chunk_size": chunk,
                "fill_memory": f"{CEILING // MIB}MiB",
            },
            "backends": {
                "a": {"type": "fs", "root": str(stores[0])},
                "b": {"type": "fs", "root": str(stores[1])},
            },
            "buckets": {"data": {"backend": "a"}, "out": {"backend": "b"}},
        }
    )


def _warm(proxy: ProxyProcess) -> None:
    status, _, n = _slow_get(proxy, "/data/small", 0)
    assert (status, n) == (200, 7), proxy.log()


def test_cold_read_of_8x_the_ceiling_stays_under_it(
    proxy_factory: ProxyFactory, stores: tuple[Path, Path]
) -> None:
    digest = _write_object(stores[0] / "data" / "big", BIG, seed=1)
    proxy = _proxy(proxy_factory, stores, "4MiB")
    _warm(proxy)
    with PeakRss(proxy.pid) as rss:
        status, got, n = _slow_get(proxy, "/data/big")
    print(rss.report(f"one slow cold reader of {BIG // MIB} MiB"))
    assert (status, n, got) == (200, BIG, digest)
    assert rss.growth < CEILING + SLACK, rss.report("one reader")
    # The bytes were cached on the way: a second read is a hit and as right.
    assert _slow_get(proxy, "/data/big", 0) == (200, digest, BIG)


def test_many_cold_readers_share_the_ceiling(
    proxy_factory: ProxyFactory, stores: tuple[Path, Path]
) -> None:
    """Eight readers of eight 32 MiB objects would want 8 x 3 chunks of 8 MiB in flight at
    once (the read-ahead window); the ceiling makes the fills wait their turn instead."""
    digests = {
        f"/data/obj{i}": _write_object(stores[0] / "data" / f"obj{i}", 32 * MIB, seed=10 + i)
        for i in range(8)
    }
    proxy = _proxy(proxy_factory, stores, "8MiB")
    _warm(proxy)
    paths = list(digests)
    with PeakRss(proxy.pid) as rss:
        results = _in_threads([lambda p=p: _slow_get(proxy, p) for p in paths])
    print(rss.report("eight slow cold readers of 32 MiB each"))
    assert results == [(200, digests[p], 32 * MIB) for p in paths], proxy.log()
    assert rss.growth < CEILING + SLACK, rss.report("eight readers")


def test_copy_across_stores_streams_through_the_window(
    proxy_factory: ProxyFactory, stores: tuple[Path, Path]
) -> None:
    """CopyObject between two stores reads the source through the cache (``bytes_of``)."""
    digest = _write_object(stores[0] / "data" / "big", BIG, seed=2)
    proxy = _proxy(proxy_factory, stores, "4MiB")
    _warm(proxy)
    host, port = proxy.config["listen"].rsplit(":", 1)
    with PeakRss(proxy.pid) as rss:
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            conn.request("PUT", "/out/copy", headers={"x-amz-copy-source": "/data/big"})
            resp = conn.getresponse()
            answer = resp.read()
        finally:
            conn.close()
    print(rss.report(f"CopyObject of {BIG // MIB} MiB across stores"))
    assert resp.status == 200, answer
    copied = hashlib.md5(usedforsecurity=False)
    with open(stores[1] / "out" / "copy", "rb") as f:
        while piece := f.read(MIB):
            copied.update(piece)
    assert copied.hexdigest() == digest
    assert rss.growth < CEILING + SLACK, rss.report("copy")
