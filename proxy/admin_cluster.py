"""GET /admin/v1/cluster: this node's view of the cluster (members, live ones, self, replicas,
and per node: live, share of the objects it owns, what it caches as its last health answer
said) and what it holds (cached objects and bytes). Without a cluster: ``{"enabled": false}``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.cluster.node import Cluster


def add_cluster_routes(
    app: web.Application, cluster: Cluster | None, totals: Callable[[], tuple[int, int]]
) -> None:
    if cluster is not None and cluster.totals is None:
        cluster.totals = totals  # the supervisor's own cluster view (workers > 1)

    async def cluster_info(_: web.Request) -> web.Response:
        used, objects = totals()
        cached = {"cached_objects": objects, "cached_bytes": used}
        if cluster is None:
            return web.json_response({"enabled": False, **cached})
        return web.json_response({"enabled": True, **cluster.status(), **cached})

    app.router.add_get("/admin/v1/cluster", cluster_info)
