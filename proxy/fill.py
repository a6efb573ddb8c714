"""One store fetch of one chunk, shared by every reader that wants it while it runs.

The fetch runs as its own task: a reader that goes away never cancels it. Bytes land in a buffer
sized from the response headers, so readers get zero-copy slices as they arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from proxy.model import ObjectMeta


class Fill:
    def __init__(self, oid: bytes, index: int) -> None:
        self.oid = oid
        self.index = index
        self.meta: ObjectMeta | None = None
        self.start = 0  # object offset of buf[0]
        self.buf = bytearray()
        self.filled = 0
        self.done = False
        self.error: BaseException | None = None
        self.from_cache = False
        self._changed = asyncio.Event()
        self._meta_ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    # -- the filler's side --------------------------------------------------------------------
    def begin(self, meta: ObjectMeta, start: int, length: int) -> None:
        self.meta, self.start = meta, start
        self.buf = bytearray(length)
        self._meta_ready.set()

    def append(self, piece: bytes) -> None:
        end = self.filled + len(piece)
        if end > len(self.buf):
            raise ValueError("the store sent more bytes than it announced")
        self.buf[self.filled : end] = piece
        self.filled = end
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done, self.error = True, error
        self._meta_ready.set()
        self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- readers' side ----------------------------------------------------------------------
    async def wait_meta(self) -> ObjectMeta:
        await self._meta_ready.wait()
        if self.meta is None:
            assert self.error is not None
            raise self.error
        return self.meta

    async def read(self, first: int, last: int) -> AsyncIterator[memoryview]:
        """Object bytes first..last (inclusive) as they arrive."""
        await self.wait_meta()
        pos = first - self.start
        end = last - self.start + 1
        if pos < 0 or end > len(self.buf):
            raise ValueError("range outside this chunk")
        view = memoryview(self.buf)
        while pos < end:
            if self.filled > pos:
                upto = min(self.filled, end)
                yield view[pos:upto]
                pos = upto
                continue
            if self.done:
                raise self.error or ConnectionError("the fill ended short")
            await self._changed.wait()
        if self.error is not None and pos < end:
            raise self.error
