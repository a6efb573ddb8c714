"""The GCS store's connection: one aiohttp session under gcloud-aio-storage's Storage (used
directly for the calls the library cannot stream or lacks), and the one way its calls are made:
kit.calls with bounded retries of 5xx for idempotent calls, errors mapped by codec."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Storage
from gcloud.aio.storage.storage import init_api_root

from proxy import errors
from proxy.backends.gcs.codec import error_message, map_status
from proxy.backends.kit.calls import Retry, StoreCalls, StoreRefused, server_error
from proxy.config import BackendConfig

T = TypeVar("T")

_RETRY_BASE = 0.1


async def check(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    """``resp`` if it is no error answer; else raises StoreRefused (read inside a call)."""
    if resp.status >= 400:
        try:
            text = await resp.text(errors="replace")
        finally:
            resp.release()
        raise StoreRefused(resp.status, error_message(text))
    return resp


def _map(exc: Exception, bucket: str, key: str | None) -> errors.S3Error:
    assert isinstance(exc, (StoreRefused, aiohttp.ClientResponseError))
    if isinstance(exc, StoreRefused):
        message = exc.message
    else:  # gcloud-aio's: "Reason: <JSON error body>"
        message = error_message(str(exc.message).partition(": ")[2])
    return map_status(exc.status, message, bucket, key)


class GcsLink:
    def __init__(self, cfg: BackendConfig) -> None:
        self._cfg = cfg
        self.calls = StoreCalls(cfg.name, (StoreRefused, aiohttp.ClientResponseError))
        self._retry = Retry(
            attempts=1 + cfg.retries, when=server_error, base=_RETRY_BASE, jitter=(0.5, 1.5)
        )
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None
        self.dev, self._root = init_api_root(cfg.endpoint.rstrip("/") if cfg.endpoint else None)
        self._project = cfg.project
        self.timeout = max(1, int(cfg.read_timeout))

    async def start(self) -> None:
        cfg = self._cfg
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.max_connections),
            timeout=timeout,
            auto_decompress=False,  # serve stored bytes; gzip objects stay gzip
        )
        service_file = str(cfg.credentials_file) if cfg.credentials_file else None
        self._storage = Storage(
            session=self._session,  # type: ignore[arg-type]  # typed for its requests build
            api_root=self._root,
            api_is_dev=self.dev,
            service_file=service_file,
        )

    async def close(self) -> None:
        if self._storage is not None:
            await self._storage.close()
            self._storage = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def storage(self) -> Storage:
        assert self._storage is not None, "start() first"
        return self._storage

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    def url(self, bucket: str, key: str | None = None, upload: bool = False) -> str:
        base = f"{self._root}/{'upload/' if upload else ''}storage/v1/b"
        if not bucket:
            return base
        url = f"{base}/{quote(bucket, safe='')}"
        if key is not None:
            url += f"/o/{quote(key, safe='')}"
        elif upload:
            url += "/o"
        return url

    async def auth(self) -> dict[str, str]:
        if self.dev:
            return {}
        token = await self.storage.token.get()
        return {"Authorization": f"Bearer {token}"}

    async def project_id(self) -> str:
        if self._project is None:
            self._project = (None if self.dev else await self.storage.token.get_project()) or "-"
        return self._project

    async def call(
        self,
        operation: str,
        bucket: str,
        key: str | None,
        fn: Callable[[], Awaitable[T]],
        retry: bool = True,
    ) -> T:
        """One store call; ``retry``: it is idempotent, so a 5xx is tried again."""
        return await self.calls.call(
            operation,
            fn,
            lambda exc: _map(exc, bucket, key),
            retry=self._retry if retry else None,
        )
