"""The start-up check (CacheStore.fsck) on an index built in-process: what it drops, what it
keeps, and that its in-place reading of records (record.glance) agrees with Record.loads."""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.index import Txn
from proxy.cache.quota import QuotaRule, used_key
from proxy.cache.record import (
    CTYPES,
    FORMAT2,
    Record,
    generation,
    glance,
    object_id,
    plain_inline,
)
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


def _agrees(rec: Record) -> None:
    """Every form of ``rec`` reads back as ``rec``, and glance reads what loads reads."""
    for raw in (rec.dumps(), rec._dumps_v1(), rec._dumps_json()):
        back = Record.loads(raw)
        assert back == rec
        for names in (False, True):
            g = glance(raw, names=names)
            assert (g.inline, g.chunks, g.quota) == (back.inline, back.chunks, back.quota)
            if names:
                assert (g.backend, g.bucket, g.key) == (back.backend, back.bucket, back.key)
            assert g.gen == back.gen or (not back.chunks and g.gen == "")
        plain = back.inline and not back.chunks and not back.quota  # the walk's shortcut
        assert plain_inline(raw) == (plain and raw[0] == FORMAT2)


def test_glance_reads_what_loads_reads() -> None:
    odd = _rec("odd", 2 * CHUNK, inline=False)
    odd.gen, odd.etag, odd.ctype = "not-hex", '"0123456789abcdef0123456789ABCDEF"', "x/y"
    for rec in (
        _rec("k/ü€", 10, inline=True),
        _rec("big", 40 * CHUNK + 3, inline=False, quota="Q"),
        _rec("x" * 70000, 10, inline=True),  # too long for the first binary form: JSON
        odd,  # a gen and an etag the compact form keeps as texts, a type not in its table
    ):
        _agrees(rec)
    assert len(_rec("k", 10, inline=True).dumps()) < 0.6 * len(
        _rec("k", 10, inline=True)._dumps_v1()
    )


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_uint = st.integers(min_value=0, max_value=2**63 - 1)
_u32 = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(
    key=_text,
    etag=st.one_of(
        _text,
        st.builds(
            lambda d, n: f'"{d}{n}"',
            st.text("0123456789abcdef", min_size=32, max_size=32),
            st.sampled_from(["", "-1", "-10000"]),
        ),
    ),
    ctype=st.one_of(st.sampled_from(CTYPES), _text),
    ints=st.tuples(_uint, _uint, _uint, _uint, _uint, _u32, _u32, _u32),  # the first form's
    chunks=st.integers(min_value=0, max_value=2**300),
    floats=st.tuples(*[st.floats(allow_nan=False)] * 3),
    pairs=st.dictionaries(_text, _text, max_size=3),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.sampled_from("SM")),
    quota=_text,
    derived=st.booleans(),
)
def test_every_record_reads_back_in_every_form(
    key: str,
    etag: str,
    ctype: str,
    ints: tuple[int, ...],
    chunks: int,
    floats: tuple[float, float, float],
    pairs: dict[str, str],
    flags: tuple[bool, bool, bool, str],
    quota: str,
    derived: bool,
) -> None:
    size, stored, qseq, gseq, hits, freq, uses, uses_era = ints
    rec = Record(
        key=key,
        backend="b\u00e9",
        bucket="bk",
        etag=etag,
        size=size,
        mtime=floats[0],
        ctype=ctype,
        validated=floats[1],
        meta=pairs,
        headers=dict(reversed(list(pairs.items()))),
        md5=flags[0],
        gen=generation(etag, size) if derived else key[:12],
        inline=flags[1],
        chunks=chunks,
        stored=stored,
        queue=flags[3],
        qseq=qseq,
        freq=freq,
        hits=hits,
        atime=floats[2],
        pinned=flags[2],
        quota=quota,
        gseq=gseq,
        uses=uses,
        uses_era=uses_era,
    )
    _agrees(rec)


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
