"""Native multipart upload for Azure: each part is staged as uncommitted blocks of the target
blob (never on local disk), and completion commits the chosen parts' blocks as the block list.

A part may exceed one block, so it becomes blocks ``0..n`` of one *attempt* (a fresh id per
upload_part call); the last block's id carries the part's MD5. Completion picks, for each
(part number, ETag) the client names, the attempt whose MD5 matches, exactly as S3 checks
ETags. Only the upload's manifest (content type, metadata) lives in the local staging
directory, kept by kit.multipart.StagedUploads, which also serves create/abort/list_uploads.

Caveats of staging on the target blob: committing any other write to the same blob name (a
PutObject, another upload's completion) discards the uncommitted blocks of uploads still in
flight there, whose completion then fails with InvalidPart; and blocks of an aborted upload
stay until Azure collects uncommitted blocks (after a week) or the blob is next committed.

https://learn.microsoft.com/rest/api/storageservices/put-block
https://learn.microsoft.com/rest/api/storageservices/put-block-list
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.storage.blob import BlobBlock

from proxy import errors
from proxy.backends.azure.codec import (
    BLOCK_SIZE,
    block_id,
    content_settings,
    exact_blocks,
    parse_block_id,
    to_azure_metadata,
)
from proxy.backends.azure.link import AzureLink
from proxy.backends.azure.reads import AzureReads
from proxy.backends.kit.multipart import MAX_PART_NUMBER, MIN_PART_SIZE, StagedUploads
from proxy.model import ObjectMeta, PartInfo, UploadInfo

_EMPTY_MD5 = hashlib.md5(b"", usedforsecurity=False).hexdigest()


@dataclass
class _Attempt:
    """The blocks one upload_part call staged."""

    blocks: dict[int, tuple[str, int]] = field(default_factory=dict)  # index -> (id, size)
    md5: str | None = None  # set once the last block is staged
    last_index: int = -1

    @property
    def complete(self) -> bool:
        return self.md5 is not None and set(self.blocks) == set(range(self.last_index + 1))

    @property
    def size(self) -> int:
        return sum(size for _, size in self.blocks.values())

    @property
    def ids(self) -> list[str]:
        return [self.blocks[i][0] for i in sorted(self.blocks)]


class AzureUploads:
    def __init__(self, link: AzureLink, reads: AzureReads, staged: StagedUploads) -> None:
        self._link = link
        self._reads = reads
        self._manifests = staged

    async def create_multipart(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str:
        return await self._manifests.create_multipart(bucket, key, content_type, metadata, headers)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self._manifests.abort_multipart(bucket, key, upload_id)

    async def list_uploads(self, bucket: str, prefix: str) -> list[UploadInfo]:
        return await self._manifests.list_uploads(bucket, prefix)

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        size: int,
    ) -> str:
        if not 1 <= number <= MAX_PART_NUMBER:
            raise errors.InvalidArgument("Part number must be an integer between 1 and 10000.")
        await asyncio.to_thread(self._manifests.manifest, upload_id, bucket, key)
        blob = self._link.blob(bucket, key)
        attempt = secrets.token_hex(3)[:5]
        md5 = hashlib.md5(usedforsecurity=False)
        done = index = 0
        async for block in exact_blocks(body, size, BLOCK_SIZE):
            md5.update(block)
            done += len(block)
            bid = block_id(
                upload_id, number, attempt, index, md5.hexdigest() if done == size else None
            )
            stage = functools.partial(blob.stage_block, bid, block, length=len(block))
            await self._link.call("UploadPart", bucket, key, stage)
            index += 1
        return f'"{md5.hexdigest()}"'

    async def _staged(self, bucket: str, key: str, upload_id: str) -> dict[int, list[_Attempt]]:
        """This upload's complete attempts per part number, in the store's listing order."""
        blob = self._link.blob(bucket, key)
        try:
            _, uncommitted = await self._link.call(
                "ListParts", bucket, key, lambda: blob.get_block_list("uncommitted")
            )
        except errors.NoSuchKey:
            return {}
        attempts: dict[tuple[int, str], _Attempt] = {}
        for block in uncommitted:
            parsed = parse_block_id(str(block.id))
            if parsed is None or parsed[0] != upload_id[:16]:
                continue
            _, part, tag, index, md5 = parsed
            att = attempts.setdefault((part, tag), _Attempt())
            att.blocks[index] = (str(block.id), int(block.size))
            if md5 is not None:
                att.md5, att.last_index = md5, index
        out: dict[int, list[_Attempt]] = {}
        for (part, _), att in attempts.items():
            if att.complete:
                out.setdefault(part, []).append(att)
        return out

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        doc = await asyncio.to_thread(self._manifests.manifest, upload_id, bucket, key)
        staged = await self._staged(bucket, key, upload_id)
        return [
            PartInfo(n, f'"{staged[n][-1].md5}"', staged[n][-1].size, float(doc["initiated"]))
            for n in sorted(staged)
        ]

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta:
        doc: dict[str, Any] = await asyncio.to_thread(
            self._manifests.manifest, upload_id, bucket, key
        )
        if not parts:
            raise errors.MalformedXML("You must specify at least one part.")
        numbers = [n for n, _ in parts]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise errors.InvalidPartOrder()
        staged = await self._staged(bucket, key, upload_id)
        ids: list[str] = []
        for i, (n, etag) in enumerate(parts):
            want = etag.strip('"').lower()
            match = next((a for a in reversed(staged.get(n, [])) if a.md5 == want), None)
            if match is None and want != _EMPTY_MD5:
                raise errors.InvalidPart(partNumber=str(n))
            size = match.size if match is not None else 0
            if i < len(parts) - 1 and size < MIN_PART_SIZE:
                raise errors.EntityTooSmall(partNumber=str(n))
            ids += match.ids if match is not None else []
        blob = self._link.blob(bucket, key)
        settings = content_settings(doc["content_type"], doc["headers"])
        commit = functools.partial(
            blob.commit_block_list,
            [BlobBlock(block_id=i) for i in ids],
            content_settings=settings,
            metadata=to_azure_metadata(doc["metadata"]),
        )
        await self._link.call("CompleteMultipartUpload", bucket, key, commit)
        await asyncio.to_thread(shutil.rmtree, self._manifests.upload_dir(upload_id), True)
        return await self._reads.head(bucket, key)
