"""The admin listener: /metrics, /healthz, /readyz, /admin/v1/cache."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass
class Health:
    """Readiness: false while starting and while draining."""

    started: bool = False
    draining: bool = False
    workers_ready: Callable[[], bool] = lambda: True

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.workers_ready()


class CacheCollector(Collector):
    """Cache size gauges read from the shared LMDB index at scrape time."""

    def __init__(
        self,
        totals: Callable[[], tuple[int, int]],
        map_usage: Callable[[], tuple[int, int]],
        max_bytes: int,
    ) -> None:
        self._totals = totals
        self._map_usage = map_usage
        self._max = max_bytes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            used, objects = self._totals()
            map_used, map_size = self._map_usage()
        except Exception:  # the index is closed (shutting down)
            return
        yield GaugeMetricFamily("slipstream_cache_bytes", "Bytes held in the cache", value=used)
        yield GaugeMetricFamily(
            "slipstream_cache_objects", "Objects in the cache index", value=objects
        )
        yield GaugeMetricFamily(
            "slipstream_cache_capacity_bytes", "cache.max_size", value=self._max
        )
        yield GaugeMetricFamily(
            "slipstream_index_map_used_bytes", "LMDB pages in use", value=map_used
        )
        yield GaugeMetricFamily("slipstream_index_map_size_bytes", "LMDB map size", value=map_size)
        info = GaugeMetricFamily("slipstream_build_info", "Build information", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def metrics_registry(cache: CacheCollector) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    registry.register(cache)
    return registry


def build_admin_app(
    health: Health, registry: CollectorRegistry, cache_stats: Callable[[], dict[str, int]]
) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if health.ready:
            return web.json_response({"status": "ready"})
        state = "draining" if health.draining else "starting"
        return web.json_response({"status": state}, status=503)

    async def cache_info(_: web.Request) -> web.Response:
        return web.json_response(cache_stats())

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/v1/cache", cache_info)
    return app
