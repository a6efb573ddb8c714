"""Start-up: an address the proxy cannot listen on stops it at once, with the address named.

Before, a worker that could not bind the S3 port was restarted every second forever. Now
``slipstream serve`` exits non-zero with one line that names the address, for the S3 and the
admin listener, in one process and with several workers. A worker that dies for another
reason is still restarted (here, and tests/test_faults_server.py kills one under load).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import config
from proxy.app import _worker_main
from proxy.errors import ListenError
from proxy.readfeed import ReadFeed
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


def _exit_of(proxy: ProxyProcess) -> tuple[int | None, str]:
    """Start ``proxy`` and wait for it to exit: its exit status (None: still running) and log."""
    proxy.launch()
    try:
        code = proxy.wait_exit(EXIT_WITHIN)
    finally:
        proxy.kill9()
    return code, proxy.log()


def _exits_naming(proxy: ProxyProcess, address: str) -> str:
    code, log = _exit_of(proxy)
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


def _supervisor_that_goes(config_path: str, pids: Any) -> None:
    """Spawn a worker as serve_workers does (before the cache check), then go without ever
    setting ``checked``: the supervisor crashed during the check."""
    ctx = multiprocessing.get_context("spawn")
    cfg = config.load(Path(config_path))
    arg = (cfg, ReadFeed(ctx), ctx.Event(), os.getpid())
    pool = WorkerPool(_worker_main, arg, 1, cfg.listen)
    pool.start()
    pids.put(pool._procs[0][0].pid)
    pids.close()
    pids.join_thread()
    os._exit(0)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] in "ZX"
    except FileNotFoundError:
        return True


def test_a_worker_waiting_for_the_check_exits_when_its_supervisor_goes(tmp_path: Path) -> None:
    path = tmp_path / "slipstream.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, 2)))
    ctx = multiprocessing.get_context("spawn")
    pids = ctx.Queue()
    supervisor = ctx.Process(target=_supervisor_that_goes, args=(str(path), pids))
    supervisor.start()
    worker = pids.get(timeout=EXIT_WITHIN)
    supervisor.join(EXIT_WITHIN)
    deadline = time.monotonic() + EXIT_WITHIN
    try:
        while not _gone(worker):
            assert time.monotonic() < deadline, "the waiting worker outlived its supervisor"
            time.sleep(0.1)
    finally:
        if not _gone(worker):
            os.kill(worker, 9)
    assert not (tmp_path / "cache" / "index").exists(), "it opened the cache unchecked"


# -- a cache index written by a newer version ------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_a_cache_index_of_a_newer_record_format_stops_the_start(
    tmp_path: Path, workers: int
) -> None:
    """A start marks the index with its record format; one that finds a newer mark stops with
    one line that says what to do, and leaves the index as it found it."""
    import lmdb

    cfg = _config(tmp_path, workers)
    first = ProxyProcess(cfg, tmp_path / "first").start()
    first.stop()
    index = tmp_path / "cache" / "index"
    env = lmdb.open(str(index), max_dbs=8, subdir=True)
    with env.begin(db=env.open_db(b"meta"), write=True) as txn:
        assert int.from_bytes(txn.get(b"record_format"), "big") == 2  # said by the first start
        txn.put(b"record_format", (3).to_bytes(2, "big"))
    env.close()
    code, log = _exit_of(ProxyProcess(cfg, tmp_path / "second"))
    assert code == 1, log
    assert "written by a newer Slipstream (record format 3" in log, log
    assert "Traceback" not in log, log
    env = lmdb.open(str(index), max_dbs=8, subdir=True, readonly=True)
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        assert int.from_bytes(txn.get(b"record_format"), "big") == 3
    env.close()
