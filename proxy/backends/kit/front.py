"""A Backend put together from a store's parts: its connection (start, close), its reads, its
writes and its multipart uploads. Each store's class builds its parts and hands them here;
this is the one place that routes the Backend interface to them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from proxy.backends.base import Lifecycle, Parts, Reads, Uploads, Writes
from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta, PartInfo, UploadInfo


class StoreFront:
    kind: str
    staging: Path  # for multipart staging (kit/multipart.py); the factory sets it

    def __init__(
        self,
        name: str,
        link: Lifecycle,
        reads: Reads,
        writes: Writes,
        uploads: Uploads,
        parts: Parts | None = None,
    ) -> None:
        """``parts``: where the store keeps the parts of a multipart upload (else None: an
        upload is one piece once complete)."""
        self.name = name
        self.staging = Path()
        self._link = link
        self._reads = reads
        self._writes = writes
        self._uploads = uploads
        self._parts = parts

    async def start(self) -> None:
        await self._link.start()

    async def close(self) -> None:
        await self._link.close()

    # -- reads ------------------------------------------------------------------------------
    async def head(self, bucket: str, key: str) -> ObjectMeta:
        return await self._reads.head(bucket, key)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        return await self._reads.get(bucket, key, start, end, if_match)

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        return await self._reads.list_page(bucket, prefix, delimiter, max_keys, token, start_after)

    async def part_range(self, bucket: str, key: str, number: int) -> tuple[int, int] | None:
        return None if self._parts is None else await self._parts.part_range(bucket, key, number)

    async def bucket_exists(self, bucket: str) -> bool:
        return await self._reads.bucket_exists(bucket)

    async def list_buckets(self) -> list[BucketInfo]:
        return await self._reads.list_buckets()

    # -- writes -----------------------------------------------------------------------------
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
        return await self._writes.put(bucket, key, body, size, content_type, metadata, headers)

    async def delete(self, bucket: str, key: str) -> None:
        await self._writes.delete(bucket, key)

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        return await self._writes.copy(src_bucket, src_key, bucket, key, content_type, metadata)

    async def create_bucket(self, bucket: str) -> None:
        await self._writes.create_bucket(bucket)

    async def delete_bucket(self, bucket: str) -> None:
        await self._writes.delete_bucket(bucket)

    # -- multipart --------------------------------------------------------------------------
    async def create_multipart(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str:
        return await self._uploads.create_multipart(bucket, key, content_type, metadata, headers)

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        size: int,
    ) -> str:
        return await self._uploads.upload_part(bucket, key, upload_id, number, body, size)

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta:
        return await self._uploads.complete_multipart(bucket, key, upload_id, parts)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self._uploads.abort_multipart(bucket, key, upload_id)

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        return await self._uploads.list_parts(bucket, key, upload_id)

    async def list_uploads(self, bucket: str, prefix: str) -> list[UploadInfo]:
        return await self._uploads.list_uploads(bucket, prefix)
