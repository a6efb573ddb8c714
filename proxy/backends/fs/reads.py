"""The read half of the fs store; blocking file work runs in the default executor."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from proxy import errors
from proxy.backends.fs import listing
from proxy.backends.fs.root import FsRoot, file_meta
from proxy.backends.kit.body import READ_SIZE, metered, read_window
from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta


class FsReads:
    def __init__(self, root: FsRoot) -> None:
        self._root = root

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        path, st = await self._root.run("HeadObject", lambda: self._root.stat_file(bucket, key))
        return file_meta(path, st)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        def open_file() -> tuple[Any, ObjectMeta]:
            path, _ = self._root.stat_file(bucket, key)
            f = open(path, "rb")  # noqa: SIM115 - closed by GetResult.release
            return f, file_meta(path, os.fstat(f.fileno()))

        f, meta = await self._root.run("GetObject", open_file)
        try:
            first, last = read_window(meta, start, end, if_match)
        except errors.S3Error:
            f.close()
            raise

        async def pieces() -> AsyncIterator[bytes]:
            pos = first
            while pos <= last:
                n = min(READ_SIZE, last - pos + 1)
                piece = await asyncio.to_thread(os.pread, f.fileno(), n, pos)
                if not piece:
                    raise errors.BackendUnavailable("The file shrank while being read.")
                pos += len(piece)
                yield piece

        async def release() -> None:
            f.close()

        body = metered(self._root.calls, pieces(), failures=())
        return GetResult(meta=meta, start=first, end=last, body=body, release=release)

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        after = listing.after_token(token) if token else start_after or ""
        return await self._root.run(
            "ListObjectsV2",
            lambda: listing.list_page(self._root, bucket, prefix, delimiter, max_keys, after),
        )

    async def bucket_exists(self, bucket: str) -> bool:
        def check() -> bool:
            try:
                self._root.bucket_dir(bucket)
            except errors.NoSuchBucket:
                return False
            return True

        return await self._root.run("HeadBucket", check)

    async def list_buckets(self) -> list[BucketInfo]:
        def scan() -> list[BucketInfo]:
            out = []
            with os.scandir(self._root.root) as it:
                for e in it:
                    if e.is_dir() and not e.name.startswith("."):
                        out.append(BucketInfo(name=e.name, created=e.stat().st_mtime))
            return sorted(out, key=lambda b: b.name)

        return await self._root.run("ListBuckets", scan)
