"""The write half of the GCS store: uploads stream as one ``multipart/related`` request;
copies are the JSON API's ``rewriteTo``. Not retried: a body cannot be replayed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from proxy import errors
from proxy.backends.gcs.codec import MultipartBody, meta_of, upload_resource
from proxy.backends.gcs.link import GcsLink, check
from proxy.backends.gcs.reads import GcsReads
from proxy.model import ObjectMeta


class GcsWrites:
    def __init__(self, link: GcsLink, reads: GcsReads) -> None:
        self._link = link
        self._reads = reads

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
        link = self._link
        upload = MultipartBody(
            upload_resource(key, content_type, metadata, headers), content_type, size
        )

        async def send() -> dict[str, Any]:
            request_headers = {
                **await link.auth(),
                "Content-Type": upload.content_type,
                "Content-Length": str(upload.length),
            }
            try:
                sent = await link.http.post(
                    link.url(bucket, upload=True),
                    params={"uploadType": "multipart"},
                    data=upload.stream(body),
                    headers=request_headers,
                )
            except aiohttp.ClientError:
                if upload.short:  # the client's body, not the store, was at fault
                    raise errors.IncompleteBody() from None
                raise
            resp = await check(sent)
            async with resp:
                doc: dict[str, Any] = await resp.json(content_type=None)
            return doc

        try:
            obj = await link.call("PutObject", bucket, key, send, retry=False)
        except errors.NoSuchKey:  # an upload's 404 is the bucket's
            raise errors.NoSuchBucket(resource=bucket) from None
        return meta_of(obj)

    async def delete(self, bucket: str, key: str) -> None:
        storage = self._link.storage
        try:
            await self._link.call(
                "DeleteObject",
                bucket,
                key,
                lambda: storage.delete(bucket, key, timeout=self._link.timeout),
            )
        except errors.NoSuchKey as exc:
            missing = await self._reads.missing(bucket, exc)
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
        storage = self._link.storage
        changes: dict[str, Any] = {}
        if content_type is not None:
            changes["Content-Type"] = content_type  # the library camel-cases the name
        if metadata is not None:
            changes["metadata"] = dict(metadata)
        try:
            done = await self._link.call(
                "CopyObject",
                src_bucket,
                src_key,
                lambda: storage.copy(
                    src_bucket,
                    src_key,
                    bucket,
                    new_name=key,
                    metadata=changes,
                    timeout=self._link.timeout,
                ),
            )
        except errors.NoSuchKey as exc:
            raise await self._reads.missing(src_bucket, exc) from None
        resource = done.get("resource")
        if not isinstance(resource, dict):
            return await self._reads.head(bucket, key)
        return meta_of(resource)

    async def create_bucket(self, bucket: str) -> None:
        link = self._link

        async def create() -> None:
            resp = await check(
                await link.http.post(
                    link.url(""),
                    params={"project": await link.project_id()},
                    json={"name": bucket},
                    headers=await link.auth(),
                )
            )
            resp.release()

        await link.call("CreateBucket", bucket, None, create, retry=False)

    async def delete_bucket(self, bucket: str) -> None:
        link = self._link

        async def delete() -> None:
            resp = await check(await link.http.delete(link.url(bucket), headers=await link.auth()))
            resp.release()

        try:
            await link.call("DeleteBucket", bucket, None, delete, retry=False)
        except (errors.BucketAlreadyOwnedByYou, errors.PreconditionFailed):
            raise errors.BucketNotEmpty() from None  # GCS says 409, fake-gcs-server 412
