"""Pinning, quotas and eviction by hand (issue 9): the index in-process (pin rules, quota
FIFOs, prefix scans), then a proxy over SeaweedFS behind a relay that counts store requests
(the admin routes, the counters on /admin/v1/cache and /metrics, `slipstream pin|unpin|evict`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.cache import pins
from proxy.cache.index import Index, Txn
from proxy.cache.quota import QuotaRule, used_key
from proxy.cache.record import Record, object_id
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import KEY_ENV, SECRET_ENV, get_body, new_bucket, payload, scrape, store_env
from tests.proxyproc import REPO_ROOT, ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint

KIB = 1024
MIB = 1024 * KIB
BIG_MAP = 64 * MIB
UNLIMITED = 1 << 50

# -- the index in-process --------------------------------------------------------------------


def _rec(bucket: str, key: str, stored: int) -> Record:
    return Record(
        key=key,
        backend="store",
        bucket=bucket,
        etag="e",
        size=stored,
        mtime=0.0,
        ctype="application/octet-stream",
        validated=0.0,
        gen="g",
        inline=True,  # no chunk files to unlink
        stored=stored,
    )


async def _fill(index: Index, bucket: str, key: str, stored: int) -> bool:
    """A fill's commit as CacheStore does it: the quota's room first, then the insert (on the
    writer thread, which evicts to the budget after each batch)."""
    oid = object_id("store", bucket, key)

    def op(t: Txn) -> bool:
        rec = _rec(bucket, key, stored)
        if not t.fits(oid, rec, stored):
            return False
        t.insert(oid, rec)
        return True

    return bool(await index.submit(op))


def _cached(index: Index, bucket: str, key: str) -> Record | None:
    return index.get(object_id("store", bucket, key))


def _open(path: Path, max_bytes: int, quotas: list[QuotaRule] | None = None) -> Index:
    index = Index(path, BIG_MAP, max_bytes, quotas=quotas or ())
    index.start()
    return index


async def test_pins_hold_under_pressure_apply_later_and_survive_a_restart(tmp_path: Path) -> None:
    index = _open(tmp_path, 10 * MIB)
    target = pins.Target("store", "b", "keep/")
    await _fill(index, "b", "keep/0", MIB)  # cached before the pin
    counts = await pins.pin(index, target)
    assert (counts.objects, counts.bytes) == (1, MIB)
    await _fill(index, "b", "keep/1", MIB)  # cached after it
    await _fill(index, "b", "keepx", 1)
    assert [_cached(index, "b", k).pinned for k in ("keep/1", "keepx")] == [True, False]  # type: ignore[union-attr]
    await asyncio.to_thread(index.close)

    index = _open(tmp_path, 10 * MIB)  # a restart: the rule is in LMDB
    assert pins.rules(index) == [target]
    for i in range(2, 4):
        await _fill(index, "b", f"keep/{i}", MIB)
    for i in range(30):  # three times the budget of unpinned objects
        await _fill(index, "b", f"other/{i}", MIB)
    assert all(_cached(index, "b", f"keep/{i}") is not None for i in range(4))
    assert sum(_cached(index, "b", f"other/{i}") is not None for i in range(30)) <= 6
    assert index.counters(b"pinned") == [4 * MIB]
    assert index.totals()[0] <= 10 * MIB

    existed, counts = await pins.unpin(index, target)
    assert existed and (counts.objects, counts.bytes) == (4, 4 * MIB)
    assert index.counters(b"pinned") == [0]
    assert pins.rules(index) == []
    again, _ = await pins.unpin(index, target)
    assert not again  # no such pin any more
    await asyncio.to_thread(index.close)

    index = _open(tmp_path, 2 * MIB)  # a budget below what they hold: now they go too
    await _fill(index, "b", "other/last", MIB)
    assert sum(_cached(index, "b", f"keep/{i}") is not None for i in range(4)) <= 1
    assert index.totals()[0] <= 2 * MIB
    await asyncio.to_thread(index.close)


async def test_evict_drops_exactly_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _open(tmp_path, UNLIMITED)
    keys = [("b", "a/1"), ("b", "a/2"), ("b", "a/sub/3"), ("b", "ab"), ("c", "a/1")]
    for bucket, key in keys:
        await _fill(index, bucket, key, 1000)
    await pins.pin(index, pins.Target("store", "b", "a/sub/"))
    monkeypatch.setattr(pins, "SCAN_BATCH", 2)  # several transactions
    counts = await pins.evict(index, pins.Target("store", "b", "a/"))
    assert (counts.objects, counts.bytes) == (3, 3000)  # the pinned one too
    left = [(b, k) for b, k in keys if _cached(index, b, k) is not None]
    assert left == [("b", "ab"), ("c", "a/1")]
    assert index.totals() == (2000, 2)
    assert index.counters(b"pinned") == [0]
    await asyncio.to_thread(index.close)


async def test_a_quota_keeps_one_bucket_from_evicting_another(tmp_path: Path) -> None:
    rules = [QuotaRule("A", "store", "ra", "", 3 * MIB), QuotaRule("B", "store", "rb", "", MIB)]
    index = _open(tmp_path, UNLIMITED, rules)
    for i in range(3):
        assert await _fill(index, "rb", f"{i}", 300 * KIB)
    for i in range(20):
        assert await _fill(index, "ra", f"{i}", 512 * KIB)
    assert all(_cached(index, "rb", f"{i}") is not None for i in range(3))
    assert index.counters(used_key("A"), used_key("B")) == [3 * MIB, 900 * KIB]
    held = [i for i in range(20) if _cached(index, "ra", f"{i}") is not None]
    assert held == list(range(14, 20))  # the bucket's oldest went first
    assert not await _fill(index, "ra", "huge", 4 * MIB)  # larger than the quota: not cached

    # pins count toward the quota; pinned bytes alone filling it: served, not cached
    await pins.pin(index, pins.Target("store", "ra", ""))
    assert not await _fill(index, "ra", "new", 1)
    assert _cached(index, "ra", "new") is None
    assert [i for i in range(20) if _cached(index, "ra", f"{i}") is not None] == held
    assert await _fill(index, "rb", "3", 100 * KIB)  # B is untouched by A's state
    await asyncio.to_thread(index.close)
