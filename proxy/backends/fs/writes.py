"""The write half of the fs backend: atomic file writes (temp file, fsync, rename).

The directory has no place for user metadata or a content type: they are not kept (a GET
guesses the type from the name). Multipart parts are staged locally (kit.multipart).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Mapping

from proxy import errors
from proxy.backends.fs.reads import FsReads
from proxy.backends.fs.root import FsRoot
from proxy.backends.kit.keys import EMPTY_MD5_ETAG, TMP_PREFIX
from proxy.model import ObjectMeta


class FsWrites:
    def __init__(self, root: FsRoot, reads: FsReads) -> None:
        self._root = root
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
        self._root.calls.count("PutObject")
        if key.endswith("/") and size == 0:  # a "folder" marker: make the directory
            await asyncio.to_thread(self._mkdir_marker, bucket, key)
            async for _ in body:
                pass
            return ObjectMeta(
                size=0,
                etag=EMPTY_MD5_ETAG,
                last_modified=0.0,
                content_type=content_type,
            )
        path = await asyncio.to_thread(self._root.target, bucket, key)
        tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}"

        def open_tmp() -> int:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise errors.InvalidArgument(
                    "A prefix of this key is already a file in this bucket.", key=key
                ) from None
            if path.is_dir():
                raise errors.InvalidArgument("This key is already a directory.", key=key)
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

        fd = await asyncio.to_thread(open_tmp)
        written = 0
        try:
            async for piece in body:
                written += len(piece)
                await asyncio.to_thread(_write_all, fd, piece)
            if written != size:
                raise errors.IncompleteBody()
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            os.close(fd)
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        os.close(fd)
        await asyncio.to_thread(os.replace, tmp, path)
        return await self._reads.head(bucket, key)

    def _mkdir_marker(self, bucket: str, key: str) -> None:
        base = self._root.bucket_dir(bucket)
        self._root.target(bucket, key.rstrip("/") or ".")
        (base / key.rstrip("/")).mkdir(parents=True, exist_ok=True)

    async def delete(self, bucket: str, key: str) -> None:
        self._root.calls.count("DeleteObject")

        def remove() -> None:
            try:
                path = self._root.path(bucket, key)
            except errors.NoSuchKey:
                return
            try:
                if path.is_file():
                    path.unlink()
            except FileNotFoundError:
                pass

        await asyncio.to_thread(remove)

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        self._root.calls.count("CopyObject")

        def do_copy() -> None:
            src = self._root.path(src_bucket, src_key)
            if not src.is_file():
                raise errors.NoSuchKey(key=src_key)
            dst = self._root.target(bucket, key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{dst.name}"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)

        await asyncio.to_thread(do_copy)
        return await self._reads.head(bucket, key)

    async def create_bucket(self, bucket: str) -> None:
        self._root.calls.count("CreateBucket")

        def make() -> None:
            path = self._root.root / bucket
            if path.is_dir():
                raise errors.BucketAlreadyOwnedByYou(bucketName=bucket)
            path.mkdir(parents=True)

        await asyncio.to_thread(make)

    async def delete_bucket(self, bucket: str) -> None:
        self._root.calls.count("DeleteBucket")

        def remove() -> None:
            path = self._root.bucket_dir(bucket)
            for _, _, files in os.walk(path):
                if files:
                    raise errors.BucketNotEmpty(bucketName=bucket)
            shutil.rmtree(path)

        await asyncio.to_thread(remove)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
