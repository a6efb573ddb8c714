"""GetObject and HeadObject with ``partNumber``: which bytes of the object a part is.

An object's ETag says whether it has parts: ``"<md5>-N"`` is a multipart object of N parts;
any other ETag is one piece, whose only part is 1 (the whole object), as is the one part of
``-1``. Where part N begins is
the store's to say (Backend.part_range: a HEAD with partNumber on S3 stores); the answer is
kept, per ETag, for the next reader of the same part. Stores without native multipart keep a
completed upload as one piece (its ETag the MD5 of the whole), so their objects have one part.

https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html#API_GetObject_RequestSyntax
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from proxy import errors
from proxy.core.metadata import oid_of
from proxy.core.reads import Reads
from proxy.model import ObjectMeta
from proxy.routing import Mount

_PARTS = re.compile(r'-(\d+)"?$', re.ASCII)
KNOWN_RANGES = 4096


def parts_count(etag: str) -> int | None:
    """N for a multipart ETag (``"<md5>-N"``), else None."""
    m = _PARTS.search(etag)
    return int(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class PartSpan:
    meta: ObjectMeta
    first: int
    last: int  # inclusive; first - 1 for an empty object
    count: int | None  # parts of a multipart object; None for one piece


class PartRanges:
    def __init__(self, reads: Reads) -> None:
        self.reads = reads
        self._known: OrderedDict[tuple[bytes, str, int], tuple[int, int]] = OrderedDict()

    async def span(self, mount: Mount, key: str, number: int) -> PartSpan:
        """Part ``number`` of the object as the proxy serves it now; 416 InvalidPartNumber
        past the last part, NoSuchKey before an upload completes."""
        meta = await self.reads.head(mount, key)
        count = parts_count(meta.etag)
        if count is None:
            if number != 1:
                raise _beyond(number, 1)
            return PartSpan(meta, 0, meta.size - 1, None)
        if number > count:
            raise _beyond(number, count)
        if count == 1:  # one part is the whole object (also the "-1" ETags of kit/keys.py)
            return PartSpan(meta, 0, meta.size - 1, count)
        known = (oid_of(mount, key), meta.etag, number)
        rng = self._known.get(known)
        if rng is None:
            rng = await mount.backend.part_range(mount.bucket, key, number)
            if rng is None:
                raise errors.NotImplementedS3(
                    "partNumber is not supported for multipart objects in this store."
                )
            self._known[known] = rng
            while len(self._known) > KNOWN_RANGES:
                self._known.popitem(last=False)
        first, last = rng
        if not 0 <= first <= last < meta.size:
            raise errors.InternalError(f"the store's range for part {number} does not fit")
        return PartSpan(meta, first, last, count)


def _beyond(number: int, count: int) -> errors.InvalidPartNumber:
    return errors.InvalidPartNumber(partNumberRequested=str(number), actualPartCount=str(count))
