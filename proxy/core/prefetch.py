"""Training-aware prefetch: fetch the keys a client will read, in its order, just ahead of it.

A client posts an epoch's order (``Prefetcher.start``); a ``PrefetchJob`` fills those keys
through the core's fills (so a client read of a key being fetched joins that fill) while never
running more than ``window`` keys ahead of the last key of the list the client has read. Reads
report themselves through ``Prefetcher.note_read`` (the read path's hook); only the keys fetched
ahead and not yet read are looked up there, so a read costs one dict lookup per job of its
bucket. The order is held as one UTF-8 blob and an offset array (about the keys' own size),
in parts as they were posted (proxy/core/prefetch_order.py); a streamed order (``open``, then
``PrefetchJob.add`` part by part, then ``received``) is fetched while it still arrives.

Listing-driven prefetch (``prefetch: listing`` buckets) is the same job fed by the listings:
``Prefetcher.listed`` queues a page's objects not cached yet on the job of its bucket and
prefix, within the LISTING_* bounds below.

With ``workers > 1`` the prefetcher runs in the supervisor: the workers report their reads to
it through proxy/readfeed.py, and it hands each fetch to a worker (its ``Warm``,
proxy/warmfeed.py), whose reads of that key then join the fill in-process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy import errors, log, metrics
from proxy.cache.record import Record
from proxy.core.fills import Fill
from proxy.core.metadata import fresh, oid_of
from proxy.core.prefetch_order import MAX_KEY_BYTES, KeyList, Part, PrefetchError, encode_keys
from proxy.core.reads import Reads
from proxy.routing import Mount, Router

MAX_WINDOW = 10_000
# 2048 keys ahead: the lead must cover the keys in flight (``concurrency``), the store's round
# trip and, with several workers, the index commit of the worker that fetched a key (a read in
# another worker waits on that commit): ~100 ms at p90 under load, a few hundred keys at a few
# thousand samples/s. With 512 a job ran into its window in the training benchmark; with 2048
# epoch 1 stalled 12-14% (512: 16-18%). Bytes ahead are bounded too (AHEAD_SHARE).
DEFAULT_WINDOW = 2048
# Whatever its window, a job stops fetching while the bytes it fetched ahead and not yet read
# pass this share of cache.max_size (2048 of a dataset's large shards would not fit the cache).
AHEAD_SHARE = 8
MAX_JOB_KEYS = 10_000_000  # in one order (each held as its UTF-8 and an 8-byte offset)
MAX_JOB_BYTES = 1024**3  # of the keys' UTF-8 in one order
MAX_JOBS = 64  # jobs kept (running or finished); the oldest finished one goes first
# Keys fetched at once by one job (never more than its window). A job leads its readers only
# with more keys in flight than they have reads: with as many, the two move in step and the
# reads wait on the job's fetches (in another worker: on its cross-process lock and commit):
# about the reads' rate times the store's latency (3,200/s x 25 ms = 80; x 55 ms = 176).
DEFAULT_CONCURRENCY = 256
# Keys of room the reads make before a job waiting on its window looks again (a wake-up per
# read costs ~10% of a hit): a job runs up to window - 1 ahead, never less than 15/16 of it.
WAKE_EVERY = 16
CHECKS_PER_TURN = 64  # cached keys a job passes over before it lets the loop run
MAX_CONCURRENCY = 256
# Listing-driven prefetch (``prefetch: listing``): one job per bucket and listed prefix, the
# most recently listed kept (the oldest cancelled to make room); each fetches up to a page of
# a listing (1000) past the reads, and holds at most LISTING_QUEUE keys not fetched yet: a
# page that would go over is dropped (so a client listing 10M keys queues 100k at most).
LISTING_JOBS = 16
LISTING_WINDOW = 1000
LISTING_QUEUE = 100_000
# Fills a key: its size, or None when it was cached and fresh already (``warm`` below, or a
# worker's, see proxy/warmfeed.py).
Warm = Callable[[Mount, str], Awaitable[int | None]]


@dataclass
class Progress:
    keys: int = 0
    fetched: int = 0  # filled from the store by this job
    cached: int = 0  # already cached and fresh: nothing to fetch
    failed: int = 0
    used: int = 0  # read by a client after this job fetched it, was fetching it or found it cached
    wasted: int = 0  # passed over by the reads without being read


# per key: plain numbers until a scrape (metrics.Tally), not a locked counter each
_USED = metrics.Tally(metrics.PREFETCH_OBJECTS.labels("used"))
_WASTED = metrics.Tally(metrics.PREFETCH_OBJECTS.labels("wasted"))
_FETCHED = metrics.Tally(metrics.PREFETCH_OBJECTS.labels("fetched"))


class PrefetchJob:
    def __init__(
        self,
        job_id: str,
        mount: Mount,
        window: int,
        window_bytes: int | None,
        reads: Reads,
        warm: Warm,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.id = job_id
        self.mount = mount
        self.window = window
        self.concurrency = concurrency
        self.window_bytes = window_bytes  # bytes fetched ahead and not yet read, at most
        self.keys = KeyList()
        self.progress = Progress()
        self.state = "running"
        self.receiving = False  # the order is still arriving (a stream): wait for more keys
        self.origin = "order"  # or "listing": queued by the listings of a bucket's prefix
        self.read_pos = -1  # the furthest position in the list a client has read
        self.next = 0  # the next position to fetch
        self._reads, self._warm = reads, warm
        self._ahead: dict[str, int] = {}  # remote key -> position: fetched, not yet read
        self._sizes: dict[str, int] = {}  # of the keys in _ahead this job fetched
        self._held = 0  # their sum
        self._held_max = max(1, reads.cache.cfg.max_size // AHEAD_SHARE)  # of _held (_room)
        self._typical: int | None = None  # the size of the last object fetched
        self._upcoming: dict[str, int] = {}  # remote key -> position, for [next, horizon)
        self._horizon = 0
        self._moved = asyncio.Event()
        self._wake_at = -1  # a read at this position or past it wakes the job
        self._step = max(1, min(WAKE_EVERY, window // 16))  # of room, at a wake-up
        # Concurrent readers finish out of order: a key is wasted once the reads are this far
        # past it (not at the first read past it, which a slower reader of it may yet follow).
        self._slack = window // 4
        self._task: asyncio.Task[None] | None = None
        self.created = time.time()

    # -- the reads' side ----------------------------------------------------------------------
    def note_read(self, key: str) -> None:
        pos = self._drop(key)
        if pos is None:
            self._overtaken(key)
            return
        self.progress.used += 1
        _USED.inc()
        if pos > self.read_pos:
            self.read_pos = pos
            passed = _before(self._ahead, pos - self._slack)
            for k in passed:
                self._drop(k)
            if passed:
                self.progress.wasted += len(passed)
                _WASTED.inc(len(passed))
        if pos >= self._wake_at or self.window_bytes is not None:
            self._moved.set()  # room for a few keys (not one: a wake-up per read costs)

    def holds(self, key: str) -> bool:
        """``key`` (a remote key) is fetched and not read yet, being fetched, or next in line
        (within a window of the fetching): a page listed again does not queue it twice."""
        return key in self._ahead or key in self._upcoming

    def _drop(self, key: str) -> int | None:
        pos = self._ahead.pop(key, None)
        self._held -= self._sizes.pop(key, 0)
        return pos

    def _overtaken(self, key: str) -> None:
        """The reads got ahead of the fetching (to a key not fetched yet): skip to them."""
        pos = self._upcoming.get(key)
        if pos is None:
            return
        for k in _before(self._upcoming, pos + 1):
            del self._upcoming[k]
        self.read_pos = max(self.read_pos, pos)
        self.next = max(self.next, pos + 1)
        self._moved.set()

    def _take(self) -> str:
        """The next key to fetch (as a remote key); keeps ``_upcoming`` a window wide."""
        pos, self.next = self.next, self.next + 1
        key = self.mount.remote_key(self.keys[pos])
        if self._upcoming.get(key) == pos:
            del self._upcoming[key]
        self._horizon = max(self._horizon, self.next)
        end = min(len(self.keys), self.next + self.window)
        upcoming, ahead = self._upcoming, self._ahead
        while self._horizon < end:
            later = self.mount.remote_key(self.keys[self._horizon])
            upcoming.pop(later, None)  # a key listed twice: its later place, at the end
            upcoming[later] = self._horizon
            self._horizon += 1
        ahead.pop(key, None)  # likewise: both dicts stay in the order of their positions
        ahead[key] = pos
        return key

    # -- the fetching side --------------------------------------------------------------------
    def add(self, part: Part) -> None:
        if len(self.keys) + len(part[1]) > MAX_JOB_KEYS:
            raise PrefetchError(f"keys: an order holds at most {MAX_JOB_KEYS} keys")
        if self.keys.size + len(part[0]) > MAX_JOB_BYTES:
            raise PrefetchError(f"keys: an order holds at most {MAX_JOB_BYTES} bytes of keys")
        self.keys.add(part)
        self.progress.keys = len(self.keys)
        self._moved.set()

    def received(self) -> None:
        """The stream of keys has ended: the job is done once it has fetched them."""
        self.receiving = False
        self._moved.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self.state = "running"
            self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        """Cancel without waiting (the task cancels its fetches as it ends)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.state == "running":
            self.state = "cancelled"

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.state == "running":
            self.state = "cancelled"

    def _room(self, inflight: int) -> bool:
        if self.next >= len(self.keys) or self.next > self.read_pos + self.window:
            return False
        if self._held > self._held_max:
            return False
        if self.window_bytes is None or (inflight == 0 and self._held == 0):
            return True  # one object at a time always moves on, whatever its size
        if self._typical is None:
            return inflight == 0
        return self._held + (inflight + 1) * self._typical <= self.window_bytes

    async def _run(self) -> None:
        running: set[asyncio.Task[None]] = set()

        def landed(task: asyncio.Task[None]) -> None:
            running.discard(task)
            self._moved.set()

        try:
            while self.next < len(self.keys) or running or self.receiving:
                checked = 0
                while self._room(len(running)) and len(running) < min(
                    self.concurrency, self.window
                ):
                    key = self._take()
                    if cached(self._reads, self.mount, key):  # no task for what is there
                        self.progress.cached += 1
                        checked += 1
                        if checked == CHECKS_PER_TURN:
                            break
                        continue
                    task = asyncio.create_task(self._fetch(key))
                    running.add(task)
                    task.add_done_callback(landed)
                if checked == CHECKS_PER_TURN:  # more may be due: on after the loop's turn
                    await asyncio.sleep(0)
                    continue
                self._wake_at = self.next - self.window + self._step - 1
                self._moved.clear()
                await self._moved.wait()  # a fetch landed, the reads moved on, or keys came
            self.state = "done"
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    async def _fetch(self, key: str) -> None:
        try:
            size = await self._warm(self.mount, key)
        except errors.S3Error as exc:
            self.progress.failed += 1
            metrics.PREFETCH_OBJECTS.labels("failed").inc()
            log.cache.info("prefetch of a key failed: %s", exc.code)
            return
        except Exception:
            self.progress.failed += 1
            metrics.PREFETCH_OBJECTS.labels("failed").inc()
            log.cache.exception("prefetch of a key failed")
            return
        if size is None:
            self.progress.cached += 1
            return
        self.progress.fetched += 1
        _FETCHED.inc()
        self._typical = size
        if key in self._ahead:  # not read yet: it counts against window_bytes until it is
            self._sizes[key] = size
            self._held += size

    def busy(self) -> bool:
        """Still fetching, or waiting for reads of what it fetched."""
        return self.state == "running" or (bool(self._ahead) and self.read_pos < len(self.keys) - 1)

    def describe(self) -> dict[str, object]:
        p = self.progress
        return {
            "id": self.id,
            "bucket": self.mount.name,
            "origin": self.origin,
            "state": self.state,
            "window": self.window,
            "window_bytes": self.window_bytes,
            "concurrency": self.concurrency,
            "bytes_ahead": self._held,
            "bytes_ahead_max": self._held_max,
            "keys": len(self.keys),
            "queued": max(0, len(self.keys) - self.next),
            "read_position": self.read_pos + 1,
            "fetched": p.fetched,
            "cached": p.cached,
            "failed": p.failed,
            "used": p.used,
            "wasted": p.wasted,
        }


