"""Write-through: the store confirms a write first, then the object is in the cache, so what
one stage writes the next stage reads hot. Writes and deletes invalidate cached copies at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from proxy import errors
from proxy.cache.store import CacheStore
from proxy.cache.tee import CacheTee
from proxy.core.metadata import oid_of, record_of
from proxy.core.reads import Reads
from proxy.model import RETURNED_CHECKSUMS, ByteRange, ObjectMeta, PartInfo, UploadInfo
from proxy.routing import Mount

TEE_FRACTION = 0.25  # objects larger than this share of the cache are not copied in
Changed = Callable[[Mount, str], Awaitable[None]]


class Writes:
    def __init__(self, cache: CacheStore, reads: Reads) -> None:
        self.cache = cache
        self.reads = reads
        self.parts = cache.uploads
        # with a cluster: the store accepted a write or delete of (mount, key); awaited before
        # the client is answered (the other owners drop their copies)
        self.changed: Changed | None = None

    async def _changed(self, mount: Mount, key: str) -> None:
        if self.changed is not None:
            await self.changed(mount, key)

    @staticmethod
    def _writable(mount: Mount) -> None:
        if mount.read_only:
            raise errors.AccessDenied(f"Bucket {mount.name} is read-only.")

    async def put(
        self,
        mount: Mount,
        key: str,
        body: AsyncIterator[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
        checksums: Mapping[str, str] | None = None,
    ) -> ObjectMeta:
        """``checksums``: filled by the payload decoder once the body is verified (algorithm ->
        base64); kept with the cached copy so a GET with x-amz-checksum-mode can return them."""
        self._writable(mount)
        oid = oid_of(mount, key)
        self.reads.invalidate(oid)
        seen = self.cache.write_mark()
        tee = None
        if mount.cacheable and size <= self.cache.cfg.max_size * TEE_FRACTION:
            tee = CacheTee(self.cache, size)
            body = tee.wrap(body)
        try:
            meta = await mount.backend.put(
                mount.bucket, key, body, size, content_type, metadata, headers
            )
        except BaseException:
            if tee is not None:
                await tee.discard()
            await self.cache.drop(oid)  # the store may hold either version now
            raise
        self.reads.invalidate(oid)
        rec = record_of(mount, key, meta)
        for alg, value in (checksums or {}).items():
            if alg in RETURNED_CHECKSUMS:
                rec.headers[f"x-amz-checksum-{alg}"] = value
        if tee is None or not await tee.publish(oid, rec, seen):
            await self.cache.drop(oid)
        await self._changed(mount, key)
        return meta

    async def delete(self, mount: Mount, key: str) -> None:
        self._writable(mount)
        oid = oid_of(mount, key)
        self.reads.invalidate(oid)
        try:
            await mount.backend.delete(mount.bucket, key)
        finally:
            await self.cache.drop(oid)
            self.reads.invalidate(oid)
        await self._changed(mount, key)

    async def copy(
        self,
        src: Mount,
        src_key: str,
        dst: Mount,
        dst_key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        """Server-side in the store when both sides live there; else streamed through."""
        self._writable(dst)
        oid = oid_of(dst, dst_key)
        self.reads.invalidate(oid)
        try:
            if src.backend is dst.backend:
                meta = await dst.backend.copy(
                    src.bucket, src_key, dst.bucket, dst_key, content_type, metadata
                )
                await self._changed(dst, dst_key)
                return meta
            read = await self.reads.read(src, src_key, None, {})
            meta_in = read.meta
            return await self.put(
                dst,
                dst_key,
                self.reads.bytes_of(read, src, src_key),
                meta_in.size,
                content_type or meta_in.content_type,
                meta_in.metadata if metadata is None else metadata,
                meta_in.headers,
            )
        finally:
            await self.cache.drop(oid)
            self.reads.invalidate(oid)

    async def create_bucket(self, mount: Mount) -> None:
        self._writable(mount)
        if not mount.wildcard:
            raise errors.BucketAlreadyOwnedByYou(bucketName=mount.name)
        await mount.backend.create_bucket(mount.bucket)

    async def delete_bucket(self, mount: Mount) -> None:
        self._writable(mount)
        if not mount.wildcard:
            raise errors.InvalidRequest(
                f"Bucket {mount.name} is mapped by the proxy's configuration; "
                "it cannot be deleted through the proxy."
            )
        await mount.backend.delete_bucket(mount.bucket)

    # -- multipart: parts go to the store as they come ---------------------------------------
    async def create_multipart(
        self,
        mount: Mount,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str:
        self._writable(mount)
        return await mount.backend.create_multipart(
            mount.bucket, key, content_type, metadata, headers
        )

    async def upload_part(
        self,
        mount: Mount,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        size: int,
    ) -> str:
        self._writable(mount)
        if not mount.cacheable or size > self.cache.cfg.max_size * TEE_FRACTION:
            return await mount.backend.upload_part(mount.bucket, key, upload_id, number, body, size)
        oid = oid_of(mount, key)
        body, tmp = await self.parts.tee(oid, upload_id, number, body)
        try:
            etag = await mount.backend.upload_part(mount.bucket, key, upload_id, number, body, size)
        except BaseException:
            await self.parts.drop(tmp)
            raise
        await self.parts.keep(tmp, number)
        return etag

    async def upload_part_copy(
        self,
        src: Mount,
        src_key: str,
        rng: ByteRange | None,
        mount: Mount,
        key: str,
        upload_id: str,
        number: int,
    ) -> tuple[str, ObjectMeta]:
        """A part copied from (a range of) another object, read through the cache; returns the
        part's ETag and the source's metadata."""
        read = await self.reads.read(src, src_key, rng, {})
        body = self.reads.bytes_of(read, src, src_key)
        etag = await self.upload_part(mount, key, upload_id, number, body, read.length)
        return etag, read.meta

    async def complete_multipart(
        self, mount: Mount, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta:
        self._writable(mount)
        oid = oid_of(mount, key)
        self.reads.invalidate(oid)
        seen = self.cache.write_mark()
        try:
            meta = await mount.backend.complete_multipart(mount.bucket, key, upload_id, parts)
        except BaseException:
            await self.cache.drop(oid)
            raise
        finally:
            self.reads.invalidate(oid)
        numbers = [n for n, _ in parts]
        if mount.cacheable and meta.size <= self.cache.cfg.max_size * TEE_FRACTION:
            rec = record_of(mount, key, meta)
            if not await self.cache.publish_upload(oid, rec, upload_id, numbers, seen=seen):
                await self.cache.drop(oid)
        else:
            await self.parts.discard(oid, upload_id)
            await self.cache.drop(oid)
        await self._changed(mount, key)
        return meta

    async def abort_multipart(self, mount: Mount, key: str, upload_id: str) -> None:
        self._writable(mount)
        await mount.backend.abort_multipart(mount.bucket, key, upload_id)
        await self.parts.discard(oid_of(mount, key), upload_id)

    async def list_parts(self, mount: Mount, key: str, upload_id: str) -> list[PartInfo]:
        return await mount.backend.list_parts(mount.bucket, key, upload_id)

    async def list_uploads(self, mount: Mount, prefix: str) -> list[UploadInfo]:
        """Uploads under way, their keys as the client named them (the mount's prefix cut)."""
        p = mount.prefix
        uploads = await mount.backend.list_uploads(mount.bucket, p + prefix)
        return [UploadInfo(u.key[len(p) :], u.upload_id, u.initiated) for u in uploads]
