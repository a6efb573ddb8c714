"""One store call: counted, timed, its library's errors mapped to S3 errors once, and tried
again where the store's policy says so.

https://www.python-httpx.org/ (``map_httpcore_exceptions``) is the model: each store names its
library's exception types and, per call, a mapping; everything else that means "unreachable"
(connection, OS and timeout errors) becomes BackendUnavailable here.

Metrics: slipstream_backend_requests_total per attempt, the request duration of every attempt
that got an answer, slipstream_backend_errors_total per failed attempt (by S3 error code).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from proxy import errors, log, metrics

T = TypeVar("T")
Mapper = Callable[[Exception], errors.S3Error]
UNREACHABLE: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError, TimeoutError)


class StoreRefused(errors.InternalFault):
    """A store's error answer (HTTP status, the store's name for the error, its message),
    raised inside a call for the store's mapper; it never leaves StoreCalls."""

    def __init__(self, status: int, message: str, name: str = "") -> None:
        super().__init__(status, message, name)
        self.status = status
        self.message = message
        self.name = name

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


@dataclass(frozen=True, slots=True)
class Retry:
    """Try a failed call again: ``attempts`` in all, on the failures ``when`` accepts, waiting
    ``base * 2**n`` seconds after the n-th failure (from 0), scaled by a factor drawn from
    ``jitter``. ``warn_every``: log each failed attempt (5xx), not only the last."""

    attempts: int
    when: Callable[[errors.S3Error], bool]
    base: float
    jitter: tuple[float, float] = (1.0, 1.0)
    warn_every: bool = False

    def delay(self, failed: int) -> float:
        low, high = self.jitter
        factor = low if low == high else low + (high - low) * random.random()
        return self.base * 2.0**failed * factor


def server_error(failure: errors.S3Error) -> bool:
    return failure.status >= 500


_ONCE = Retry(attempts=1, when=server_error, base=0.0)


class StoreCalls:
    """The calls of one backend. ``library_errors``: what its library raises for an error
    answer (mapped by each call's mapper); ``who`` names the store in "could not be reached"."""

    def __init__(
        self,
        backend: str,
        library_errors: tuple[type[Exception], ...] = (),
        who: str = "The store",
    ) -> None:
        self.name = backend
        self._library = library_errors
        self._who = who

    def count(self, operation: str) -> None:
        metrics.store_call(self.name, operation).requests.inc()

    def fault(self, operation: str, code: str) -> None:
        metrics.BACKEND_ERRORS.labels(self.name, operation, code).inc()

    async def call(
        self,
        operation: str,
        fn: Callable[[], Awaitable[T]],
        mapper: Mapper | None = None,
        *,
        retry: Retry | None = None,
        check: Callable[[T], Awaitable[errors.S3Error | None]] | None = None,
        target: str | None = None,
    ) -> T:
        """Await ``fn()`` and raise only S3 errors (an S3Error ``fn`` raises itself passes
        untouched and uncounted). ``mapper``: for the library's errors (every caller of a store
        with ``library_errors`` gives one). ``check``: turns an answer into a failure (after it was
        timed), or None to accept it. ``target`` (a path) goes into the warning."""
        policy = retry or _ONCE
        failed = 0
        meters = metrics.store_call(self.name, operation)
        while True:
            meters.requests.inc()
            started = time.perf_counter()
            cause: BaseException | None
            try:
                result = await fn()
            except self._library as exc:
                if mapper is None:
                    raise
                failure, cause = mapper(exc), exc
            except UNREACHABLE as exc:
                failure = errors.BackendUnavailable(
                    f"{self._who} could not be reached: {type(exc).__name__}."
                )
                cause = exc
            else:
                meters.latency.observe(time.perf_counter() - started)
                refused = await check(result) if check is not None else None
                if refused is None:
                    return result
                failure, cause = refused, None
            self.fault(operation, failure.code)
            last = failed + 1 >= policy.attempts or not policy.when(failure)
            if failure.status >= 500 and (last or policy.warn_every):
                what = operation if target is None else f"{operation} {target}"
                log.backend.warning(
                    "backend %s %s failed: %s", self.name, what, failure if cause is None else cause
                )
            if last:
                raise failure from cause
            await asyncio.sleep(policy.delay(failed))
            failed += 1
