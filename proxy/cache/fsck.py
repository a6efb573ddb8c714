"""The start-up check of the cache (fsck): temp files of dead processes, chunk files the index
does not reference, and records whose bytes are gone, walked once before serving."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from proxy.cache import cleanstop, quota
from proxy.cache.record import chunk_indices, glance, plain_inline

if TYPE_CHECKING:
    from proxy.cache.blobs import BlobStore
    from proxy.cache.index import Index, Txn
    from proxy.cache.parts import PartStaging


def check(idx: Index, blobs: BlobStore, uploads: PartStaging) -> dict[str, int]:
    """Blocking; run before serving. Drops temp files of dead processes, chunk files the
    index does not reference (a crash between rename and commit), and index bits whose file
    is gone. Nothing unverified is ever referenced, so what remains is whole. Each record
    kept goes to the quota cache.quotas gives it now (quota.regroup).

    Restart to ready waits for this, so the walk reads each record in place (glance: no
    Record built; a plain inline record's first bytes only) and counts the inline ones: the
    data tree is walked beside the records (_valueless) only when it holds another number
    of values; only the few records it changes are parsed, after the walk. After a clean
    stop with the same cache.quotas grouping and nothing committed since (cleanstop),
    there is nothing to walk for ("walked": 0)."""
    stats = {
        "tmp_dirs": blobs.sweep_tmp(),
        "stale_uploads": uploads.sweep(),
        "orphans": 0,
        "missing": 0,
        "walked": 0,
    }
    if cleanstop.take(idx.path, *idx.identity(), idx.quotas):
        return stats
    stats["walked"] = 1
    on_disk = _chunk_files(idx, blobs, stats)

    def repair(t: Txn) -> None:
        rules = idx.quotas
        gone: list[bytes] = []  # its inline value or a chunk file is missing
        moved: list[bytes] = []  # cache.quotas gives it another quota now
        inline = 0
        records = cast("Iterator[tuple[bytes, bytes]]", t.txn.cursor(db=idx.objects).iternext())
        for key, raw in records:
            g = None if not rules and plain_inline(raw) else glance(raw)
            if g is None or g.inline:
                inline += 1
            elif any((key, g.gen, i) not in on_disk for i in chunk_indices(g.chunks)):
                gone.append(key)
                continue
            if g is not None and (rules or g.quota):
                g = glance(raw, names=True)
                rule = quota.group_of(rules, g.backend, g.bucket, g.key)
                if g.quota != (rule.name if rule is not None else ""):
                    moved.append(key)
        if inline != t.txn.stat(idx.data)["entries"]:
            gone += _valueless(t, idx)  # (never after a crash: a value and its record
            # commit together; a read of a record without its value is a miss anyway)
        for oid in gone:  # its other chunk files go too; refetched on demand
            rec = t.get(oid)
            assert rec is not None
            t.remove(oid, rec)
        dropped = set(gone)
        for oid in moved:
            if oid in dropped:
                continue
            rec = t.get(oid)
            assert rec is not None
            quota.regroup(t, oid, rec)
        stats["missing"] = len(gone)

    idx.run_sync(repair)
    return stats


def _chunk_files(
    idx: Index, blobs: BlobStore, stats: dict[str, int]
) -> set[tuple[bytes, str, int]]:
    """Blocking: every chunk file the index references; the others are unlinked."""
    on_disk: set[tuple[bytes, str, int]] = set()
    txn = idx.env.begin(db=idx.objects)
    try:
        for oid, gen, i, path in blobs.scan():
            raw = txn.get(oid) if oid else None
            g = glance(raw) if raw is not None else None
            if g is None or g.gen != gen or g.inline or not g.chunks >> i & 1:
                os.unlink(path)
                stats["orphans"] += 1
            else:
                on_disk.add((oid, gen, i))
    finally:
        txn.abort()
    return on_disk


def _valueless(t: Txn, idx: Index) -> list[bytes]:
    """Inline records whose value is missing: both trees walked side by side in key order,
    the values never copied."""
    # (bytes, not buffers: the transaction is not opened with buffers=True)
    values = cast("Iterator[bytes]", t.txn.cursor(db=idx.data).iternext(values=False))
    value_key = next(values, None)
    out = []
    for key, raw in cast("Iterator[tuple[bytes, bytes]]", t.txn.cursor(db=idx.objects).iternext()):
        if plain_inline(raw) or glance(raw).inline:
            while value_key is not None and value_key < key:
                value_key = next(values, None)
            if value_key != key:
                out.append(key)
    return out
