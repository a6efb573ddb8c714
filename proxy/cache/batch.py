"""What one write transaction of the index leaves to do once it commits (``Batch``), and the
hand-back of its ops' results to the event loops that wait on them (``hand_back``, called on
the index's writer thread)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Batch:
    """What one write transaction leaves to do after it commits."""

    unlink: list[tuple[bytes, str, int]] = field(default_factory=list)
    evicted_objects: int = 0
    evicted_bytes: int = 0
    file_bytes: int = 0  # the bytes of the chunk files in ``unlink``
    refused: list[bytes] = field(default_factory=list)  # not admitted (eviction.place)


Settled = tuple["asyncio.Future[Any]", Any, "BaseException | None"]  # an op's future, result, error


def hand_back(results: list[Settled]) -> None:
    """Settle each op's future on its own loop: one wake-up of each loop per commit. Any
    thread."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
    for settled in results:
        by_loop.setdefault(settled[0].get_loop(), []).append(settled)
    for loop, settling in by_loop.items():
        loop.call_soon_threadsafe(_settle_all, settling)


def _settle_all(settling: list[Settled]) -> None:
    for fut, value, exc in settling:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
