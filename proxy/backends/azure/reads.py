"""The read half of the Azure store: a bucket is a container, a key a blob name."""

from __future__ import annotations

import builtins
from typing import Any

from azure.core import MatchConditions
from azure.core.async_paging import AsyncItemPaged
from azure.core.exceptions import AzureError
from azure.storage.blob.aio import BlobPrefix

from proxy import errors
from proxy.backends.azure.codec import meta_of, quote_etag
from proxy.backends.azure.link import AzureLink
from proxy.backends.kit import paging
from proxy.backends.kit.body import metered
from proxy.backends.kit.calls import UNREACHABLE
from proxy.model import BucketInfo, GetResult, ListEntry, ListPage, ObjectMeta

_LIST_LIMIT = 5000  # Azure's maxresults ceiling


class AzureReads:
    def __init__(self, link: AzureLink) -> None:
        self._link = link

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        blob = self._link.blob(bucket, key)
        props = await self._link.call("HeadObject", bucket, key, blob.get_blob_properties)
        return meta_of(props)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        blob = self._link.blob(bucket, key)
        kwargs: dict[str, Any] = {}
        if start is not None:
            kwargs["offset"] = start
            kwargs["length"] = None if end is None else end - start + 1
        if if_match:
            kwargs["etag"] = if_match
            kwargs["match_condition"] = MatchConditions.IfNotModified
        stream = await self._link.call(
            "GetObject", bucket, key, lambda: blob.download_blob(**kwargs)
        )
        first = start or 0
        body = metered(self._link.calls, stream.chunks(), failures=(AzureError, *UNREACHABLE))
        return GetResult(
            meta=meta_of(stream.properties),
            start=first,
            end=first + int(stream.size) - 1,
            body=body,
            release=body.aclose,
        )

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        container = self._link.container(bucket)

        async def fetch(marker: str | None, limit: int, after: str) -> paging.StorePage:
            paged: AsyncItemPaged[Any]
            if delimiter:
                paged = container.walk_blobs(
                    name_starts_with=prefix or None, delimiter=delimiter, results_per_page=limit
                )
            else:
                paged = container.list_blobs(
                    name_starts_with=prefix or None, results_per_page=limit
                )
            pages = paged.by_page(continuation_token=marker)
            page = await self._link.call("ListObjectsV2", bucket, None, pages.__anext__)
            entries: list[ListEntry] = []
            prefixes: list[str] = []
            async for item in page:
                if isinstance(item, BlobPrefix):
                    prefixes.append(str(item.name))
                else:
                    modified = item.last_modified
                    entries.append(
                        ListEntry(
                            key=item.name,
                            size=int(item.size or 0),
                            etag=quote_etag(item.etag),
                            last_modified=modified.timestamp() if modified else 0.0,
                        )
                    )
            return paging.StorePage(
                entries, prefixes, getattr(pages, "continuation_token", None) or None
            )

        return await paging.cut_page(fetch, max_keys, token, start_after, _LIST_LIMIT)

    async def bucket_exists(self, bucket: str) -> bool:
        container = self._link.container(bucket)
        try:
            await self._link.call("HeadBucket", bucket, None, container.get_container_properties)
        except (errors.NoSuchBucket, errors.NoSuchKey, errors.InvalidBucketName):
            return False
        return True

    async def list_buckets(self) -> builtins.list[BucketInfo]:
        service = self._link.service

        async def collect() -> builtins.list[BucketInfo]:
            out = []
            async for c in service.list_containers():
                modified = c.last_modified
                out.append(
                    BucketInfo(name=c.name, created=modified.timestamp() if modified else 0.0)
                )
            return out

        return sorted(await self._link.call("ListBuckets", "", None, collect), key=lambda b: b.name)
