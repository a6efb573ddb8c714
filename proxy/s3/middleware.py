"""Request id, concurrency bound, S3 errors rendered as XML, metrics and the access log."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy import errors, log, metrics
from proxy.s3 import xml
from proxy.s3.responses import request_ids

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.BaseRequest, Handler], Awaitable[web.StreamResponse]]


def error_response(request: web.BaseRequest, exc: errors.S3Error) -> web.Response:
    headers = request_ids(request)
    rid = headers["x-amz-request-id"]
    if exc.status == 304:
        return web.Response(status=304, headers={**headers, **exc.fields})
    if exc.status == 503:
        headers["Retry-After"] = "1"
    body = b"" if request.method == "HEAD" else xml.error(exc.code, exc.message, rid, exc.fields)
    resp = web.Response(
        status=exc.status, body=body, headers=headers, content_type="application/xml"
    )
    if request.body_exists and not request.content.is_eof():
        # A body we never read (a client that sent Expect: 100-continue holds it back) would
        # be parsed as the next request: close the connection instead of reusing it.
        # https://www.rfc-editor.org/rfc/rfc9110#section-10.1.1
        resp.force_close()
    return resp


def make_middleware(max_concurrency: int, access: bool) -> Middleware:
    in_flight = 0
    ids = itertools.count(1)
    prefix = f"{os.getpid():X}"
    request_counters: dict[tuple[str, str], metrics.Tally] = {}
    durations: dict[str, metrics.HistogramTally] = {}

    async def s3_middleware(request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        rid = f"{prefix}-{next(ids):X}"
        request["request_id"] = rid
        started = time.perf_counter()
        in_flight += 1
        try:
            if in_flight > max_concurrency:
                metrics.SLOWDOWNS.inc()
                raise errors.SlowDown("Too many requests in flight; retry.")
            resp = await handler(request)
        except errors.S3Error as exc:
            resp = error_response(request, exc)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            resp = error_response(request, errors.ServiceUnavailable("Timed out."))
        except web.HTTPException as exc:
            resp = error_response(request, _from_http(exc))
        except Exception:
            log.server.exception("unhandled error, request %s", rid)
            resp = error_response(request, errors.InternalError())
        finally:
            in_flight -= 1
        op = metrics.operation_label(request.get("op"))  # labels from fixed sets only
        elapsed = time.perf_counter() - started
        status = metrics.status_label(resp.status)
        counter = request_counters.get((op, status))
        if counter is None:
            counter = request_counters[(op, status)] = metrics.Tally(
                metrics.REQUESTS.labels(op, status)
            )
        counter.inc()
        duration = durations.get(op)
        if duration is None:
            duration = durations[op] = metrics.HistogramTally(metrics.REQUEST_DURATION.labels(op))
        duration.observe(elapsed)
        if access:
            log.access.info(
                "%s %s %s %d %s %.1fms",
                request.remote,
                request.method,
                _printable(request.path),
                resp.status,
                op,
                elapsed * 1000,
                extra={
                    "request_id": rid,
                    "operation": op,
                    "status": resp.status,
                    "source": request.get("source", ""),
                },
            )
        return resp

    return s3_middleware


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a client's path never breaks a log line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _from_http(exc: web.HTTPException) -> errors.S3Error:
    if exc.status == 413:
        return errors.InvalidRequest("The request body is too large.")
    if exc.status == 405:
        return errors.MethodNotAllowed()
    err = errors.InvalidRequest(exc.reason)
    err.status = exc.status if 400 <= exc.status < 500 else 400
    return err
