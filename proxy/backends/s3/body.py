"""A client's body on its way to the store, as botocore takes it: streamed, never replayed."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from proxy import errors

T = TypeVar("T")


class StreamBody:
    """An async byte stream botocore accepts as a Body and aiohttp sends as it is produced."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self.error: errors.S3Error | None = None  # the client's body failed (BadDigest, ...)
        self._started = False

    def read(self, *_: Any) -> bytes:
        raise io.UnsupportedOperation("a streaming body is read asynchronously")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        if self._started:  # a retry cannot replay a stream: fail it rather than send a stub
            raise self.error or errors.BackendUnavailable("The upload to the store broke.")
        self._started = True
        try:
            async for piece in self._body:
                yield piece
        except errors.S3Error as exc:
            self.error = exc
            raise

    async def send(self, call: Awaitable[T]) -> T:
        """Await the store call; a failure of the body itself wins over the transport error it
        caused (aiohttp reports it as a broken connection)."""
        try:
            return await call
        except errors.S3Error:
            if self.error is not None:
                raise self.error from None
            raise
