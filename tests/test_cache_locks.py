"""Fill locks across processes (proxy/cache/locks.py): one filler per chunk among the workers,
and a lock dies with the process that held it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from proxy.cache import index as index_module
from proxy.cache.locks import FillLocks
from proxy.core import fills
from proxy.core.metadata import oid_of
from tests.proxyproc import REPO_ROOT
from tests.test_core_units import BUCKET, Core, _read, core  # noqa: F401 (the fixture)

OID = b"\x01" * 16

TRY = """
import sys
from pathlib import Path
from proxy.cache.locks import FillLocks
locks = FillLocks(Path(sys.argv[1]))
print(locks.try_acquire(bytes.fromhex(sys.argv[2]), int(sys.argv[3])))
"""


def other_process_gets(path: Path, chunk: int, oid: bytes = OID) -> bool:
    """Whether another process can take the lock (it exits at once, dropping it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", TRY, str(path), oid.hex(), str(chunk)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() == "True"


def test_a_held_chunk_lock_excludes_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "locks"
    locks = FillLocks(path)
    try:
        assert locks.try_acquire(OID, 0)
        assert not other_process_gets(path, 0)
        assert other_process_gets(path, 1), "another chunk of the object was locked too"
        locks.release(OID, 0)
        assert other_process_gets(path, 0)
    finally:
        locks.close()


def test_a_lock_goes_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "locks"
    assert other_process_gets(path, 5)  # that process held it, and exited
    locks = FillLocks(path)
    try:
        assert locks.try_acquire(OID, 5)
    finally:
        locks.close()


async def test_a_fill_stopped_while_it_looks_in_the_cache_lets_go_of_its_lock(
    core: Core,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fill takes the chunk's lock, then looks in the cache (another worker may have filled
    the chunk meanwhile); cancelled there (a slow disk, a shutdown), it must not keep the lock:
    the other workers' fills of that chunk would wait on it for as long as this one lives."""
    core.put_file("big", bytes(range(256)) * 32)  # two chunks of 4 KiB, not inline
    await _read(core, "big")
    await core.reads.fills.wait_idle()
    rec = core.record("big")
    assert rec is not None and rec.has_chunk(0)
    inside, slow = threading.Event(), threading.Event()
    read_file = fills._read_file

    def slow_disk(path: Path, length: int) -> bytes:
        inside.set()
        slow.wait(10)
        return read_file(path, length)

    monkeypatch.setattr(fills, "_read_file", slow_disk)
    oid = oid_of(core.mount, "big")
    fill = core.reads.fills.get(core.mount, "big", oid, 0, rec.to_meta())
    assert await asyncio.to_thread(inside.wait, 10)  # holds the lock, reads the chunk's file
    assert fill.task is not None
    fill.task.cancel()
    await asyncio.gather(fill.task, return_exceptions=True)
    slow.set()
    lock_file = core.cache.root / "locks"
    assert await asyncio.to_thread(other_process_gets, lock_file, 0, oid)


WAIT = """
import sys
from pathlib import Path
from proxy.cache.locks import FillLocks
locks = FillLocks(Path(sys.argv[1]))
oid, chunk = bytes.fromhex(sys.argv[2]), int(sys.argv[3])
while not locks.wait_begin(oid, chunk):
    pass
print("waiting", flush=True)
sys.stdin.readline()
locks.wait_end(oid, chunk)
print("done", flush=True)
sys.stdin.readline()
"""


class _Waiter:
    """Another process that says it waits for this one's fill of ``chunk`` of ``oid``."""

    def __init__(
        self, path: Path, oid: bytes, chunk: int, script: str = WAIT, says: str = "waiting\n"
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        cmd = [sys.executable, "-c", script, str(path), oid.hex(), str(chunk)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == says

    def step(self, expect: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == expect

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_a_filler_sees_another_process_wait_for_its_chunk(tmp_path: Path) -> None:
    path = tmp_path / "locks"
    locks = FillLocks(path)
    waiter = None
    try:
        assert locks.try_acquire(OID, 0)
        assert not locks.waited_on(OID, 0)
        waiter = _Waiter(path, OID, 0)
        assert locks.waited_on(OID, 0)
        assert locks.waited_on(OID, 0), "asking took the waiter's mark away"
        assert not locks.waited_on(OID, 1), "another chunk of the object was waited on too"
        waiter.step("done\n")  # it stopped waiting, still alive
        assert not locks.waited_on(OID, 0)
    finally:
        if waiter is not None:
            waiter.close()
        locks.close()


def test_a_wait_moves_the_stamp_every_process_sees(tmp_path: Path) -> None:
    """A process that begins to wait for another's fill moves the shared stamp (what a
    lingering writer looks at); asking whether a chunk is waited on moves nothing."""
    path = tmp_path / "locks"
    locks = FillLocks(path)
    waiter = None
    try:
        before = locks.stamp()
        assert locks.try_acquire(OID, 0) and not locks.waited_on(OID, 0)
        assert locks.stamp() == before
        waiter = _Waiter(path, OID, 0)
        assert locks.stamp() != before
    finally:
        if waiter is not None:
            waiter.close()
        locks.close()


async def test_a_fill_another_worker_waits_for_commits_without_lingering(
    core: Core,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read's fill commits lazily (index.LINGER, for company in its transaction), but while
    it holds the chunk's lock another worker's read of that chunk waits behind it: then it
    commits at once. The only process that fills the cache (``workers: 1``) takes no locks and
    has nobody to ask."""
    monkeypatch.setattr(index_module, "LINGER", 60.0)  # a wait that outlasts the test
    sole = core.reads.fills.sole
    data = bytes(range(200))
    # "later": the other worker begins to wait once the commit is queued, lingering
    for key, waited in (("alone", ""), ("waited", "before"), ("waited later", "later")):
        core.put_file(key, data)
        oid = oid_of(core.mount, key)
        waiter = _Waiter(core.cache.root / "locks", oid, 0) if waited == "before" else None
        try:
            _, body = await _read(core, key)
            assert body == data
            if waited == "later":
                await asyncio.sleep(0.1)
                assert core.record(key) is None
                waiter = _Waiter(core.cache.root / "locks", oid, 0)
            await asyncio.sleep(0.3)
            committed = core.record(key) is not None
        finally:
            if waiter is not None:
                waiter.close()
        assert committed == (bool(waited) and not sole), (key, sole)
    async with asyncio.timeout(10):
        await core.reads.fills.wait_idle()


HOLD = """
import sys
from pathlib import Path
from proxy.cache.locks import FillLocks
locks = FillLocks(Path(sys.argv[1]))
assert locks.try_acquire(bytes.fromhex(sys.argv[2]), int(sys.argv[3]))
print("holding", flush=True)
sys.stdin.readline()
"""


class _Holder(_Waiter):
    """Another process that holds the fill lock of ``chunk`` of ``oid`` until closed."""

    def __init__(self, path: Path, oid: bytes, chunk: int) -> None:
        super().__init__(path, oid, chunk, script=HOLD, says="holding\n")


def _fill_waits() -> tuple[float, float]:
    """(count, sum) of slipstream_fill_wait_seconds so far."""
    get = REGISTRY.get_sample_value
    return (
        get("slipstream_fill_wait_seconds_count") or 0.0,
        get("slipstream_fill_wait_seconds_sum") or 0.0,
    )


async def test_a_read_that_waits_for_another_workers_fill_is_timed(
    core: Core,  # noqa: F811
) -> None:
    """slipstream_fill_wait_seconds: a read whose chunk another process holds the fill lock
    of waits until that lock goes, and the wait is observed once, whole. The only process
    that fills the cache takes no lock: it neither waits nor counts a wait."""
    data = bytes(range(200))
    core.put_file("held", data)
    holder = _Holder(core.cache.root / "locks", oid_of(core.mount, "held"), 0)
    try:
        before = _fill_waits()
        read = asyncio.create_task(_read(core, "held"))
        await asyncio.sleep(0.3)
        sole = core.reads.fills.sole
        assert read.done() == sole
        if not sole:
            assert _fill_waits() == before  # observed when the wait ends, not before
    finally:
        holder.close()  # its lock goes with it
    async with asyncio.timeout(10):
        _, body = await read
    assert body == data
    count, total = _fill_waits()
    if core.reads.fills.sole:
        assert (count, total) == before
    else:
        assert count == before[0] + 1
        assert total - before[1] >= 0.3
