"""The Azure store's connection: one aiohttp session under azure.storage.blob.aio's service
client, and the one way its calls are made (kit.calls, azure-core's errors mapped by codec)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from azure.core.exceptions import AzureError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from proxy.backends.azure.codec import BLOCK_SIZE, account_name_of, map_error
from proxy.backends.kit.calls import StoreCalls
from proxy.config import BackendConfig

T = TypeVar("T")

_GET_SIZE = 4 * 1024 * 1024  # the SDK buffers one response of this size at a time


class AzureLink:
    def __init__(self, cfg: BackendConfig) -> None:
        self._cfg = cfg
        self.calls = StoreCalls(cfg.name, (AzureError,))
        self._session: aiohttp.ClientSession | None = None
        self._service: BlobServiceClient | None = None
        self.sas: str | None = None

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
        self.sas = cfg.secret("sas_token")
        credential: Any = None
        if key:
            name = cfg.account_name or account_name_of(cfg.account_url)
            credential = {"account_name": name, "account_key": key}
        elif self.sas:
            self.sas = self.sas.lstrip("?")
            credential = self.sas
        self._service = BlobServiceClient(cfg.account_url, credential=credential, **options)

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
            self._service = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def service(self) -> BlobServiceClient:
        assert self._service is not None, "start() first"
        return self._service

    def container(self, bucket: str) -> ContainerClient:
        return self.service.get_container_client(bucket)

    def blob(self, bucket: str, key: str) -> BlobClient:
        return self.service.get_blob_client(bucket, key)

    async def call(
        self, operation: str, bucket: str, key: str | None, fn: Callable[[], Awaitable[T]]
    ) -> T:
        return await self.calls.call(
            operation,
            fn,
            lambda exc: map_error(exc, bucket, key),  # type: ignore[arg-type]
        )
