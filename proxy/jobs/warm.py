"""The warm-up job runner: fetch every missing or stale object of a selection into the cache.

Objects go through the core's read path (``Reads.read``, parts drained), so a warm fetch
coalesces with client reads of the same object (in this process and, through the fill locks,
in the others) and a fresh cached object costs no store request. A lister feeds a bounded
queue that ``concurrency`` workers drain, so fetching starts with the listing's first page.
A key that fails is retried once after the rest and, failing again, listed in ``failures``.

Room: a prefix job adds up the listed sizes of the objects not cached yet; once they are more
than the cache had free when the job started, it stops (unless ``allow_partial``) instead of
evicting what it fetched itself. The job's fetches trail its listing, so it stops before its
own fetches have used more than that room: nothing else is evicted for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy import errors, log, metrics
from proxy.core.body import FileSlice
from proxy.core.metadata import oid_of
from proxy.core.reads import Reads
from proxy.jobs.spec import WarmSpec
from proxy.jobs.throttle import TokenBucket
from proxy.routing import Mount, Router

State = Literal["queued", "running", "done", "failed", "cancelled"]
STATES: tuple[State, ...] = ("queued", "running", "done", "failed", "cancelled")
LIST_PAGE = 1000
MAX_LISTED_FAILURES = 1000


@dataclass(frozen=True)
class JobCore:
    """What a job needs from the core: bucket resolution and the read path."""

    router: Router
    reads: Reads


@dataclass
class Progress:
    objects_done: int = 0
    bytes_done: int = 0
    fetched: int = 0  # objects that needed the store
    cached: int = 0  # objects already cached and fresh
    total_known: int = 0  # objects selected so far (final once listing_done)
    listing_done: bool = False
    failures: dict[str, str] = field(default_factory=dict)  # client key -> error
    needed_bytes: int = 0  # listed sizes of the objects not cached when listed (prefix jobs)


class NoRoom(Exception):
    """The selection is larger than the cache's free room (and allow_partial is off)."""


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, NoRoom):
        return str(exc)
    if isinstance(exc, errors.S3Error):
        return f"{exc.code}: {exc.message}"
    return type(exc).__name__


