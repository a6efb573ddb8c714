"""One cached object's index entry and the keys that name it."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

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
    chunks: int = 0  # bitmap of chunk files present (bit i: chunk i); stored as bytes
    stored: int = 0  # bytes this entry holds in the cache
    queue: str = "S"
    qseq: int = 0
    freq: int = 0
    hits: int = 0
    atime: float = 0.0
    pinned: bool = False
    quota: str = ""  # the cache.quotas bucket this object counts toward ("" none)
    gseq: int = 0  # its place in that bucket's FIFO (the order quota eviction takes)
    uses: int = 0  # the use count admission compares (eviction.place), as of era ``uses_era``
    uses_era: int = 0

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

    def present_chunks(self) -> Iterator[int]:
        """The index of every chunk file present, in order (one pass over the bitmap)."""
        return chunk_indices(self.chunks)

    def chunk_count(self, chunk_size: int) -> int:
        return max(1, -(-self.size // chunk_size))

    def dumps(self) -> bytes:
        """The record in the index's binary form (see _FIXED): about half the JSON it replaced,
        and parsed in a few struct calls."""
        flags = (
            self.md5 * _MD5
            | self.inline * _INLINE
            | self.pinned * _PINNED
            | (self.queue == "M") * _MAIN
        )
        texts = [self.key, self.backend, self.bucket, self.etag, self.ctype, self.gen, self.quota]
        for pairs in (self.meta, self.headers):
            texts.append(str(len(pairs)))
            for name, value in pairs.items():
                texts += (name, value)
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        if max(map(len, encoded)) > 0xFFFF:
            return self._dumps_json()  # a u16 cannot hold its length: no store sends such
        bitmap = _bitmap_bytes(self.chunks)
        head = _FIXED.pack(
            FORMAT,
            flags,
            self.size,
            self.stored,
            self.mtime,
            self.validated,
            self.atime,
            self.qseq,
            self.gseq,
            self.hits,
            self.freq,
            self.uses,
            self.uses_era,
            len(bitmap),
            len(encoded),
        )
        lengths = struct.pack(f"<{len(encoded)}H", *map(len, encoded))
        return b"".join((head, lengths, bitmap, *encoded))

    @classmethod
    def loads(cls, raw: bytes | memoryview) -> Record:
        raw = bytes(raw)
        if raw[:1] == b"{":
            return cls._loads_json(raw)
        (
            _,
            flags,
            size,
            stored,
            mtime,
            validated,
            atime,
            qseq,
            gseq,
            hits,
            freq,
            uses,
            uses_era,
            nbitmap,
            ntexts,
        ) = _FIXED.unpack_from(raw)
        at = _FIXED.size + 2 * ntexts
        lengths = struct.unpack_from(f"<{ntexts}H", raw, _FIXED.size)
        chunks = int.from_bytes(raw[at : at + nbitmap], "little")
        at += nbitmap
        texts = []
        for n in lengths:
            texts.append(raw[at : at + n].decode("utf-8", "surrogatepass"))
            at += n
        key, backend, bucket, etag, ctype, gen, quota = texts[:7]
        rest = iter(texts[7:])
        dicts: list[dict[str, str]] = []
        for _ in range(2):
            count = int(next(rest))
            dicts.append({next(rest): next(rest) for _ in range(count)})
        return cls(
            key=key,
            backend=backend,
            bucket=bucket,
            etag=etag,
            size=size,
            mtime=mtime,
            ctype=ctype,
            validated=validated,
            meta=dicts[0],
            headers=dicts[1],
            md5=bool(flags & _MD5),
            gen=gen,
            inline=bool(flags & _INLINE),
            chunks=chunks,
            stored=stored,
            queue="M" if flags & _MAIN else "S",
            qseq=qseq,
            freq=freq,
            hits=hits,
            atime=atime,
            pinned=bool(flags & _PINNED),
            quota=quota,
            gseq=gseq,
            uses=uses,
            uses_era=uses_era,
        )

    def _dumps_json(self) -> bytes:
        doc = asdict(self)
        doc["chunks"] = base64.b64encode(_bitmap_bytes(self.chunks)).decode()
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def _loads_json(cls, raw: bytes) -> Record:
        """The JSON form: records written before the binary one (rewritten binary when next
        put), and one holding a text too long for it."""
        doc: dict[str, Any] = json.loads(raw)
        chunks = doc.get("chunks", 0)
        if isinstance(chunks, str):
            doc["chunks"] = int.from_bytes(base64.b64decode(chunks), "little")
        # else: a record written before the bitmap became bytes holds it as a JSON integer
        return cls(**doc)


# The binary form: _FIXED, then a u16 length per text, the chunk bitmap, the texts (UTF-8):
# key, backend, bucket, etag, content type, gen, quota, then meta and headers, each as its
# pair count followed by name, value, name, value...
FORMAT = 1  # the first byte; a JSON record (the form before) starts with "{"
_FIXED = struct.Struct("<BBqqdddQQQIIIIH")
_MD5, _INLINE, _PINNED, _MAIN = 1, 2, 4, 8


_TAIL = struct.Struct("<IH")  # _FIXED's last two fields: bitmap bytes, text count
_FIRST_TEXTS = struct.Struct("<7H")  # the lengths of key ... quota


class Glance(NamedTuple):
    """The fields of a record the start-up check needs (glance), without building it; the
    names are "" unless asked for."""

    inline: bool
    chunks: int
    gen: str
    quota: str
    backend: str = ""
    bucket: str = ""
    key: str = ""


def glance(raw: bytes, names: bool = False) -> Glance:
    """Read a record's flags, chunk bitmap, gen and quota in place (and with ``names`` its
    backend, bucket and key): a few struct calls and short decodes instead of Record.loads
    (dicts, a dataclass). A JSON record is parsed whole."""
    if raw[:1] == b"{":
        r = Record.loads(raw)
        return Glance(r.inline, r.chunks, r.gen, r.quota, r.backend, r.bucket, r.key)
    nbitmap, ntexts = _TAIL.unpack_from(raw, _FIXED.size - _TAIL.size)
    at = _FIXED.size + 2 * ntexts
    chunks = int.from_bytes(raw[at : at + nbitmap], "little") if nbitmap else 0
    at += nbitmap
    n_key, n_backend, n_bucket, n_etag, n_ctype, n_gen, n_quota = _FIRST_TEXTS.unpack_from(
        raw, _FIXED.size
    )
    gen_at = at + n_key + n_backend + n_bucket + n_etag + n_ctype
    quota_at = gen_at + n_gen
    gen = raw[gen_at:quota_at].decode() if chunks else ""  # hex: only chunk files are named
    quota = raw[quota_at : quota_at + n_quota].decode("utf-8", "surrogatepass") if n_quota else ""
    if not names:
        return Glance(bool(raw[1] & _INLINE), chunks, gen, quota)
    key = raw[at : at + n_key].decode("utf-8", "surrogatepass")
    at += n_key
    backend = raw[at : at + n_backend].decode("utf-8", "surrogatepass")
    at += n_backend
    bucket = raw[at : at + n_bucket].decode("utf-8", "surrogatepass")
    return Glance(bool(raw[1] & _INLINE), chunks, gen, quota, backend, bucket, key)


def chunk_indices(bits: int) -> Iterator[int]:
    """The index of every bit set in a chunk bitmap, in order (one pass over its bytes)."""
    for offset, byte in enumerate(_bitmap_bytes(bits)):
        while byte:
            low = byte & -byte
            yield offset * 8 + low.bit_length() - 1
            byte ^= low


def _bitmap_bytes(bits: int) -> bytes:
    """The bitmap as little-endian bytes: a JSON integer past 4300 digits (about 14,000
    chunks) is refused by Python's parser, a base64 string of these bytes is not."""
    return bits.to_bytes((bits.bit_length() + 7) // 8, "little")
