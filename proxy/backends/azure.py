"""Azure Blob Storage through ``azure.storage.blob.aio`` (aiohttp transport).

A bucket is a container and a key a blob name. Writes upload blocks of at most ``BLOCK_SIZE``
bytes (one buffer held at a time); multipart uploads stage their parts as blocks of the target
blob itself (azure_multipart.py), so parts never touch local disk.

Azure's ETag is not an MD5 (etag_is_md5 stays False). Blob metadata names must be C#
identifiers, so S3 metadata names are mapped as MinIO's Azure gateway did: ``_`` -> ``__`` and
``-`` -> ``_`` (read back the other way).

https://learn.microsoft.com/rest/api/storageservices/blob-service-rest-api
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from azure.core import MatchConditions
from azure.core.async_paging import AsyncItemPaged
from azure.core.exceptions import AzureError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import BlobBlock
from azure.storage.blob.aio import BlobClient, BlobPrefix, BlobServiceClient, ContainerClient

from proxy import errors, metrics
from proxy.backends import paging
from proxy.backends.azure_codec import (
    BLOCK_SIZE,
    account_name_of,
    block_id,
    content_settings,
    exact_blocks,
    map_error,
    meta_of,
    quote_etag,
    to_azure_metadata,
)
from proxy.backends.azure_multipart import AzureMultipart
from proxy.backends.calls import measured
from proxy.config import BackendConfig
from proxy.model import BucketInfo, GetResult, ListEntry, ListPage, ObjectMeta

T = TypeVar("T")

_GET_SIZE = 4 * 1024 * 1024  # the SDK buffers one response of this size at a time
_LIST_LIMIT = 5000  # Azure's maxresults ceiling
_COPY_POLL_MAX = 2.0


class AzureBackend(AzureMultipart):
    kind = "azure"

    def __init__(self, cfg: BackendConfig) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._service: BlobServiceClient | None = None
        self._sas: str | None = None

    async def start(self) -> None:
        cfg = self._cfg
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.max_connections), auto_decompress=False
        )
        options: dict[str, Any] = {
            "transport": AioHttpTransport(session=self._session, session_owner=False),
            "retry_total": cfg.retries,
            "connection_timeout": cfg.connect_timeout,
            "read_timeout": cfg.read_timeout,
            "max_single_get_size": _GET_SIZE,
            "max_chunk_get_size": _GET_SIZE,
            "max_single_put_size": BLOCK_SIZE,
            "max_block_size": BLOCK_SIZE,
        }
        conn = cfg.secret("connection_string")
        if conn:
            self._service = BlobServiceClient.from_connection_string(conn, **options)
            return
        assert cfg.account_url is not None  # config validation guarantees one of the two
        key = cfg.secret("account_key")
        self._sas = cfg.secret("sas_token")
        credential: Any = None
        if key:
            name = cfg.account_name or account_name_of(cfg.account_url)
            credential = {"account_name": name, "account_key": key}
        elif self._sas:
            self._sas = self._sas.lstrip("?")
            credential = self._sas
        self._service = BlobServiceClient(cfg.account_url, credential=credential, **options)

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
            self._service = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing ---------------------------------------------------------------------------
    def _container(self, bucket: str) -> ContainerClient:
        assert self._service is not None, "start() first"
        return self._service.get_container_client(bucket)

    def _blob(self, bucket: str, key: str) -> BlobClient:
        assert self._service is not None, "start() first"
        return self._service.get_blob_client(bucket, key)

    async def _call(
        self, operation: str, bucket: str, key: str | None, fn: Callable[[], Awaitable[T]]
    ) -> T:
        return await measured(
            self.name,
            operation,
            fn,
            (AzureError,),
            lambda exc: map_error(exc, bucket, key),  # type: ignore[arg-type]
        )

    # -- reads ------------------------------------------------------------------------------
    async def head(self, bucket: str, key: str) -> ObjectMeta:
        blob = self._blob(bucket, key)
        props = await self._call("HeadObject", bucket, key, blob.get_blob_properties)
        return meta_of(props)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        blob = self._blob(bucket, key)
        kwargs: dict[str, Any] = {}
        if start is not None:
            kwargs["offset"] = start
            kwargs["length"] = None if end is None else end - start + 1
        if if_match:
            kwargs["etag"] = if_match
            kwargs["match_condition"] = MatchConditions.IfNotModified
        stream = await self._call("GetObject", bucket, key, lambda: blob.download_blob(**kwargs))
        first = start or 0
        body = self._stream(stream.chunks())
        return GetResult(
            meta=meta_of(stream.properties),
            start=first,
            end=first + int(stream.size) - 1,
            body=body,
            release=body.aclose,
        )

    async def _stream(self, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        try:
            async for piece in chunks:
                metrics.BACKEND_BYTES.labels(self.name).inc(len(piece))
                yield piece
        except (AzureError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            metrics.BACKEND_ERRORS.labels(self.name, "GetObject", "BodyRead").inc()
            raise errors.BackendUnavailable("The store connection broke mid-body.") from exc

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        container = self._container(bucket)

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
            page = await self._call("ListObjectsV2", bucket, None, pages.__anext__)
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
        container = self._container(bucket)
        try:
            await self._call("HeadBucket", bucket, None, container.get_container_properties)
        except (errors.NoSuchBucket, errors.NoSuchKey, errors.InvalidBucketName):
            return False
        return True

    async def list_buckets(self) -> builtins.list[BucketInfo]:
        assert self._service is not None, "start() first"
        service = self._service

        async def collect() -> builtins.list[BucketInfo]:
            out = []
            async for c in service.list_containers():
                modified = c.last_modified
                out.append(
                    BucketInfo(name=c.name, created=modified.timestamp() if modified else 0.0)
                )
            return out

        return sorted(await self._call("ListBuckets", "", None, collect), key=lambda b: b.name)

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
        blob = self._blob(bucket, key)
        settings = content_settings(content_type, headers)
        azure_meta = to_azure_metadata(metadata)
        md5 = hashlib.md5(usedforsecurity=False)
        if size <= BLOCK_SIZE:
            data = b"".join([piece async for piece in exact_blocks(body, size, BLOCK_SIZE)])
            settings.content_md5 = bytearray(hashlib.md5(data, usedforsecurity=False).digest())
            await self._call(
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
            return await self.head(bucket, key)
        nonce = secrets.token_hex(8)
        ids: list[str] = []
        async for block in exact_blocks(body, size, BLOCK_SIZE):
            md5.update(block)
            bid = block_id(nonce, 0, "00000", len(ids), None)
            ids.append(bid)
            stage = functools.partial(blob.stage_block, bid, block, length=len(block))
            await self._call("PutObject", bucket, key, stage)
        settings.content_md5 = bytearray(md5.digest())
        await self._call(
            "PutObject",
            bucket,
            key,
            lambda: blob.commit_block_list(
                [BlobBlock(block_id=i) for i in ids], content_settings=settings, metadata=azure_meta
            ),
        )
        return await self.head(bucket, key)

    async def delete(self, bucket: str, key: str) -> None:
        blob = self._blob(bucket, key)
        try:
            await self._call(
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
        src, dst = self._blob(src_bucket, src_key), self._blob(bucket, key)
        props = await self._call("CopyObject", src_bucket, src_key, src.get_blob_properties)
        if (src_bucket, src_key) != (bucket, key):
            url = src.url
            if self._sas and "?" not in url:
                url = f"{url}?{self._sas}"
            kwargs: dict[str, Any] = {}
            if metadata is not None:
                kwargs["metadata"] = to_azure_metadata(metadata)
            copy = await self._call(
                "CopyObject", bucket, key, lambda: dst.start_copy_from_url(url, **kwargs)
            )
            await self._wait_copy(bucket, key, dst, str(copy.get("copy_status") or ""))
        elif metadata is not None:
            azure_meta = to_azure_metadata(metadata)
            await self._call("CopyObject", bucket, key, lambda: dst.set_blob_metadata(azure_meta))
        if content_type is not None and content_type != props.content_settings.content_type:
            settings = props.content_settings
            settings.content_type = content_type
            await self._call("CopyObject", bucket, key, lambda: dst.set_http_headers(settings))
        return await self.head(bucket, key)

    async def _wait_copy(self, bucket: str, key: str, dst: BlobClient, status: str) -> None:
        """Poll a copy Azure runs in the background until it ends (within read_timeout each)."""
        delay = 0.05
        while status == "pending":
            await asyncio.sleep(delay)
            delay = min(delay * 2, _COPY_POLL_MAX)
            props = await self._call("CopyObject", bucket, key, dst.get_blob_properties)
            status = str(props.copy.status or "")
        if status not in ("", "success"):
            raise errors.BackendUnavailable(f"The store's copy ended as {status}.")

    async def create_bucket(self, bucket: str) -> None:
        container = self._container(bucket)
        await self._call("CreateBucket", bucket, None, container.create_container)

    async def delete_bucket(self, bucket: str) -> None:
        container = self._container(bucket)
        pages = container.list_blobs(results_per_page=1).by_page()
        page = await self._call("DeleteBucket", bucket, None, pages.__anext__)
        async for _ in page:
            raise errors.BucketNotEmpty()
        await self._call("DeleteBucket", bucket, None, container.delete_container)
