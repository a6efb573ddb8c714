"""The S3 store's connection: aiobotocore's client for most calls and http.py's reader for
the hot GET and HEAD, started and closed together."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from proxy.backends.kit.calls import StoreCalls
from proxy.backends.s3.codec import map_client_error
from proxy.backends.s3.http import S3HttpReader
from proxy.backends.s3.unsigned import stream_uploads
from proxy.config import BackendConfig

T = TypeVar("T")


class S3Link:
    def __init__(self, cfg: BackendConfig) -> None:
        self._cfg = cfg
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._calls = StoreCalls(cfg.name, (ClientError, BotoCoreError))
        self.http = S3HttpReader(cfg)

    async def start(self) -> None:
        creds = self._cfg.credentials()
        kwargs: dict[str, Any] = {}
        if creds:
            kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = creds
        config = AioConfig(
            region_name=self._cfg.region,
            max_pool_connections=self._cfg.max_connections,
            connect_timeout=self._cfg.connect_timeout,
            read_timeout=self._cfg.read_timeout,
            retries={"total_max_attempts": self._cfg.retries + 1, "mode": "standard"},
            s3={"addressing_style": self._cfg.addressing_style},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = get_session()
        credentials = Credentials(*creds) if creds else await session.get_credentials()
        await self.http.start(credentials)
        self._stack.push_async_callback(self.http.close)
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self._cfg.endpoint, config=config, **kwargs)
        )
        stream_uploads(self._client)

    async def close(self) -> None:
        await self._stack.aclose()

    async def call(
        self, operation: str, bucket: str, key: str | None, fn: Callable[[Any], Awaitable[T]]
    ) -> T:
        """``fn(client)``, one aiobotocore call (botocore itself retries, per ``retries``)."""
        client = self._client
        return await self._calls.call(
            operation, lambda: fn(client), lambda exc: map_client_error(exc, bucket, key)
        )
