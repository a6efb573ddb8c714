"""The write half of the fs backend: atomic file writes (temp file, fsync, rename).

The directory has no place for user metadata or a content type: they are not kept (a GET
guesses the type from the name). Multipart parts are staged locally (StagedMultipart).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from proxy import errors, metrics
from proxy.backends.multipart import StagedMultipart
from proxy.model import ObjectMeta

TMP_PREFIX = ".slipstream-tmp-"  # listings skip these


class FsWrites(StagedMultipart):
    name: str
    root: Path

    def _bucket_dir(self, bucket: str) -> Path:
        raise NotImplementedError

    def _path(self, bucket: str, key: str) -> Path:
        raise NotImplementedError

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        raise NotImplementedError

    def _target(self, bucket: str, key: str) -> Path:
        """Blocking. The file a key names; refuses keys that cannot be a file in the bucket."""
        from proxy.backends.fs import safe_segments

        base = self._bucket_dir(bucket)
        parts = safe_segments(key)
        if parts is None:
            raise errors.InvalidArgument(
                "This key cannot be stored in a directory-backed bucket "
                "(empty, '.' or '..' segments, NUL or backslash).",
                key=key,
            )
        path = base.joinpath(*parts)
        real_parent = os.path.realpath(path.parent)
        if not (real_parent + os.sep).startswith(os.path.realpath(base) + os.sep) and (
            real_parent != os.path.realpath(base)
        ):
            raise errors.InvalidArgument("The key leaves the bucket.", key=key)
        return path

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
        metrics.BACKEND_REQUESTS.labels(self.name, "PutObject").inc()
        if key.endswith("/") and size == 0:  # a "folder" marker: make the directory
            await asyncio.to_thread(self._mkdir_marker, bucket, key)
            async for _ in body:
                pass
            return ObjectMeta(
                size=0,
                etag='"d41d8cd98f00b204e9800998ecf8427e"',
                last_modified=0.0,
                content_type=content_type,
            )
        path = await asyncio.to_thread(self._target, bucket, key)
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
            await asyncio.to_thread(_unlink, tmp)
            raise
        os.close(fd)
        await asyncio.to_thread(os.replace, tmp, path)
        return await self.head(bucket, key)

    def _mkdir_marker(self, bucket: str, key: str) -> None:
        base = self._bucket_dir(bucket)
        self._target(bucket, key.rstrip("/") or ".")
        (base / key.rstrip("/")).mkdir(parents=True, exist_ok=True)

    async def delete(self, bucket: str, key: str) -> None:
        metrics.BACKEND_REQUESTS.labels(self.name, "DeleteObject").inc()

        def remove() -> None:
            try:
                path = self._path(bucket, key)
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
        metrics.BACKEND_REQUESTS.labels(self.name, "CopyObject").inc()

        def do_copy() -> None:
            src = self._path(src_bucket, src_key)
            if not src.is_file():
                raise errors.NoSuchKey(key=src_key)
            dst = self._target(bucket, key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{dst.name}"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)

        await asyncio.to_thread(do_copy)
        return await self.head(bucket, key)

    async def create_bucket(self, bucket: str) -> None:
        metrics.BACKEND_REQUESTS.labels(self.name, "CreateBucket").inc()

        def make() -> None:
            path = self.root / bucket
            if path.is_dir():
                raise errors.BucketAlreadyOwnedByYou(bucketName=bucket)
            path.mkdir(parents=True)

        await asyncio.to_thread(make)

    async def delete_bucket(self, bucket: str) -> None:
        metrics.BACKEND_REQUESTS.labels(self.name, "DeleteBucket").inc()

        def remove() -> None:
            path = self._bucket_dir(bucket)
            for _, _, files in os.walk(path):
                if files:
                    raise errors.BucketNotEmpty(bucketName=bucket)
            shutil.rmtree(path)

        await asyncio.to_thread(remove)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
