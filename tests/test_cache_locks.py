"""Fill locks across processes (proxy/cache/locks.py): one filler per chunk among the workers,
and a lock dies with the process that held it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from proxy.cache.locks import FillLocks
from tests.proxyproc import REPO_ROOT

OID = b"\x01" * 16

TRY = """
import sys
from pathlib import Path
from proxy.cache.locks import FillLocks
locks = FillLocks(Path(sys.argv[1]))
print(locks.try_acquire(bytes.fromhex(sys.argv[2]), int(sys.argv[3])))
"""


def other_process_gets(path: Path, chunk: int) -> bool:
    """Whether another process can take the lock (it exits at once, dropping it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", TRY, str(path), OID.hex(), str(chunk)],
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
