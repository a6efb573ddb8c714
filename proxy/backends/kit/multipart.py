"""Multipart upload for stores without a native one: parts are staged as local files, then
streamed in order into the store's ``put`` on completion (never whole in memory).

https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from proxy import errors
from proxy.model import ObjectMeta, PartInfo, UploadInfo

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10_000
_READ = 1024 * 1024


class Stager(Protocol):
    """The store a StagedUploads serves: its staging directory (set by the factory after the
    store is built) and the put that completion streams the parts into."""

    staging: Path

    async def put(
        self,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> ObjectMeta: ...


class StagedUploads:
    """The multipart half of a store without native multipart upload."""

    def __init__(self, store: Stager) -> None:
        self._store = store

    def upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum() or len(upload_id) != 32:
            raise errors.NoSuchUpload()
        return self._store.staging / upload_id

    def manifest(self, upload_id: str, bucket: str, key: str) -> dict[str, Any]:
        """Blocking."""
        try:
            doc: dict[str, Any] = json.loads(
                (self.upload_dir(upload_id) / "upload.json").read_text()
            )
        except (OSError, ValueError):
            raise errors.NoSuchUpload() from None
        if doc["bucket"] != bucket or doc["key"] != key:
            raise errors.NoSuchUpload()
        return doc

    async def create_multipart(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str:
        upload_id = secrets.token_hex(16)
        doc = {
            "bucket": bucket,
            "key": key,
            "content_type": content_type,
            "metadata": dict(metadata),
            "headers": dict(headers),
            "initiated": time.time(),
        }

        def create() -> None:
            d = self._store.staging / upload_id
            d.mkdir(parents=True)
            (d / "upload.json").write_text(json.dumps(doc))

        await asyncio.to_thread(create)
        return upload_id

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        size: int,
    ) -> str:
        if not 1 <= number <= MAX_PART_NUMBER:
            raise errors.InvalidArgument("Part number must be an integer between 1 and 10000.")
        await asyncio.to_thread(self.manifest, upload_id, bucket, key)
        d = self.upload_dir(upload_id)
        tmp = d / f"part-{number:05d}.{secrets.token_hex(4)}.tmp"
        md5 = hashlib.md5(usedforsecurity=False)
        f = await asyncio.to_thread(open, tmp, "wb")
        written = 0
        try:
            async for piece in body:
                md5.update(piece)
                written += len(piece)
                await asyncio.to_thread(f.write, piece)
            await asyncio.to_thread(f.flush)
        except BaseException:
            f.close()
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        f.close()
        if written != size:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise errors.IncompleteBody()
        etag = f'"{md5.hexdigest()}"'
        final = d / f"part-{number:05d}"
        await asyncio.to_thread(os.replace, tmp, final)
        await asyncio.to_thread((d / f"part-{number:05d}.etag").write_text, etag)
        return etag

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        def scan() -> list[PartInfo]:
            self.manifest(upload_id, bucket, key)
            out = []
            d = self.upload_dir(upload_id)
            for p in sorted(d.glob("part-?????")):
                st = p.stat()
                etag = (d / f"{p.name}.etag").read_text()
                out.append(PartInfo(int(p.name[5:]), etag, st.st_size, st.st_mtime))
            return out

        return await asyncio.to_thread(scan)

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta:
        doc = await asyncio.to_thread(self.manifest, upload_id, bucket, key)
        staged = {p.number: p for p in await self.list_parts(bucket, key, upload_id)}
        if not parts:
            raise errors.MalformedXML("You must specify at least one part.")
        numbers = [n for n, _ in parts]
        if numbers != sorted(numbers):
            raise errors.InvalidPartOrder()
        for n, etag in parts:
            part = staged.get(n)
            if part is None or part.etag.strip('"') != etag.strip('"'):
                raise errors.InvalidPart(partNumber=str(n))
        # A number listed twice (a part re-sent while its first upload ran) names the one part
        # staged under it: it goes in once, as SeaweedFS does.
        parts = [p for i, p in enumerate(parts) if i == 0 or p[0] != parts[i - 1][0]]
        for i, (n, _) in enumerate(parts):
            if i < len(parts) - 1 and staged[n].size < MIN_PART_SIZE:
                raise errors.EntityTooSmall(partNumber=str(n))
        d = self.upload_dir(upload_id)
        files = [d / f"part-{n:05d}" for n, _ in parts]
        size = sum(staged[n].size for n, _ in parts)
        meta = await self._store.put(
            bucket,
            key,
            _stream_files(files),
            size,
            doc["content_type"],
            doc["metadata"],
            doc["headers"],
        )
        await asyncio.to_thread(shutil.rmtree, d, True)
        return meta

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await asyncio.to_thread(self.manifest, upload_id, bucket, key)
        await asyncio.to_thread(shutil.rmtree, self.upload_dir(upload_id), True)

    async def list_uploads(self, bucket: str, prefix: str) -> list[UploadInfo]:
        def scan() -> list[UploadInfo]:
            out: list[UploadInfo] = []
            if not self._store.staging.is_dir():
                return out
            for d in self._store.staging.iterdir():
                try:
                    doc = json.loads((d / "upload.json").read_text())
                except (OSError, ValueError):
                    continue
                if doc["bucket"] == bucket and doc["key"].startswith(prefix):
                    out.append(UploadInfo(doc["key"], d.name, doc["initiated"]))
            return sorted(out, key=lambda u: (u.key, u.initiated))

        return await asyncio.to_thread(scan)


async def _stream_files(files: list[Path]) -> AsyncIterator[bytes]:
    for path in files:
        f = await asyncio.to_thread(open, path, "rb")
        try:
            while True:
                block = await asyncio.to_thread(f.read, _READ)
                if not block:
                    break
                yield block
        finally:
            f.close()
