"""What the cache knows about an object: lookup, freshness, revalidation against the store.

A record is fresh for the mount's ``metadata_ttl`` after the store last confirmed it; then one
HEAD per object revalidates it, shared by every reader that finds it due. A store that is down
gets ``stale_if_error`` seconds of grace before readers see the error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from proxy import errors, log, metrics
from proxy.cache.record import Record, object_id
from proxy.cache.store import CacheStore, record_for
from proxy.config import CacheConfig
from proxy.memo import remember
from proxy.model import ObjectMeta
from proxy.routing import Mount

META_CACHE_MAX = 50_000


def oid_of(mount: Mount, key: str) -> bytes:
    """The cache's name for ``key`` (a remote key) in ``mount``'s store and bucket."""
    return object_id(mount.backend.name, mount.bucket, key)


def record_of(mount: Mount, key: str, meta: ObjectMeta) -> Record:
    """A new index entry for what the store just said about ``key`` (in the mount's cache
    group, if it names one)."""
    rec = record_for(meta, mount.backend.name, mount.bucket, key)
    rec.quota = mount.group
    return rec


def fresh(rec: Record, mount: Mount, now: float) -> bool:
    return mount.metadata_ttl is None or now - rec.validated < mount.metadata_ttl


class Metadata:
    def __init__(self, cache: CacheStore, cfg: CacheConfig) -> None:
        self.cache = cache
        self.cfg = cfg
        self._revalidations: dict[bytes, asyncio.Task[Record | None]] = {}
        self._metas: dict[int, tuple[Record, ObjectMeta]] = {}
        self._background: set[asyncio.Task[object]] = set()

    def meta_of(self, rec: Record) -> ObjectMeta:
        """rec.to_meta(), memoised for the shared read-only records of the index's cache, so
        repeated hits reuse one ObjectMeta (and the handler's headers built from it)."""
        entry = self._metas.get(id(rec))
        if entry is not None and entry[0] is rec:
            return entry[1]
        return remember(self._metas, id(rec), (rec, rec.to_meta()), META_CACHE_MAX)[1]

    async def current(
        self, mount: Mount, key: str, oid: bytes
    ) -> tuple[Record | None, bytes | None]:
        """The cached record if it is fresh (revalidating it if due), else None."""
        rec, inline = self.cache.lookup(oid)
        if rec is None:
            return None, None
        now = time.time()
        if fresh(rec, mount, now):
            return rec, inline
        task = self._revalidations.get(oid)
        if task is None:
            task = asyncio.create_task(self._revalidate(mount, key, oid, rec))
            self._revalidations[oid] = task
            task.add_done_callback(lambda _: self._forget_task(oid, task))
        new = await asyncio.shield(task)
        if new is None or new.etag != rec.etag or new.size != rec.size:
            return None, None  # changed in the store (the old bytes are gone), or written
        return new, inline

    async def _revalidate(self, mount: Mount, key: str, oid: bytes, rec: Record) -> Record | None:
        """The record as the store confirmed it; None if a write committed meanwhile (the
        store's answer may be older than it, so nothing is recorded)."""
        seen = self.cache.write_mark()
        try:
            meta = await mount.backend.head(mount.bucket, key)
        except errors.NoSuchKey:
            await self.cache.drop(oid, seen=seen)
            raise
        except (errors.ServiceUnavailable, errors.SlowDown):
            ttl = mount.metadata_ttl or 0.0
            if time.time() - rec.validated < ttl + self.cfg.stale_if_error:
                metrics.CACHE_STALE_SERVED.inc()
                log.cache.warning(
                    "store unavailable; serving a stale entry for up to %ss",
                    self.cfg.stale_if_error,
                )
                return rec
            raise
        return await self.cache.put_meta(oid, record_of(mount, key, meta), seen=seen)

    async def head(self, mount: Mount, key: str) -> ObjectMeta:
        if not mount.cacheable:
            return await mount.backend.head(mount.bucket, key)
        oid = oid_of(mount, key)
        rec, _ = await self.current(mount, key, oid)
        if rec is not None:
            return self.meta_of(rec)
        seen = self.cache.write_mark()
        meta = await mount.backend.head(mount.bucket, key)
        self._spawn(self.cache.put_meta(oid, record_of(mount, key, meta), seen=seen))
        return meta

    def forget(self, oid: bytes) -> None:
        """A write changed the object: a revalidation under way no longer speaks for it."""
        self._revalidations.pop(oid, None)

    def _forget_task(self, oid: bytes, task: asyncio.Task[Record | None]) -> None:
        if self._revalidations.get(oid) is task:  # not a newer one, begun after a write
            del self._revalidations[oid]

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def wait_idle(self) -> None:
        """Wait until the background index updates started so far are done."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        pending = list(self._background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _log_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.cache.warning("background cache update failed: %s", task.exception())
