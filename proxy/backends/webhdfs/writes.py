"""The write half of the webhdfs backend.

A put streams the body with the two-step CREATE (NameNode 307 -> DataNode, body sent on the
second request) into a temporary name beside the target, then RENAMEs it into place, as
``hdfs dfs -put`` does with its ``._COPYING_`` files: a reader never sees half an object, and
a failed upload never clobbers the old one. WebHDFS's documented RENAME cannot overwrite, so
an existing file is DELETEd just before the rename. HDFS keeps no content type or user
metadata: they are not stored (a GET guesses the type from the name). Multipart uploads are
staged on local disk and streamed into one put on completion (kit.multipart), not CONCATed:
CONCAT wants same-directory sources with full blocks, which S3 part sizes do not give.

https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Create_and_Write_to_a_File
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping

from proxy import errors
from proxy.backends.kit.keys import EMPTY_MD5_ETAG, TMP_PREFIX
from proxy.backends.webhdfs.http import NOT_EMPTY, WebHdfsHttp, remote_exception
from proxy.backends.webhdfs.paths import bucket_base, object_path
from proxy.backends.webhdfs.reads import WebHdfsReads
from proxy.model import ObjectMeta


class _Exact:
    """Passes ``body`` through, insisting on exactly ``size`` bytes; remembers why it failed
    (aiohttp reports a failing upload body as a connection error)."""

    def __init__(self, body: AsyncIterator[bytes], size: int) -> None:
        self.body = body
        self.size = size
        self.failure: BaseException | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for piece in self.body:
                sent += len(piece)
                if sent > self.size:
                    raise errors.IncompleteBody()
                yield piece
            if sent != self.size:
                raise errors.IncompleteBody()
        except Exception as exc:
            self.failure = exc
            raise


class WebHdfsWrites:
    def __init__(self, http: WebHdfsHttp, reads: WebHdfsReads) -> None:
        self._http = http
        self._reads = reads

    async def _require_bucket(self, bucket: str) -> str:
        base = self._reads.base(bucket)
        status = await self._reads.status(base, "")
        if status is None or status["type"] != "DIRECTORY":
            raise errors.NoSuchBucket(resource=bucket)
        return base

    async def _boolean(self, method: str, path: str, op: str, **params: str | bool) -> bool:
        """MKDIRS, RENAME, DELETE: ``{"boolean": true|false}``."""
        doc = await self._http.json(method, path, op, missing=errors.NoSuchKey, params=params)
        return isinstance(doc, dict) and doc.get("boolean") is True

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
        base = await self._require_bucket(bucket)
        if key.endswith("/") and size == 0:  # a "folder" marker: make the directory
            async for _ in body:
                pass
            path = object_path(base, key[:-1])
            if path is None:
                raise _unstorable(key)
            if not await self._boolean("PUT", path, "MKDIRS"):
                raise errors.BackendUnavailable("HDFS would not make the directory.")
            return ObjectMeta(
                size=0, etag=EMPTY_MD5_ETAG, last_modified=time.time(), content_type=content_type
            )
        path = object_path(base, key)
        if path is None:
            raise _unstorable(key)
        tmp = f"{path.rpartition('/')[0]}/{TMP_PREFIX}{secrets.token_hex(8)}"
        exact = _Exact(body, size)
        try:
            resp = await self._http.call(
                "PUT",
                tmp,
                "CREATE",
                missing=lambda: errors.NoSuchBucket(resource=bucket),
                params={"overwrite": True},
                body=aiter(exact),
                size=size,
                expect=(201, 200),
            )
            resp.release()
            await self._replace(tmp, path, key)
        except BaseException as exc:
            await self._discard(tmp)
            if exact.failure is not None and exc is not exact.failure:
                raise exact.failure from None
            raise
        return await self._reads.head(bucket, key)

    async def _replace(self, tmp: str, path: str, key: str) -> None:
        status = await self._reads.status(path, key)
        if status is not None and status["type"] != "FILE":
            raise errors.InvalidArgument("This key is already a directory.", key=key)
        if status is not None:
            await self._boolean("DELETE", path, "DELETE", recursive=False)
        # https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Rename_a_FileDirectory
        if not await self._boolean("PUT", tmp, "RENAME", destination=path):
            raise errors.BackendUnavailable("HDFS would not rename the upload into place.")

    async def _discard(self, tmp: str) -> None:
        try:
            await self._boolean("DELETE", tmp, "DELETE", recursive=False)
        except errors.S3Error:
            pass  # best effort: listings skip leftovers (TMP_PREFIX)

    async def delete(self, bucket: str, key: str) -> None:
        base = self._reads.base(bucket)
        marker = key.endswith("/")
        path = object_path(base, key[:-1] if marker else key)
        if path is None:
            return
        status = await self._reads.status(path, key)
        if status is None:
            await self._require_bucket(bucket)
            return
        if status["type"] != ("DIRECTORY" if marker else "FILE"):
            return  # "a/" names the directory a, "a" only the file a
        try:
            await self._boolean("DELETE", path, "DELETE", recursive=False)
        except errors.S3Error as exc:
            if remote_exception(exc) != NOT_EMPTY:
                raise  # a directory with keys below it stays: S3 deleted only the marker

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        """OPEN streamed into CREATE (WebHDFS has no server-side copy)."""
        source = await self._reads.get(src_bucket, src_key, None, None)
        try:
            return await self.put(
                bucket,
                key,
                source.body,
                source.length,
                content_type or source.meta.content_type,
                {},
                {},
            )
        finally:
            await source.aclose()

    async def create_bucket(self, bucket: str) -> None:
        base = bucket_base(bucket)
        if not base:
            raise errors.InvalidBucketName(bucketName=bucket)
        status = await self._reads.status(base, "")
        if status is not None:
            if status["type"] == "DIRECTORY":
                raise errors.BucketAlreadyOwnedByYou(bucketName=bucket)
            raise errors.InvalidBucketName("A file in HDFS already has this path.")
        # https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Make_a_Directory
        if not await self._boolean("PUT", base, "MKDIRS"):
            raise errors.BackendUnavailable("HDFS would not make the directory.")

    async def delete_bucket(self, bucket: str) -> None:
        base = bucket_base(bucket)
        if not base:
            raise errors.NoSuchBucket(resource=bucket)
        await self._require_bucket(bucket)
        # https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Delete_a_FileDirectory
        try:
            deleted = await self._boolean("DELETE", base, "DELETE", recursive=False)
        except errors.S3Error as exc:
            if remote_exception(exc) == NOT_EMPTY:
                raise errors.BucketNotEmpty(bucketName=bucket) from exc
            raise
        if not deleted:
            raise errors.NoSuchBucket(resource=bucket)


def _unstorable(key: str) -> errors.S3Error:
    return errors.InvalidArgument(
        "This key cannot be stored in HDFS (empty, '.' or '..' segments, NUL or backslash).",
        key=key,
    )
