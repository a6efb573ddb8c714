"""Composition root: builds the S3 and admin applications and runs them, one process or many.

With ``workers > 1`` a supervisor process runs the admin listener and start-up repair, then
spawns the workers; each binds the S3 port with SO_REUSEPORT and opens the shared LMDB index.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import ssl
import tempfile
import time
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from aiohttp import web

from proxy import backends as backend_factory
from proxy.admin import CacheCollector, Health, build_admin_app, metrics_registry
from proxy.backends.base import Backend
from proxy.cache.index import Index
from proxy.cache.store import CacheStore
from proxy.config import Config
from proxy.core.fills import Fills
from proxy.core.listing import Listing
from proxy.core.reads import Reads
from proxy.core.writes import Writes
from proxy.routing import Router
from proxy.s3.auth import Authenticator
from proxy.s3.dispatch import S3Dispatcher
from proxy.s3.middleware import Handler, make_middleware
from proxy.s3.read_handlers import S3ReadHandlers
from proxy.s3.write_handlers import S3WriteHandlers

log = logging.getLogger("proxy.server")


class S3Server:
    """Owns the backends, the cache and the core, and answers S3 requests.

    It runs on aiohttp's low-level server: every request goes to one dispatcher, so there is no
    Application, router or middleware chain on the hot path.
    """

    def __init__(self, cfg: Config, cache: CacheStore) -> None:
        self.cfg = cfg
        self.cache = cache
        self.stores: dict[str, Backend] = {}
        self.reads: Reads | None = None
        self._middleware = make_middleware(cfg.server.max_concurrency, cfg.log.access_log)
        self._dispatch: Handler | None = None

    async def start(self) -> None:
        for name, bcfg in self.cfg.backends.items():
            backend = backend_factory.create(bcfg, self.cache.root / "staging")
            await backend.start()
            self.stores[name] = backend
        router = Router(self.cfg.buckets, self.stores, self.cfg.cache)
        await self.cache.open()
        self.reads = reads = Reads(self.cache, self.cfg.cache, Fills(self.cache, self.cfg.cache))
        dispatcher = S3Dispatcher(
            reads=S3ReadHandlers(
                reads=reads,
                listing=Listing(router),
                region=self.cfg.auth.region,
                sendfile=self.cfg.server.sendfile,
            ),
            writes=S3WriteHandlers(Writes(self.cache, reads), router),
            router=router,
            auth=Authenticator(self.cfg.auth, self.cfg.auth.region),
            domains=self.cfg.server.domains,
        )
        self._dispatch = dispatcher.dispatch
        # Everything built so far (botocore's service models, the SDK clients) lives as long as
        # the process: keep it out of the cyclic GC's full collections, which would otherwise
        # walk it every time and show up as latency spikes.
        gc.freeze()

    async def close(self) -> None:
        if self.reads is not None:
            await self.reads.close()
        await self.cache.close()
        for backend in self.stores.values():
            await backend.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._dispatch is not None, "start() first"
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


def _admin_runner(cfg: Config, health: Health, index: Index) -> web.AppRunner:
    collector = CacheCollector(index.totals, index.map_usage, cfg.cache.max_size)
    registry = metrics_registry(collector)

    def stats() -> dict[str, int]:
        used, objects = index.totals()
        return {"bytes": used, "objects": objects, "max_size": cfg.cache.max_size}

    return web.AppRunner(
        build_admin_app(health, registry, stats), handle_signals=False, access_log=None
    )


def _repair(cache: CacheStore) -> None:
    """Blocking start-up repair: open the index, drop orphans and dead temp files."""
    cache.open_sync()
    started = time.monotonic()
    stats = cache.fsck()
    log.info("cache check done in %.2fs: %s", time.monotonic() - started, stats)


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


async def serve_single(cfg: Config) -> None:
    """One process: the S3 listener and the admin listener on one event loop."""
    health = Health()
    stop = _stop_event()
    cache = CacheStore(cfg.cache)
    await asyncio.to_thread(_repair, cache)
    assert cache.index is not None
    admin = _admin_runner(cfg, health, cache.index)
    await admin.setup()
    await web.TCPSite(admin, *cfg.admin_host_port).start()
    app = S3Server(cfg, cache)
    await app.start()
    s3 = app.runner()
    await s3.setup()
    await web.TCPSite(
        s3, *cfg.listen_host_port, backlog=1024, ssl_context=_tls_context(cfg)
    ).start()
    health.started = True
    log.info(
        "slipstream serving S3 on %s://%s, admin on http://%s (1 process)",
        "https" if cfg.tls.enabled else "http",
        cfg.listen,
        cfg.admin_listen,
    )
    await stop.wait()
    log.info(
        "draining: readiness is now 503; waiting up to %ss for requests in flight",
        cfg.server.shutdown_timeout,
    )
    health.draining = True
    await s3.cleanup()
    await app.close()
    await admin.cleanup()
    log.info("stopped")


# -- several worker processes -------------------------------------------------------------------


def _worker_main(cfg: Config, ready: MpEvent) -> None:
    from proxy.log import configure

    configure(cfg.log.level, cfg.log.format)
    _run_loop(_worker(cfg, ready))


async def _worker(cfg: Config, ready: MpEvent) -> None:
    stop = _stop_event()
    cache = CacheStore(cfg.cache)
    app = S3Server(cfg, cache)
    await app.start()
    s3 = app.runner()
    await s3.setup()
    await web.TCPSite(
        s3, *cfg.listen_host_port, reuse_port=True, backlog=1024, ssl_context=_tls_context(cfg)
    ).start()
    ready.set()
    await stop.wait()
    await s3.cleanup()
    await app.close()


async def serve_workers(cfg: Config) -> None:
    """Supervisor: repair, admin listener, N workers sharing the port; restarts a dead worker."""
    from prometheus_client import multiprocess

    health = Health()
    stop = _stop_event()
    cache = CacheStore(cfg.cache)
    await asyncio.to_thread(_repair, cache)
    assert cache.index is not None
    ctx = multiprocessing.get_context("spawn")
    workers: list[tuple[Any, MpEvent]] = []

    def spawn() -> tuple[Any, MpEvent]:
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_main, args=(cfg, ready), name="slipstream-worker")
        proc.start()
        return proc, ready

    health.workers_ready = lambda: all(r.is_set() and p.is_alive() for p, r in workers)
    admin = _admin_runner(cfg, health, cache.index)
    await admin.setup()
    await web.TCPSite(admin, *cfg.admin_host_port).start()
    workers.extend(spawn() for _ in range(cfg.workers))
    health.started = True
    log.info(
        "slipstream serving S3 on %s://%s, admin on http://%s (%d workers)",
        "https" if cfg.tls.enabled else "http",
        cfg.listen,
        cfg.admin_listen,
        cfg.workers,
    )
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            for n, (proc, _) in enumerate(workers):
                if not proc.is_alive() and not stop.is_set():
                    log.error("worker %s exited with %s; restarting it", proc.pid, proc.exitcode)
                    multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                    workers[n] = spawn()
    health.draining = True
    log.info("draining %d workers", len(workers))
    for proc, _ in workers:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + cfg.server.shutdown_timeout + 5
    for proc, _ in workers:
        await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
    await admin.cleanup()
    cache.index.close()
    log.info("stopped")


def _run_loop(main: Any) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep a plain fallback
        asyncio.run(main)


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
