"""The S3 store's native multipart upload; parts stream straight through (StreamBody)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from proxy.backends.s3.body import StreamBody
from proxy.backends.s3.codec import write_params
from proxy.backends.s3.link import S3Link
from proxy.backends.s3.reads import S3Reads
from proxy.model import ObjectMeta, PartInfo, UploadInfo


class S3Uploads:
    def __init__(self, link: S3Link, reads: S3Reads) -> None:
        self._link = link
        self._reads = reads

    async def create_multipart(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str:
        params = {"Bucket": bucket, "Key": key, **write_params(content_type, metadata, headers)}
        resp = await self._link.call(
            "CreateMultipartUpload", bucket, key, lambda c: c.create_multipart_upload(**params)
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
        stream = StreamBody(body)
        params = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "Body": stream,
            "ContentLength": size,
        }
        resp = await stream.send(
            self._link.call("UploadPart", bucket, key, lambda c: c.upload_part(**params))
        )
        return str(resp["ETag"])

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta:
        spec = {"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]}
        await self._link.call(
            "CompleteMultipartUpload",
            bucket,
            key,
            lambda c: c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=spec
            ),
        )
        return await self._reads.head(bucket, key)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self._link.call(
            "AbortMultipartUpload",
            bucket,
            key,
            lambda c: c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
        )

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        def page(marker: int) -> Callable[[Any], Awaitable[Any]]:
            return lambda c: c.list_parts(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
            )

        out: list[PartInfo] = []
        marker = 0
        while True:
            resp = await self._link.call("ListParts", bucket, key, page(marker))
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
        resp = await self._link.call(
            "ListMultipartUploads",
            bucket,
            None,
            lambda c: c.list_multipart_uploads(Bucket=bucket, Prefix=prefix),
        )
        return [
            UploadInfo(str(u["Key"]), str(u["UploadId"]), u["Initiated"].timestamp())
            for u in resp.get("Uploads", [])
        ]
