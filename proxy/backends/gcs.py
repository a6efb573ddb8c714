"""Google Cloud Storage through gcloud-aio-storage (aiohttp), over the JSON API.

A bucket is a GCS bucket. Metadata, listings, deletes and copies (``rewriteTo``) go through
the library's Storage; the calls it cannot stream or lacks (ranged media reads pinned to a
generation, streaming uploads, bucket create/delete/list with times) use its aiohttp session
and token directly. ``endpoint`` in the config (or STORAGE_EMULATOR_HOST) points at an emulator,
without auth. Multipart uploads are staged locally (StagedMultipart) and then uploaded in one
streamed request.

A read is two requests: the object's resource (size, MD5, metadata), then the bytes of exactly
that generation, so a concurrent overwrite can never mix versions in one response.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Storage
from gcloud.aio.storage.storage import init_api_root

from proxy import errors, log, metrics
from proxy.backends import paging
from proxy.backends.gcs_codec import (
    MultipartBody,
    entry_of,
    error_message,
    map_status,
    meta_of,
    timestamp,
    upload_resource,
)
from proxy.backends.multipart import StagedMultipart
from proxy.config import BackendConfig
from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta

T = TypeVar("T")

_READ_SIZE = 256 * 1024
_LIST_LIMIT = 999  # one under the JSON API's maxResults ceiling (fetch asks for one more)
_LIST_FIELDS = "items(name,size,md5Hash,etag,generation,updated,timeCreated),prefixes,nextPageToken"
_RETRY_BASE = 0.1


def _successor(name: str) -> str:
    """The least string above every string that starts with ``name``."""
    return name[:-1] + chr(ord(name[-1]) + 1)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


async def _check(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    if resp.status >= 400:
        try:
            text = await resp.text(errors="replace")
        finally:
            resp.release()
        raise _HttpError(resp.status, error_message(text))
    return resp


async def _empty() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # pragma: no cover - makes this an async generator


class GcsBackend(StagedMultipart):
    kind = "gcs"

    def __init__(self, cfg: BackendConfig) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None
        self._dev, self._root = init_api_root(cfg.endpoint.rstrip("/") if cfg.endpoint else None)
        self._project = cfg.project

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
            api_is_dev=self._dev,
            service_file=service_file,
        )

    async def close(self) -> None:
        if self._storage is not None:
            await self._storage.close()
            self._storage = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def _st(self) -> Storage:
        assert self._storage is not None, "start() first"
        return self._storage

    @property
    def _http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    def _url(self, bucket: str, key: str | None = None, upload: bool = False) -> str:
        base = f"{self._root}/{'upload/' if upload else ''}storage/v1/b"
        if not bucket:
            return base
        url = f"{base}/{quote(bucket, safe='')}"
        if key is not None:
            url += f"/o/{quote(key, safe='')}"
        elif upload:
            url += "/o"
        return url

    async def _auth(self) -> dict[str, str]:
        if self._dev:
            return {}
        token = await self._st.token.get()
        return {"Authorization": f"Bearer {token}"}

    async def _project_id(self) -> str:
        if self._project is None:
            self._project = (None if self._dev else await self._st.token.get_project()) or "-"
        return self._project

    async def _call(
        self,
        operation: str,
        bucket: str,
        key: str | None,
        fn: Callable[[], Awaitable[T]],
        retry: bool = True,
    ) -> T:
        """Run one store call: metrics, bounded retries of transient failures (idempotent calls
        only), and our errors for the library's."""
        attempts = 1 + (self._cfg.retries if retry else 0)
        for attempt in range(attempts):
            metrics.BACKEND_REQUESTS.labels(self.name, operation).inc()
            started = time.perf_counter()
            try:
                result = await fn()
            except (_HttpError, aiohttp.ClientResponseError) as exc:
                cause: BaseException = exc
                if isinstance(exc, _HttpError):
                    message = exc.message
                else:  # gcloud-aio's: "Reason: <JSON error body>"
                    message = error_message(str(exc.message).partition(": ")[2])
                mapped = map_status(exc.status, message, bucket, key)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                cause = exc
                mapped = errors.BackendUnavailable(
                    f"The store could not be reached: {type(exc).__name__}."
                )
            else:
                elapsed = time.perf_counter() - started
                metrics.BACKEND_LATENCY.labels(self.name, operation).observe(elapsed)
                return result
            metrics.BACKEND_ERRORS.labels(self.name, operation, mapped.code).inc()
            if mapped.status >= 500 and attempt + 1 < attempts:
                await asyncio.sleep(_RETRY_BASE * 2**attempt * (0.5 + random.random()))
                continue
            if mapped.status >= 500:
                log.backend.warning("backend %s %s failed: %s", self.name, operation, cause)
            raise mapped from cause
        raise AssertionError("unreachable")

    async def _missing(self, bucket: str, key: str, exc: errors.NoSuchKey) -> errors.S3Error:
        """Tell a missing object from a missing bucket (emulators answer both alike)."""
        return exc if await self.bucket_exists(bucket) else errors.NoSuchBucket(resource=bucket)

    async def _resource(self, bucket: str, key: str, operation: str) -> dict[str, Any]:
        try:
            return await self._call(
                operation, bucket, key, lambda: self._st.download_metadata(bucket, key)
            )
        except errors.NoSuchKey as exc:
            raise await self._missing(bucket, key, exc) from None

    # -- reads ------------------------------------------------------------------------------
    async def head(self, bucket: str, key: str) -> ObjectMeta:
        return meta_of(await self._resource(bucket, key, "HeadObject"))

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        for attempt in range(2):  # once more if the object was replaced between the two calls
            obj = await self._resource(bucket, key, "GetObject")
            meta = meta_of(obj)
            if if_match and if_match != meta.etag:
                raise errors.PreconditionFailed()
            if start is not None and start >= meta.size > 0:
                raise errors.InvalidRange()
            first = start or 0
            last = meta.size - 1 if end is None else min(end, meta.size - 1)
            if last < first:
                return GetResult(meta=meta, start=first, end=first - 1, body=_empty())
            generation = str(obj.get("generation") or "")
            media = functools.partial(self._media, bucket, key, generation, first, last)
            try:
                resp = await self._call("GetObject", bucket, key, media)
            except errors.NoSuchKey:
                if if_match:
                    raise errors.PreconditionFailed() from None
                if attempt:
                    raise
                continue
            begin = first
            content_range = resp.headers.get("Content-Range", "")
            if resp.status == 200 or not content_range.startswith("bytes "):
                begin = 0  # the store sent the whole object
            body = self._stream(resp)
            return GetResult(
                meta=meta,
                start=begin,
                end=begin + int(resp.content_length or 0) - 1,
                body=body,
                release=self._releaser(resp, body),
            )
        raise AssertionError("unreachable")

    async def _media(
        self, bucket: str, key: str, generation: str, first: int, last: int
    ) -> aiohttp.ClientResponse:
        params = {"alt": "media"}
        if generation:
            params["generation"] = generation
        headers = {
            **await self._auth(),
            "Range": f"bytes={first}-{last}",
            "Accept-Encoding": "gzip",  # the stored bytes, not a transcoded copy
        }
        return await _check(
            await self._http.get(self._url(bucket, key), params=params, headers=headers)
        )

    async def _stream(self, resp: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                piece = await resp.content.read(_READ_SIZE)
                if not piece:
                    return
                metrics.BACKEND_BYTES.labels(self.name).inc(len(piece))
                yield piece
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            metrics.BACKEND_ERRORS.labels(self.name, "GetObject", "BodyRead").inc()
            raise errors.BackendUnavailable("The store connection broke mid-body.") from exc

    @staticmethod
    def _releaser(
        resp: aiohttp.ClientResponse, body: AsyncGenerator[bytes, None]
    ) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            await body.aclose()
            resp.release()  # closes the connection instead if the body was not read to the end

        return release

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        async def fetch(marker: str | None, limit: int, after: str) -> paging.StorePage:
            """One store page from ``after`` on (startOffset), or from ``marker`` (a pageToken,
            kept only across empty pages)."""
            # one more than needed: startOffset is inclusive, so ``after`` itself comes back
            params = {"maxResults": str(limit + 1), "fields": _LIST_FIELDS}
            if prefix:
                params["prefix"] = prefix
            if delimiter:
                params["delimiter"] = delimiter
            if marker:
                params["pageToken"] = marker
            elif after:
                params["startOffset"] = (
                    _successor(after)
                    if delimiter and after.endswith(delimiter) and len(after) > len(prefix)
                    else after
                )  # past a common prefix's keys
            data = await self._call(
                "ListObjectsV2",
                bucket,
                None,
                lambda: self._st.list_objects(bucket, params=params, timeout=self._timeout),
            )
            entries = [entry_of(o) for o in data.get("items", [])]
            prefixes = [str(p) for p in data.get("prefixes", [])]
            token = data.get("nextPageToken") or None
            if token is None:
                return paging.StorePage(entries, prefixes, None)
            # More follows. The next page starts from what this one handed out (startOffset),
            # and only prefixes up to this page's last new object are certain: an emulator
            # lists every prefix on every page. A page of nothing new follows GCS's own token.
            fresh = [e.key for e in entries if e.key > after]
            if fresh:
                horizon = max(fresh)
                return paging.StorePage(entries, [p for p in prefixes if p <= horizon], "")
            if any(p > after for p in prefixes):
                return paging.StorePage(entries, prefixes, "")
            return paging.StorePage([], [], str(token))

        return await paging.cut_page(fetch, max_keys, token, start_after, _LIST_LIMIT)

    @property
    def _timeout(self) -> int:
        return max(1, int(self._cfg.read_timeout))

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            await self._call(
                "HeadBucket",
                bucket,
                None,
                lambda: self._st.get_bucket_metadata(bucket, timeout=self._timeout),
            )
        except (errors.NoSuchBucket, errors.InvalidBucketName):
            return False
        return True

    async def list_buckets(self) -> builtins.list[BucketInfo]:
        out: list[BucketInfo] = []
        params = {
            "project": await self._project_id(),
            "fields": "items(name,timeCreated),nextPageToken",
        }

        async def page() -> dict[str, Any]:
            resp = await _check(
                await self._http.get(self._url(""), params=params, headers=await self._auth())
            )
            async with resp:
                doc: dict[str, Any] = await resp.json(content_type=None)
            return doc

        while True:
            doc = await self._call("ListBuckets", "", None, page)
            out += [
                BucketInfo(name=str(b["name"]), created=timestamp(b.get("timeCreated")))
                for b in doc.get("items", [])
            ]
            if not doc.get("nextPageToken"):
                return sorted(out, key=lambda b: b.name)
            params["pageToken"] = str(doc["nextPageToken"])

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
        upload = MultipartBody(
            upload_resource(key, content_type, metadata, headers), content_type, size
        )

        async def send() -> dict[str, Any]:
            request_headers = {
                **await self._auth(),
                "Content-Type": upload.content_type,
                "Content-Length": str(upload.length),
            }
            try:
                sent = await self._http.post(
                    self._url(bucket, upload=True),
                    params={"uploadType": "multipart"},
                    data=upload.stream(body),
                    headers=request_headers,
                )
            except aiohttp.ClientError:
                if upload.short:  # the client's body, not the store, was at fault
                    raise errors.IncompleteBody() from None
                raise
            resp = await _check(sent)
            async with resp:
                doc: dict[str, Any] = await resp.json(content_type=None)
            return doc

        try:
            obj = await self._call("PutObject", bucket, key, send, retry=False)
        except errors.NoSuchKey:  # an upload's 404 is the bucket's
            raise errors.NoSuchBucket(resource=bucket) from None
        return meta_of(obj)

    async def delete(self, bucket: str, key: str) -> None:
        try:
            await self._call(
                "DeleteObject",
                bucket,
                key,
                lambda: self._st.delete(bucket, key, timeout=self._timeout),
            )
        except errors.NoSuchKey as exc:
            missing = await self._missing(bucket, key, exc)
            if isinstance(missing, errors.NoSuchBucket):
                raise missing from None

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        changes: dict[str, Any] = {}
        if content_type is not None:
            changes["Content-Type"] = content_type  # the library camel-cases the name
        if metadata is not None:
            changes["metadata"] = dict(metadata)
        try:
            done = await self._call(
                "CopyObject",
                src_bucket,
                src_key,
                lambda: self._st.copy(
                    src_bucket,
                    src_key,
                    bucket,
                    new_name=key,
                    metadata=changes,
                    timeout=self._timeout,
                ),
            )
        except errors.NoSuchKey as exc:
            raise await self._missing(src_bucket, src_key, exc) from None
        resource = done.get("resource")
        if not isinstance(resource, dict):
            return await self.head(bucket, key)
        return meta_of(resource)

    async def create_bucket(self, bucket: str) -> None:
        async def create() -> None:
            resp = await _check(
                await self._http.post(
                    self._url(""),
                    params={"project": await self._project_id()},
                    json={"name": bucket},
                    headers=await self._auth(),
                )
            )
            resp.release()

        await self._call("CreateBucket", bucket, None, create, retry=False)

    async def delete_bucket(self, bucket: str) -> None:
        async def delete() -> None:
            resp = await _check(
                await self._http.delete(self._url(bucket), headers=await self._auth())
            )
            resp.release()

        try:
            await self._call("DeleteBucket", bucket, None, delete, retry=False)
        except (errors.BucketAlreadyOwnedByYou, errors.PreconditionFailed):
            raise errors.BucketNotEmpty() from None  # GCS says 409, fake-gcs-server 412
