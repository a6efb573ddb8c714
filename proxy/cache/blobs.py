"""Chunk files: named by the object's hash, never by its key; published by write-fsync-rename.

Every function here blocks; callers run them off the event loop.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.tmp_root = root / "tmp"
        self.tmp = self.tmp_root / str(os.getpid())

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, oid: bytes, gen: str, index: int) -> Path:
        h = oid.hex()
        return self.root / h[:2] / h[2:4] / f"{h}.{gen}.{index}"

    def write(self, oid: bytes, gen: str, index: int, data: memoryview | bytes) -> Path:
        """Publish one chunk atomically; a crash leaves at most a temp file, never a torn chunk."""
        final = self.path(oid, gen, index)
        tmp = self.tmp / f"{final.name}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        return final

    def unlink(self, paths: list[Path]) -> None:
        for p in paths:
            _unlink(p)

    def sweep_tmp(self) -> int:
        """Remove temp files left by processes that are gone; returns how many dirs went."""
        removed = 0
        if not self.tmp_root.is_dir():
            return 0
        for entry in os.scandir(self.tmp_root):
            if entry.name.isdigit() and int(entry.name) != os.getpid() and _alive(int(entry.name)):
                continue
            if entry.path == str(self.tmp):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        return removed

    def scan(self) -> Iterator[tuple[bytes, str, int, str]]:
        """Every chunk file as (object id, generation, index, path); odd names as (b'', ...)."""
        if not self.root.is_dir():
            return
        for d1 in os.scandir(self.root):
            if not d1.is_dir():
                continue
            for d2 in os.scandir(d1.path):
                if not d2.is_dir():
                    continue
                for f in os.scandir(d2.path):
                    parts = f.name.split(".")
                    try:
                        yield bytes.fromhex(parts[0]), parts[1], int(parts[2]), f.path
                    except (ValueError, IndexError):
                        yield b"", "", -1, f.path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
