"""The write half of the S3 backend: bodies stream straight through to the store.

botocore signs the payload's SHA-256 over plain HTTP, which would need the whole body first;
streaming operations are signed with UNSIGNED-PAYLOAD instead (allowed by SigV4 for S3), so a
body goes to the store as it arrives.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import botocore.auth

from proxy import errors
from proxy.model import ObjectMeta, PartInfo, UploadInfo

T = TypeVar("T")
_UNSIGNED_SIGNER = "slipstream-s3v4-unsigned-payload"
_STREAMING_OPERATIONS = ("PutObject", "UploadPart")
_PASS_HEADERS = {
    "Cache-Control": "CacheControl",
    "Content-Disposition": "ContentDisposition",
    "Content-Encoding": "ContentEncoding",
    "Content-Language": "ContentLanguage",
    "x-amz-storage-class": "StorageClass",
}


class _UnsignedPayloadAuth(botocore.auth.S3SigV4Auth):  # type: ignore[misc]
    def _should_sha256_sign_payload(self, request: Any) -> bool:
        return False


botocore.auth.AUTH_TYPE_MAPS[_UNSIGNED_SIGNER] = _UnsignedPayloadAuth


class _StreamBody:
    """An async byte stream botocore accepts as a Body and aiohttp sends as it is produced."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self.error: errors.S3Error | None = None  # the client's body failed (BadDigest, ...)
        self._started = False

    def read(self, *_: Any) -> bytes:
        raise io.UnsupportedOperation("a streaming body is read asynchronously")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        if self._started:  # a retry cannot replay a stream: fail it rather than send a stub
            raise self.error or errors.BackendUnavailable("The upload to the store broke.")
        self._started = True
        try:
            async for piece in self._body:
                yield piece
        except errors.S3Error as exc:
            self.error = exc
            raise

    async def send(self, call: Awaitable[T]) -> T:
        """Await the store call; a failure of the body itself wins over the transport error it
        caused (aiohttp reports it as a broken connection)."""
        try:
            return await call
        except errors.S3Error:
            if self.error is not None:
                raise self.error from None
            raise


