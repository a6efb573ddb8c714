"""The write half of the S3 store: bodies stream straight through to the store (signed with
UNSIGNED-PAYLOAD, unsigned.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from proxy import errors
from proxy.backends.s3.body import StreamBody
from proxy.backends.s3.codec import is_md5, kept_headers, write_params
from proxy.backends.s3.link import S3Link
from proxy.backends.s3.reads import S3Reads
from proxy.model import ObjectMeta


class S3Writes:
    def __init__(self, link: S3Link, reads: S3Reads) -> None:
        self._link = link
        self._reads = reads

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
        stream = StreamBody(body)
        params = {
            "Bucket": bucket,
            "Key": key,
            "Body": stream,
            "ContentLength": size,
            **write_params(content_type, metadata, headers),
        }
        resp = await stream.send(
            self._link.call("PutObject", bucket, key, lambda c: c.put_object(**params))
        )
        etag = str(resp.get("ETag") or '""')
        sent = ObjectMeta(
            size=size,
            etag=etag,
            last_modified=time.time(),
            content_type=content_type,
            metadata=dict(metadata),
            headers=kept_headers(headers, resp),
            etag_is_md5=is_md5(etag),
        )
        # The cached copy must answer as the store does: its Last-Modified is the store's own
        # (S3 takes it when the upload starts), which only a HEAD tells. A HEAD that fails, or
        # finds another writer's version, leaves what we sent.
        try:
            stored = await self._reads.head(bucket, key)
        except errors.S3Error:
            return sent
        return stored if stored.etag == etag and stored.size == size else sent

    async def delete(self, bucket: str, key: str) -> None:
        await self._link.call(
            "DeleteObject", bucket, key, lambda c: c.delete_object(Bucket=bucket, Key=key)
        )

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        params: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "CopySource": {"Bucket": src_bucket, "Key": src_key},
        }
        if metadata is not None or content_type:
            params["MetadataDirective"] = "REPLACE"
            params.update(write_params(content_type, metadata or {}, None))
        await self._link.call("CopyObject", bucket, key, lambda c: c.copy_object(**params))
        return await self._reads.head(bucket, key)

    async def create_bucket(self, bucket: str) -> None:
        await self._link.call(
            "CreateBucket", bucket, None, lambda c: c.create_bucket(Bucket=bucket)
        )

    async def delete_bucket(self, bucket: str) -> None:
        # S3 refuses to delete a bucket that holds objects; some stores (SeaweedFS) delete it
        # with its contents, so ask first.
        listed = await self._link.call(
            "ListObjectsV2", bucket, None, lambda c: c.list_objects_v2(Bucket=bucket, MaxKeys=1)
        )
        if listed.get("KeyCount") or listed.get("Contents"):
            raise errors.BucketNotEmpty(bucketName=bucket)
        await self._link.call(
            "DeleteBucket", bucket, None, lambda c: c.delete_bucket(Bucket=bucket)
        )
