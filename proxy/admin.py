"""The admin listener: /metrics, /healthz, /readyz, /admin/v1/cache, /admin/v1/warm and jobs.

Reads stay open (Prometheus and probes need no credentials). A route that changes state
is wrapped in ``state_changing``: it answers 401 unless the request carries
``Authorization: Bearer <admin token>`` (compared in constant time). The token is required
when the listener is not on loopback (config refuses to start without it); on loopback with
no token configured, state-changing routes are open to local processes.
"""

from __future__ import annotations

import functools
import glob
import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__, errors, metrics
from proxy.jobs.registry import Jobs, JobsUnavailable
from proxy.jobs.spec import SpecError, parse_warm

disable_created_metrics()  # type: ignore[no-untyped-call]


MAX_WARM_BODY = 64 * 1024 * 1024  # a warm job's keys list of a million names fits
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AdminAuth:
    """The bearer token state-changing admin routes require; None: none needed (loopback)."""

    token: str | None = field(default=None, repr=False)

    def check(self, request: web.Request) -> None:
        """Raise 401 unless ``request`` carries the token (always passes without one)."""
        if self.token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = self.token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise web.HTTPUnauthorized(
                text='{"error": "this admin route needs Authorization: Bearer <admin token>"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="slipstream-admin"'},
            )


ADMIN_AUTH = web.AppKey("admin_auth", AdminAuth)


def state_changing(handler: Handler) -> Handler:
    """Wrap an admin route that changes state (jobs, prefetch, pins, cache drops): it runs
    only for a request carrying the admin token (see AdminAuth)."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        request.app[ADMIN_AUTH].check(request)
        return await handler(request)

    return guarded


@dataclass
class Health:
    """Readiness (false while starting and while draining), and what a scrape runs first."""

    started: bool = False
    draining: bool = False
    workers_ready: Callable[[], bool] = lambda: True
    # before a scrape: the workers write their tallies out (proxy/warmfeed.py, flush)
    flush_workers: Callable[[], Awaitable[None]] | None = None

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
        usage: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._totals = totals
        self._map_usage = map_usage
        self._max = max_bytes
        self._usage = usage  # pinned bytes and quotas: proxy.cache.quota.usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            used, objects = self._totals()
            map_used, map_size = self._map_usage()
            usage = self._usage() if self._usage is not None else None
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
        if usage is not None:
            yield from _usage_gauges(usage)
        info = GaugeMetricFamily("slipstream_build_info", "Build information", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _usage_gauges(usage: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    """Pinned bytes; per configured quota (labels: cache.quotas' bucket names) its limit,
    the bytes it holds and the pinned ones among them."""
    yield GaugeMetricFamily(
        "slipstream_cache_pinned_bytes", "Bytes of pinned objects", value=usage["pinned_bytes"]
    )
    families = {
        "limit": GaugeMetricFamily(
            "slipstream_cache_quota_bytes", "cache.quotas per bucket", labels=["bucket"]
        ),
        "used": GaugeMetricFamily(
            "slipstream_cache_quota_used_bytes",
            "Bytes cached for a bucket with a quota",
            labels=["bucket"],
        ),
        "pinned": GaugeMetricFamily(
            "slipstream_cache_quota_pinned_bytes",
            "Pinned bytes of a bucket with a quota",
            labels=["bucket"],
        ),
    }
    for bucket, values in usage["quotas"].items():
        for name, family in families.items():
            family.add_metric([bucket], values[name])
    yield from families.values()


class _WorkersCollector(Collector):
    """The workers' metrics from the multiprocess files, less the job metrics: jobs run in
    this process (see SupervisorCore in app.py), whose own values ``_JobsCollector`` exports."""

    def __init__(self) -> None:
        self._path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        self._skip = {m._name for m in metrics.JOB_METRICS}

    def collect(self) -> Iterator[Metric]:
        # A file a starting worker has just created is empty until it sizes it: its values
        # count from the next scrape (prometheus_client would fail the whole scrape on it).
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _sized(f)]
        merge = multiprocess.MultiProcessCollector.merge
        for family in merge(files, accumulate=True):  # type: ignore[no-untyped-call]
            if family.name not in self._skip:
                yield family


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) >= 8  # its header: the bytes in use
    except OSError:  # gone meanwhile (a dead worker's live gauges)
        return False


class _JobsCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        metrics.flush()  # this process's own tallies (the jobs' per-key counts) first
        for m in metrics.JOB_METRICS:
            yield from m.collect()


def metrics_registry(cache: CacheCollector) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        registry.register(_WorkersCollector())
        registry.register(_JobsCollector())
    else:
        registry = REGISTRY
    registry.register(cache)
    return registry


def build_admin_app(
    health: Health,
    registry: CollectorRegistry,
    cache_stats: Callable[[], dict[str, Any]],
    auth: AdminAuth,
    jobs: Jobs | None = None,
) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        if health.flush_workers is not None:
            await health.flush_workers()
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

    app = web.Application(client_max_size=MAX_WARM_BODY)
    app[ADMIN_AUTH] = auth
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/v1/cache", cache_info)
    if jobs is not None:
        add_job_routes(app, jobs)
    return app


def _json_error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def add_job_routes(app: web.Application, jobs: Jobs) -> None:
    """POST /admin/v1/warm, GET /admin/v1/jobs[/{id}], DELETE /admin/v1/jobs/{id} (cancel)."""

    @state_changing
    async def warm(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_WARM_BODY:
            return _json_error(413, f"the body is over {MAX_WARM_BODY} bytes", "body")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _json_error(400, "body: expected a JSON object", "body")
        try:
            job = jobs.warm(parse_warm(body))
        except SpecError as exc:
            return _json_error(400, str(exc), exc.field)
        except errors.NoSuchBucket:
            return _json_error(404, "bucket: no such bucket is configured", "bucket")
        except JobsUnavailable as exc:
            return _json_error(503, str(exc))
        return web.json_response({"id": job.id, "state": job.state}, status=202)

    async def list_jobs(_: web.Request) -> web.Response:
        return web.json_response({"jobs": [j.describe() for j in jobs.all()]})

    async def get_job(request: web.Request) -> web.Response:
        job = jobs.get(request.match_info["id"])
        if job is None:
            return _json_error(404, "no such job", "id")
        return web.json_response(job.describe())

    @state_changing
    async def cancel_job(request: web.Request) -> web.StreamResponse:
        job = jobs.get(request.match_info["id"])
        if job is None:
            return _json_error(404, "no such job", "id")
        job.cancel()
        await job.wait()
        return web.json_response(job.describe())

    app.router.add_post("/admin/v1/warm", warm)
    app.router.add_get("/admin/v1/jobs", list_jobs)
    app.router.add_get("/admin/v1/jobs/{id}", get_job)
    app.router.add_delete("/admin/v1/jobs/{id}", cancel_job)