def _before(positions: dict[str, int], pos: int) -> list[str]:
    """The keys placed before ``pos``: a job inserts keys in the order of their positions, so
    they are the dict's first ones (a read costs what it passes, not the window)."""
    out = []
    for key, p in positions.items():
        if p >= pos:
            break
        out.append(key)
    return out


def _object_key(key: str) -> bool:
    """Not a directory marker, and short enough for an order."""
    return (
        bool(key)
        and not key.endswith("/")
        and len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES
    )


def cached(reads: Reads, mount: Mount, key: str) -> bool:
    """Whole and fresh in the cache now (one index lookup; False when unsure)."""
    rec, _ = reads.cache.lookup(oid_of(mount, key))
    return rec is not None and fresh(rec, mount, time.time()) and _whole(rec, reads.cs)


def _whole(rec: Record, cs: int) -> bool:
    """Every byte of the object is cached: inline, or each of its chunks of ``cs`` bytes."""
    return rec.inline or all(rec.has_chunk(i) for i in _chunks(rec.size, cs))


def _chunks(size: int, cs: int) -> range:
    """The chunk numbers of an object of ``size`` bytes."""
    return range((size + cs - 1) // cs)


async def warm(reads: Reads, mount: Mount, key: str) -> int | None:
    """Fill ``key`` through the core's fills (joining any under way); its size, or None when
    it was already cached and fresh. Each chunk waits for fill memory like any fill."""
    oid = oid_of(mount, key)
    rec, _ = reads.cache.lookup(oid)
    if rec is not None and not fresh(rec, mount, time.time()):
        rec, _ = await reads.metadata.current(mount, key, oid)
    if rec is not None:
        if _whole(rec, reads.cs):
            return None
        meta = reads.metadata.meta_of(rec)
        missing = [i for i in _chunks(meta.size, reads.cs) if not rec.has_chunk(i)]
        first: Fill = reads.fills.get(mount, key, oid, missing[0], meta, ahead=True)
    else:
        first = reads.fills.get(mount, key, oid, 0, None, ahead=True)
        meta = await first.wait_meta()
        missing = list(_chunks(meta.size, reads.cs))
    await _settle(first, reads.cs, meta.size)
    for i in missing[1:]:
        await _settle(reads.fills.get(mount, key, oid, i, meta, ahead=True), reads.cs, meta.size)
    return meta.size


async def _settle(fill: Fill, cs: int, size: int) -> None:
    """Wait until ``fill`` has all its bytes (raising its error, if any). Not for its commit:
    a job's fetch is over once the bytes are in, as a reader's is, so a job's ``concurrency``
    counts store fetches, not the index's commit latency (measured: ~20 ms of a 60 ms turn
    with 2 workers). A read of the key meanwhile joins the fill in its process, or in another
    waits for the fill's lock, which the fill holds until its commit."""
    await fill.wait_meta()
    lo = fill.index * cs
    hi = min(size, lo + cs) - 1
    if hi < lo:
        return
    async for _ in fill.read(lo, hi):
        pass


class Prefetcher:
    """The jobs of this process. ``attach`` gives it the core once the core is up; until then
    (and for good in a supervisor of several workers) it refuses new jobs."""

    def __init__(self) -> None:
        self._reads: Reads | None = None
        self._router: Router | None = None
        self._warm: Warm | None = None
        self._jobs: dict[str, PrefetchJob] = {}
        self._by_bucket: dict[str, list[PrefetchJob]] = {}
        self._listing: dict[tuple[str, str], PrefetchJob] = {}  # (bucket, prefix) -> its job
        self._ids = itertools.count(1)
        self.unavailable = "the proxy is starting"
        self.on_start: Callable[[], None] | None = None  # a job starts: reads matter now

    def attach(self, reads: Reads, router: Router, fill: Warm | None = None) -> None:
        """``fill``: how a job fills a key (default: ``warm`` in this process)."""
        self._reads, self._router = reads, router
        self._warm = fill or functools.partial(warm, reads)
        reads.on_read = self.note_read

    def note_read(self, bucket: str, key: str) -> None:
        for job in self._by_bucket.get(bucket, ()):
            job.note_read(key)

    def open(
        self,
        bucket: object,
        window: object,
        window_bytes: object = None,
        concurrency: object = None,
    ) -> PrefetchJob:
        """A new job, running, with no keys yet and ``receiving`` them (see ``add``)."""
        if self._reads is None or self._router is None:
            raise PrefetchUnavailable(self.unavailable)
        if not isinstance(bucket, str) or not bucket:
            raise PrefetchError("bucket: expected a bucket name")
        if window is None:
            window = DEFAULT_WINDOW
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
            raise PrefetchError(f"window: expected an integer from 1 to {MAX_WINDOW}")
        if window_bytes is not None and (
            isinstance(window_bytes, bool) or not isinstance(window_bytes, int) or window_bytes < 1
        ):
            raise PrefetchError("window_bytes: expected a number of bytes >= 1")
        if concurrency is None:
            concurrency = DEFAULT_CONCURRENCY
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise PrefetchError(f"concurrency: expected an integer from 1 to {MAX_CONCURRENCY}")
        try:
            mount = self._router.resolve(bucket)
        except errors.NoSuchBucket:
            raise PrefetchError("bucket: no such bucket") from None
        if not mount.cacheable:
            raise PrefetchError("bucket: caching is off for this bucket")
        self._make_room()
        job = self._add(mount, window, window_bytes, concurrency)
        job.receiving = True
        job.start()
        return job

    def _add(
        self,
        mount: Mount,
        window: int,
        window_bytes: int | None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> PrefetchJob:
        assert self._reads is not None and self._warm is not None
        job = PrefetchJob(
            str(next(self._ids)), mount, window, window_bytes, self._reads, self._warm, concurrency
        )
        self._jobs[job.id] = job
        if self.on_start is not None:
            self.on_start()
        self._by_bucket.setdefault(mount.name, []).append(job)
        return job

    def listed(self, bucket: str, prefix: str, keys: list[str]) -> None:
        """A page of a listing of ``bucket`` (a ``prefetch: listing`` one): queue its objects
        not cached yet, in listing order, on the job of this bucket and prefix."""
        if self._reads is None or self._router is None:
            return
        try:
            mount = self._router.resolve(bucket)
        except errors.NoSuchBucket:
            return
        if not mount.prefetch_listed or not mount.cacheable:
            return
        named = [k for k in keys if _object_key(k)]
        missing = self._reads.cache.missing([oid_of(mount, mount.remote_key(k)) for k in named])
        todo = [k for k, gone in zip(named, missing, strict=True) if gone]
        if not todo:
            return
        job = self._listing.pop((bucket, prefix), None)
        if job is not None and job.state == "cancelled":  # by the admin API
            self._drop(job)
            job = None
        if job is None:
            while len(self._listing) >= LISTING_JOBS:
                self._drop(self._listing.pop(next(iter(self._listing))))
            job = self._add(mount, LISTING_WINDOW, None)
            job.origin = "listing"
        self._listing[(bucket, prefix)] = job  # the most recently listed last
        todo = [k for k in todo if not job.holds(mount.remote_key(k))]
        if not todo:
            return
        if len(job.keys) - job.next + len(todo) > LISTING_QUEUE:
            log.cache.info("listing prefetch: a page dropped, %d keys queued", LISTING_QUEUE)
            return
        job.add(encode_keys(todo))
        job.start()

    def _drop(self, job: PrefetchJob) -> None:
        job.stop()
        if job.id in self._jobs:
            self._forget(job)

    async def start(
        self,
        bucket: object,
        keys: object,
        window: object,
        window_bytes: object = None,
        concurrency: object = None,
    ) -> PrefetchJob:
        """A job of one JSON list of keys."""
        if self._reads is None:
            raise PrefetchUnavailable(self.unavailable)
        if not isinstance(keys, list):
            raise PrefetchError("keys: expected a list of keys")
        part = await asyncio.to_thread(encode_keys, keys)
        if len(part[1]) > MAX_JOB_KEYS:
            raise PrefetchError(f"keys: an order holds at most {MAX_JOB_KEYS} keys")
        job = self.open(bucket, window, window_bytes, concurrency)
        job.add(part)
        job.received()
        return job

    async def append(self, job_id: str, keys: object) -> PrefetchJob:
        part = await asyncio.to_thread(encode_keys, keys)
        job = self.extensible(job_id)
        job.add(part)
        job.start()  # a job that had finished picks up the new keys
        return job

    def extensible(self, job_id: str) -> PrefetchJob:
        """The job ``job_id``, to append keys to (KeyError: none such)."""
        job = self.get(job_id)
        if job.state == "cancelled":
            raise PrefetchError("the job was cancelled")
        return job

    def busy(self) -> bool:
        return any(job.busy() for job in self._jobs.values())

    def get(self, job_id: str) -> PrefetchJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def jobs(self) -> list[PrefetchJob]:
        return list(self._jobs.values())

    async def cancel(self, job_id: str) -> PrefetchJob:
        job = self.get(job_id)
        await job.cancel()
        return job

    def _make_room(self) -> None:
        """Listing jobs have their own bound (LISTING_JOBS) and do not count here."""
        if sum(job.origin == "order" for job in self._jobs.values()) < MAX_JOBS:
            return
        for job in self._jobs.values():
            if job.origin == "order" and job.state != "running":
                self._forget(job)
                return
        raise PrefetchError(f"too many prefetch jobs running (at most {MAX_JOBS})")

    def _forget(self, job: PrefetchJob) -> None:
        del self._jobs[job.id]
        siblings = self._by_bucket[job.mount.name]
        siblings.remove(job)
        if not siblings:
            del self._by_bucket[job.mount.name]

    async def close(self) -> None:
        for job in list(self._jobs.values()):
            await job.cancel()


class PrefetchUnavailable(RuntimeError):
    """This process cannot prefetch (starting, or a supervisor without the reads)."""
