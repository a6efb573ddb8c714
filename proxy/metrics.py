"""Every Prometheus metric, defined once. Prefix ``slipstream_``, base units, ``_total`` counters.

With several worker processes, PROMETHEUS_MULTIPROC_DIR is set before this module is imported and
the admin listener aggregates the per-process files. Cache size gauges are read from the LMDB
index at scrape time (see admin.py), so they are right whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import multiprocessing.util
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# -- tallies: plain numbers on the hot path, written to Prometheus in batches --------------------
# In multiprocess mode every Prometheus increment is a locked write to an mmap'd file; a warm
# 16 KiB hit paid several of them. A Tally counts in a plain float and flush() writes what it
# holds into its Prometheus child: FLUSH_EVERY seconds after the first count since the last
# flush (a timer on the running event loop), at every scrape of this process's registry, and
# at exit. With several workers the supervisor's scrape first asks each worker to flush
# (proxy/warmfeed.py), so in either case the numbers a scrape shows are exact; a worker that
# does not answer within warmfeed.FLUSH_WAIT shows its counts within FLUSH_EVERY.
FLUSH_EVERY = 1.0
_tallies: list[Tally | HistogramTally] = []
_armed = False


def flush() -> None:
    """Write every tally's pending counts into its Prometheus child."""
    global _armed
    _armed = False
    for tally in _tallies:
        tally.flush()


def _arm() -> None:
    global _armed
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no event loop: write through
        flush()
        return
    _armed = True
    loop.call_later(FLUSH_EVERY, flush)


