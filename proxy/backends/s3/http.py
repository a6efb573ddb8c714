"""GetObject and HeadObject over the kit's lean HTTP/1.1 client, signed by sign.py.

aiobotocore spends ~2 ms of CPU per call on request building, hooks and response parsing, and
aiohttp's client still ~40% of a cold 16 KiB fill; a cold read of a small object is dominated
by that. These two hot calls build the request directly (path- or virtual-hosted-style), sign
it with sign.py (SigV4 with the signing key derived once a day), send it over
kit/http1.py (keep-alive pool, httptools parser) and read the headers themselves. Everything
else stays on aiobotocore (link.py).
"""

from __future__ import annotations

import asyncio
import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from proxy import errors
from proxy.backends.kit.body import MeteredBody
from proxy.backends.kit.calls import Retry, StoreCalls
from proxy.backends.kit.http1 import Http1Pool, Response
from proxy.backends.s3.codec import get_headers, map_answer, meta_from_headers
from proxy.backends.s3.sign import Signer
from proxy.config import BackendConfig
from proxy.model import GetResult, ObjectMeta

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]*")  # what quote(key, safe="/~") leaves as it is


@lru_cache(maxsize=256)
def _quoted_bucket(bucket: str) -> str:
    return quote(bucket, safe="")


def _busy(failure: errors.S3Error) -> bool:
    return isinstance(failure, errors.ServiceUnavailable)


class S3HttpReader:
    def __init__(self, cfg: BackendConfig) -> None:
        self._cfg = cfg
        self._calls = StoreCalls(cfg.name)
        self._retry = Retry(attempts=cfg.retries + 1, when=_busy, base=0.1)
        self._credentials: Any = None  # botocore/aiobotocore Credentials, refreshable or not
        self._get_frozen: Any = None
        self._frozen_async = False
        endpoint = cfg.endpoint or f"https://s3.{cfg.region}.amazonaws.com"
        parts = urlsplit(endpoint)
        self._scheme, self._host = parts.scheme, parts.netloc
        if parts.port == {"http": 80, "https": 443}.get(parts.scheme):
            self._host = parts.hostname or parts.netloc  # Host: no default port
        self._signer = Signer(cfg.region)
        self._base_path = parts.path.rstrip("/")
        self._virtual = cfg.addressing_style == "virtual"
        self._pool: Http1Pool | None = None

    async def start(self, credentials: Any) -> None:
        self._credentials = credentials
        # refreshable credentials (aiobotocore's are async) are read at each request
        self._get_frozen = getattr(credentials, "get_frozen_credentials", None)
        self._frozen_async = asyncio.iscoroutinefunction(self._get_frozen)
        self._pool = Http1Pool(
            self._cfg.max_connections, self._cfg.connect_timeout, self._cfg.read_timeout
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def _where(self, bucket: str, key: str) -> tuple[str, str]:
        """(host, path) of ``key``: path- or virtual-hosted-style, the path encoded."""
        path = key if _PLAIN.fullmatch(key) else quote(key, safe="/~")
        if self._virtual:
            return f"{bucket}.{self._host}", f"{self._base_path}/{path}"
        return self._host, f"{self._base_path}/{_quoted_bucket(bucket)}/{path}"

    async def _signed(
        self, method: str, host: str, path: str, query: str, headers: dict[str, str]
    ) -> dict[str, str]:
        if self._credentials is None:
            return headers
        get_frozen = self._get_frozen
        if get_frozen is None:
            frozen = self._credentials
        elif self._frozen_async:
            frozen = await get_frozen()
        else:
            frozen = get_frozen()
        return self._signer.sign(
            method, host, path, query, headers, frozen.access_key, frozen.secret_key, frozen.token
        )

    async def _send(
        self,
        method: str,
        operation: str,
        bucket: str,
        key: str,
        headers: dict[str, str],
        query: str = "",
    ) -> Response:
        pool = self._pool
        assert pool is not None, "backend not started"
        host, path = self._where(bucket, key)
        target = f"{path}?{query}" if query else path

        async def send() -> Response:
            signed = await self._signed(method, host, path, query, headers)
            return await pool.request(method, self._scheme, host, target, signed)

        async def check(resp: Response) -> errors.S3Error | None:
            return None if resp.status < 300 else await self._error(resp, bucket, key)

        return await self._calls.call(operation, send, retry=self._retry, check=check)

    async def _error(self, resp: Response, bucket: str, key: str) -> errors.S3Error:
        try:
            body = await resp.read(65536) if resp.method != "HEAD" else b""
        except (OSError, TimeoutError):
            body = b""
        finally:
            resp.release()
        m = _CODE.search(body)
        code = m.group(1).decode(errors="replace") if m else ""
        return map_answer(resp.status, code, bucket, key)

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        resp = await self._send("HEAD", "HeadObject", bucket, key, {})
        resp.release()
        return meta_from_headers(resp.headers, int(resp.headers.get("Content-Length", 0)))

    async def part_range(self, bucket: str, key: str, number: int) -> tuple[int, int]:
        """HEAD ?partNumber=: S3 answers the part's Content-Range. A store that answers only
        the part's length (moto) gets one HEAD per earlier part to find where it starts."""

        async def head_part(n: int) -> tuple[int, re.Match[str] | None]:
            resp = await self._send("HEAD", "HeadObject", bucket, key, {}, f"partNumber={n}")
            resp.release()
            length = int(resp.headers.get("Content-Length", 0))
            return length, _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))

        length, m = await head_part(number)
        if m is not None:
            return int(m.group(1)), int(m.group(2))
        first = 0
        for n in range(1, number):
            first += (await head_part(n))[0]
        return first, first + length - 1

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None
    ) -> GetResult:
        headers = get_headers(start, end, if_match)
        resp = await self._send("GET", "GetObject", bucket, key, headers)
        length = int(resp.headers.get("Content-Length", 0))
        first, size = 0, length
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m:
            first = int(m.group(1))
            if m.group(3) != "*":
                size = int(m.group(3))

        async def release() -> None:
            resp.release()  # fully read: the connection goes back to the pool; else closed

        return GetResult(
            meta=meta_from_headers(resp.headers, size),
            start=first,
            end=first + length - 1,
            body=MeteredBody(self._calls, resp),
            release=release,
        )
