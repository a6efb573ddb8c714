"""Object bodies on their way out of a store: counted (slipstream_backend_bytes_total), with a
broken connection mid-body mapped to BackendUnavailable, and the byte window a read serves."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import aiohttp

from proxy import errors, metrics
from proxy.backends.kit.calls import UNREACHABLE, StoreCalls
from proxy.model import ObjectMeta

READ_SIZE = 256 * 1024
BROKE = "The store connection broke mid-body."


async def metered(
    calls: StoreCalls,
    pieces: AsyncIterator[bytes],
    *,
    operation: str = "GetObject",
    failures: tuple[type[Exception], ...] = UNREACHABLE,
    broke: str = BROKE,
) -> AsyncGenerator[bytes, None]:
    """``pieces``, each counted; ``failures`` while reading become BackendUnavailable."""
    counted = metrics.store_bytes(calls.name)
    try:
        async for piece in pieces:
            counted.inc(len(piece))
            yield piece
    except failures as exc:
        calls.fault(operation, "BodyRead")
        raise errors.BackendUnavailable(broke) from exc


class Answer(Protocol):
    """A response whose body is read in pieces (kit/http1.py's Response)."""

    async def read(self, n: int) -> bytes: ...

    def release(self) -> None: ...


class MeteredBody:
    """``metered(calls, answer.pieces(READ_SIZE))`` as a plain async iterator: the same pieces,
    counts and failures, released at its end. Two async generators per body cost a fill their
    registration with the loop and, left unfinished (a fill stops at the chunk's last byte),
    an aclose task each; this costs neither."""

    __slots__ = ("_answer", "_calls", "_counted")

    def __init__(self, calls: StoreCalls, answer: Answer) -> None:
        self._answer = answer
        self._calls = calls
        self._counted = metrics.store_bytes(calls.name)

    def __aiter__(self) -> MeteredBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            piece = await self._answer.read(READ_SIZE)
        except UNREACHABLE as exc:
            self._calls.fault("GetObject", "BodyRead")
            raise errors.BackendUnavailable(BROKE) from exc
        if not piece:
            self._answer.release()
            raise StopAsyncIteration
        self._counted.inc(len(piece))
        return piece


async def response_pieces(
    resp: aiohttp.ClientResponse, length: int | None = None
) -> AsyncGenerator[bytes, None]:
    """The body of ``resp`` (at most ``length`` bytes) in pieces of READ_SIZE at most; read to
    its end, the response is released (its connection goes back to the pool)."""
    left = length
    while left is None or left > 0:
        piece = await resp.content.read(READ_SIZE if left is None else min(READ_SIZE, left))
        if not piece:
            resp.release()
            return
        if left is not None:
            left -= len(piece)
        yield piece


async def empty() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def read_window(
    meta: ObjectMeta, start: int | None, end: int | None, if_match: str | None
) -> tuple[int, int]:
    """(first, last) byte a read of ``meta``'s object serves (``last < first``: none).
    Raises PreconditionFailed (``if_match`` is not its ETag) or InvalidRange (``start`` lies
    beyond a non-empty object)."""
    if if_match and if_match != meta.etag:
        raise errors.PreconditionFailed()
    if start is None:
        return 0, meta.size - 1
    if start >= meta.size > 0:
        raise errors.InvalidRange()
    return start, meta.size - 1 if end is None else min(end, meta.size - 1)
