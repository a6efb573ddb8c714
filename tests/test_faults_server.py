"""The front door under stress: disconnecting readers, header abuse, idle and slow clients,
graceful shut-down, several workers (B.1 #6, #7, #15)."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import (
    audit_cache,
    get_body,
    http_status,
    new_bucket,
    payload,
    proxy_config,
    scrape,
    store_env,
    wait_until,
)
from tests.relay import CountingRelay
from tests.servers import S3Endpoint

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
def bucket(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> str:
    name = new_bucket("front")
    s3_client_factory(seaweedfs).create_bucket(Bucket=name)
    return name


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url) as r:
        yield r


# -- a reader that leaves does not cancel the fill others wait on -----------------------------


async def test_disconnecting_reader_does_not_cancel_shared_fill(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    body = payload(4 * MIB, seed=700)
    s3_client_factory(seaweedfs).put_object(Bucket=bucket, Key="slow", Body=body)
    proxy = proxy_factory(
        proxy_config(relay.url, bucket, tmp_path / "cache", cache={"chunk_size": "8MiB"}),
        store_env(seaweedfs),
    )
    relay.bandwidth = 2 * MIB  # the one store GET takes about two seconds
    relay.reset()
    url = f"{proxy.url}/{bucket}/slow"
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as leaver,
        aiohttp.ClientSession(timeout=timeout) as stayer,
    ):

        async def leave_early() -> int:
            # This reader starts the fill, then hangs up after the first bytes.
            async with leaver.get(url) as resp:
                got = len(await resp.content.read(64 * KIB))
                resp.close()
                return got

        async def read_all() -> bytes:
            await asyncio.sleep(0.2)
            async with stayer.get(url) as resp:
                assert resp.status == 200
                return await resp.read()

        left, full = await asyncio.gather(leave_early(), read_all())
    assert 0 < left < len(body)
    assert full == body
    assert relay.count_of("GET", f"/{bucket}/slow") == 1
    # The fill completed and was committed although its first reader went away.
    relay.bandwidth = 0
    assert get_body(url) == (200, body)
    assert relay.count == 1, relay.counts


# -- header abuse, idle and slow clients ---------------------------------------------------------


def _raw_exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        out = b""
        while b"\r\n" not in out:
            block = sock.recv(4096)
            if not block:
                break
            out += block
        return out


def _closed_within(sock: socket.socket, limit: float, drip: bytes = b"") -> float | None:
    """Seconds until the server closes ``sock`` (sending ``drip`` a byte at a time meanwhile),
    or None if it is still open after ``limit``."""
    started = time.monotonic()
    sock.settimeout(0.2)
    pos = 0
    while time.monotonic() - started < limit:
        if pos < len(drip):
            try:
                sock.sendall(drip[pos : pos + 1])
            except OSError:
                return time.monotonic() - started
            pos += 1
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


@pytest.fixture
def front_proxy(
    seaweedfs: S3Endpoint, proxy_factory: ProxyFactory, tmp_path: Path
) -> tuple[str, int]:
    cfg = proxy_config(
        seaweedfs.url, "front", tmp_path / "cache", server={"keepalive_timeout": "1s"}
    )
    proxy = proxy_factory(cfg, store_env(seaweedfs))
    return proxy.url, int(proxy.url.rsplit(":", 1)[1])


def test_oversized_header_is_refused_not_hung(front_proxy: tuple[str, int]) -> None:
    _, port = front_proxy
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    line = _raw_exchange(port, big).split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", line), line
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    line = _raw_exchange(port, many + b"\r\n").split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", line), line
    long_line = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    line = _raw_exchange(port, long_line).split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", line), line
    # And the server still answers normally afterwards.
    assert http_status(f"{front_proxy[0]}/") == 200


def test_idle_connections_are_closed(front_proxy: tuple[str, int]) -> None:
    _, port = front_proxy
    # Connected, nothing sent.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        took = _closed_within(sock, 5)
        assert took is not None and took < 3, f"an idle connection stayed open ({took})"
    # Keep-alive after a complete request.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        took = _closed_within(sock, 5)
        assert took is not None and took < 3, took
    # A request head that never ends (slowloris: one header, then silence).
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        took = _closed_within(sock, 5)
        assert took is not None and took < 3, f"a half-sent request head held on ({took})"


def test_dripping_request_head_is_cut_off(front_proxy: tuple[str, int]) -> None:
    _, port = front_proxy
    drip = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100  # a byte per ~0.2 s
    with socket.create_connection(("127.0.0.1", port)) as sock:
        took = _closed_within(sock, 8, drip=drip)
    assert took is not None, "a request head dripped a byte at a time was never cut off"


# -- graceful shut-down -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_sigterm_drains_in_flight_gets(
    workers: int,
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    s3 = s3_client_factory(seaweedfs)
    objects = {f"drain/{n}": payload(3 * MIB + n, seed=800 + n) for n in range(4)}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    shutdown_timeout = 10.0
    cfg = proxy_config(
        relay.url,
        bucket,
        tmp_path / "cache",
        cache={"chunk_size": "1MiB"},
        server={"shutdown_timeout": f"{shutdown_timeout}s"},
        workers=workers,
    )
    proxy = proxy_factory(cfg, store_env(seaweedfs))
    relay.bandwidth = 1.5 * MIB  # each GET takes about two seconds
    results: dict[str, tuple[int, bytes]] = {}

    def fetch(key: str) -> None:
        try:
            results[key] = get_body(f"{proxy.url}/{bucket}/{key}", timeout=30)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results[key] = (-1, repr(exc).encode())

    readers = [threading.Thread(target=fetch, args=(k,), daemon=True) for k in objects]
    for t in readers:
        t.start()
    assert wait_until(lambda: relay.count >= len(objects), 5), relay.counts
    time.sleep(0.3)
    assert proxy.proc is not None
    signalled = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)

    saw_draining = wait_until(lambda: http_status(f"{proxy.admin_url}/readyz", 2) == 503, 3)
    try:
        exit_code = proxy.proc.wait(shutdown_timeout + 10)
    except subprocess.TimeoutExpired:
        exit_code = None
    took = time.monotonic() - signalled
    for t in readers:
        t.join(10)
    assert saw_draining, "/readyz never answered 503 while draining"
    for key, body in objects.items():
        status, got = results[key]
        assert status == 200, (key, got[:200], proxy.log())
        assert got == body, key
    assert exit_code == 0, proxy.log()
    assert took < shutdown_timeout, f"took {took:.1f}s to drain"
    audit = audit_cache(tmp_path / "cache")  # no partial entries left behind
    assert audit.unreferenced() == [] and audit.missing_or_wrong_size(MIB) == []
    assert all(not files for files in audit.tmp_files.values()), audit.tmp_files


# -- several workers ------------------------------------------------------------------------------


def test_two_workers_serve_and_aggregate_metrics(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy_factory: ProxyFactory,
    bucket: str,
    tmp_path: Path,
) -> None:
    s3 = s3_client_factory(seaweedfs)
    objects = {f"w/{n}": payload(1000 + n, seed=900 + n) for n in range(5)}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    proxy = proxy_factory(
        proxy_config(seaweedfs.url, bucket, tmp_path / "cache", workers=2), store_env(seaweedfs)
    )
    assert http_status(f"{proxy.admin_url}/readyz") == 200
    requests = 60
    for n in range(requests):  # a new connection each: SO_REUSEPORT spreads them
        key = f"w/{n % len(objects)}"
        assert get_body(f"{proxy.url}/{bucket}/{key}") == (200, objects[key])
    workers = set(_children(proxy.pid))
    assert len(workers) == 2, workers

    # Each worker counts in plain numbers (metrics.Tally), which the supervisor has it write
    # out before it answers a scrape: the scrape right after the last answer counts it.
    def gets() -> float:
        return scrape(proxy.admin_url).get(
            "slipstream_requests_total", operation="GetObject", status="200"
        )

    def reads() -> float:
        m = scrape(proxy.admin_url)
        return m.get("slipstream_cache_hits_total") + m.get("slipstream_cache_misses_total")

    assert reads() == requests
    assert gets() == requests
    assert scrape(proxy.admin_url).get("slipstream_cache_objects") == len(objects)

    # A worker killed outright is replaced; the survivors keep serving meanwhile.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in _children(proxy.pid), 5)
    for n in range(10):
        key = f"w/{n % len(objects)}"
        assert _get_retrying_once(f"{proxy.url}/{bucket}/{key}") == (200, objects[key])

    def replaced() -> bool:
        now = set(_children(proxy.pid))
        return victim not in now and len(now) == 2

    assert wait_until(replaced, 15), proxy.log()
    assert wait_until(lambda: http_status(f"{proxy.admin_url}/readyz") == 200, 15)
    for n in range(20):
        key = f"w/{n % len(objects)}"
        assert get_body(f"{proxy.url}/{bucket}/{key}") == (200, objects[key])
    assert wait_until(lambda: gets() >= requests + 20, 5), gets()


def _get_retrying_once(url: str) -> tuple[int, bytes]:
    """GET, retrying once on a reset connection, as S3 SDKs do. For a few milliseconds after a
    worker dies the kernel may still queue connections on its SO_REUSEPORT listener, and those
    are reset; the retry lands on a live worker."""
    try:
        return get_body(url)
    except (ConnectionResetError, http.client.RemoteDisconnected, urllib.error.URLError):
        return get_body(url)


def _children(pid: int) -> list[int]:
    """The worker processes of supervisor ``pid`` (not multiprocessing's resource tracker),
    without zombies."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    out = []
    for child in map(int, text.split()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"spawn_main" in cmdline and state != "Z":
            out.append(child)
    return out
