"""One cached object's index entry and the keys that name it."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any, NamedTuple

from proxy.model import ObjectMeta


@functools.lru_cache(maxsize=65536)
def object_id(backend: str, bucket: str, key: str) -> bytes:
    """The object's identity in the cache: its store, remote bucket and remote key, hashed."""
    return hashlib.blake2b(
        f"{backend}\x00{bucket}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()


@functools.lru_cache(maxsize=8192)  # pure: a fill derives it, then dumps and loads do again
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
        out = bytearray(_HEAD2.size)  # packed last, once the flags are known
        chunks, gen, etag, meta, headers = self.chunks, self.gen, self.etag, self.meta, self.headers
        if chunks:
            _put_text(out, _bitmap_bytes(chunks))
        else:
            out.append(0)  # an empty bitmap
        quota = self.quota
        if quota:
            _put_texts(out, (quota,))
        else:
            out.append(0)
        if not chunks and gen == generation(etag, self.size):
            flags |= _GEN_DERIVED  # an inline or metadata-only record: loads derives it
        elif len(gen) == 12 and not gen.strip(_HEX):  # (strips to "": hex digits only)
            flags |= _GEN_HEX
            out += bytes.fromhex(gen)
        else:
            _put_texts(out, (gen,))
        ctype = _CTYPES.get(self.ctype)
        _put_uints(out, (*ints, self.uses_era, len(meta), len(headers), ctype or 0))
        md5 = _MD5_ETAG.fullmatch(etag)
        if md5 is not None:
            flags |= _ETAG_HEX
            _put_texts(out, (self.key, self.backend, self.bucket))
            out += bytes.fromhex(md5[1])
            _put_texts(out, (md5[2] or "",))
        else:
            _put_texts(out, (self.key, self.backend, self.bucket, etag))
        if ctype is not None:
            flags |= _CTYPE_TABLE
        else:
            _put_texts(out, (self.ctype,))
        if meta:
            _put_texts(out, chain.from_iterable(meta.items()))
        if headers:
            _put_texts(out, chain.from_iterable(headers.items()))
        _HEAD2.pack_into(out, 0, FORMAT2, flags, self.mtime, self.validated, self.atime)
        return bytes(out)

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
        if type(raw) is not bytes:
            raw = bytes(raw)
        form = raw[0]
        if form == FORMAT2:
            return cls._loads_v2(raw)
        if form == 0x7B:  # "{"
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
        return cls(  # positional (the fields' order): a quarter of the keywords' cost
            key,
            backend,
            bucket,
            etag,
            size,
            mtime,
            ctype,
            validated,
            meta,
            headers,
            bool(flags & _MD5),
            gen,
            bool(flags & _INLINE),
            chunks,
            stored,
            "M" if flags & _MAIN else "S",
            qseq,
            freq,
            hits,
            atime,
            bool(flags & _PINNED),
            quota,
            gseq,
            uses,
            uses_era,
        )

    @classmethod
    def _loads_v2(cls, raw: bytes) -> Record:
        flags = raw[1]
        mtime, validated, atime = _TIMES.unpack_from(raw, 2)
        if not (raw[26] or raw[27]):  # the most common: no chunk files, no quota
            bitmap, quota, at = b"", b"", 28
        else:
            (bitmap, quota), at = _slices(raw, _HEAD2.size, 2)
        gen = ""
        if flags & _GEN_HEX:
            gen, at = raw[at : at + 6].hex(), at + 6
        elif not flags & _GEN_DERIVED:
            (g,), at = _slices(raw, at, 1)
            gen = g.decode("utf-8", "surrogatepass")
        ints, at = _uints(raw, at, 11)
        size, stored, qseq, gseq, hits, freq, uses, uses_era, nmeta, nheaders, ctype_no = ints
        if flags & _ETAG_HEX:
            (key, backend, bucket), at = _texts(raw, at, 3)
            digest = raw[at : at + 16].hex()
            (suffix,), at = _slices(raw, at + 16, 1)
            etag = f'"{digest}{suffix.decode()}"'
        else:
            (key, backend, bucket, etag), at = _texts(raw, at, 4)
        rest, at = _texts(raw, at, 2 * (nmeta + nheaders) + (not flags & _CTYPE_TABLE))
        if flags & _CTYPE_TABLE:
            ctype = CTYPES[ctype_no]
        else:
            ctype = rest.pop(0)
        meta = _pairs(rest, 0, nmeta) if nmeta else {}
        headers = _pairs(rest, 2 * nmeta, nheaders) if nheaders else {}
        if flags & _GEN_DERIVED:
            gen = generation(etag, size)
        return cls._of(
            flags,
            (size, stored, mtime, validated, atime, qseq, gseq, hits, freq, uses, uses_era),
            (key, backend, bucket, etag, ctype, gen, quota.decode("utf-8", "surrogatepass")),
            int.from_bytes(bitmap, "little") if bitmap else 0,
            meta,
            headers,
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


# The access time of a record no read has wanted yet: a job fetched it ahead of its read
# (store.unread), admitted (UNREAD) or kept only for that read (UNREAD_REFUSED). Never a time.
UNREAD, UNREAD_REFUSED = -1.0, -2.0

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
_TIMES = struct.Struct("<ddd")  # _HEAD2's times (after its two bytes)
_GEN_DERIVED, _GEN_HEX, _ETAG_HEX, _CTYPE_TABLE = 16, 32, 64, 128
_HEX = "0123456789abcdef"  # a gen of 12 of these is held as 6 bytes (_GEN_HEX)
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


def _put_uints(out: bytearray, ints: Iterable[int]) -> None:
    """Varints (_put_uint's loop inline: dumps writes eleven)."""
    for n in ints:
        while n > 0x7F:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)


def _put_text(out: bytearray, data: bytes) -> None:
    _put_uint(out, len(data))
    out += data


def _put_texts(out: bytearray, texts: Iterable[str]) -> None:
    """Each text as UTF-8 (a surrogate-escaped byte kept) after its length."""
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        n = len(data)
        if n < 0x80:  # the most common: a one-byte length
            out.append(n)
        else:
            _put_uint(out, n)
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


def _uints(raw: bytes, at: int, count: int) -> tuple[list[int], int]:
    """``count`` varints from ``at`` and where the next field starts (the short ones inline)."""
    out = []
    for _ in range(count):
        n = raw[at]
        if n < 0x80:
            at += 1
        else:
            high = raw[at + 1]
            if high < 0x80:  # two bytes: up to 16383
                n = n & 0x7F | high << 7
                at += 2
            else:
                n, at = _uint(raw, at)
        out.append(n)
    return out, at


def _slices(raw: bytes, at: int, count: int) -> tuple[list[bytes], int]:
    """``count`` texts' bytes from ``at`` and where the next field starts."""
    out = []
    for _ in range(count):
        n = raw[at]
        if n < 0x80:  # the most common: a one-byte length
            at += 1
        else:
            n, at = _uint(raw, at)
        out.append(raw[at : at + n])
        at += n
    return out, at


def _texts(raw: bytes, at: int, count: int) -> tuple[list[str], int]:
    """``count`` UTF-8 texts from ``at`` and where the next field starts."""
    out = []
    for _ in range(count):
        n = raw[at]
        if n < 0x80:
            at += 1
        else:
            n, at = _uint(raw, at)
        out.append(raw[at : at + n].decode("utf-8", "surrogatepass"))
        at += n
    return out, at


def _pairs(texts: list[str], at: int, count: int) -> dict[str, str]:
    """``count`` name-value pairs from ``texts[at:]``."""
    end = at + 2 * count
    return dict(zip(texts[at:end:2], texts[at + 1 : end : 2], strict=True))


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


def plain_inline(raw: bytes) -> bool:
    """Whether ``raw`` is a compact record of an inline object without a quota (the most
    common record: the start-up check's walk looks at nothing else of it)."""
    return raw[0] == FORMAT2 and bool(raw[1] & _INLINE) and not (raw[26] or raw[27])


def _glance_v2(raw: bytes, names: bool) -> Glance:
    flags = raw[1]
    if not (names or raw[26] or raw[27]):  # the most common: no chunk files, no quota
        return Glance(bool(flags & _INLINE), 0, "", "")
    (bitmap, q), at = _slices(raw, _HEAD2.size, 2)
    chunks = int.from_bytes(bitmap, "little") if bitmap else 0
    quota = q.decode("utf-8", "surrogatepass") if q else ""
    gen = ""  # hex: only chunk files are named
    if flags & _GEN_HEX:
        gen, at = (raw[at : at + 6].hex() if chunks else ""), at + 6
    elif not flags & _GEN_DERIVED:  # (derived: a record without chunk files)
        (g,), at = _slices(raw, at, 1)
        gen = g.decode("utf-8", "surrogatepass") if chunks else ""
    inline = bool(flags & _INLINE)
    if not names:
        return Glance(inline, chunks, gen, quota)
    left = 11  # the varints: skipped (the last byte of each is below 0x80)
    while left:
        left -= raw[at] < 0x80
        at += 1
    (key, backend, bucket), _ = _texts(raw, at, 3)
    return Glance(inline, chunks, gen, quota, backend, bucket, key)


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
