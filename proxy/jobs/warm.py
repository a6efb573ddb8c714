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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from proxy import errors, log, metrics
from proxy.cache import pins
from proxy.core.body import FileSlice
from proxy.core.metadata import oid_of
from proxy.core.reads import Reads
from proxy.jobs.gate import JobGate, jobs_gate
from proxy.jobs.spec import WarmSpec
from proxy.jobs.throttle import TokenBucket
from proxy.model import ByteRange, ListEntry, ObjectMeta
from proxy.routing import Mount, Router

State = Literal["queued", "running", "done", "failed", "cancelled"]
STATES: tuple[State, ...] = ("queued", "running", "done", "failed", "cancelled")
LIST_PAGE = 1000
MAX_LISTED_FAILURES = 1000
PIN_BATCH = 256
PARALLEL_CHUNKS = 4  # chunks of one object fetched ahead of the job's read of it


class Owners(Protocol):
    """In a cluster, where a job's objects go: their owners (proxy/cluster/fanout.py)."""

    async def fill(self, mount: Mount, key: str, etag: str | None, pin: bool) -> tuple[str, int]:
        """Fill ``key`` (a remote key) on its owners; its source ("cache" when every owner had
        it fresh, with ``etag`` if given) and size."""

    async def pin_elsewhere(self, bucket: str, prefix: str) -> None:
        """Add the pin rule on the other members."""


@dataclass(frozen=True)
class JobCore:
    """What a job needs from the core: bucket resolution, the read path, and the gate every
    job's fetches pass (client reads first; one per core, made here unless given)."""

    router: Router
    reads: Reads
    gate: JobGate | None = None
    owners: Owners | None = None  # in a cluster: objects are filled on their owners
    # a supervisor of workers: an object drained in a worker (proxy/warmfeed.py), its source
    # and size; a job with a bandwidth cap drains here, where the cap paces each part
    handoff: Callable[[Mount, str], Awaitable[tuple[str, int]]] | None = None

    def __post_init__(self) -> None:
        if self.gate is None:
            object.__setattr__(self, "gate", jobs_gate(self.reads.fills))


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
    verified: int = 0  # objects the verify pass listed
    added: int = 0  # of those, fetched because they appeared or changed during the job


class _Ahead:
    """Parallel ranged GETs for a large object: while the job reads chunk ``c``, the fills of
    chunks ``c+1 .. c+PARALLEL_CHUNKS`` run (each one ranged GET), so one object uses more
    than one connection's bandwidth. A chunk starts only if its fill memory is free now
    (``Fills.get_ahead``, as the read-ahead does); the read joins these fills when it gets
    there."""

    def __init__(self, reads: Reads, mount: Mount, key: str, meta: ObjectMeta) -> None:
        self._fills, self._mount, self._key, self._meta = reads.fills, mount, key, meta
        self._cs = reads.fills.cs
        self._oid = oid_of(mount, key)
        self._next = 1  # the first chunk not started here yet
        self._last = (meta.size - 1) // self._cs if meta.size else 0

    def start_after(self, offset: int) -> None:
        """The job has read up to byte ``offset``: keep the chunks after it started."""
        until = min(self._last, offset // self._cs + PARALLEL_CHUNKS)
        if self._next > until:
            return
        rec, _ = self._fills.cache.lookup(self._oid)
        while self._next <= until:
            i = self._next
            if rec is None or not rec.has_chunk(i):
                if self._fills.get_ahead(self._mount, self._key, self._oid, i, self._meta) is None:
                    return  # no fill memory free now: try again after the next part
            self._next += 1


async def drain(
    reads: Reads, mount: Mount, key: str, throttle: TokenBucket | None = None
) -> tuple[str, int]:
    """Read ``key`` through the core to the end, the bytes dropped (the fills cache them), the
    chunks after the one being read fetched ahead: its source ("cache" or "backend") and size."""
    read = await reads.read(mount, key, None, {}, client=False, ahead=True)
    if read.body is not None:
        return read.source, len(read.body)
    size, ahead = 0, _Ahead(reads, mount, key, read.meta)
    try:
        async for part in read.parts:
            n = part.length if isinstance(part, FileSlice) else len(part)
            size += n
            del part  # a slice keeps the whole chunk buffer alive
            if read.source != "cache":
                ahead.start_after(size - 1)
                if throttle is not None:
                    await throttle.take(n)
    finally:  # a failed or cancelled read lets go of its fills now
        close = getattr(read.parts, "aclose", None)
        if close is not None:
            await close()
    return read.source, size


async def drain_committed(reads: Reads, mount: Mount, key: str) -> tuple[str, int]:
    """``drain``, answered once the object's fills have committed (or given up): a worker's
    read for the supervisor's job (proxy/warmfeed.py), which may pin the object next."""
    got = await drain(reads, mount, key)
    await reads.fills.settled([oid_of(mount, key)])
    return got


async def drain_chunk(reads: Reads, mount: Mount, key: str, index: int) -> tuple[str, int, int]:
    """Read chunk ``index`` of ``key`` through the core (chunk 0: all of an object of one
    chunk), the bytes dropped (the fills cache them): its source, the bytes read and the
    object's size. A cluster node's fill of a chunk it owns (cluster/chunks.py)."""
    cs = reads.cs
    rng = ByteRange(index * cs, (index + 1) * cs - 1) if index else None
    read = await reads.read(mount, key, rng, {}, clip=True, client=False)
    if read.body is not None:
        return read.source, len(read.body), read.meta.size
    got = 0
    try:
        async for part in read.parts:
            got += part.length if isinstance(part, FileSlice) else len(part)
            del part  # a slice keeps the whole chunk buffer alive
    finally:  # a failed or cancelled read lets go of its fills now
        close = getattr(read.parts, "aclose", None)
        if close is not None:
            await close()
    return read.source, got, read.meta.size


class NoRoom(Exception):
    """The selection is larger than the cache's free room (and allow_partial is off)."""


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, NoRoom):
        return str(exc)
    if isinstance(exc, errors.S3Error):
        return f"{exc.code}: {exc.message}"
    return type(exc).__name__


