"""The admin prefetch API (training-aware prefetch, see proxy/core/prefetch.py).

POST   /admin/v1/prefetch             {"bucket": B, "keys": [...], "window": N,
                                       "window_bytes": M, "concurrency": C} -> 201 job
POST   /admin/v1/prefetch/{id}/keys   {"keys": [...]}: append the next part of the order
GET    /admin/v1/prefetch             every job's progress
GET    /admin/v1/prefetch/{id}        one job's progress
DELETE /admin/v1/prefetch/{id}        cancel it

A JSON body is at most ``MAX_JSON_BODY`` (64 MiB: a million keys of 50 bytes). Longer orders
come as NDJSON (``Content-Type: application/x-ndjson``), one key a line (a JSON string or
``{"key": ...}``), options in the query string
(``?bucket=B&window=N&window_bytes=M&concurrency=C``). NDJSON is read as it arrives and
encoded part by part: the job starts at once and fetches its first keys while the rest of the
order is still coming, and the order is never one list of str. A bad line answers 400 naming
it; a new job is then cancelled, keys appended to a job before the bad line stay appended.

State-changing routes are wrapped in ``state_changing`` (the admin token).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.admin import state_changing
from proxy.core.prefetch import Prefetcher, PrefetchJob, PrefetchUnavailable
from proxy.core.prefetch_order import PrefetchError, encode_lines

MAX_JSON_BODY = 64 * 1024**2  # about a million keys of 50 bytes; more: NDJSON or parts
NDJSON = "application/x-ndjson"
BATCH = 1024**2  # NDJSON bytes encoded at once (in a thread)
IDLE = 60.0  # seconds an NDJSON body may send nothing


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise _too_large(request.content_length)
    raw = bytearray()
    async for piece in request.content.iter_any():
        raw += piece
        if len(raw) > MAX_JSON_BODY:
            raise _too_large(len(raw))
    try:
        body = await asyncio.to_thread(json.loads, bytes(raw))
    except (ValueError, UnicodeDecodeError):
        raise PrefetchError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise PrefetchError("the body must be a JSON object")
    return body


def _too_large(size: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_size=MAX_JSON_BODY,
        actual_size=size,
        text=json.dumps({"error": f"a JSON body is at most {MAX_JSON_BODY} bytes: send NDJSON"}),
        content_type="application/json",
    )


async def _batches(request: web.Request, job: PrefetchJob) -> AsyncIterator[tuple[bytes, int]]:
    """The body in runs of whole lines, each with its first line's number: about ``BATCH``
    bytes, or whatever has come once the job has fetched all it has (so it starts at once)."""
    tail, line = bytearray(), 1
    while piece := await _some(request):
        tail += piece
        if len(tail) < BATCH and job.next < len(job.keys):
            continue
        cut = tail.rfind(b"\n") + 1
        if cut == 0:
            if len(tail) > 4 * BATCH:
                raise PrefetchError(f"line {line}: too long")
            continue
        run = bytes(tail[:cut])
        del tail[:cut]
        yield run, line
        line += run.count(b"\n")
    if tail:
        yield bytes(tail), line


async def _some(request: web.Request) -> bytes:
    """The next bytes of the body (b"" at its end); a client that stalls for IDLE seconds, or
    whose body is cut, gets a PrefetchError (and a job it was creating is cancelled)."""
    try:
        async with asyncio.timeout(IDLE):
            return await request.content.readany()
    except TimeoutError:
        raise PrefetchError(f"the body stalled: nothing for {IDLE:.0f}s") from None
    except (HttpProcessingError, ConnectionError):
        raise PrefetchError("the body ended early") from None


async def _stream_into(request: web.Request, job: PrefetchJob) -> None:
    async for run, first in _batches(request, job):
        if job.state == "cancelled":
            raise PrefetchError("the job was cancelled")
        job.add(await asyncio.to_thread(encode_lines, run, first))
        job.start()  # a job that had caught up (and finished) picks up the new keys


def _query_options(
    request: web.Request,
) -> tuple[str | None, int | None, int | None, int | None]:
    q = request.query

    def number(name: str) -> int | None:
        raw = q.get(name)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise PrefetchError(f"{name}: expected an integer") from None

    return q.get("bucket"), number("window"), number("window_bytes"), number("concurrency")


def add_prefetch_routes(app: web.Application, prefetcher: Prefetcher) -> None:
    def job_or_404(request: web.Request) -> PrefetchJob:
        try:
            return prefetcher.get(request.match_info["id"])
        except KeyError:
            raise web.HTTPNotFound(
                text='{"error": "no such prefetch job"}', content_type="application/json"
            ) from None

    async def create_streamed(request: web.Request) -> PrefetchJob:
        job = prefetcher.open(*_query_options(request))
        try:
            await _stream_into(request, job)
        except BaseException:
            await prefetcher.cancel(job.id)
            raise
        finally:
            job.received()
        return job

    @state_changing
    async def create(request: web.Request) -> web.StreamResponse:
        try:
            if request.content_type == NDJSON:
                job = await create_streamed(request)
            else:
                body = await _json_body(request)
                job = await prefetcher.start(
                    body.get("bucket"),
                    body.get("keys"),
                    body.get("window"),
                    body.get("window_bytes"),
                    body.get("concurrency"),
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
            if request.content_type == NDJSON:
                await _stream_into(request, prefetcher.extensible(job.id))
            else:
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
