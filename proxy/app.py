"""Composition root: builds the S3 and admin applications and runs them, one process or many.

With ``workers > 1`` a supervisor process runs the admin listener and start-up repair, then
spawns the workers; each binds the S3 port with SO_REUSEPORT and opens the shared LMDB index.
Warm-up jobs and prefetch run where the admin listener is: in the supervisor, on a core of its
own (SupervisorCore), so their tables and API stay in one process whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import multiprocessing
import os
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import uvloop
from aiohttp import web

from proxy import backends as backend_factory
from proxy import listen, log, metrics, warmfeed
from proxy.admin import AdminAuth, CacheCollector, Health, build_admin_app, metrics_registry
from proxy.admin_cache import add_cache_routes
from proxy.admin_cluster import add_cluster_routes
from proxy.admin_prefetch import add_prefetch_routes
from proxy.backends.base import Backend
from proxy.cache import quota
from proxy.cache.index import Index
from proxy.cache.staging import StagingSweeper
from proxy.cache.store import CacheStore
from proxy.cluster import fanout, peers, warmer
from proxy.cluster.node import Cluster
from proxy.config import Config
from proxy.core.fills import Fills
from proxy.core.hot import HotObjects
from proxy.core.listing import Listing
from proxy.core.prefetch import Prefetcher, warm
from proxy.core.reads import Reads
from proxy.core.writes import Writes
from proxy.jobs.gate import gated, jobs_gate
from proxy.jobs.registry import Jobs
from proxy.jobs.store import JobFiles, jobs_dir
from proxy.jobs.warm import JobCore, Owners, drain, drain_chunk, drain_committed
from proxy.readfeed import ReadFeed
from proxy.routing import Mount, Router
from proxy.s3.auth import Authenticator
from proxy.s3.dispatch import S3Dispatcher
from proxy.s3.hot import HotPath
from proxy.s3.middleware import Handler, make_middleware
from proxy.s3.read_handlers import S3ReadHandlers
from proxy.s3.write_handlers import S3WriteHandlers
from proxy.workers import WorkerPool

GC_YOUNG = 10_000  # allocations between the cyclic GC's young-generation passes (default 700)


class S3Server:
    """Owns the backends, the cache and the core, and answers S3 requests.

    It runs on aiohttp's low-level server: every request goes to one dispatcher, so there is no
    Application, router or middleware chain on the hot path.
    """

    def __init__(self, cfg: Config, cache: CacheStore, cluster: Cluster | None = None) -> None:
        self.cfg = cfg
        self.cache = cache
        self.cluster = cluster
        self.stores: dict[str, Backend] = {}
        self.reads: Reads | None = None
        self.router: Router | None = None
        self.listing: Listing | None = None
        self._middleware = make_middleware(cfg.server.max_concurrency, cfg.log.access_log)
        self._dispatch: Handler | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._body_idle = cfg.server.body_idle_timeout

    async def start(self) -> None:
        self.stores = await _open_backends(self.cfg, self.cache)
        self.router = router = Router(self.cfg.buckets, self.stores, self.cfg.cache)
        await self.cache.open()
        # workers: 1: this process alone fills the cache (else the workers and the supervisor do)
        fills = Fills(self.cache, self.cfg.cache, sole=self.cfg.workers <= 1)
        self.reads = reads = Reads(self.cache, self.cfg.cache, fills)
        self.listing = Listing(router)
        read_handlers = S3ReadHandlers(
            reads=reads,
            listing=self.listing,
            region=self.cfg.auth.region,
            sendfile=self.cfg.server.sendfile,
        )
        writes = Writes(self.cache, reads)
        if self.cluster is not None:
            self.cluster.totals = self.cache.totals  # the health route says what is cached
            self.cluster.use_index(self.cache.lookup, self.cfg.cache.chunk_size)
            await self.cluster.start()
            self.cluster.attach(
                router,
                lambda r, m, k: read_handlers.get_object(r, m, k, dict(r.query)),
                lambda r, m, k: read_handlers.head_object(r, m, k, dict(r.query)),
                self._drop,
                self._fill,
            )
            read_handlers.forward = self.cluster.forward
            read_handlers.forwards = self.cluster.takes
            read_handlers.chunks = self.cluster.chunk_reads
            fanout.serve(self.cluster, router, reads, self.cache, self.cfg.buckets)
            lock = self.cache.root / "warmer.lock"
            warmer.serve(self.cluster, router, self.cache.index, self.cfg.cache.chunk_size, lock)
            writes.changed = self.cluster.invalidate
        dispatcher = S3Dispatcher(
            reads=read_handlers,
            writes=S3WriteHandlers(writes, router),
            router=router,
            auth=Authenticator(self.cfg.auth, self.cfg.auth.region),
            domains=self.cfg.server.domains,
        )
        self._dispatch = dispatcher.dispatch
        if self.cluster is None and self.cfg.server.hot_objects > 0:
            # a cluster's reads may belong to other nodes: no table there
            self._dispatch = HotPath(
                HotObjects(reads, self.cfg.server.hot_objects),
                dispatcher.auth,
                router,
                self.cfg.server.domains,
                dispatcher.dispatch,
            ).handle
        sweeper = StagingSweeper(self.cache.root, self.cfg.cache)
        self.cache.uploads.on_kept = sweeper.poke
        self._sweeper = asyncio.create_task(sweeper.run())
        # Everything built so far (botocore's service models, the SDK clients) lives as long as
        # the process: keep it out of the cyclic GC's full collections, which would otherwise
        # walk it every time and show up as latency spikes.
        gc.freeze()
        # A request's objects die by reference count (a cold 16 KiB fill run found no cyclic
        # garbage at all): a young-generation pass every 700 allocations only walks the
        # requests in flight, ~3% of a fill's CPU. Every 10,000 it is under 0.3%.
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])

    async def _drop(self, oid: bytes) -> None:
        """Another node wrote or deleted this object: drop the copy, as a local write does."""
        assert self.reads is not None, "start() first"
        self.reads.invalidate(oid)
        await self.cache.drop(oid)
        self.reads.invalidate(oid)

    async def _fill(self, mount: Mount, key: str, index: int) -> None:
        """Read chunk ``index`` of the object through the cache (a replica's fill), the bytes
        dropped: chunk 0 is the whole object when it fits one."""
        assert self.reads is not None, "start() first"
        await drain_chunk(self.reads, mount, key, index)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.cluster is not None:
            await self.cluster.close()
        if self.reads is not None:
            await self.reads.close()
        await self.cache.close()
        for backend in self.stores.values():
            await backend.close()

    def job_core(self) -> JobCore:
        assert self.router is not None and self.reads is not None, "start() first"
        owners = fanout.Fanout(self.cluster) if self.cluster is not None else None
        return JobCore(self.router, self.reads, owners=owners)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._dispatch is not None, "start() first"
        request["body_idle_timeout"] = self._body_idle  # read by s3/payload.py
        if self.cluster is not None and request.raw_path.startswith(peers.PREFIX):
            return await self._middleware(request, self.cluster.serve_peer)
        return await self._middleware(request, self._dispatch)

    def runner(self) -> web.ServerRunner:
        server = web.Server(
            self.handle,
            access_log=None,
            auto_decompress=False,  # a gzip object body is stored as sent, not inflated
            keepalive_timeout=self.cfg.server.keepalive_timeout,
            max_line_size=self.cfg.server.max_line_size,
            max_field_size=self.cfg.server.max_field_size,
            max_headers=self.cfg.server.max_headers,
        )
        return web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=self.cfg.server.shutdown_timeout
        )


async def _open_backends(cfg: Config, cache: CacheStore) -> dict[str, Backend]:
    stores: dict[str, Backend] = {}
    try:
        for name, bcfg in cfg.backends.items():
            backend = backend_factory.create(bcfg, cache.root / "staging")
            await backend.start()
            stores[name] = backend
    except BaseException:
        for started in stores.values():
            await started.close()
        raise
    return stores


def _admin_runner(
    cfg: Config,
    health: Health,
    index: Index,
    jobs: Jobs,
    prefetcher: Prefetcher,
    cluster: Cluster | None,
) -> web.AppRunner:
    collector = CacheCollector(
        index.totals, index.map_usage, cfg.cache.max_size, lambda: quota.usage(index)
    )
    registry = metrics_registry(collector)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # the supervisor's own prefetcher counts in this process's memory, not in the files
        registry.register(metrics.PREFETCH_OBJECTS)
        registry.register(metrics.JOB_FILLS)

    def stats() -> dict[str, Any]:
        used, objects = index.totals()
        return {"bytes": used, "objects": objects, "max_size": cfg.cache.max_size} | quota.usage(
            index
        )

    app = build_admin_app(health, registry, stats, AdminAuth(cfg.admin.token()), jobs)
    add_prefetch_routes(app, prefetcher)
    add_cache_routes(app, index, cfg.buckets, fanout.Fanout(cluster) if cluster else None)
    add_cluster_routes(app, cluster, index.totals)
    return web.AppRunner(app, handle_signals=False, access_log=None)


def _repair(cache: CacheStore) -> None:
    """Blocking start-up repair: open the index, drop orphans and dead temp files."""
    cache.open_sync()
    started = time.monotonic()
    stats = cache.fsck()
    log.server.info("cache check done in %.2fs: %s", time.monotonic() - started, stats)


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The S3 listener's TLS context when ``tls`` is configured (TLS 1.2 and later)."""
    if not cfg.tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
    return ctx


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _probe_listeners(cfg: Config) -> None:
    """Stop now, before the cache check, if either listen address cannot be bound."""
    await listen.probe("listen", cfg.listen, *cfg.listen_host_port, reuse_port=cfg.workers > 1)
    await listen.probe("admin_listen", cfg.admin_listen, *cfg.admin_host_port, reuse_port=False)


async def _start_admin(admin: web.AppRunner, cfg: Config) -> None:
    site = web.TCPSite(admin, *cfg.admin_host_port)
    await listen.start_site(site, "admin_listen", cfg.admin_listen)


async def _prepare(
    cfg: Config,
    prefetcher: Prefetcher,
    cache: CacheStore | None = None,
    cluster: Cluster | None = None,
    early: Callable[[], None] = lambda: None,
) -> tuple[Health, asyncio.Event, CacheStore, web.AppRunner, Jobs]:
    """Either mode's start: check both addresses, repair the cache (off the loop), and set up
    the admin app (its listener is not started yet). Returns health, the stop event set by
    SIGTERM or SIGINT, the open cache, the admin runner, and the job table (no core attached
    yet: jobs are refused until the caller attaches one). ``early`` runs once the addresses
    are checked, before the repair (the supervisor spawns its workers there)."""
    await _probe_listeners(cfg)
    early()
    health = Health()
    stop = _stop_event()
    cache = cache or CacheStore(cfg.cache, quota.rules_of(cfg))
    await asyncio.to_thread(_repair, cache)
    assert cache.index is not None
    jobs = Jobs(JobFiles(jobs_dir(cfg.cache.dir)))
    admin = _admin_runner(cfg, health, cache.index, jobs, prefetcher, cluster)
    await admin.setup()
    return health, stop, cache, admin, jobs


def _log_serving(cfg: Config, processes: str) -> None:
    log.server.info(
        "slipstream serving S3 on %s://%s, admin on http://%s (%s)",
        "https" if cfg.tls.enabled else "http",
        cfg.listen,
        cfg.admin_listen,
        processes,
    )


async def serve_single(cfg: Config) -> None:
    """One process: the S3 listener and the admin listener on one event loop."""
    prefetcher = Prefetcher()
    cluster = Cluster(cfg.cluster) if cfg.cluster is not None else None
    health, stop, cache, admin, jobs = await _prepare(cfg, prefetcher, cluster=cluster)
    app = S3Server(cfg, cache, cluster)
    try:
        await _start_admin(admin, cfg)
        await app.start()
        job_core = app.job_core()
        await jobs.attach(job_core)
        assert app.reads is not None and app.router is not None and app.listing is not None
        assert job_core.gate is not None
        prefetcher.attach(
            app.reads, app.router, gated(job_core.gate, functools.partial(warm, app.reads))
        )
        app.listing.on_list = prefetcher.listed
        s3 = app.runner()
        await s3.setup()
        try:
            site = web.TCPSite(
                s3, *cfg.listen_host_port, backlog=1024, ssl_context=_tls_context(cfg)
            )
            await listen.start_site(site, "listen", cfg.listen)
            health.started = True
            _log_serving(cfg, "1 process")
            await stop.wait()
            log.server.info(
                "draining: readiness is now 503; waiting up to %ss for requests in flight",
                cfg.server.shutdown_timeout,
            )
            health.draining = True
        finally:
            await jobs.close()
            await s3.cleanup()
    finally:
        await prefetcher.close()
        await app.close()  # closes the cache too
        await admin.cleanup()
    log.server.info("stopped")


# -- several worker processes -------------------------------------------------------------------


def _worker_main(arg: tuple[Config, ReadFeed, str, MpEvent, int], ready: MpEvent) -> None:
    """A worker: spawned (and its imports done) while the supervisor checks the cache; it
    opens the cache and serves once ``checked`` is set, or exits if the supervisor (the
    process ``supervisor``, perhaps gone before this one got here) is no longer its parent."""
    cfg, feed, warms, checked, supervisor = arg
    log.configure(cfg.log.level, cfg.log.format)  # a spawned process starts unconfigured
    while not checked.wait(1.0):
        if os.getppid() != supervisor:
            return
    _run_loop(_worker(cfg, feed, warms, ready))


async def _worker(cfg: Config, feed: ReadFeed, warms: str, ready: MpEvent) -> None:
    stop = _stop_event()
    cache = CacheStore(cfg.cache, quota.rules_of(cfg))
    app = S3Server(cfg, cache, Cluster(cfg.cluster) if cfg.cluster is not None else None)
    handed: asyncio.Transport | None = None
    try:
        await app.start()
        assert app.reads is not None and app.listing is not None and app.router is not None
        app.reads.on_read = feed.sender()  # the supervisor's prefetcher follows the reads
        app.listing.on_list = feed.list_sender()  # and prefetches what they list
        # and hands its jobs' fetches to the workers, which yield them to their client misses
        gate = jobs_gate(app.reads.fills)
        handed = await warmfeed.serve(
            warms,
            gated(gate, functools.partial(warm, app.reads)),
            gated(gate, functools.partial(drain_committed, app.reads)),
            app.router,
        )
        s3 = app.runner()
        await s3.setup()
        try:
            site = web.TCPSite(
                s3,
                *cfg.listen_host_port,
                reuse_port=True,
                backlog=1024,
                ssl_context=_tls_context(cfg),
            )
            await listen.start_site(site, "listen", cfg.listen)
            ready.set()
            await stop.wait()
        finally:
            await s3.cleanup()
    finally:
        if handed is not None:
            handed.close()
        await app.close()


class SupervisorCore:
    """The core pieces the supervisor (``workers > 1``, no S3 listener of its own) needs for
    warm-up jobs and prefetch: its own backends, a Router, and Reads/Fills over the shared cache.
    Its fills coalesce with the workers' through the cache's chunk locks, as the workers' do with
    each other; the prefetcher follows the workers' reads through the read feed."""

    def __init__(self, cfg: Config, cache: CacheStore) -> None:
        self.cfg, self.cache = cfg, cache
        self.prefetcher = Prefetcher()
        self.feed = ReadFeed(multiprocessing.get_context("spawn"))
        self.warms = warmfeed.new_address()
        self._dispatch: warmfeed.WarmDispatch | None = None
        self.prefetcher.on_start = self._activate
        self._stores: dict[str, Backend] = {}
        self._reads: Reads | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._idler: asyncio.Task[None] | None = None

    def _activate(self) -> None:
        self.feed.active.value = 1

    async def _idle_off(self) -> None:
        while True:  # no job waits for reads: the workers stop reporting them
            await asyncio.sleep(1.0)
            if not self.prefetcher.busy():
                self.feed.active.value = 0

    async def start(self, owners: Owners | None = None) -> JobCore:
        """Open the pieces and start following reads; returns the core jobs run on."""
        await self.cache.open()
        self._stores = await _open_backends(self.cfg, self.cache)
        router = Router(self.cfg.buckets, self._stores, self.cfg.cache)
        self._reads = Reads(self.cache, self.cfg.cache, Fills(self.cache, self.cfg.cache))
        self._dispatch = warmfeed.WarmDispatch(
            self.warms, functools.partial(warm, self._reads), functools.partial(drain, self._reads)
        )
        await self._dispatch.listen()
        self.prefetcher.attach(self._reads, router, self._dispatch.warm)
        self._transport = await self.feed.listen(self.prefetcher.note_read, self.prefetcher.listed)
        self._idler = asyncio.create_task(self._idle_off())
        return JobCore(router, self._reads, owners=owners, handoff=self._dispatch.drain)

    async def flush_workers(self) -> None:
        """Each worker's tallies written out, before a scrape (proxy/warmfeed.py)."""
        if self._dispatch is not None:
            await self._dispatch.flush()

    async def close(self) -> None:
        if self._idler is not None:
            self._idler.cancel()
            await asyncio.gather(self._idler, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
        await self.prefetcher.close()
        if self._dispatch is not None:
            await self._dispatch.close()
        if self._reads is not None:
            await self._reads.close()
        await self.cache.close()
        for backend in self._stores.values():
            await backend.close()


async def serve_workers(cfg: Config) -> None:
    """Supervisor: repair, admin listener, N workers sharing the port; restarts a dead worker."""
    cache = CacheStore(cfg.cache, quota.rules_of(cfg))
    core = SupervisorCore(cfg, cache)
    # the supervisor's own view of the members, for /admin/v1/cluster (each worker has its own)
    cluster = Cluster(cfg.cluster) if cfg.cluster is not None else None
    # the workers start (a Python start and its imports take seconds) while the cache is
    # checked, and wait for ``checked`` before they open it
    checked = multiprocessing.get_context("spawn").Event()
    arg = (cfg, core.feed, core.warms, checked, os.getpid())
    workers = WorkerPool(_worker_main, arg, cfg.workers, cfg.listen)
    try:
        health, stop, cache, admin, jobs = await _prepare(
            cfg, core.prefetcher, cache, cluster, early=workers.start
        )
    except BaseException:
        await workers.stop(0)
        raise
    assert cache.index is not None
    health.workers_ready = workers.ready
    health.flush_workers = core.flush_workers
    try:
        if cluster is not None:
            # how large objects are cut: a warm job fills each chunk on that chunk's owners
            cluster.use_index(cache.lookup, cfg.cache.chunk_size)
            await cluster.start()  # before the jobs: a resumed one fills on the owners
        await jobs.attach(await core.start(fanout.Fanout(cluster) if cluster else None))
        await _start_admin(admin, cfg)
        checked.set()
        health.started = True
        _log_serving(cfg, f"{cfg.workers} workers")
        await workers.watch(stop)
    finally:
        health.draining = True
        await jobs.close()
        if len(workers):
            log.server.info("draining %d workers", len(workers))
            await workers.stop(cfg.server.shutdown_timeout + 5)
        await admin.cleanup()
        if cluster is not None:
            await cluster.close()
        await core.close()  # closes the cache too
    log.server.info("stopped")


def _run_loop(main: Any) -> None:
    uvloop.run(main)


def run(cfg: Config) -> None:
    if cfg.workers <= 1:
        _run_loop(serve_single(cfg))
        return
    metrics_dir = tempfile.mkdtemp(prefix="slipstream-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _run_loop(serve_workers(cfg))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
