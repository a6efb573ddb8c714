"""Composition root: builds the S3 and admin applications and runs them, one process or many.

With ``workers > 1`` a supervisor process runs the admin listener and start-up repair, then
spawns the workers; each binds the S3 port with SO_REUSEPORT and opens the shared LMDB index.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from aiohttp import web

from proxy import backends as backend_factory
from proxy.admin import CacheCollector, Health, build_admin_app, metrics_registry
from proxy.backends.base import Backend
from proxy.cache.index import Index
from proxy.cache.store import CacheStore
from proxy.config import Config
from proxy.routing import Router
from proxy.s3.handlers import S3Handlers
from proxy.s3.middleware import make_middleware
from proxy.service import ObjectService

log = logging.getLogger("proxy.server")

SERVICE_KEY = web.AppKey("service", ObjectService)
CACHE_KEY = web.AppKey("cache", CacheStore)


def build_s3_app(cfg: Config, cache: CacheStore) -> web.Application:
    """The S3 application; its cleanup context owns the backends, the cache and the service."""
    app = web.Application(
        middlewares=[make_middleware(cfg.server.max_concurrency, cfg.log.access_log)],
        client_max_size=1024**2,
        handler_args={
            "max_line_size": cfg.server.max_line_size,
            "max_field_size": cfg.server.max_field_size,
            "max_headers": cfg.server.max_headers,
        },
    )
    app[CACHE_KEY] = cache

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        stores: dict[str, Backend] = {}
        for name, bcfg in cfg.backends.items():
            b = backend_factory.create(bcfg)
            await b.start()
            stores[name] = b
        router = Router(cfg.buckets, stores, cfg.cache)
        await cache.open()
        service = ObjectService(cache, cfg.cache, router)
        handlers = S3Handlers(service, router, cfg.server.domains)
        handlers._native_sendfile = cfg.server.sendfile
        app[SERVICE_KEY] = service
        app.router.add_route("*", "/{tail:.*}", handlers.dispatch)
        try:
            yield
        finally:
            await service.close()
            await cache.close()
            for b in stores.values():
                await b.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def _runner(app: web.Application, cfg: Config) -> web.AppRunner:
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=cfg.server.keepalive_timeout,
        shutdown_timeout=cfg.server.shutdown_timeout,
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
    s3 = _runner(build_s3_app(cfg, cache), cfg)
    await s3.setup()
    await web.TCPSite(s3, *cfg.listen_host_port, backlog=1024).start()
    health.started = True
    log.info(
        "slipstream serving S3 on http://%s, admin on http://%s (1 process)",
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
    s3 = _runner(build_s3_app(cfg, cache), cfg)
    await s3.setup()
    await web.TCPSite(s3, *cfg.listen_host_port, reuse_port=True, backlog=1024).start()
    ready.set()
    await stop.wait()
    await s3.cleanup()


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
        "slipstream serving S3 on http://%s, admin on http://%s (%d workers)",
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
                    multiprocess.mark_process_dead(proc.pid)
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
