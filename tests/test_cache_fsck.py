"""The start-up check (CacheStore.fsck) on an index built in-process: what it drops, what it
keeps, and that its in-place reading of records (record.glance) agrees with Record.loads."""

from __future__ import annotations

from pathlib import Path

from proxy.cache.index import Txn
from proxy.cache.quota import QuotaRule, used_key
from proxy.cache.record import Record, generation, glance, object_id
from proxy.cache.store import CacheStore
from proxy.config import CacheConfig

CHUNK = 64 * 1024


def _cfg(root: Path) -> CacheConfig:
    return CacheConfig(dir=root, max_size=1 << 40, index_map_size=1 << 30, chunk_size=CHUNK)


def _rec(key: str, size: int, *, inline: bool, quota: str = "") -> Record:
    return Record(
        key=key,
        backend="store",
        bucket="b",
        etag=f"etag-{key}",
        size=size,
        mtime=0.0,
        ctype="text/plain",
        validated=1.0,
        meta={"m": "ü"},
        headers={"Cache-Control": "no-cache"},
        gen=generation(f"etag-{key}", size),
        inline=inline,
        stored=size,
        chunks=0 if inline else (1 << -(-size // CHUNK)) - 1,
        quota=quota,
    )


def test_glance_reads_what_loads_reads() -> None:
    for rec in (
        _rec("k/ü€", 10, inline=True),
        _rec("big", 40 * CHUNK + 3, inline=False, quota="Q"),
        _rec("x" * 70000, 10, inline=True),  # too long for the binary form: JSON
    ):
        raw = rec.dumps()
        back = Record.loads(raw)
        g = glance(raw, names=True)
        assert (g.inline, g.chunks, g.quota) == (back.inline, back.chunks, back.quota)
        assert (g.backend, g.bucket, g.key) == (back.backend, back.bucket, back.key)
        assert g.gen == back.gen or (not back.chunks and g.gen == "")


def test_fsck_drops_what_lost_its_bytes_and_files_nothing_references(tmp_path: Path) -> None:
    store = CacheStore(_cfg(tmp_path))
    store.open_sync()
    idx = store._idx
    oids = {name: object_id("store", "b", name) for name in ("inl", "gone", "whole", "torn")}
    recs = {
        "inl": _rec("inl", 10, inline=True),
        "gone": _rec("gone", 10, inline=True),
        "whole": _rec("whole", 2 * CHUNK, inline=False),
        "torn": _rec("torn", 3 * CHUNK, inline=False),
    }

    def put(t: Txn) -> None:
        for name, rec in recs.items():
            t.insert(oids[name], rec)
            t.grow(oids[name], rec, 0)
            if rec.inline and name != "gone":  # "gone": its value vanished
                t.txn.put(oids[name], b"v" * 10, db=idx.data)

    idx.run_sync(put)
    for name in ("whole", "torn"):
        for i in range(2 if name == "whole" else 3):
            if (name, i) != ("torn", 1):  # torn's chunk 1 is missing
                store.blobs.write(oids[name], recs[name].gen, i, memoryview(b"c" * 10))
    orphan = store.blobs.write(oids["whole"], "0123456789ab", 0, memoryview(b"o"))
    stray = store.blobs.write(oids["inl"], recs["inl"].gen, 0, memoryview(b"o"))

    stats = store.fsck()

    assert stats["missing"] == 2 and stats["orphans"] == 2
    assert not orphan.exists() and not stray.exists()
    assert idx.get(oids["gone"]) is None and idx.get(oids["torn"]) is None
    assert idx.get(oids["inl"]) is not None and idx.get(oids["whole"]) is not None
    assert store.lookup(oids["inl"])[1] == b"v" * 10
    assert store.blobs.path(oids["whole"], recs["whole"].gen, 1).exists()
    assert not store.blobs.path(oids["torn"], recs["torn"].gen, 0).exists()  # after commit
    assert store.fsck()["missing"] == 0  # a second pass finds nothing more
    idx.close()


def test_fsck_regroups_only_records_whose_quota_changed(tmp_path: Path) -> None:
    store = CacheStore(_cfg(tmp_path))
    store.open_sync()
    oid = object_id("store", "b", "q")

    def put(t: Txn) -> None:
        t.txn.put(oid, b"v" * 10, db=t.index.data)
        t.insert(oid, _rec("q", 10, inline=True))

    store._idx.run_sync(put)
    store._idx.close()
    after = CacheStore(_cfg(tmp_path), [QuotaRule("A", "store", "b", "", 100)])
    after.open_sync()
    after.fsck()
    assert after._idx.counters(used_key("A")) == [10]
    rec = after._idx.get(oid)
    assert rec is not None and rec.quota == "A"
    after.fsck()  # already in place: nothing moves twice
    assert after._idx.counters(used_key("A")) == [10]
    after._idx.close()
