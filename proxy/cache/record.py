"""One cached object's index entry and the keys that name it."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from proxy.model import ObjectMeta


@functools.lru_cache(maxsize=65536)
def object_id(backend: str, bucket: str, key: str) -> bytes:
    """The object's identity in the cache: its store, remote bucket and remote key, hashed."""
    return hashlib.blake2b(
        f"{backend}\x00{bucket}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()


def generation(etag: str, size: int) -> str:
    """Names one version's chunk files; every process derives the same name for it."""
    return hashlib.blake2b(f"{etag}\x00{size}".encode(), digest_size=6).hexdigest()


@dataclass(slots=True)
class Record:
    key: str
    backend: str
    bucket: str
    etag: str
    size: int
    mtime: float
    ctype: str
    validated: float  # when the store last confirmed this ETag
    meta: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    md5: bool = False
    gen: str = ""
    inline: bool = False
    chunks: int = 0  # bitmap of chunk files present
    stored: int = 0  # bytes this entry holds in the cache
    queue: str = "S"
    qseq: int = 0
    freq: int = 0
    hits: int = 0
    atime: float = 0.0
    pinned: bool = False

    @classmethod
    def from_meta(
        cls, meta: ObjectMeta, backend: str, bucket: str, key: str, validated: float
    ) -> Record:
        return cls(
            key=key,
            backend=backend,
            bucket=bucket,
            etag=meta.etag,
            size=meta.size,
            mtime=meta.last_modified,
            ctype=meta.content_type,
            validated=validated,
            meta=dict(meta.metadata),
            headers=dict(meta.headers),
            md5=meta.etag_is_md5,
            gen=generation(meta.etag, meta.size),
            atime=validated,
        )

    def to_meta(self) -> ObjectMeta:
        return ObjectMeta(
            size=self.size,
            etag=self.etag,
            last_modified=self.mtime,
            content_type=self.ctype,
            metadata=self.meta,
            headers=self.headers,
            etag_is_md5=self.md5,
        )

    def same_version(self, meta: ObjectMeta) -> bool:
        return self.etag == meta.etag and self.size == meta.size

    def has_chunk(self, index: int) -> bool:
        return bool(self.chunks >> index & 1)

    def chunk_count(self, chunk_size: int) -> int:
        return max(1, -(-self.size // chunk_size))

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes | memoryview) -> Record:
        doc: dict[str, Any] = json.loads(bytes(raw))
        return cls(**doc)
