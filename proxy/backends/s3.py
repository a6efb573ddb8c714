"""S3-compatible stores (AWS, Ceph RGW, SeaweedFS, MinIO) through aiobotocore."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from proxy import errors
from proxy.backends.calls import measured
from proxy.backends.s3_http import S3HttpReader
from proxy.backends.s3_writes import S3Writes
from proxy.config import BackendConfig
from proxy.model import BucketInfo, GetResult, ListEntry, ListPage, ObjectMeta

T = TypeVar("T")


_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _map_error(exc: Exception, bucket: str, key: str | None) -> errors.S3Error:
    if not isinstance(exc, ClientError):  # botocore's own: endpoint, credentials, retries
        return errors.BackendUnavailable(f"The store could not be reached: {type(exc).__name__}.")
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "NoSuchBucket":
        return errors.NoSuchBucket(resource=bucket)
    if code == "NoSuchUpload":  # a 404 that is not about the key
        return errors.NoSuchUpload()
    if code in _NOT_FOUND_CODES or status == 404:
        return errors.NoSuchKey(key=key or "") if key is not None else errors.NoSuchBucket()
    if code == "InvalidRange" or status == 416:
        return errors.InvalidRange()
    if code == "PreconditionFailed" or status == 412:
        return errors.PreconditionFailed()
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return errors.AccessDenied(f"The store refused the proxy's credentials ({code}).")
    if code == "SlowDown" or status == 503:
        return errors.SlowDown("The store asked us to slow down.")
    known = errors.by_code(code)
    if known is not None and 400 <= known.status < 500:
        return known(str(err.get("Message") or known.message))
    if status >= 500 or not status:
        return errors.BackendUnavailable(f"The store answered {status or code}.")
    return errors.InvalidRequest(f"The store refused the request: {code}.")


class S3Backend(S3Writes):
    kind = "s3"

    def __init__(self, cfg: BackendConfig) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._http: S3HttpReader = S3HttpReader(cfg, None)

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
        self._http = S3HttpReader(self._cfg, credentials)
        await self._http.start()
        self._stack.push_async_callback(self._http.close)
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=self._cfg.endpoint, config=config, **kwargs)
        )
        self._stream_uploads(self._client)

    async def close(self) -> None:
        await self._stack.aclose()

    async def _call(
        self, operation: str, bucket: str, key: str | None, fn: Callable[[], Awaitable[T]]
    ) -> T:
        return await measured(
            self.name,
            operation,
            fn,
            (ClientError, BotoCoreError),
            lambda exc: _map_error(exc, bucket, key),
        )

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        return await self._http.head(bucket, key)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        return await self._http.get(bucket, key, start, end, if_match)

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            params["Delimiter"] = delimiter
        if token:
            params["ContinuationToken"] = token
        elif start_after:
            params["StartAfter"] = start_after
        resp = await self._call(
            "ListObjectsV2", bucket, None, lambda: self._client.list_objects_v2(**params)
        )
        entries = [
            ListEntry(
                key=o["Key"],
                size=int(o.get("Size", 0)),
                etag=str(o.get("ETag", '""')),
                last_modified=o["LastModified"].timestamp(),
                storage_class=str(o.get("StorageClass") or "STANDARD"),
            )
            for o in resp.get("Contents", [])
        ]
        prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
        truncated = bool(resp.get("IsTruncated"))
        return ListPage(
            entries=entries,
            prefixes=prefixes,
            truncated=truncated,
            next_token=resp.get("NextContinuationToken") if truncated else None,
        )

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            await self._call(
                "HeadBucket", bucket, None, lambda: self._client.head_bucket(Bucket=bucket)
            )
        except (errors.NoSuchBucket, errors.NoSuchKey):
            return False
        return True

    async def list_buckets(self) -> list[BucketInfo]:
        resp = await self._call("ListBuckets", "", None, lambda: self._client.list_buckets())
        return [
            BucketInfo(name=b["Name"], created=b["CreationDate"].timestamp())
            for b in resp.get("Buckets", [])
        ]
