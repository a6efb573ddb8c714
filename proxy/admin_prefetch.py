"""The admin prefetch API (training-aware prefetch, see proxy/core/prefetch.py).

POST   /admin/v1/prefetch             {"bucket": B, "keys": [...], "window": N,
                                       "window_bytes": M (optional)} -> 201 job
POST   /admin/v1/prefetch/{id}/keys   {"keys": [...]}: append the next part of the order
GET    /admin/v1/prefetch             every job's progress
GET    /admin/v1/prefetch/{id}        one job's progress
DELETE /admin/v1/prefetch/{id}        cancel it

State-changing routes are wrapped in ``state_changing`` (the admin token).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from proxy.admin import state_changing
from proxy.core.prefetch import Prefetcher, PrefetchError, PrefetchJob, PrefetchUnavailable

MAX_BODY = 256 * 1024**2  # about 5 million keys of 40 bytes in one body; more: append parts


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    raw = bytearray()
    async for piece in request.content.iter_any():
        raw += piece
        if len(raw) > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
    try:
        body = await asyncio.to_thread(json.loads, bytes(raw))
    except (ValueError, UnicodeDecodeError):
        raise PrefetchError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise PrefetchError("the body must be a JSON object")
    return body


def add_prefetch_routes(app: web.Application, prefetcher: Prefetcher) -> None:
    def job_or_404(request: web.Request) -> PrefetchJob:
        try:
            return prefetcher.get(request.match_info["id"])
        except KeyError:
            raise web.HTTPNotFound(
                text='{"error": "no such prefetch job"}', content_type="application/json"
            ) from None

    @state_changing
    async def create(request: web.Request) -> web.StreamResponse:
        try:
            body = await _json_body(request)
            job = await prefetcher.start(
                body.get("bucket"), body.get("keys"), body.get("window"), body.get("window_bytes")
            )
        except PrefetchError as exc:
            return _error(400, str(exc))
        except PrefetchUnavailable as exc:
            return _error(503, str(exc))
        return web.json_response(job.describe(), status=201)

    @state_changing
    async def append(request: web.Request) -> web.StreamResponse:
        job = job_or_404(request)
        try:
            body = await _json_body(request)
            await prefetcher.append(job.id, body.get("keys"))
        except PrefetchError as exc:
            return _error(400, str(exc))
        return web.json_response(job.describe())

    async def listing(_: web.Request) -> web.StreamResponse:
        return web.json_response({"jobs": [j.describe() for j in prefetcher.jobs()]})

    async def show(request: web.Request) -> web.StreamResponse:
        return web.json_response(job_or_404(request).describe())

    @state_changing
    async def cancel(request: web.Request) -> web.StreamResponse:
        job = job_or_404(request)
        await prefetcher.cancel(job.id)
        return web.json_response(job.describe())

    app.router.add_post("/admin/v1/prefetch", create)
    app.router.add_get("/admin/v1/prefetch", listing)
    app.router.add_post("/admin/v1/prefetch/{id}/keys", append)
    app.router.add_get("/admin/v1/prefetch/{id}", show)
    app.router.add_delete("/admin/v1/prefetch/{id}", cancel)
