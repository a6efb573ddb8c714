"""The read half of the S3 store: GET and HEAD over http.py, listings over aiobotocore."""

from __future__ import annotations

from typing import Any

from proxy import errors
from proxy.backends.s3.link import S3Link
from proxy.model import BucketInfo, GetResult, ListEntry, ListPage, ObjectMeta


class S3Reads:
    def __init__(self, link: S3Link) -> None:
        self._link = link

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        return await self._link.http.head(bucket, key)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        return await self._link.http.get(bucket, key, start, end, if_match)

    async def part_range(self, bucket: str, key: str, number: int) -> tuple[int, int]:
        return await self._link.http.part_range(bucket, key, number)

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
        resp = await self._link.call(
            "ListObjectsV2", bucket, None, lambda c: c.list_objects_v2(**params)
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
            await self._link.call(
                "HeadBucket", bucket, None, lambda c: c.head_bucket(Bucket=bucket)
            )
        except (errors.NoSuchBucket, errors.NoSuchKey):
            return False
        return True

    async def list_buckets(self) -> list[BucketInfo]:
        resp = await self._link.call("ListBuckets", "", None, lambda c: c.list_buckets())
        return [
            BucketInfo(name=b["Name"], created=b["CreationDate"].timestamp())
            for b in resp.get("Buckets", [])
        ]
