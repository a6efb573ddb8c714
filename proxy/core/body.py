"""What a read answers with: the object's metadata, the resolved range and the body's parts.

A part is a slice of a cached chunk file (``FileSlice``, for sendfile) or bytes in memory.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.model import ObjectMeta

if TYPE_CHECKING:
    from proxy.core.fills import Fill


@dataclass(frozen=True, slots=True)
class FileSlice:
    path: Path
    offset: int
    length: int
    oid: bytes
    gen: str
    index: int


Part = memoryview | bytes | FileSlice


@dataclass(slots=True)
class ObjectRead:
    meta: ObjectMeta
    first: int
    last: int
    partial: bool
    source: str  # "cache" or "backend"
    parts: AsyncIterator[Part]
    body: bytes | None = None  # set when the whole answer is already in memory
    # the read stopped at the end of its first chunk (Reads.read's clip): the rest of the
    # range is other nodes' (a cluster's per-chunk ownership)
    clipped: bool = False
    # a cold read whose answer lies in one fill: ``parts`` stream it; a caller that wants it
    # whole may await ``fill().whole(first, last)`` instead (None: the fill failed, stream).
    # Weak: a read kept after its parts were passed on does not keep the fill's buffer.
    fill: weakref.ref[Fill] | None = None

    @property
    def length(self) -> int:
        return self.last - self.first + 1 if self.meta.size else 0


class _NoParts:
    """The parts of an answer held whole in ``ObjectRead.body``: none. Shared, stateless."""

    def __aiter__(self) -> _NoParts:
        return self

    async def __anext__(self) -> Part:
        raise StopAsyncIteration


NO_PARTS = _NoParts()


def read_slice(part: FileSlice) -> bytes | None:
    """Blocking; None if the chunk file is gone."""
    try:
        with open(part.path, "rb") as f:
            f.seek(part.offset)
            return f.read(part.length)
    except FileNotFoundError:
        return None