Saver = Callable[["WarmJob"], Awaitable[None]]


class WarmJob:
    def __init__(
        self,
        job_id: str,
        spec: WarmSpec,
        core: JobCore,
        mount: Mount,
        *,
        saver: Saver | None = None,
        created: float | None = None,
    ) -> None:
        self.id = job_id
        self.spec = spec
        self._core = core
        self._mount = mount
        self.state: State = "queued"
        metrics.JOBS.labels("queued").inc()
        self.error: str | None = None
        self.progress = Progress()
        self.created = created or time.time()
        self.resumed = created is not None  # started again after a restart
        self._saver = saver
        self._shutdown = False  # cancelled by the proxy's shut-down: resumed at the next start
        self.started: float | None = None
        self.finished: float | None = None
        self._throttle = TokenBucket(spec.bandwidth)
        self._task: asyncio.Task[None] | None = None
        self._to_pin: list[bytes] = []  # a keys job with pin: cached, not pinned yet
        self._verifying = False  # the verify pass is running
        self._etags: dict[str, str] = {}  # in a cluster's verify pass: listed, not filled yet
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

    def cancel(self, *, shutdown: bool = False) -> bool:
        """Cancel a queued or running job; False when it had ended already. A shut-down's
        cancel is not saved: the job stays running on disk and resumes at the next start."""
        if self.state not in ("queued", "running") or self._task is None:
            return False
        self._shutdown = self._shutdown or shutdown
        self._task.cancel()
        return True

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _set(self, state: State) -> None:
        metrics.JOBS.labels(self.state).dec()
        metrics.JOBS.labels(state).inc()
        self.state = state

    @property
    def ended(self) -> bool:
        return self.state not in ("queued", "running")

    async def _save(self) -> None:
        if self._saver is None or self._shutdown:
            return
        try:
            await self._saver(self)
        except OSError as exc:
            log.jobs.warning("warm job %s: cannot save its state: %s", self.id, exc)

    async def _run(self) -> None:
        self._set("running")
        self.started = time.time()
        try:
            await self._save()
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
            await asyncio.shield(self._save())

    # -- the work -----------------------------------------------------------------------------
    async def _warm(self) -> None:
        if self.spec.pin and self.spec.keys is None:  # later fills under it are pinned too
            m = self._mount
            prefix = m.prefix + (self.spec.prefix or "")
            await self._core.reads.cache.pin(pins.Target(m.backend.name, m.bucket, prefix))
            if self._core.owners is not None:
                await self._core.owners.pin_elsewhere(m.name, self.spec.prefix or "")
        await self._pass(self._selection())
        await self._pin_done()
        self.progress.listing_done = True
        if self.spec.verify and self.spec.keys is None:
            before = self.progress.objects_done
            self._verifying = True
            await self._pass(self._changed())
            await self._pin_done()
            self.progress.added = self.progress.objects_done - before

    async def _pass(self, keys: AsyncIterator[str]) -> None:
        """Fetch ``keys`` with ``concurrency`` workers as they come; the failed ones once more
        at the end, one at a time."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=self.spec.concurrency * 4)
        retry: list[str] = []
        workers = [
            asyncio.create_task(self._worker(queue, retry)) for _ in range(self.spec.concurrency)
        ]
        try:
            async for key in keys:
                self.progress.total_known += 1
                await queue.put(key)
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
        async for entry in self._listed():
            self._note_size(entry.key, entry.size)
            yield entry.key

    async def _listed(self) -> AsyncIterator[ListEntry]:
        """The objects under the job's prefix in the store, page by page."""
        m = self._mount
        token: str | None = None
        while True:
            page = await m.backend.list_page(
                m.bucket, m.prefix + (self.spec.prefix or ""), "", LIST_PAGE, token, None
            )
            for entry in page.entries:
                if entry.key.startswith(m.prefix) and not entry.key.endswith("/"):
                    yield entry
            if not page.truncated or not page.next_token:
                return
            token = page.next_token

    async def _changed(self) -> AsyncIterator[str]:
        """The verify pass: list the prefix again; the keys that appeared, or changed their
        ETag (the cached copy is dropped), since the main pass's listing. Every listed object
        counts as ``verified``; those fetched, as ``added``."""
        cache = self._core.reads.cache
        async for entry in self._listed():
            self.progress.verified += 1
            if self._core.owners is not None:  # the owners compare their copies' ETags
                self._etags[entry.key] = entry.etag
                yield entry.key
                continue
            oid = oid_of(self._mount, entry.key)
            rec, _ = cache.lookup(oid)
            if rec is not None and rec.etag.strip('"') == entry.etag.strip('"'):
                continue
            if rec is None:
                self._note_size(entry.key, entry.size)
            else:  # rewritten in the store: the cached copy goes, the new one comes
                self.progress.total_known -= 1  # counted once already
                self._core.reads.invalidate(oid)
                await cache.drop(oid)
            yield entry.key

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
            elif self.spec.pin and self.spec.keys is not None and self._core.owners is None:
                self._to_pin.append(oid_of(self._mount, key))
                if len(self._to_pin) >= PIN_BATCH:
                    await self._pin_done()

    async def _pin_done(self) -> None:
        """A keys job with ``pin``: pin the objects it has cached so far (in batches)."""
        oids, self._to_pin = self._to_pin, []
        if oids:
            await self._core.reads.fills.settled(oids)  # a record to pin, not one on its way
            await self._core.reads.cache.pin_objects(oids)

    async def _fetch(self, key: str) -> BaseException | None:
        """Read ``key`` through the core to the end (after the gate: client reads first);
        the error when it failed."""
        assert self._core.gate is not None
        try:
            async with self._core.gate.turn():
                source, size = await self._read(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc
        p = self.progress
        if self._verifying and source == "cache" and self._core.owners is not None:
            p.total_known -= 1  # unchanged on its owners: not one of the verify pass's
            return None
        p.objects_done += 1
        p.bytes_done += size
        metrics.WARM_BYTES.inc(size)
        if source == "cache":
            p.cached += 1
            metrics.WARM_CACHED.inc()
        else:
            p.fetched += 1
            metrics.WARM_FETCHED.inc()
        return None

    async def _read(self, key: str) -> tuple[str, int]:
        """The object's bytes drained (the fills cache them): its source and size. In a
        cluster, the object is filled on its owners instead (proxy/cluster/fanout.py)."""
        owners = self._core.owners
        if owners is not None:
            etag = self._etags.pop(key, None)
            source, size = await owners.fill(self._mount, key, etag, self.spec.pin)
            if source != "cache":
                await self._throttle.take(size)
            return source, size
        if self._core.handoff is not None and not self.spec.bandwidth:
            return await self._core.handoff(self._mount, key)
        return await drain(self._core.reads, self._mount, key, self._throttle)

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
            "verified": p.verified,
            "added": p.added,
            "resumed": self.resumed,
            "failed": len(p.failures),
            "failures": [{"key": k, "error": e} for k, e in p.failures.items()],
            "elapsed_s": round(elapsed, 3),
            "bytes_per_s": round(p.bytes_done / elapsed) if elapsed > 0 else 0,
            "objects_per_s": round(p.objects_done / elapsed, 1) if elapsed > 0 else 0.0,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }
