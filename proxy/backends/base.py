"""The interface every backing store implements, and the factory that builds one.

Backends raise only proxy.errors.S3Error subclasses (NoSuchKey, NoSuchBucket, InvalidRange,
PreconditionFailed, BackendUnavailable, ...), mapped once at their boundary (kit/calls.py).

The interface comes in halves (Lifecycle, Reads, Writes, Uploads) because each store is built
of parts that implement one half each (kit/front.py puts them together).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

from proxy.config import BackendConfig
from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta, PartInfo, UploadInfo


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Reads(Protocol):
    async def head(self, bucket: str, key: str) -> ObjectMeta: ...

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        """Read ``start..end`` (inclusive; ``end`` may run past the object). ``start=None``:
        the whole object. Raises InvalidRange when ``start`` lies beyond a non-empty object."""
        ...

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage: ...

    async def bucket_exists(self, bucket: str) -> bool: ...

    async def list_buckets(self) -> list[BucketInfo]: ...


class Parts(Protocol):
    """The parts of an object a native multipart upload made (S3 stores): GetObject and
    HeadObject with ``partNumber``."""

    async def part_range(self, bucket: str, key: str, number: int) -> tuple[int, int] | None:
        """The inclusive byte range of part ``number`` of a multipart object (its ETag ends in
        ``-N``, N >= ``number``); None for a store that keeps no parts."""
        ...


class Writes(Protocol):
    # Bodies stream: ``body`` yields the object's bytes (already de-framed and verified by the
    # S3 layer) and ``size`` is their exact total. Nothing is held whole in memory.

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
        """Store an object; the returned meta is what a HEAD would now answer (ETag, size)."""
        ...

    async def delete(self, bucket: str, key: str) -> None:
        """Delete; a missing key is not an error (S3 answers 204 either way)."""
        ...

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        """Server-side copy where the store can; ``metadata=None`` keeps the source's."""
        ...

    async def create_bucket(self, bucket: str) -> None: ...

    async def delete_bucket(self, bucket: str) -> None:
        """Raises BucketNotEmpty when it holds objects, NoSuchBucket when absent."""
        ...


class Uploads(Protocol):
    """Multipart upload. Stores without a native equivalent use kit.multipart.StagedUploads,
    which stages parts on local disk and puts on complete."""

    async def create_multipart(
        self,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> str: ...

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterator[bytes],
        size: int,
    ) -> str:
        """Returns the part's ETag (quoted MD5 of the part, as S3 makes it)."""
        ...

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> ObjectMeta: ...

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None: ...

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]: ...

    async def list_uploads(self, bucket: str, prefix: str) -> list[UploadInfo]: ...


class Backend(Lifecycle, Reads, Parts, Writes, Uploads, Protocol):
    name: str
    kind: str


class _Store(Backend, Protocol):
    """What the factory builds: a Backend with a staging directory of its own."""

    staging: Path


class _StoreType(Protocol):
    def __call__(self, cfg: BackendConfig) -> _Store: ...


# type -> (module, class). A store's module, and its SDK, load only when a backend of its
# type is configured: each worker process would otherwise carry every SDK (tens of MB).
_STORES = {
    "s3": ("proxy.backends.s3.backend", "S3Backend"),
    "fs": ("proxy.backends.fs", "FsBackend"),
    "azure": ("proxy.backends.azure", "AzureBackend"),
    "gcs": ("proxy.backends.gcs", "GcsBackend"),
    "webhdfs": ("proxy.backends.webhdfs", "WebHdfsBackend"),
}


def create(cfg: BackendConfig, staging: Path) -> Backend:
    """``staging``: a private directory for stores that stage multipart parts locally."""
    if cfg.type not in _STORES:
        raise ValueError(f"unknown backend type {cfg.type!r}")
    module, name = _STORES[cfg.type]
    store_type: _StoreType = getattr(importlib.import_module(module), name)
    backend = store_type(cfg)
    backend.staging = staging / cfg.name
    return backend
