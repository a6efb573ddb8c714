"""One store call, measured and with its library's errors mapped to S3 errors once.

https://www.python-httpx.org/ (``map_httpcore_exceptions``) is the model: each backend names
its library's exception types and a mapping; everything else that means "unreachable"
(connection, OS and timeout errors) becomes BackendUnavailable here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from proxy import errors, log, metrics

T = TypeVar("T")
Mapper = Callable[[Exception], errors.S3Error]
_UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError)


def record_error(
    backend: str, operation: str, mapped: errors.S3Error, cause: BaseException
) -> None:
    metrics.BACKEND_ERRORS.labels(backend, operation, mapped.code).inc()
    if mapped.status >= 500:
        log.backend.warning("backend %s %s failed: %s", backend, operation, cause)


async def measured(
    backend: str,
    operation: str,
    fn: Callable[[], Awaitable[T]],
    library_errors: tuple[type[Exception], ...],
    mapper: Mapper,
) -> T:
    """Await ``fn()``; count it, time it to its answer, and raise only S3 errors."""
    metrics.BACKEND_REQUESTS.labels(backend, operation).inc()
    started = time.perf_counter()
    try:
        result = await fn()
    except library_errors as exc:
        mapped = mapper(exc)
        record_error(backend, operation, mapped, exc)
        raise mapped from exc
    except _UNREACHABLE as exc:
        mapped = errors.BackendUnavailable(f"The store could not be reached: {type(exc).__name__}.")
        record_error(backend, operation, mapped, exc)
        raise mapped from exc
    metrics.BACKEND_LATENCY.labels(backend, operation).observe(time.perf_counter() - started)
    return result
