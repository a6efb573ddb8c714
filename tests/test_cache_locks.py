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
