"""The write half of the Azure store. Writes upload blocks of at most ``BLOCK_SIZE`` bytes
(one buffer held at a time)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

from azure.storage.blob import BlobBlock
from azure.storage.blob.aio import BlobClient

from proxy import errors
from proxy.backends.azure.codec import (
    BLOCK_SIZE,
    block_id,
    content_settings,
    exact_blocks,
    to_azure_metadata,
)
from proxy.backends.azure.link import AzureLink
from proxy.backends.azure.reads import AzureReads
from proxy.model import ObjectMeta

_COPY_POLL_MAX = 2.0


class AzureWrites:
    def __init__(self, link: AzureLink, reads: AzureReads) -> None:
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
        blob = self._link.blob(bucket, key)
        settings = content_settings(content_type, headers)
        azure_meta = to_azure_metadata(metadata)
        md5 = hashlib.md5(usedforsecurity=False)
        if size <= BLOCK_SIZE:
            data = b"".join([piece async for piece in exact_blocks(body, size, BLOCK_SIZE)])
            settings.content_md5 = bytearray(hashlib.md5(data, usedforsecurity=False).digest())
            await self._link.call(
                "PutObject",
                bucket,
                key,
                lambda: blob.upload_blob(
                    data,
                    length=size,
                    overwrite=True,
                    content_settings=settings,
                    metadata=azure_meta,
                ),
            )
            return await self._reads.head(bucket, key)
        nonce = secrets.token_hex(8)
        ids: list[str] = []
        async for block in exact_blocks(body, size, BLOCK_SIZE):
            md5.update(block)
            bid = block_id(nonce, 0, "00000", len(ids), None)
            ids.append(bid)
            stage = functools.partial(blob.stage_block, bid, block, length=len(block))
            await self._link.call("PutObject", bucket, key, stage)
        settings.content_md5 = bytearray(md5.digest())
        await self._link.call(
            "PutObject",
            bucket,
            key,
            lambda: blob.commit_block_list(
                [BlobBlock(block_id=i) for i in ids], content_settings=settings, metadata=azure_meta
            ),
        )
        return await self._reads.head(bucket, key)

    async def delete(self, bucket: str, key: str) -> None:
        blob = self._link.blob(bucket, key)
        try:
            await self._link.call(
                "DeleteObject", bucket, key, lambda: blob.delete_blob(delete_snapshots="include")
            )
        except errors.NoSuchKey:
            pass

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        src, dst = self._link.blob(src_bucket, src_key), self._link.blob(bucket, key)
        props = await self._link.call("CopyObject", src_bucket, src_key, src.get_blob_properties)
        if (src_bucket, src_key) != (bucket, key):
            url = src.url
            if self._link.sas and "?" not in url:
                url = f"{url}?{self._link.sas}"
            kwargs: dict[str, Any] = {}
            if metadata is not None:
                kwargs["metadata"] = to_azure_metadata(metadata)
            copy = await self._link.call(
                "CopyObject", bucket, key, lambda: dst.start_copy_from_url(url, **kwargs)
            )
            await self._wait_copy(bucket, key, dst, str(copy.get("copy_status") or ""))
        elif metadata is not None:
            azure_meta = to_azure_metadata(metadata)
            await self._link.call(
                "CopyObject", bucket, key, lambda: dst.set_blob_metadata(azure_meta)
            )
        if content_type is not None and content_type != props.content_settings.content_type:
            settings = props.content_settings
            settings.content_type = content_type
            await self._link.call("CopyObject", bucket, key, lambda: dst.set_http_headers(settings))
        return await self._reads.head(bucket, key)

    async def _wait_copy(self, bucket: str, key: str, dst: BlobClient, status: str) -> None:
        """Poll a copy Azure runs in the background until it ends (within read_timeout each)."""
        delay = 0.05
        while status == "pending":
            await asyncio.sleep(delay)
            delay = min(delay * 2, _COPY_POLL_MAX)
            props = await self._link.call("CopyObject", bucket, key, dst.get_blob_properties)
            status = str(props.copy.status or "")
        if status not in ("", "success"):
            raise errors.BackendUnavailable(f"The store's copy ended as {status}.")

    async def create_bucket(self, bucket: str) -> None:
        container = self._link.container(bucket)
        await self._link.call("CreateBucket", bucket, None, container.create_container)

    async def delete_bucket(self, bucket: str) -> None:
        container = self._link.container(bucket)
        pages = container.list_blobs(results_per_page=1).by_page()
        page = await self._link.call("DeleteBucket", bucket, None, pages.__anext__)
        async for _ in page:
            raise errors.BucketNotEmpty()
        await self._link.call("DeleteBucket", bucket, None, container.delete_container)
