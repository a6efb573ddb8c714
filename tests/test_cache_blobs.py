"""Chunk files in-process (proxy/cache/blobs.py): written to a temp file, fsynced, renamed; a
chunk is visible under its name only once whole, and a failed write leaves nothing behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cache.blobs import BlobStore

OID = bytes(range(16))
GEN = "0123456789ab"


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path)
    store.prepare()
    return store


def leftovers(store: BlobStore) -> list[Path]:
    return [p for p in store.tmp_root.rglob("*") if p.is_file()]


def test_write_publishes_the_whole_chunk(blobs: BlobStore) -> None:
    data = os.urandom(100_000)
    path = blobs.write(OID, GEN, 3, data)
    assert path == blobs.path(OID, GEN, 3)
    assert path.read_bytes() == data
    assert path.relative_to(blobs.root).parts[:2] == (OID.hex()[:2], OID.hex()[2:4])
    assert leftovers(blobs) == []


def test_chunk_is_invisible_until_renamed(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At fsync time the bytes are all in the temp file and nothing is under the final name;
    the rename comes after the fsync."""
    data = b"a" * 70_000
    final = blobs.path(OID, GEN, 0)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        assert not final.exists(), "the chunk was visible before its bytes were durable"
        assert os.fstat(fd).st_size == len(data)
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    blobs.write(OID, GEN, 0, data)
    assert events == ["fsync", "rename"]
    assert final.read_bytes() == data


def test_short_writes_are_continued(blobs: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, buf: real_write(fd, bytes(buf[:1000])))
    data = os.urandom(10_500)
    assert blobs.write(OID, GEN, 1, memoryview(data)).read_bytes() == data


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_nothing(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    def fail(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError) as exc:
        blobs.write(OID, GEN, 2, b"x" * 5000)
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not blobs.path(OID, GEN, 2).exists()
    assert leftovers(blobs) == [], "a temp file outlived the failed write"


def test_sweep_keeps_live_processes_temp_dirs(blobs: BlobStore) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_dir = blobs.tmp_root / dead.stdout.strip()
    live_dir = blobs.tmp_root / str(os.getppid())  # our parent is alive
    odd_dir = blobs.tmp_root / "not-a-pid"
    for d in (dead_dir, live_dir, odd_dir):
        d.mkdir()
        (d / "partial").write_bytes(b"x")
    (blobs.tmp / "mine").write_bytes(b"x")
    assert blobs.sweep_tmp() == 2
    assert not dead_dir.exists() and not odd_dir.exists()
    assert live_dir.exists() and (blobs.tmp / "mine").exists()


def test_scan_names_every_chunk(blobs: BlobStore) -> None:
    blobs.write(OID, GEN, 0, b"a")
    blobs.write(OID, GEN, 7, b"b")
    stray = blobs.root / "ab" / "cd" / "garbage"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"?")
    found = sorted((oid, gen, i) for oid, gen, i, _ in blobs.scan())
    assert found == [(b"", "", -1), (OID, GEN, 0), (OID, GEN, 7)]