class Tally:
    """A counter child's increments, held in a plain float until flush()."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0.0
        _tallies.append(self)

    def inc(self, amount: float = 1.0) -> None:
        self._pending += amount
        if not _armed:
            _arm()

    def flush(self) -> None:
        pending, self._pending = self._pending, 0.0
        if pending:
            self._child.inc(pending)


class HistogramTally:
    """A histogram child's observations: a count per bucket and the sum, until flush()."""

    __slots__ = ("_child", "_bounds", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _tallies.append(self)

    def observe(self, amount: float) -> None:
        # Histogram.observe counts ``amount`` in the first bucket whose bound is >= it
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        if not _armed:
            _arm()

    def flush(self) -> None:
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        if any(counts):
            self._child._sum.inc(total)
            for bucket, n in zip(self._child._buckets, counts, strict=True):
                if n:
                    bucket.inc(n)


class _FlushFirst(Collector):
    """Registered before every metric, so a scrape of this process flushes, then reads."""

    def collect(self) -> Iterator[Metric]:
        flush()
        return iter(())


REGISTRY.register(_FlushFirst())
atexit.register(flush)
# a multiprocessing worker leaves through os._exit(), after running these finalizers
multiprocessing.util.Finalize(None, flush, exitpriority=100)

# Label values come from these fixed sets, never from a request (a scraper keeps every series).
# An operation not listed is counted as "Unknown"; a status not listed as its class ("4xx").
OPERATIONS = frozenset(
    {
        "Unknown",
        "Peer",  # a cluster peer's request (proxy/cluster/node.py)
        "PeerHandoff",  # a peer asking for a cached copy only (proxy/cluster/node.py)
        # buckets
        "ListBuckets",
        "HeadBucket",
        "CreateBucket",
        "DeleteBucket",
        "GetBucketLocation",
        "GetBucketVersioning",
        "ListObjects",
        "ListObjectsV2",
        "ListMultipartUploads",
        "DeleteObjects",
        "UnknownBucketOperation",
        # bucket subresources answered NotImplemented
        "GetBucketAcl",
        "GetBucketPolicy",
        "GetBucketCors",
        "GetBucketLifecycle",
        "GetBucketTagging",
        "GetBucketWebsite",
        "GetBucketLogging",
        "GetBucketNotification",
        "GetBucketReplication",
        "GetBucketEncryption",
        "GetBucketObjectLock",
        "GetBucketVersions",
        "GetBucketRequestPayment",
        "GetBucketAccelerate",
        "GetBucketAnalytics",
        "GetBucketInventory",
        "GetBucketMetrics",
        "GetBucketIntelligentTiering",
        "GetBucketOwnershipControls",
        "GetBucketPublicAccessBlock",
        "GetBucketPolicyStatus",
        # objects
        "GetObject",
        "HeadObject",
        "PutObject",
        "CopyObject",
        "DeleteObject",
        "DeleteObjectTagging",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListParts",
        "UnknownObjectOperation",
    }
)
STATUSES = frozenset(
    {
        *(str(s) for s in (200, 204, 206, 304, 400, 403, 404, 405, 409, 411, 412, 413, 416)),
        *(str(s) for s in (500, 501, 503)),
        *(f"{c}xx" for c in range(1, 6)),
    }
)


def operation_label(op: object) -> str:
    """``op`` when it is a known operation name, else "Unknown"."""
    return op if isinstance(op, str) and op in OPERATIONS else "Unknown"


def status_label(status: int) -> str:
    """The status code when it is in STATUSES, else its class ("4xx")."""
    code = str(status)
    return code if code in STATUSES else f"{min(max(status // 100, 1), 5)}xx"


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "slipstream_requests_total",
    "S3 requests answered, by operation and HTTP status",
    ["operation", "status"],
)
REQUEST_DURATION = Histogram(
    "slipstream_request_duration_seconds",
    "Time to answer an S3 request (to the last byte)",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
BYTES_SERVED = Counter(
    "slipstream_bytes_served_total",
    "Object bytes sent to clients, by where they came from",
    ["source"],
)
CACHE_HITS = Counter("slipstream_cache_hits_total", "Object reads answered wholly from the cache")
HOT_HITS = Counter(
    "slipstream_hot_hits_total",
    "GETs and HEADs of inline objects answered from a worker's table of hot objects"
    " (also counted as requests, and GETs as cache hits)",
)
CACHE_MISSES = Counter(
    "slipstream_cache_misses_total", "Object reads that needed at least one store fetch"
)
CACHE_STALE_SERVED = Counter(
    "slipstream_cache_stale_served_total",
    "Reads served from a stale entry because the store failed",
)
COALESCED = Counter(
    "slipstream_coalesced_reads_total", "Reads that joined a fetch already in flight"
)
BACKEND_REQUESTS = Counter(
    "slipstream_backend_requests_total",
    "Requests sent to a backing store",
    ["backend", "operation"],
)
BACKEND_ERRORS = Counter(
    "slipstream_backend_errors_total",
    "Store requests that failed, by error code",
    ["backend", "operation", "code"],
)
BACKEND_LATENCY = Histogram(
    "slipstream_backend_request_duration_seconds",
    "Store time to response headers",
    ["backend", "operation"],
    buckets=_LATENCY_BUCKETS,
)
BACKEND_BYTES = Counter(
    "slipstream_backend_bytes_total", "Object bytes read from stores", ["backend"]
)
INFLIGHT_FILLS = Gauge(
    "slipstream_inflight_fills", "Store fetches filling the cache now", multiprocess_mode="livesum"
)
FILLS_IN_FLIGHT = Tally(INFLIGHT_FILLS)  # inc(1) as one starts, inc(-1) as it ends
FILLS = Counter("slipstream_fills_total", "Cache fills finished, by result", ["result"])
EVICTIONS = Counter("slipstream_evictions_total", "Objects evicted from the cache")
EVICTED_BYTES = Counter("slipstream_evicted_bytes_total", "Bytes evicted from the cache")
INTEGRITY_FAILURES = Counter(
    "slipstream_integrity_failures_total", "Fills rejected by size or checksum verification"
)
UPLOAD_STAGING_BYTES = Gauge(
    "slipstream_upload_staging_bytes",
    "Bytes of multipart uploads staged on the cache's disk, by kind: parts staged for a store "
    "without native multipart (store) or copied for the cache (cache)",
    ["kind"],
    multiprocess_mode="max",
)
UPLOAD_STAGING_SWEPT = Counter(
    "slipstream_upload_staging_swept_total",
    "Upload staging directories removed: untouched for cache.upload_staging_ttl, or copies "
    "beyond cache.max_size",
)
CACHE_WRITE_ERRORS = Counter(
    "slipstream_cache_write_errors_total",
    "Cache writes that failed (disk or index full)",
    ["reason"],
)
WARM_OBJECTS = Counter(
    "slipstream_warm_objects_total",
    "Objects warm-up jobs went through: fetched from the store, found cached, or failed twice",
    ["result"],
)
WARM_BYTES = Counter("slipstream_warm_bytes_total", "Object bytes warm-up jobs went through")
JOBS = Gauge(
    "slipstream_jobs",
    "Jobs in the job table, by state (queued, running, done, failed, cancelled)",
    ["state"],
    multiprocess_mode="livesum",
)
PEER_BYTES = Counter(
    "slipstream_peer_bytes_total",
    "Object bytes between cluster nodes: sent to peers (answering their reads) and received "
    "from peers (reads forwarded to an owner, replica fills, handoffs)",
    ["direction"],  # sent, received
)
SLOWDOWNS = Counter("slipstream_slowdown_total", "Requests refused with 503 SlowDown")
PREFETCH_OBJECTS = Counter(
    "slipstream_prefetch_objects_total",
    "Objects of training-aware prefetch: fetched ahead, then used (read) or wasted (passed over)",
    ["result"],  # fetched, used, wasted, failed
)  # no children made here: a worker of several must not report it (the supervisor does)
JOB_FILLS = Counter(
    "slipstream_job_fills_total",
    "Keys the supervisor's prefetch and warm jobs had filled (workers > 1), by the process"
    " that did: a worker, or the supervisor when no worker could",
    ["kind", "process"],  # prefetch|warm, worker|supervisor
)  # counted in the supervisor only (in its memory, like PREFETCH_OBJECTS)


PEER_SENT = PEER_BYTES.labels("sent")
PEER_RECEIVED = PEER_BYTES.labels("received")
SERVED_FROM_CACHE = Tally(BYTES_SERVED.labels("cache"))
SERVED_FROM_BACKEND = Tally(BYTES_SERVED.labels("backend"))
# Jobs run in one process (the supervisor with several workers): the admin listener exports
# these from that process's memory, not from the workers' multiprocess files.
JOB_METRICS = (WARM_OBJECTS, WARM_BYTES, JOBS)
WARM_FETCHED = WARM_OBJECTS.labels("fetched")
WARM_CACHED = WARM_OBJECTS.labels("cached")
WARM_FAILED = WARM_OBJECTS.labels("failed")

# -- per bucket ---------------------------------------------------------------------------------
# The bucket label is a configured client-facing bucket name; every bucket a "*" mapping serves
# is counted as "*", so no client can make a label value.
WILDCARD_LABEL = "*"

BUCKET_REQUESTS = Counter(
    "slipstream_bucket_requests_total",
    "Object reads by configured bucket and result: hit (wholly from the cache) or miss",
    ["bucket", "result"],
)
BUCKET_BYTES = Counter(
    "slipstream_bucket_bytes_total",
    "Object bytes sent to clients, by configured bucket and where they came from",
    ["bucket", "source"],
)
STALL_SECONDS = Counter(
    "slipstream_stall_seconds_total",
    "Time GETs spent waiting on the store: until a read that needs the store has its object "
    "(the miss's time to first byte), then each wait of its body for store bytes",
    ["bucket"],
)
FIRST_BYTE = Histogram(
    "slipstream_first_byte_seconds",
    "Time from a GET's handler start to its response headers, by hit or miss",
    ["result"],
    buckets=_LATENCY_BUCKETS,
)
# The index's writers (one thread per process; LMDB lets one write transaction run at a time
# across all of them) and the reads that wait on another worker's fill: where a read's wait
# goes when the workers' commits queue behind each other. Observed from any thread (a
# Prometheus child takes its own lock), once per transaction or per wait, not per read.
INDEX_LOCK_WAIT = Histogram(
    "slipstream_index_lock_wait_seconds",
    "Time a write transaction of the cache index waited for LMDB's write lock (held by "
    "another process's transaction)",
    buckets=_LATENCY_BUCKETS,
)
INDEX_TRANSACTION = Histogram(
    "slipstream_index_transaction_seconds",
    "Time a write transaction of the cache index held LMDB's write lock: its writes and its commit",
    buckets=_LATENCY_BUCKETS,
)
FILL_WAIT = Histogram(
    "slipstream_fill_wait_seconds",
    "Time a read waited for another worker's fill of the same chunk (its fetch and its "
    "commit) before it could take the fill's lock or read the cached copy",
    buckets=_LATENCY_BUCKETS,
)
HOT_HIT = Tally(HOT_HITS)
FIRST_BYTE_HIT = HistogramTally(FIRST_BYTE.labels("hit"))
FIRST_BYTE_MISS = HistogramTally(FIRST_BYTE.labels("miss"))


class BucketMetrics:
    """The label children of one bucket, resolved once, as tallies: a read costs a dict lookup
    and a few additions."""

    __slots__ = ("_hits", "_misses", "_cache_bytes", "_backend_bytes", "stall")

    def __init__(self, label: str) -> None:
        self._hits = Tally(BUCKET_REQUESTS.labels(label, "hit"))
        self._misses = Tally(BUCKET_REQUESTS.labels(label, "miss"))
        self._cache_bytes = Tally(BUCKET_BYTES.labels(label, "cache"))
        self._backend_bytes = Tally(BUCKET_BYTES.labels(label, "backend"))
        self.stall = Tally(STALL_SECONDS.labels(label))

    def hit(self) -> None:
        _HITS.inc()
        self._hits.inc()

    def miss(self) -> None:
        _MISSES.inc()
        self._misses.inc()

    def served(self, source: str, n: int, peer: bool = False) -> None:
        """``n`` object bytes sent from ``source`` ("cache", else the store), to a peer node
        (``peer``) or a client."""
        if peer:
            PEER_SENT.inc(n)
        if source == "cache":
            SERVED_FROM_CACHE.inc(n)
            self._cache_bytes.inc(n)
        else:
            SERVED_FROM_BACKEND.inc(n)
            self._backend_bytes.inc(n)


_HITS = Tally(CACHE_HITS)
_MISSES = Tally(CACHE_MISSES)
_buckets: dict[str, BucketMetrics] = {}


def bucket(name: str, wildcard: bool) -> BucketMetrics:
    """The metrics of the client-facing bucket ``name`` (``wildcard``: served by "*")."""
    label = WILDCARD_LABEL if wildcard else name
    found = _buckets.get(label)
    if found is None:
        found = _buckets[label] = BucketMetrics(label)
    return found


# -- stores -------------------------------------------------------------------------------------
# A cold read counts its store request, times it and counts its bytes, with the children of one
# backend and operation resolved once (no labels() lookup per call). The latency and the bytes
# are tallies, as the request count is: a scrape flushes first, so tests and operators can read
# it as "did this reach the store" at once.


class StoreCallMetrics:
    """The request count and latency (tallies) of one (backend, operation)."""

    __slots__ = ("requests", "latency")

    def __init__(self, backend: str, operation: str) -> None:
        self.requests = Tally(BACKEND_REQUESTS.labels(backend, operation))
        self.latency = HistogramTally(BACKEND_LATENCY.labels(backend, operation))


_store_calls: dict[tuple[str, str], StoreCallMetrics] = {}
_store_bytes: dict[str, Tally] = {}


def store_call(backend: str, operation: str) -> StoreCallMetrics:
    """The metrics of ``operation`` on the configured backend ``backend``."""
    found = _store_calls.get((backend, operation))
    if found is None:
        found = _store_calls[(backend, operation)] = StoreCallMetrics(backend, operation)
    return found


def store_bytes(backend: str) -> Tally:
    """Object bytes read from the configured backend ``backend``."""
    found = _store_bytes.get(backend)
    if found is None:
        found = _store_bytes[backend] = Tally(BACKEND_BYTES.labels(backend))
    return found


FILLS_CACHED = Tally(FILLS.labels("cached"))
FILLS_NOT_CACHED = Tally(FILLS.labels("not_cached"))
READS_COALESCED = Tally(COALESCED)
