"""Start-up: an address the proxy cannot listen on stops it at once, with the address named.

Before, a worker that could not bind the S3 port was restarted every second forever. Now
``slipstream serve`` exits non-zero with one line that names the address, for the S3 and the
admin listener, in one process and with several workers. A worker that dies for another
reason is still restarted (here, and tests/test_faults_server.py kills one under load).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ListenError
from proxy.workers import WorkerPool
from tests.proxyproc import ProxyProcess

EXIT_WITHIN = 30.0  # seconds; generous for a loaded machine, a restart loop never exits


@pytest.fixture
def taken() -> Iterator[str]:
    """A loopback address held by a listening socket for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _config(tmp_path: Path, workers: int, **listen: str) -> dict[str, Any]:
    root = tmp_path / "data"
    (root / "bucket").mkdir(parents=True, exist_ok=True)
    return {
        "workers": workers,
        "cache": {"dir": str(tmp_path / "cache")},
        "backends": {"local": {"type": "fs", "root": str(root)}},
        "buckets": {"bucket": {"backend": "local"}},
        "log": {"access_log": False},
        **listen,
    }


def _exits_naming(proxy: ProxyProcess, address: str) -> str:
    proxy.launch()
    try:
        code = proxy.wait_exit(EXIT_WITHIN)
    finally:
        proxy.kill9()
    log = proxy.log()
    assert code is not None, f"still running after {EXIT_WITHIN}s:\n{log}"
    assert code != 0, log
    lines = [line for line in log.splitlines() if address in line and "cannot listen" in line]
    assert lines, f"no error line names {address}:\n{log}"
    assert "Traceback" not in log, log
    return log


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_s3_address_in_use(tmp_path: Path, taken: str, workers: int) -> None:
    proxy = ProxyProcess(_config(tmp_path, workers, listen=taken), tmp_path / "proxy")
    log = _exits_naming(proxy, taken)
    assert "restarting" not in log, log


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_admin_address_in_use(tmp_path: Path, taken: str, workers: int) -> None:
    proxy = ProxyProcess(_config(tmp_path, workers, admin_listen=taken), tmp_path / "proxy")
    _exits_naming(proxy, taken)


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_s3_address_not_assignable(tmp_path: Path, workers: int) -> None:
    address = "192.0.2.1:19900"  # TEST-NET-1: on no interface of this machine
    config = {**_config(tmp_path, workers, listen=address), "auth": {"anonymous": True}}
    proxy = ProxyProcess(config, tmp_path / "proxy")
    _exits_naming(proxy, address)


# -- the worker pool on its own (a bind failure after the supervisor's probe passed) ----------


def _cannot_bind(address: str, ready: MpEvent) -> None:
    raise ListenError(f"cannot listen on {address} (listen): taken since the probe")


def _crash_once(marker: str, ready: MpEvent) -> None:
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed")
        sys.exit(1)
    ready.set()
    time.sleep(60)  # until the pool stops it


async def test_pool_stops_when_a_worker_cannot_bind() -> None:
    pool = WorkerPool(_cannot_bind, "127.0.0.1:1", 2, "127.0.0.1:1")
    pool.start()
    try:
        with pytest.raises(ListenError, match=r"127\.0\.0\.1:1 \(listen\)"):
            await asyncio.wait_for(pool.watch(asyncio.Event()), EXIT_WITHIN)
    finally:
        await pool.stop(5)


async def test_pool_restarts_a_worker_that_crashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # as run() sets it
    pool = WorkerPool(_crash_once, str(tmp_path / "marker"), 1, "127.0.0.1:1")
    pool.start()
    stop = asyncio.Event()
    watch = asyncio.create_task(pool.watch(stop))
    try:
        deadline = time.monotonic() + EXIT_WITHIN
        while not pool.ready():
            assert time.monotonic() < deadline, "the crashed worker was not restarted"
            assert not watch.done(), watch
            await asyncio.sleep(0.1)
        assert (tmp_path / "marker").read_text() == "crashed"
    finally:
        stop.set()
        await watch
        await pool.stop(5)
