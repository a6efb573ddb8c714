"""Objects of more than 14,000 chunks (issue 8, finding 1).

The chunk bitmap of such an object used to be a JSON integer of more than 4,300 digits, which
Python refuses to write or parse; it is stored as bytes now, and records written as integers
still read as before.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.request
from pathlib import Path

from proxy.cache.record import Record
from tests.conftest import ProxyFactory
from tests.faultkit import audit_cache, scrape, wait_until
from tests.test_cache_index import record

MIB = 1024**2
GIB = 1024**3


def _record(size: int, chunks: int = 0) -> Record:
    rec = record(size)
    rec.chunks = chunks
    return rec


def test_bitmap_of_many_chunks_round_trips() -> None:
    every = (1 << 20_000) - 1  # 20,000 chunks: 6,021 decimal digits as an integer
    sparse = 1 | 1 << 14_001 | 1 << 25_599
    for bits in (every, sparse, 0, 1, 0b101):
        rec = _record(25_600 * 8 * MIB, bits)
        back = Record.loads(rec.dumps())
        assert back == rec
        assert back.chunks == bits
    rec = _record(25_600 * 8 * MIB, sparse)
    assert list(rec.present_chunks()) == [0, 14_001, 25_599]
    assert rec.has_chunk(25_599) and not rec.has_chunk(25_598)
    assert len(_record(1, every).dumps()) < 4_000  # a compact bitmap: 2,500 bytes as base64


def test_record_with_integer_bitmap_still_reads() -> None:
    """A record written before the bitmap became bytes decodes as it did."""
    doc = dataclasses.asdict(_record(3 * 8 * MIB))
    doc["chunks"] = 0b101
    old = Record.loads(json.dumps(doc).encode())
    assert old.chunks == 0b101
    assert list(old.present_chunks()) == [0, 2]
    assert Record.loads(old.dumps()) == old


def test_binary_records_round_trip_and_json_ones_still_read() -> None:
    """The index's records are compact binary (a version byte, floats, varints, texts with
    varint lengths); the first binary form and JSON records of caches written before read as
    they did, and a text longer than a u16 length fits the compact form too."""
    rec = _record(5 * 8 * MIB, 0b10110)
    rec.key = "train/\udc80lone surrogate/é/日本.jpg"
    rec.meta = {"origin": "sensor-7", "empty": ""}
    rec.headers = {"Cache-Control": "max-age=60", "x-amz-checksum-crc32": "AAAAAA=="}
    rec.md5, rec.inline, rec.pinned, rec.queue = True, False, True, "M"
    rec.qseq, rec.gseq, rec.hits, rec.freq, rec.uses, rec.uses_era = 2**40, 7, 9, 3, 15, 2**31
    rec.atime, rec.quota = 1_700_000_000.25, "imagenet"
    raw = rec.dumps()
    assert raw[:1] == b"\x02"
    assert Record.loads(raw) == rec
    assert Record.loads(memoryview(raw)) == rec
    first = rec._dumps_v1()  # the first binary form (caches written before the compact one)
    assert first[:1] == b"\x01" and Record.loads(first) == rec
    assert len(raw) < len(first) - 60, (len(raw), len(first))  # varints, gen, table
    doc = dataclasses.asdict(rec)
    doc["chunks"] = base64.b64encode(rec.chunks.to_bytes(1, "little")).decode()
    as_json = json.dumps(doc, separators=(",", ":")).encode()
    assert Record.loads(as_json) == rec
    assert len(raw) < 0.7 * len(as_json), (len(raw), len(as_json))
    rec.headers["x-long"] = "v" * 70_000
    assert rec.dumps()[:1] == b"\x02" and Record.loads(rec.dumps()) == rec
    assert rec._dumps_v1()[:1] == b"{" and Record.loads(rec._dumps_v1()) == rec


def _get_range(url: str, first: int, last: int) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Range": f"bytes={first}-{last}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return int(resp.status), resp.read()


def test_sparse_200gib_object_through_the_proxy(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """Ranges at the start and near the end of a 200 GiB object (a sparse file: no disk) are
    served, cached, and served again from the cache; its record round-trips."""
    size = 200 * GIB
    root = tmp_path / "store"
    (root / "data").mkdir(parents=True)
    head, tail = b"the first bytes", b"the last bytes of a very large object"
    with open(root / "data" / "big.bin", "wb") as f:
        f.write(head)
        f.truncate(size)
        f.seek(size - len(tail))
        f.write(tail)
    cache_dir = tmp_path / "cache"
    proxy = proxy_factory(
        {
            "cache": {"dir": str(cache_dir), "max_size": "1GiB", "chunk_size": "8MiB"},
            "backends": {"local": {"type": "fs", "root": str(root)}},
            "buckets": {"data": {"backend": "local"}},
            "log": {"access_log": False},
            "workers": 1,
        }
    )
    url = f"{proxy.url}/data/big.bin"
    last = size // (8 * MIB) - 1
    assert last == 25_599

    def chunks_cached() -> list[int]:
        recs = audit_cache(cache_dir).records.values()
        return [i for rec in recs for i in range(rec.chunks.bit_length()) if rec.has_chunk(i)]

    for n in range(2):  # misses, then hits
        assert _get_range(url, 0, len(head) - 1) == (206, head)
        assert _get_range(url, size - len(tail), size - 1) == (206, tail)
        assert _get_range(url, size - 100 - len(tail), size - 1 - len(tail)) == (206, bytes(100))
        if n == 0:
            assert wait_until(lambda: chunks_cached() == [0, last]), proxy.log()
            hits = scrape(proxy.admin_url).get("slipstream_cache_hits_total")
    assert scrape(proxy.admin_url).get("slipstream_cache_hits_total") == hits + 3, proxy.log()
    assert "Traceback" not in proxy.log(), proxy.log()
    proxy.stop()

    assert chunks_cached() == [0, last]
    (rec,) = audit_cache(cache_dir).records.values()
    assert Record.loads(rec.dumps()) == rec
