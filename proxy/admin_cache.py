"""The cache routes of the admin API: POST /admin/v1/pin, /admin/v1/unpin, /admin/v1/evict.

Each takes ``{"bucket": B, "prefix": P}`` (a client-facing bucket and a key prefix, "" for the
whole bucket), needs the admin token (``state_changing``) and answers the objects and bytes
it touched. The prefix is resolved through the bucket's mapping to the names the cache keeps
(backend, remote bucket, remote key prefix), as warm jobs resolve theirs. Each walks the whole
index (see proxy/cache/pins.py): seconds for millions of cached objects, off the event loop.

In a cluster each applies on every live member (proxy/cluster/fanout.py): the objects and
bytes are the sums, ``applied`` the nodes that applied it, ``nodes`` each one's answer (or its
error); unpin answers 404 only when no node had the pin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy import errors, log
from proxy.admin import _json_error, state_changing
from proxy.cache import pins
from proxy.cache.index import Index
from proxy.config import MountConfig
from proxy.routing import remote_of

if TYPE_CHECKING:
    from proxy.cluster.fanout import Fanout

MAX_BODY = 64 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, message: str, field: str) -> None:
        super().__init__(message)
        self.status, self.field = status, field


async def _target(request: web.Request, buckets: Mapping[str, MountConfig]) -> pins.Target:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(413, f"the body is over {MAX_BODY} bytes", "body")
    try:
        body: Any = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "body: expected a JSON object", "body") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "body: expected a JSON object", "body")
    unknown = sorted(set(body) - {"bucket", "prefix"})
    if unknown:
        raise BadRequest(400, f"{unknown[0]}: unknown field", str(unknown[0])[:64])
    for name in ("bucket", "prefix"):
        if not isinstance(body.get(name), str):
            given = "missing" if name not in body else "not a string"
            raise BadRequest(400, f"{name}: expected a string ({given})", name)
    bucket, prefix = body["bucket"], body["prefix"]
    try:
        backend, remote, base = remote_of(buckets, bucket)
    except errors.NoSuchBucket:
        raise BadRequest(404, "bucket: no such bucket is configured", "bucket") from None
    return pins.Target(backend, remote, base + prefix)


def _answer(counts: pins.Counts, **extra: Any) -> web.Response:
    return web.json_response({"objects": counts.objects, "bytes": counts.bytes, **extra})


async def _everywhere(
    fanout: Fanout, action: str, request: web.Request, local: web.Response
) -> web.Response:
    """This node's answer with the other live members' added: sums, who applied it, who not."""
    asked = json.loads(await request.read())
    here = json.loads(local.text or "{}") if local.status == 200 else {}
    nodes: list[dict[str, Any]] = [
        {"address": "self", "objects": here.get("objects", 0), "bytes": here.get("bytes", 0)}
        | ({"existed": local.status == 200} if action == "unpin" else {})
    ]
    for got in await fanout.apply(action, asked["bucket"], asked["prefix"]):
        nodes.append(got if action == "unpin" else {k: v for k, v in got.items() if k != "existed"})
    applied = [n for n in nodes if "error" not in n and n.get("existed", True)]
    if action == "unpin" and not applied:
        return local  # no node had the pin: the 404
    body = {
        "objects": sum(n["objects"] for n in applied),
        "bytes": sum(n["bytes"] for n in applied),
        "applied": len(applied),
        "failed": sum(1 for n in nodes if "error" in n),
        "nodes": nodes,
    }
    return web.json_response(body)


def add_cache_routes(
    app: web.Application,
    index: Index,
    buckets: Mapping[str, MountConfig],
    fanout: Fanout | None = None,
) -> None:
    def route(action: str, run: Any) -> None:
        @state_changing
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                target = await _target(request, buckets)
            except BadRequest as exc:
                return _json_error(exc.status, str(exc), exc.field)
            response: web.Response = await run(request, target)
            if fanout is not None:
                response = await _everywhere(fanout, action, request, response)
            log.cache.info("admin %s: %s", action, response.text)
            return response

        app.router.add_post(f"/admin/v1/{action}", handler)

    async def pin(request: web.Request, target: pins.Target) -> web.Response:
        return _answer(await pins.pin(index, target))

    async def unpin(request: web.Request, target: pins.Target) -> web.Response:
        existed, counts = await pins.unpin(index, target)
        if not existed:
            return _json_error(404, "prefix: no pin on this bucket and prefix", "prefix")
        return _answer(counts)

    async def evict(request: web.Request, target: pins.Target) -> web.Response:
        return _answer(await pins.evict(index, target))

    route("pin", pin)
    route("unpin", unpin)
    route("evict", evict)
