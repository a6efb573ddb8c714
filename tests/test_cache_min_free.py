"""cache.min_free (issue 8, finding 2): the setting, the budget the index keeps with it, and
the once-a-minute warning about a full disk."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.cache import space
from proxy.cache.index import Index, Txn
from proxy.cache.space import IndexTail, Throttled, Volume
from proxy.config import from_mapping
from proxy.config_values import SizeOrShare
from proxy.errors import ConfigError
from tests.proxyproc import REPO_ROOT
from tests.test_cache_index import UNLIMITED, all_records, insert, oid, record

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("5%", SizeOrShare(percent=5.0)),
        ("0.5 %", SizeOrShare(percent=0.5)),
        ("2GiB", SizeOrShare(size=2 * GIB)),
        (1000, SizeOrShare(size=1000)),
        ("0", SizeOrShare(size=0)),
    ],
)
def test_min_free_accepts_a_size_or_a_percentage(value: object, want: SizeOrShare) -> None:
    assert from_mapping({"cache": {"min_free": value}}, "t", {}).cache.min_free == want


def test_min_free_defaults_to_five_percent_and_reads_the_environment() -> None:
    assert from_mapping({}, "t", {}).cache.min_free.of(1000) == 50
    env = {"SLIPSTREAM_CACHE__MIN_FREE": "1GiB"}
    assert from_mapping({}, "t", env).cache.min_free == SizeOrShare(size=GIB)


@pytest.mark.parametrize("value", ["lots", "100%", "-1%", "5%%", True, "-3"])
def test_a_bad_min_free_is_refused_by_name(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^t: cache\.min_free: "):
        from_mapping({"cache": {"min_free": value}}, "t", {})


def test_a_bad_min_free_stops_the_start(tmp_path: Path) -> None:
    cfg = tmp_path / "slipstream.yaml"
    cfg.write_text("cache:\n  min_free: 120%\n")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    assert done.returncode == 2, done
    assert "cache.min_free: a percentage must be below 100%" in done.stderr


def test_volume_resolves_the_reserve_against_its_size(tmp_path: Path) -> None:
    vol = Volume(tmp_path, SizeOrShare(percent=10))
    assert vol.size > 0 and vol.reserve == vol.size // 10
    assert Volume(tmp_path, SizeOrShare(size=123)).reserve == 123
    assert vol.spare() < Volume(tmp_path, SizeOrShare()).spare()


class FakeVolume(Volume):
    """A volume whose room beyond the reserve is set by the test, and given back as the
    index's chunk files go (their unlink is the test's on_commit)."""

    def __init__(self, spare: int) -> None:
        self.size, self.reserve, self.room = 100 * MIB, 0, spare

    def spare(self) -> int:
        return self.room


def chunked(key: bytes, stored: int) -> Callable[[Txn], None]:
    """An op that adds a record of one chunk file holding ``stored`` bytes."""

    def op(t: Txn) -> None:
        rec = record(stored)
        rec.chunks, rec.stored = 1, stored
        t.insert(key, rec)

    return op


async def test_the_index_evicts_chunk_files_to_keep_the_reserve(tmp_path: Path) -> None:
    vol = FakeVolume(spare=10 * MIB)
    index = Index(tmp_path / "index", 64 * MIB, UNLIMITED, vol)
    index.on_commit = lambda batch: setattr(vol, "room", vol.room + batch.file_bytes)
    index.start()
    try:
        for n in range(20):
            await index.submit(chunked(oid(n), MIB))
            vol.room -= MIB  # the chunk file was written before its commit
        held = all_records(index)
        assert 7 <= len(held) <= 10, len(held)  # 10 MiB of room, max_size far off
        assert vol.room >= 0
        assert oid(19) in held and oid(0) not in held
        # make_room: what a chunk write asks for first
        await index.make_room(3 * MIB)
        assert vol.room >= 3 * MIB
    finally:
        index.close()


async def test_inline_values_are_not_drained_when_the_disk_is_short(tmp_path: Path) -> None:
    """Evicting values held inside LMDB gives the volume nothing back: short of room, the
    index file stops growing (some values go to leave free pages in it), and a shortfall
    evicts chunk files, not the rest of the cache in vain."""
    vol = FakeVolume(spare=10 * MIB)
    index = Index(tmp_path / "index", 64 * MIB, UNLIMITED, vol)
    index.start()
    try:
        for n in range(50):
            await index.submit(insert(oid(n), 3000, data=b"x" * 3000))
        vol.room = -5 * MIB
        await index.make_room(MIB)
        kept = len(all_records(index))
        for _ in range(5):
            await index.make_room(MIB)
        assert 30 <= len(all_records(index)) == kept
        spanned = index.map_usage()[0]
        for n in range(50, 250):  # 200 pages of values: most reuse pages freed for them
            await index.submit(insert(oid(n), 3000, data=b"x" * 3000))
        grown = index.map_usage()[0] - spanned
        assert grown < 200 * 4096 / 2, f"the index file grew by {grown} bytes"
        assert 30 <= len(all_records(index)) < 150  # of 250
    finally:
        index.close()


def test_throttled_warns_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.throttled")
    warn = Throttled(logger)
    clock = [1000.0]
    with caplog.at_level(logging.WARNING, "tests.throttled"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("proxy.cache.space.time.monotonic", lambda: clock[0])
            for _ in range(500):
                warn.warning("disk full: %s", "No space left on device")
                clock[0] += 0.1  # 50 seconds in all
            clock[0] += 11
            warn.warning("disk full: %s", "No space left on device")
    assert [r.getMessage() for r in caplog.records] == [
        "disk full: No space left on device",
        "disk full: No space left on device (499 similar warnings held back)",
    ]


def test_the_index_file_keeps_its_pages_and_a_tail_past_them_backed(tmp_path: Path) -> None:
    """IndexTail: a hole among the file's pages (LMDB leaves one where a new page was freed
    before it was written) gets blocks, and so does ``keep`` past the last page, again after
    the file grew into it."""
    path = tmp_path / "data.mdb"
    path.write_bytes(b"")
    os.truncate(path, 16 * 4096)  # 16 pages, all a hole
    tail = IndexTail(path, Volume(tmp_path, SizeOrShare(size=8 * 4096 + 100)), 4096)
    assert tail.keep == 8 * 4096
    span = 16 * 4096
    assert tail.beyond(span) == 0 and tail.short(span) == 8 * 4096
    tail.top_up(span)
    assert os.stat(path).st_blocks * 512 >= 24 * 4096
    assert tail.beyond(span) == 8 * 4096 and tail.short(span) == 0
    assert tail.room(span, 0) == 0  # the tail is not room to grow into
    span += 3 * 4096  # a commit grew the file into its tail
    assert tail.short(span) == 3 * 4096
    tail.top_up(span)
    assert tail.short(span) == 0 and os.stat(path).st_blocks * 512 >= 27 * 4096
    tail.close()


def test_without_fallocate_the_tail_is_off_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(space, "_libc_fallocate", None)
    path = tmp_path / "data.mdb"
    path.write_bytes(b"\0" * 4096)
    tail = IndexTail(path, Volume(tmp_path, SizeOrShare(size=8 * 4096)), 4096)
    with caplog.at_level(logging.WARNING, logger="proxy.cache"):
        for span in (4096, 8192, 4096):
            tail.top_up(span)
    assert [r.getMessage() for r in caplog.records if "fallocate" in r.getMessage()] == [
        "no fallocate under the cache index: it keeps no room past its end, and a full disk "
        "may stop its evictions"
    ]
    assert tail.off and tail.keep == 0
    assert tail.short(4096) == 0 and tail.room(4096, 5) == 5  # the volume's room alone
    tail.close()


async def test_a_transaction_adds_values_of_at_most_half_the_tail(tmp_path: Path) -> None:
    """Eight 60 KiB values queued at once commit two by two at most (the cap: half of a
    256 KiB tail), where they would share one transaction: a batch that has to grow the index
    file then leaves room for the eviction a full disk asks for."""
    volume = Volume(tmp_path, SizeOrShare(size=64 * 4096))
    index = Index(tmp_path / "index", 64 * MIB, UNLIMITED, volume)
    assert index.tail is not None and index.tail.keep == 256 * 1024
    commits: list[int] = []
    index.on_commit = lambda batch: commits.append(1)
    index.start()
    try:
        value = 60 * 1024
        futs = [
            index.submit(insert(oid(n), value, data=b"v" * value), lazy=True, nbytes=value)
            for n in range(8)
        ]
        futs.append(index.submit(insert(oid(99), 10), lazy=True))  # no value: no bytes
        await asyncio.gather(*futs)
        assert len(all_records(index)) == 9
        assert 4 <= len(commits) <= 5, commits
    finally:
        index.close()