def _extra(
    content_type: str | None, metadata: Mapping[str, str] | None, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if content_type:
        params["ContentType"] = content_type
    if metadata is not None:
        params["Metadata"] = dict(metadata)
    for header, param in _PASS_HEADERS.items():
        if headers and headers.get(header):
            params[param] = headers[header]
    return params


class S3Writes:
    name: str
    _client: Any
    _call: Callable[..., Awaitable[Any]]

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        raise NotImplementedError

    def _stream_uploads(self, client: Any) -> None:
        def choose(**_: Any) -> str:
            return _UNSIGNED_SIGNER

        for op in _STREAMING_OPERATIONS:
            client.meta.events.register(f"choose-signer.s3.{op}", choose)

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
        stream = _StreamBody(body)
        params = {
            "Bucket": bucket,
            "Key": key,
            "Body": stream,
            "ContentLength": size,
            **_extra(content_type, metadata, headers),
        }
        resp = await stream.send(
            self._call("PutObject", bucket, key, lambda: self._client.put_object(**params))
        )
        etag = str(resp.get("ETag") or '""')
        sent = ObjectMeta(
            size=size,
            etag=etag,
            last_modified=time.time(),
            content_type=content_type,
            metadata=dict(metadata),
            headers=_kept_headers(headers, resp),
            etag_is_md5=_is_md5(etag),
        )
        # The cached copy must answer as the store does: its Last-Modified is the store's own
        # (S3 takes it when the upload starts), which only a HEAD tells. A HEAD that fails, or
        # finds another writer's version, leaves what we sent.
        try:
            stored = await self.head(bucket, key)
        except errors.S3Error:
            return sent
        return stored if stored.etag == etag and stored.size == size else sent

    async def delete(self, bucket: str, key: str) -> None:
        await self._call(
            "DeleteObject", bucket, key, lambda: self._client.delete_object(Bucket=bucket, Key=key)
        )

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        params: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "CopySource": {"Bucket": src_bucket, "Key": src_key},
        }
        if metadata is not None or content_type:
            params["MetadataDirective"] = "REPLACE"
            params.update(_extra(content_type, metadata or {}, None))
        await self._call("CopyObject", bucket, key, lambda: self._client.copy_object(**params))
        return await self.head(bucket, key)

    async def create_bucket(self, bucket: str) -> None:
        await self._call(
            "CreateBucket", bucket, None, lambda: self._client.create_bucket(Bucket=bucket)
        )

    async def delete_bucket(self, bucket: str) -> None:
        # S3 refuses to delete a bucket that holds objects; some stores (SeaweedFS) delete it
        # with its contents, so ask first.
        listed = await self._call(
            "ListObjectsV2",
            bucket,
            None,
            lambda: self._client.list_objects_v2(Bucket=bucket, MaxKeys=1),
        )
        if listed.get("KeyCount") or listed.get("Contents"):
            raise errors.BucketNotEmpty(bucketName=bucket)
        await self._call(
            "DeleteBucket", bucket, None, lambda: self._client.delete_bucket(Bucket=bucket)
        )

    async def create_multipart(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str:
        params = {"Bucket": bucket, "Key": key, **_extra(content_type, metadata, headers)}
        resp = await self._call(
            "CreateMultipartUpload",
            bucket,
            key,
            lambda: self._client.create_multipart_upload(**params),
        )
        return str(resp["UploadId"])

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        size: int,
    ) -> str:
        stream = _StreamBody(body)
        params = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "Body": stream,
            "ContentLength": size,
        }
        resp = await stream.send(
            self._call("UploadPart", bucket, key, lambda: self._client.upload_part(**params))
        )
        return str(resp["ETag"])

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta:
        spec = {"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]}
        await self._call(
            "CompleteMultipartUpload",
            bucket,
            key,
            lambda: self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=spec
            ),
        )
        return await self.head(bucket, key)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self._call(
            "AbortMultipartUpload",
            bucket,
            key,
            lambda: self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
        )

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        out: list[PartInfo] = []
        marker = 0
        while True:
            resp = await self._call(
                "ListParts",
                bucket,
                key,
                lambda m=marker: self._client.list_parts(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=m
                ),
            )
            for p in resp.get("Parts", []):
                out.append(
                    PartInfo(
                        int(p["PartNumber"]),
                        str(p["ETag"]),
                        int(p["Size"]),
                        p["LastModified"].timestamp(),
                    )
                )
            if not resp.get("IsTruncated"):
                return out
            marker = int(resp["NextPartNumberMarker"])

    async def list_uploads(self, bucket: str, prefix: str) -> list[UploadInfo]:
        resp = await self._call(
            "ListMultipartUploads",
            bucket,
            None,
            lambda: self._client.list_multipart_uploads(Bucket=bucket, Prefix=prefix),
        )
        return [
            UploadInfo(str(u["Key"]), str(u["UploadId"]), u["Initiated"].timestamp())
            for u in resp.get("Uploads", [])
        ]


def _kept_headers(headers: Mapping[str, str], resp: Mapping[str, Any]) -> dict[str, str]:
    """The stored headers a GET of the new object answers with (as the read path's _meta)."""
    kept = {h: v for h, v in headers.items() if h in _PASS_HEADERS and v}
    if kept.get("x-amz-storage-class", "").upper() == "STANDARD":
        del kept["x-amz-storage-class"]  # S3 sends no storage class for STANDARD
    if resp.get("VersionId"):
        kept["x-amz-version-id"] = str(resp["VersionId"])
    return kept


def _is_md5(etag: str) -> bool:
    bare = etag.strip('"')
    return len(bare) == 32 and all(c in "0123456789abcdefABCDEF" for c in bare)
