"""Sequential read-ahead across requests: shards read in order with ranged GETs.

A client whose ranged GET of an object starts at the byte just after the previous ranged GET
of it ended (chunk i, then chunk i+1, or smaller pieces back to back) is reading a stream: the
``SEQ_AHEAD`` chunks after the one it just read are filled before it asks. Repeated reads of
one range (many readers of one header) are not a stream. Bounded per stream (``SEQ_AHEAD``
chunks), by the number of streams followed (``MAX_STREAMS``, the oldest forgotten first)
and by fill memory: a chunk starts only if its memory is free now (``Fills.get_ahead``),
else it is left for the reader.
"""

from __future__ import annotations

from collections import OrderedDict

from proxy.cache.record import Record
from proxy.core.fills import Fills
from proxy.model import ObjectMeta
from proxy.routing import Mount

SEQ_AHEAD = 4
MAX_STREAMS = 4096


class ReadAhead:
    def __init__(self, fills: Fills, chunk_size: int) -> None:
        self._fills = fills
        self._cs = chunk_size
        self._last: OrderedDict[bytes, int] = OrderedDict()  # oid -> last byte read

    def note(
        self,
        mount: Mount,
        key: str,
        oid: bytes,
        rec: Record | None,
        meta: ObjectMeta,
        first: int,
        last: int,
    ) -> None:
        """A ranged read of bytes first..last: start the chunks after it if it continues one."""
        if meta.size <= self._cs:
            return
        before = self._last.pop(oid, None)
        self._last[oid] = last
        if len(self._last) > MAX_STREAMS:
            self._last.popitem(last=False)
        if before is None or first != before + 1:
            return  # a first, repeated or random read
        hi = last // self._cs
        end = min(hi + SEQ_AHEAD, (meta.size - 1) // self._cs)
        for i in range(hi + 1, end + 1):
            if rec is not None and rec.has_chunk(i):
                continue
            if self._fills.get_ahead(mount, key, oid, i, meta) is None:
                return  # no fill memory free now: the reader fetches these itself
