"""The interface every backing store implements, and the values it returns.

Backends raise only proxy.errors.S3Error subclasses (NoSuchKey, NoSuchBucket, InvalidRange,
PreconditionFailed, BackendUnavailable, ...), mapped once at their boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta, PartInfo, UploadInfo


def identity_etag(*identity: object) -> str:
    """An entity-tag from an object's identity (path, size, mtime...), not its bytes, for stores
    that have none. The "-1" keeps it from looking like an MD5: clients check 32-hex ETags
    against the bytes they sent (s3cmd retries every upload, rclone check reports differences)
    and skip ETags with a dash, as they do for multipart uploads."""
    ident = "\x00".join(map(str, identity)).encode("utf-8", "surrogatepass")
    return '"' + hashlib.blake2b(ident, digest_size=16).hexdigest() + '-1"'


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

    async def list_page(
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

    # -- writes ------------------------------------------------------------------------------
    # Bodies stream: ``body`` yields the object's bytes (already de-framed and verified by the
    # S3 layer) and ``size`` is their exact total. Nothing is held whole in memory.

    async def put(
        self,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> ObjectMeta:
        """Store an object; the returned meta is what a HEAD would now answer (ETag, size)."""
        ...

    async def delete(self, bucket: str, key: str) -> None:
        """Delete; a missing key is not an error (S3 answers 204 either way)."""
        ...

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        """Server-side copy where the store can; ``metadata=None`` keeps the source's."""
        ...

    async def create_bucket(self, bucket: str) -> None: ...

    async def delete_bucket(self, bucket: str) -> None:
        """Raises BucketNotEmpty when it holds objects, NoSuchBucket when absent."""
        ...

    # Multipart upload. Stores without a native equivalent inherit StagedMultipart
    # (proxy/backends/multipart.py), which stages parts on local disk and puts on complete.
    async def create_multipart(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str: ...

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        size: int,
    ) -> str:
        """Returns the part's ETag (quoted MD5 of the part, as S3 makes it)."""
        ...

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta: ...

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None: ...

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]: ...

    async def list_uploads(self, bucket: str, prefix: str) -> list[UploadInfo]: ...
