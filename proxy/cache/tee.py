"""Copies an upload's bytes into the cache while they stream to the store.

Nothing is published until the store has confirmed the write: ``publish`` then renames the
chunk files into place and indexes them in one transaction; ``discard`` throws them away.
Small objects are kept in memory (at most ``inline_max``) and go inside LMDB.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from proxy import log, metrics
from proxy.cache.record import Record
from proxy.cache.store import CacheStore


class CacheTee:
    def __init__(self, cache: CacheStore, size: int) -> None:
        self.cache = cache
        self.size = size
        self.cs = cache.cfg.chunk_size
        self.inline = size <= cache.cfg.inline_max
        self._buf = bytearray()
        self._files: list[tuple[int, Path, int]] = []  # (chunk index, temp path, length)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._seen = 0
        self.failed = False

    async def wrap(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass ``body`` through unchanged, keeping a copy; cache trouble never fails the write."""
        async for piece in body:
            if not self.failed:
                try:
                    await self._keep(piece)
                except OSError as exc:
                    self.failed = True
                    metrics.CACHE_WRITE_ERRORS.labels("disk_error").inc()
                    log.cache.warning("write-through copy dropped: %s", exc.strerror)
            yield piece

    async def _keep(self, piece: bytes) -> None:
        self._seen += len(piece)
        if len(piece) > 65536:
            await asyncio.to_thread(self._md5.update, piece)
        else:
            self._md5.update(piece)
        self._buf += piece
        if not self.inline:
            while len(self._buf) >= self.cs:
                await self._spill(bytes(self._buf[: self.cs]))
                del self._buf[: self.cs]

    async def _spill(self, data: bytes) -> None:
        index = len(self._files)
        path = self.cache.blobs.tmp / f"tee-{id(self)}-{index}"
        await asyncio.to_thread(_write_file, path, data)
        self._files.append((index, path, len(data)))

    async def publish(self, oid: bytes, rec: Record, seen: int) -> bool:
        """The store confirmed ``rec`` (its ETag, metadata and headers): put the copy in the
        cache, replacing whatever record it had. ``seen``: the write mark noted before the
        write began (CacheStore.write_mark). True if cached."""
        if self.failed or self._seen != self.size:
            await self.discard()
            return False
        if rec.md5 and self._md5.hexdigest() != rec.etag.strip('"').lower():
            metrics.INTEGRITY_FAILURES.inc()
            log.cache.warning("the store's ETag does not match the uploaded bytes; not cached")
            await self.discard()
            return False
        if self.inline:
            return await self.cache.commit_inline(oid, rec, bytes(self._buf), seen=seen, write=True)
        if self._buf:
            await self._spill(bytes(self._buf))
            self._buf = bytearray()
        ok = await self.cache.commit_files(oid, rec, self._files, seen=seen)
        self._files = []
        return ok

    async def discard(self) -> None:
        files, self._files, self._buf = self._files, [], bytearray()
        for _, path, _ in files:
            await asyncio.to_thread(_unlink, path)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
