"""Value types every layer shares: object metadata, reads, listings, uploads, byte ranges.

They carry no behaviour beyond their own arithmetic, so the cache, the core, the S3 layer and
the backends all import them from here and not from one another.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from proxy import errors

# The x-amz-checksum-* algorithms S3 keeps with an object and returns on GET/HEAD with
# x-amz-checksum-mode (uploads may be verified with more: proxy/s3/checksums.ALGORITHMS).
RETURNED_CHECKSUMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")

# The headers S3 keeps with an object and returns on GET/HEAD (besides Content-Type and the
# x-amz-meta-* user metadata).
STORED_HEADERS = (
    "Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Expires",
    "x-amz-storage-class",
)

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-_]{0,61}[a-z0-9]", re.ASCII)


def valid_bucket_name(name: str, min_length: int = 3) -> bool:
    """S3's bucket naming rule: 3-63 characters of a-z 0-9 . - _, starting and ending with a
    letter or digit, no "..". Configured mounts may pass ``min_length=2`` ("fs", "s3"): such
    short client-facing names have always been accepted in the config.

    https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
    """
    if len(name) < min_length:
        return False
    return bool(_BUCKET_NAME.fullmatch(name)) and ".." not in name


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    size: int
    etag: str  # as S3 sends it, with the double quotes
    last_modified: float  # seconds since the epoch
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = field(default_factory=dict)  # x-amz-meta-* without the prefix
    headers: Mapping[str, str] = field(default_factory=dict)  # Cache-Control, Content-Encoding...
    etag_is_md5: bool = False  # the ETag is the plain MD5 of the bytes, so fills can verify it


@dataclass(slots=True)
class GetResult:
    """A ranged read: ``body`` yields bytes ``start..end`` (inclusive) of the object."""

    meta: ObjectMeta
    start: int
    end: int
    body: AsyncIterator[bytes]
    release: object = None  # an awaitable-returning close hook, called by aclose()

    @property
    def length(self) -> int:
        return max(0, self.end - self.start + 1)

    async def aclose(self) -> None:
        close = self.release
        self.release = None
        if close is not None:
            await close()  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class ListEntry:
    key: str
    size: int
    etag: str
    last_modified: float
    storage_class: str = "STANDARD"


@dataclass(frozen=True, slots=True)
class ListPage:
    entries: list[ListEntry]
    prefixes: list[str]
    truncated: bool
    next_token: str | None  # opaque; hand it back as ``token`` to continue


@dataclass(frozen=True, slots=True)
class PartInfo:
    number: int
    etag: str
    size: int
    last_modified: float


@dataclass(frozen=True, slots=True)
class UploadInfo:
    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    created: float


@dataclass(frozen=True, slots=True)
class ByteRange:
    """``bytes=first-last``, ``bytes=first-`` (last None) or ``bytes=-suffix`` (first None)."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> tuple[int, int]:
        """Inclusive (first, last) within an object of ``size`` bytes, or InvalidRange.

        https://www.rfc-editor.org/rfc/rfc9110#section-14.1.2
        """
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or size == 0:
                raise self._unsatisfiable(size)
            return max(0, size - self.last), size - 1
        if self.first >= size:
            raise self._unsatisfiable(size)
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return self.first, last

    def _unsatisfiable(self, size: int) -> errors.InvalidRange:
        # The fields AWS sends with a 416 (as moto mirrors them).
        first = "" if self.first is None else str(self.first)
        last = "" if self.last is None else str(self.last)
        return errors.InvalidRange(
            rangeRequested=f"bytes={first}-{last}", actualObjectSize=str(size)
        )
