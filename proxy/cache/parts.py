"""Multipart write-through: each part's bytes are copied to a shared staging directory while
they stream to the store; once the store has completed the upload, the parts are cut into
chunk files, which CacheStore.publish_upload indexes, so a multipart object (Spark, aws s3 cp)
is read hot afterwards too.

Parts of one upload may reach different worker processes, so staging lives under the cache
root (``uploads/<hash>/part-NNNNN``), not in a per-process temp directory. A part is published
by rename only after the store accepted it; the last upload of a part number wins, as in S3.
Every function that touches files runs them off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from proxy import log, metrics

STALE_UPLOAD = 7 * 86400.0


class PartStaging:
    """``root``: the staging directory (the cache's ``uploads/``), shared by every worker."""

    def __init__(self, root: Path, chunk_size: int) -> None:
        self.root = root
        self.chunk_size = chunk_size
        self.on_kept: Callable[[], None] | None = None  # a part copy was added (staging.py)

    def _dir(self, oid: bytes, upload_id: str) -> Path:
        h = hashlib.blake2b(oid + upload_id.encode(), digest_size=16).hexdigest()
        return self.root / h

    async def tee(
        self, oid: bytes, upload_id: str, number: int, body: AsyncIterator[bytes]
    ) -> tuple[AsyncIterator[bytes], Path]:
        """``body`` passed through unchanged while copied to a temp file; returns the stream
        and the temp path to ``keep`` once the store accepted the part (or ``drop``)."""
        d = self._dir(oid, upload_id)
        tmp = d / f"part-{number:05d}.{os.getpid()}.{id(body):x}.tmp"
        await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
        f = await asyncio.to_thread(open, tmp, "wb")

        async def copy() -> AsyncIterator[bytes]:
            ok = True
            try:
                async for piece in body:
                    if ok:
                        try:
                            await asyncio.to_thread(f.write, piece)
                        except OSError as exc:
                            ok = False
                            metrics.CACHE_WRITE_ERRORS.labels("disk_error").inc()
                            log.cache.warning("multipart copy dropped: %s", exc.strerror)
                    yield piece
            finally:
                await asyncio.to_thread(f.close)
                if not ok:
                    await asyncio.to_thread(_unlink, tmp)

        return copy(), tmp

    async def keep(self, tmp: Path, number: int) -> None:
        if await asyncio.to_thread(tmp.exists):
            await asyncio.to_thread(os.replace, tmp, tmp.parent / f"part-{number:05d}")
            if self.on_kept is not None:
                self.on_kept()

    async def drop(self, tmp: Path) -> None:
        await asyncio.to_thread(_unlink, tmp)

    async def discard(self, oid: bytes, upload_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._dir(oid, upload_id), True)

    async def rechunk(
        self, oid: bytes, upload_id: str, numbers: list[int], size: int
    ) -> list[tuple[int, Path, int]] | None:
        """The completed object's staged parts cut into fsynced chunk files, as (index, path,
        length), for CacheStore.commit_files; None when they cannot be (a part missing, sizes
        that disagree with the store's ``size``, a disk error)."""
        try:
            return await asyncio.to_thread(self._rechunk, self._dir(oid, upload_id), numbers, size)
        except OSError as exc:
            log.cache.warning("multipart write-through skipped: %s", exc)
            return None

    def _rechunk(
        self, d: Path, numbers: list[int], size: int
    ) -> list[tuple[int, Path, int]] | None:
        """Blocking. None when a part is missing or the sizes disagree with the store."""
        parts = [d / f"part-{n:05d}" for n in numbers]
        if not all(p.is_file() for p in parts) or sum(p.stat().st_size for p in parts) != size:
            return None
        cs = self.chunk_size
        out: list[tuple[int, Path, int]] = []
        buf = bytearray()
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(cs - len(buf)):
                    buf += block
                    if len(buf) == cs:
                        out.append(self._write_chunk(d, len(out), buf))
                        buf = bytearray()
        if buf or not out:
            out.append(self._write_chunk(d, len(out), buf))
        return out

    def _write_chunk(self, d: Path, index: int, data: bytearray) -> tuple[int, Path, int]:
        path = d / f"chunk-{index}"
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return index, path, len(data)

    def sweep(self) -> int:
        """Blocking; start-up: drop staging of uploads untouched for a week."""
        removed = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        for entry in os.scandir(self.root):
            if now - entry.stat().st_mtime > STALE_UPLOAD:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed


@dataclass(frozen=True, slots=True)
class StagedDir:
    path: str
    touched: float  # the newest mtime of the directory and its files
    size: int


def staged_dirs(root: Path) -> list[StagedDir]:
    """Blocking. One entry per upload directory under ``root`` (none if it is missing)."""
    out: list[StagedDir] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            touched, size = entry.stat(follow_symlinks=False).st_mtime, 0
            for f in os.scandir(entry.path):
                st = f.stat(follow_symlinks=False)
                touched, size = max(touched, st.st_mtime), size + st.st_size
        except FileNotFoundError:  # completed or aborted meanwhile
            continue
        out.append(StagedDir(entry.path, touched, size))
    return out


def sweep_staging(
    dirs: list[StagedDir], now: float, ttl: float, max_bytes: int | None
) -> tuple[int, int]:
    """Blocking. Removes the upload directories untouched for ``ttl`` seconds, then, while
    the rest hold more than ``max_bytes`` (None: no bound), the least recently touched.
    Returns (directories removed, bytes left)."""
    removed = 0
    kept = []
    for d in dirs:
        if now - d.touched > ttl:
            shutil.rmtree(d.path, ignore_errors=True)
            removed += 1
        else:
            kept.append(d)
    left = sum(d.size for d in kept)
    if max_bytes is not None:
        for d in sorted(kept, key=lambda d: d.touched):
            if left <= max_bytes:
                break
            shutil.rmtree(d.path, ignore_errors=True)
            removed += 1
            left -= d.size
    return removed, left


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
