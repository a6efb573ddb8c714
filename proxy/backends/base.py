"""The interface every backing store implements, and the values it returns.

Backends raise only proxy.errors.S3Error subclasses (NoSuchKey, NoSuchBucket, InvalidRange,
PreconditionFailed, BackendUnavailable, ...), mapped once at their boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


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
class BucketInfo:
    name: str
    created: float


class Backend(Protocol):
    name: str
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def head(self, bucket: str, key: str) -> ObjectMeta: ...

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        """Read ``start..end`` (inclusive; ``end`` may run past the object). ``start=None``:
        the whole object. Raises InvalidRange when ``start`` lies beyond a non-empty object."""
        ...

    async def list(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage: ...

    async def bucket_exists(self, bucket: str) -> bool: ...

    async def list_buckets(self) -> list[BucketInfo]: ...
