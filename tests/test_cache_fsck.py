"""The start-up check (CacheStore.fsck) on an index built in-process: what it drops, what it
keeps, and that its in-place reading of records (record.glance) agrees with Record.loads."""

from __future__ import annotations

import shutil
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


# -- the clean-stop marker (cleanstop): a clean restart skips the walk, nothing else does --------


def _one_inline(store: CacheStore, name: str, *, value: bool = True) -> bytes:
    """Commit one inline record (``value`` False: its value missing, as a crash could leave)."""
    oid = object_id("store", "b", name)

    def put(t: Txn) -> None:
        t.insert(oid, _rec(name, 10, inline=True))
        if value:
            t.txn.put(oid, b"v" * 10, db=t.index.data)

    store._idx.run_sync(put)
    return oid


async def _open_checked(
    root: Path, quotas: tuple[QuotaRule, ...] = ()
) -> tuple[CacheStore, dict[str, int]]:
    store = CacheStore(_cfg(root), quotas)
    store.open_sync()
    stats = store.fsck()
    await store.open()
    return store, stats


async def test_a_clean_stop_lets_the_next_start_skip_the_walk(tmp_path: Path) -> None:
    store, stats = await _open_checked(tmp_path)
    assert stats["walked"] == 1  # a new cache: no marker
    oid = _one_inline(store, "kept")
    await store.close()
    assert (tmp_path / "index" / "clean-stop").exists()

    store, stats = await _open_checked(tmp_path)
    assert stats["walked"] == 0
    assert not (tmp_path / "index" / "clean-stop").exists(), "taken before serving"
    assert store.lookup(oid)[1] == b"v" * 10
    store._idx.close()  # a crash: the store is not closed, no marker is written

    store, stats = await _open_checked(tmp_path)
    assert stats["walked"] == 1
    await store.close()


async def test_after_an_unclean_stop_the_walk_drops_what_lost_its_value(tmp_path: Path) -> None:
    store, _ = await _open_checked(tmp_path)
    lost = _one_inline(store, "lost", value=False)
    store._idx.close()  # killed: no marker

    store, stats = await _open_checked(tmp_path)
    assert (stats["walked"], stats["missing"]) == (1, 1)
    assert store.lookup(lost) == (None, None)
    await store.close()


async def test_a_commit_after_the_clean_stop_means_a_walk(tmp_path: Path) -> None:
    """Another process (an older version too, which knows no marker) committed since the
    clean stop: the marker no longer speaks for the index."""
    store, _ = await _open_checked(tmp_path)
    await store.close()
    other = CacheStore(_cfg(tmp_path))  # opened without the check, as an older version's
    other.open_sync()
    lost = _one_inline(other, "lost", value=False)
    other._idx.close()

    store, stats = await _open_checked(tmp_path)
    assert (stats["walked"], stats["missing"]) == (1, 1)
    assert store.lookup(lost) == (None, None)
    await store.close()


async def test_changed_quotas_after_a_clean_stop_mean_a_walk(tmp_path: Path) -> None:
    store, _ = await _open_checked(tmp_path)
    oid = _one_inline(store, "q")
    await store.close()

    rule = QuotaRule("A", "store", "b", "", 100)
    store, stats = await _open_checked(tmp_path, (rule,))
    assert stats["walked"] == 1
    rec = store._idx.get(oid)
    assert rec is not None and rec.quota == "A"
    await store.close()
    store, stats = await _open_checked(tmp_path, (QuotaRule("A", "store", "b", "", 999),))
    assert stats["walked"] == 0, "a new limit groups nothing differently"
    await store.close()


async def test_a_marker_of_another_index_is_not_taken_for_this_one(tmp_path: Path) -> None:
    store, _ = await _open_checked(tmp_path)
    await store.close()
    marker = (tmp_path / "index" / "clean-stop").read_bytes()
    shutil.rmtree(tmp_path / "index")  # the index rebuilt from nothing, an old marker put back
    store, _ = await _open_checked(tmp_path)
    lost = _one_inline(store, "lost", value=False)
    store._idx.close()
    (tmp_path / "index" / "clean-stop").write_bytes(marker)

    store, stats = await _open_checked(tmp_path)
    assert stats["walked"] == 1 and store.lookup(lost) == (None, None)
    await store.close()