class WarmJob:
    def __init__(self, job_id: str, spec: WarmSpec, core: JobCore, mount: Mount) -> None:
        self.id = job_id
        self.spec = spec
        self._core = core
        self._mount = mount
        self.state: State = "queued"
        metrics.JOBS.labels("queued").inc()
        self.error: str | None = None
        self.progress = Progress()
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._throttle = TokenBucket(spec.bandwidth)
        self._task: asyncio.Task[None] | None = None
        cache = core.reads.cache
        self._max_size = cache.cfg.max_size
        self._room = max(0, self._max_size - cache.totals()[0])
        quota_room = cache.quota_room(mount.name)  # the bucket's cache.quotas entry, if any
        if quota_room is not None:
            self._room = min(self._room, quota_room)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=f"warm-{self.id}")
        return self._task

    def cancel(self) -> bool:
        """Cancel a queued or running job; False when it had ended already."""
        if self.state not in ("queued", "running") or self._task is None:
            return False
        self._task.cancel()
        return True

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _set(self, state: State) -> None:
        metrics.JOBS.labels(self.state).dec()
        metrics.JOBS.labels(state).inc()
        self.state = state

    async def _run(self) -> None:
        self._set("running")
        self.started = time.time()
        try:
            await self._warm()
        except asyncio.CancelledError:
            self._set("cancelled")
        except Exception as exc:  # the listing failed: the job cannot go on
            log.jobs.warning("warm job %s failed: %s", self.id, _error_text(exc))
            self.error = _error_text(exc)
            self._set("failed")
        else:
            if self.progress.failures:
                self.error = f"{len(self.progress.failures)} object(s) failed"
                self._set("failed")
            else:
                self._set("done")
        finally:
            self.finished = time.time()

    # -- the work -----------------------------------------------------------------------------
    async def _warm(self) -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=self.spec.concurrency * 4)
        retry: list[str] = []
        workers = [
            asyncio.create_task(self._worker(queue, retry)) for _ in range(self.spec.concurrency)
        ]
        try:
            async for key in self._selection():
                self.progress.total_known += 1
                await queue.put(key)
            self.progress.listing_done = True
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for key in retry:  # the second and last try, one at a time, after the rest
            exc = await self._fetch(key)
            if exc is not None:
                self._failed(key, exc)

    async def _selection(self) -> AsyncIterator[str]:
        """Remote keys of the selection, page by page."""
        m = self._mount
        if self.spec.keys is not None:
            for key in self.spec.keys:
                yield m.remote_key(key)
            return
        token: str | None = None
        while True:
            page = await m.backend.list_page(
                m.bucket, m.prefix + (self.spec.prefix or ""), "", LIST_PAGE, token, None
            )
            for entry in page.entries:
                if entry.key.startswith(m.prefix) and not entry.key.endswith("/"):
                    self._note_size(entry.key, entry.size)
                    yield entry.key
            if not page.truncated or not page.next_token:
                return
            token = page.next_token

    def _note_size(self, key: str, size: int) -> None:
        """Add a listed object to the bytes needed; NoRoom once they pass the room."""
        rec, _ = self._core.reads.cache.lookup(oid_of(self._mount, key))
        if rec is not None:
            return
        self.progress.needed_bytes += size
        if self.progress.needed_bytes > self._room and not self.spec.allow_partial:
            raise NoRoom(
                f"the selection needs more than {self.progress.needed_bytes} bytes and the"
                f" cache had {self._room} free (cache.max_size {self._max_size} or the"
                " bucket's cache.quotas entry); stopped"
                " before evicting anything: warm a smaller selection, or allow_partial"
            )

    async def _worker(self, queue: asyncio.Queue[str | None], retry: list[str]) -> None:
        while (key := await queue.get()) is not None:
            if await self._fetch(key) is not None:
                retry.append(key)

    async def _fetch(self, key: str) -> BaseException | None:
        """Read ``key`` through the core to the end; the error when it failed."""
        try:
            read = await self._core.reads.read(self._mount, key, None, {})
            size = 0
            if read.body is not None:
                size = len(read.body)
            else:
                try:
                    async for part in read.parts:
                        n = part.length if isinstance(part, FileSlice) else len(part)
                        size += n
                        del part  # a slice keeps the whole chunk buffer alive
                        if read.source != "cache":
                            await self._throttle.take(n)
                finally:  # a failed or cancelled read lets go of its fills now
                    close = getattr(read.parts, "aclose", None)
                    if close is not None:
                        await close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc
        p = self.progress
        p.objects_done += 1
        p.bytes_done += size
        metrics.WARM_BYTES.inc(size)
        if read.source == "cache":
            p.cached += 1
            metrics.WARM_CACHED.inc()
        else:
            p.fetched += 1
            metrics.WARM_FETCHED.inc()
        return None

    def _failed(self, key: str, exc: BaseException) -> None:
        metrics.WARM_FAILED.inc()
        client_key = key[len(self._mount.prefix) :]
        if len(self.progress.failures) < MAX_LISTED_FAILURES:
            self.progress.failures[client_key] = _error_text(exc)
        log.jobs.info("warm job %s: %r failed twice: %s", self.id, client_key, _error_text(exc))

    # -- reporting ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        p = self.progress
        end = self.finished or time.time()
        elapsed = end - self.started if self.started is not None else 0.0
        return {
            "id": self.id,
            "kind": "warm",
            "state": self.state,
            "error": self.error,
            **self.spec.describe(),
            "objects_done": p.objects_done,
            "bytes_done": p.bytes_done,
            "fetched": p.fetched,
            "cached": p.cached,
            "total_known": p.total_known,
            "needed_bytes": p.needed_bytes,
            "listing_done": p.listing_done,
            "failed": len(p.failures),
            "failures": [{"key": k, "error": e} for k, e in p.failures.items()],
            "elapsed_s": round(elapsed, 3),
            "bytes_per_s": round(p.bytes_done / elapsed) if elapsed > 0 else 0,
            "objects_per_s": round(p.objects_done / elapsed, 1) if elapsed > 0 else 0.0,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }
