"""Record.dumps and Record.loads (the compact form, FORMAT2) against a plain reference codec:
the form as first written, one call per varint. The fast codec must write the very same bytes
(caches written by earlier versions open, and a record rewritten unchanged stays the same) and
read back every record, in every form, over seeded edge cases: empty and long texts, varints of
one to ten bytes, surrogate-escaped and non-ASCII keys, every CTYPES entry and others, MD5,
multipart and other etags, derived, hex and text gens, chunk bitmaps."""

from __future__ import annotations

import hashlib
import random
import re
import struct
from typing import Any

from proxy.cache.record import CTYPES, FORMAT2, Record, generation, glance

# The reference codec: FORMAT2 as first written (see the comment above _HEAD2 in record.py).
_HEAD2 = struct.Struct("<BBddd")
_MD5, _INLINE, _PINNED, _MAIN = 1, 2, 4, 8
_GEN_DERIVED, _GEN_HEX, _ETAG_HEX, _CTYPE_TABLE = 16, 32, 64, 128
_MD5_ETAG = re.compile('"([0-9a-f]{32})(-[0-9]+)?"')


def _ref_uint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _ref_text(out: bytearray, text: str | bytes) -> None:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    _ref_uint(out, len(data))
    out += data


def _ref_dumps(r: Record) -> bytes:
    ints = (r.size, r.stored, r.qseq, r.gseq, r.hits, r.freq, r.uses, r.uses_era)
    flags = r.md5 * _MD5 | r.inline * _INLINE | r.pinned * _PINNED | (r.queue == "M") * _MAIN
    out = bytearray()
    _ref_text(out, r.chunks.to_bytes((r.chunks.bit_length() + 7) // 8, "little"))
    _ref_text(out, r.quota)
    ref_gen = hashlib.blake2b(f"{r.etag}\x00{r.size}".encode(), digest_size=6).hexdigest()
    if not r.chunks and r.gen == ref_gen:
        flags |= _GEN_DERIVED
    elif re.fullmatch("[0-9a-f]{12}", r.gen):
        flags |= _GEN_HEX
        out += bytes.fromhex(r.gen)
    else:
        _ref_text(out, r.gen)
    ctype = CTYPES.index(r.ctype) if r.ctype in CTYPES else None
    flags |= _CTYPE_TABLE if ctype is not None else 0
    for n in (*ints, len(r.meta), len(r.headers), ctype or 0):
        _ref_uint(out, n)
    for text in (r.key, r.backend, r.bucket):
        _ref_text(out, text)
    etag = _MD5_ETAG.fullmatch(r.etag)
    if etag is not None:
        flags |= _ETAG_HEX
        out += bytes.fromhex(etag[1])
        _ref_text(out, etag[2] or "")
    else:
        _ref_text(out, r.etag)
    if ctype is None:
        _ref_text(out, r.ctype)
    for pairs in (r.meta, r.headers):
        for name, value in pairs.items():
            _ref_text(out, name)
            _ref_text(out, value)
    return _HEAD2.pack(FORMAT2, flags, r.mtime, r.validated, r.atime) + out


# Edge cases each field is drawn from.
_HEX_DIGITS = "0123456789abcdef"
_TEXTS = ["", "a", "k" * 127, "k" * 128, "x/" * 9000, "résumé/日本語", "\U0001f600", "\udcff\udc80"]
_INTS = [0, 1, 127, 128, 255, 16383, 16384, 2**21, 2**32 - 1, 2**32, 2**63 - 1, 2**64 + 5, 2**70]
_FLOATS = [0.0, -0.0, 1.7e9, 1700000000.123456, -1.0, float("inf"), 5e-324]


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_HEX_DIGITS) for _ in range(n))


def _etag(rng: random.Random) -> str:
    digest = _hex(rng, 32)
    return rng.choice(
        [
            f'"{digest}"',
            f'"{digest}-{rng.randint(1, 10000)}"',
            f'"{digest}-{"9" * 200}"',  # a suffix past one varint byte
            f'"{digest.upper()}"',
            f'"{digest}-"',
            f"{digest}",
            f'W/"{digest}"',
            rng.choice(_TEXTS[:-1]),  # (generation() encodes strictly)
            f'"{digest[:31]}"',
        ]
    )


def _gen(rng: random.Random, etag: str, size: int) -> str:
    return rng.choice(
        [
            generation(etag, size),
            _hex(rng, 12),
            _hex(rng, 12).upper(),
            _hex(rng, 11),
            _hex(rng, 13),
            "é" * 12,
            "",
            rng.choice(_TEXTS[:-1]),  # (the first form's glance reads a gen as strict UTF-8)
        ]
    )


def _pairs(rng: random.Random) -> dict[str, str]:
    if rng.random() < 0.5:
        return {}
    return {rng.choice(_TEXTS) + str(i): rng.choice(_TEXTS) for i in range(rng.randint(1, 4))}


def _record(rng: random.Random) -> Record:
    etag = _etag(rng)
    size = rng.choice(_INTS + [rng.randrange(2**40)])
    chunks = rng.choice([0, 0, 1, (1 << 300) - 1, rng.getrandbits(2000), 1 << 20000])
    ints = [rng.choice(_INTS + [rng.randrange(2**20)]) for _ in range(7)]
    if rng.random() < 0.05:  # a negative size: written in the first binary form (or JSON)
        size, ints = -1, [rng.randrange(2**32) for _ in ints]
    stored, qseq, gseq, hits, freq, uses, uses_era = ints
    return Record(
        key=rng.choice(_TEXTS),
        backend=rng.choice(["store", "", "bé"]),
        bucket=rng.choice(_TEXTS),
        etag=etag,
        size=size,
        mtime=rng.choice(_FLOATS),
        ctype=rng.choice([*CTYPES, "text/x-unknown", "", "tëxt/ü", CTYPES[0] + " "]),
        validated=rng.choice(_FLOATS),
        meta=_pairs(rng),
        headers=_pairs(rng),
        md5=rng.random() < 0.5,
        gen=_gen(rng, etag, size),
        inline=rng.random() < 0.5,
        chunks=chunks,
        stored=stored,
        queue=rng.choice("SM"),
        qseq=qseq,
        freq=freq,
        hits=hits,
        atime=rng.choice(_FLOATS),
        pinned=rng.random() < 0.5,
        quota=rng.choice(["", "team-a", "ü"]),
        gseq=gseq,
        uses=uses,
        uses_era=uses_era,
    )


def _agrees_with_glance(raw: bytes, rec: Record) -> None:
    for names in (False, True):
        g = glance(raw, names=names)
        assert (g.inline, g.chunks, g.quota) == (rec.inline, rec.chunks, rec.quota)
        assert g.gen == (rec.gen if rec.chunks else "") or raw[:1] == b"{"
        if names:
            assert (g.backend, g.bucket, g.key) == (rec.backend, rec.bucket, rec.key)


def test_dumps_writes_what_the_reference_writes_and_loads_reads_it_back() -> None:
    rng = random.Random(20240515)
    forms: dict[Any, int] = {}
    for _ in range(3000):
        rec = _record(rng)
        raw = rec.dumps()
        negative = min(rec.size, rec.stored, rec.qseq, rec.gseq, rec.hits, rec.freq) < 0
        negative |= min(rec.uses, rec.uses_era) < 0
        if not negative:
            assert raw == _ref_dumps(rec)
            forms[raw[1] & 0xF0] = forms.get(raw[1] & 0xF0, 0) + 1
        assert Record.loads(raw) == rec
        assert Record.loads(memoryview(raw)) == rec
        _agrees_with_glance(raw, rec)
        try:
            older = rec._dumps_v1()
        except struct.error:  # an int past the first form's fields: never written in it
            older = None
        for old in (older, rec._dumps_json()):
            if old is not None:
                assert Record.loads(old) == rec
                _agrees_with_glance(old, rec)
    # every way FORMAT2 holds the gen, etag and content type was written
    seen = 0
    for flags in forms:
        seen |= flags
    assert seen == _GEN_DERIVED | _GEN_HEX | _ETAG_HEX | _CTYPE_TABLE
    assert 0 in forms and _GEN_DERIVED | _ETAG_HEX | _CTYPE_TABLE in forms


def test_a_record_rewritten_unchanged_is_the_same_bytes() -> None:
    rng = random.Random(7)
    for _ in range(500):
        raw = _record(rng).dumps()
        assert Record.loads(raw).dumps() == raw


def test_generation_is_the_blake2b_of_etag_and_size() -> None:
    for etag, size in (('"abc"', 0), ("", 2**70), ("é", 16384)):
        expect = hashlib.blake2b(f"{etag}\x00{size}".encode(), digest_size=6).hexdigest()
        assert generation(etag, size) == generation(etag, size) == expect
