"""One cached object's index entry and the keys that name it."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
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

    def answer(self) -> tuple[object, ...]:
        """What an answer about this record is rendered from (not its place in the queues,
        use counts or validation time)."""
        return (
            self.etag,
            self.size,
            self.mtime,
            self.ctype,
            self.meta,
            self.headers,
            self.md5,
            self.inline,
            self.key,
            self.backend,
            self.bucket,
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
        """The record in the index's compact binary form (FORMAT2, see _HEAD2): about a third
        of the JSON it replaced. The two earlier forms are still read (loads, glance); a
        record is rewritten in this one when next put."""
        ints = (self.size, self.stored, self.qseq, self.gseq, self.hits, self.freq, self.uses)
        if min(*ints, self.uses_era) < 0:
            return self._dumps_v1()  # none is ever negative; varints are unsigned
        flags = self._flags()
        out = bytearray()
        bitmap = _bitmap_bytes(self.chunks)
        _put_text(out, bitmap)
        _put_text(out, self.quota.encode("utf-8", "surrogatepass"))
        if not self.chunks and self.gen == generation(self.etag, self.size):
            flags |= _GEN_DERIVED  # an inline or metadata-only record: loads derives it
        elif _HEX12.fullmatch(self.gen):
            flags |= _GEN_HEX
            out += bytes.fromhex(self.gen)
        else:
            _put_text(out, self.gen.encode("utf-8", "surrogatepass"))
        ctype = _CTYPES.get(self.ctype)
        if ctype is not None:
            flags |= _CTYPE_TABLE
        for n in (*ints, self.uses_era, len(self.meta), len(self.headers), ctype or 0):
            _put_uint(out, n)
        for text in (self.key, self.backend, self.bucket):
            _put_text(out, text.encode("utf-8", "surrogatepass"))
        etag = _MD5_ETAG.fullmatch(self.etag)
        if etag is not None:
            flags |= _ETAG_HEX
            out += bytes.fromhex(etag[1])
            _put_text(out, (etag[2] or "").encode())
        else:
            _put_text(out, self.etag.encode("utf-8", "surrogatepass"))
        if ctype is None:
            _put_text(out, self.ctype.encode("utf-8", "surrogatepass"))
        for pairs in (self.meta, self.headers):
            for name, value in pairs.items():
                _put_text(out, name.encode("utf-8", "surrogatepass"))
                _put_text(out, value.encode("utf-8", "surrogatepass"))
        return _HEAD2.pack(FORMAT2, flags, self.mtime, self.validated, self.atime) + out

    def _flags(self) -> int:
        return (
            self.md5 * _MD5
            | self.inline * _INLINE
            | self.pinned * _PINNED
            | (self.queue == "M") * _MAIN
        )

    def _dumps_v1(self) -> bytes:
        """The first binary form (see _FIXED)."""
        flags = self._flags()
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
        if raw[0] == FORMAT2:
            return cls._loads_v2(raw)
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
        return cls._of(
            flags,
            (size, stored, mtime, validated, atime, qseq, gseq, hits, freq, uses, uses_era),
            (key, backend, bucket, etag, ctype, gen, quota),
            chunks,
            dicts[0],
            dicts[1],
        )

    @classmethod
    def _of(
        cls,
        flags: int,
        nums: tuple[int, int, float, float, float, int, int, int, int, int, int],
        texts: tuple[str, str, str, str, str, str, str],
        chunks: int,
        meta: dict[str, str],
        headers: dict[str, str],
    ) -> Record:
        """A record from a binary form's fields (``nums`` and ``texts`` in _FIXED's order)."""
        size, stored, mtime, validated, atime, qseq, gseq, hits, freq, uses, uses_era = nums
        key, backend, bucket, etag, ctype, gen, quota = texts
        return cls(
            key=key,
            backend=backend,
            bucket=bucket,
            etag=etag,
            size=size,
            mtime=mtime,
            ctype=ctype,
            validated=validated,
            meta=meta,
            headers=headers,
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

    @classmethod
    def _loads_v2(cls, raw: bytes) -> Record:
        _, flags, mtime, validated, atime = _HEAD2.unpack_from(raw)
        bitmap, at = _text(raw, _HEAD2.size)
        quota, at = _text(raw, at)
        gen = ""
        if flags & _GEN_HEX:
            gen, at = raw[at : at + 6].hex(), at + 6
        elif not flags & _GEN_DERIVED:
            g, at = _text(raw, at)
            gen = g.decode("utf-8", "surrogatepass")
        ints, at = _uints(raw, at, 11)
        size, stored, qseq, gseq, hits, freq, uses, uses_era, nmeta, nheaders, ctype_no = ints
        texts, at = _texts(raw, at, 3)
        key, backend, bucket = texts
        if flags & _ETAG_HEX:
            digest = raw[at : at + 16].hex()
            suffix, at = _text(raw, at + 16)
            etag = f'"{digest}{suffix.decode()}"'
        else:
            e, at = _text(raw, at)
            etag = e.decode("utf-8", "surrogatepass")
        if flags & _CTYPE_TABLE:
            ctype = CTYPES[ctype_no]
        else:
            c, at = _text(raw, at)
            ctype = c.decode("utf-8", "surrogatepass")
        dicts: list[dict[str, str]] = []
        for count in (nmeta, nheaders):
            pairs: dict[str, str] = {}
            for _ in range(count):
                name, at = _text(raw, at)
                value, at = _text(raw, at)
                pairs[name.decode("utf-8", "surrogatepass")] = value.decode(
                    "utf-8", "surrogatepass"
                )
            dicts.append(pairs)
        if flags & _GEN_DERIVED:
            gen = generation(etag, size)
        return cls._of(
            flags,
            (size, stored, mtime, validated, atime, qseq, gseq, hits, freq, uses, uses_era),
            (key, backend, bucket, etag, ctype, gen, quota.decode("utf-8", "surrogatepass")),
            int.from_bytes(bitmap, "little"),
            dicts[0],
            dicts[1],
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


# The first binary form (FORMAT, still read): _FIXED, then a u16 length per text, the chunk
# bitmap, the texts (UTF-8): key, backend, bucket, etag, content type, gen, quota, then meta
# and headers, each as its pair count followed by name, value, name, value...
FORMAT = 1  # the first byte; a JSON record (the form before) starts with "{"
_FIXED = struct.Struct("<BBqqdddQQQIIIIH")
_MD5, _INLINE, _PINNED, _MAIN = 1, 2, 4, 8
# The compact form (FORMAT2): _HEAD2 (format, flags, mtime, validated, atime), then what the
# start-up check reads first (glance): the chunk bitmap and the quota, each as a text; the gen
# (6 raw bytes with _GEN_HEX; nothing with _GEN_DERIVED: a record without chunk files whose
# gen is generation(etag, size); else a text); then varints: size, stored, qseq, gseq, hits,
# freq, uses, uses_era, the meta and header pair counts, the content type's number in CTYPES
# (0 unless _CTYPE_TABLE); then texts: key, backend, bucket, the etag (with _ETAG_HEX a quoted
# MD5-style etag as its 16 digest bytes, then the text after them: "" or "-N"), the content
# type unless _CTYPE_TABLE, the meta and header names and values. A varint is unsigned
# LEB128; a text is a varint length and that many bytes (UTF-8).
FORMAT2 = 2
_HEAD2 = struct.Struct("<BBddd")
_GEN_DERIVED, _GEN_HEX, _ETAG_HEX, _CTYPE_TABLE = 16, 32, 64, 128
_HEX12 = re.compile("[0-9a-f]{12}")
_MD5_ETAG = re.compile('"([0-9a-f]{32})(-[0-9]+)?"')
# Content types held by their number here (FORMAT2, _CTYPE_TABLE): append only, never reorder.
CTYPES = (
    "application/octet-stream",
    "binary/octet-stream",
    "text/plain",
    "application/json",
    "application/xml",
    "text/html",
    "text/csv",
    "image/jpeg",
    "image/png",
    "application/x-tar",
    "application/gzip",
    "application/zip",
    "application/x-parquet",
    "application/vnd.apache.parquet",
    "video/mp4",
    "audio/mpeg",
    "text/plain; charset=utf-8",
    "application/x-directory",
)
_CTYPES = {c: i for i, c in enumerate(CTYPES)}


def _put_uint(out: bytearray, n: int) -> None:
    """An unsigned LEB128 varint."""
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _put_text(out: bytearray, data: bytes) -> None:
    _put_uint(out, len(data))
    out += data


def _uint(raw: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and where the next field starts."""
    n = raw[at]
    if n < 0x80:  # the most common: one byte
        return n, at + 1
    n, shift = 0, 0
    while True:
        byte = raw[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, at
        shift += 7


def _text(raw: bytes, at: int) -> tuple[bytes, int]:
    n, at = _uint(raw, at)
    return raw[at : at + n], at + n


def _uints(raw: bytes, at: int, count: int) -> tuple[list[int], int]:
    """``count`` varints from ``at``."""
    out = []
    for _ in range(count):
        n, at = _uint(raw, at)
        out.append(n)
    return out, at


def _texts(raw: bytes, at: int, count: int) -> tuple[list[str], int]:
    """``count`` UTF-8 texts from ``at``."""
    out = []
    for _ in range(count):
        t, at = _text(raw, at)
        out.append(t.decode("utf-8", "surrogatepass"))
    return out, at


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
    if raw[0] == FORMAT2:
        return _glance_v2(raw, names)
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


def _glance_v2(raw: bytes, names: bool) -> Glance:
    flags = raw[1]
    bitmap, at = _text(raw, _HEAD2.size)
    chunks = int.from_bytes(bitmap, "little") if bitmap else 0
    q, at = _text(raw, at)
    quota = q.decode("utf-8", "surrogatepass") if q else ""
    gen = ""  # hex: only chunk files are named
    if flags & _GEN_HEX:
        gen, at = (raw[at : at + 6].hex() if chunks else ""), at + 6
    elif not flags & _GEN_DERIVED:  # (derived: a record without chunk files)
        g, at = _text(raw, at)
        gen = g.decode("utf-8", "surrogatepass") if chunks else ""
    inline = bool(flags & _INLINE)
    if not names:
        return Glance(inline, chunks, gen, quota)
    _, at = _uints(raw, at, 11)
    texts, _ = _texts(raw, at, 3)
    return Glance(inline, chunks, gen, quota, texts[1], texts[2], texts[0])


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
