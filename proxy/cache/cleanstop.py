"""The clean-stop marker: what lets a restart skip the start-up check's walk of every record.

The process that ran the check (CacheStore.fsck) writes ``clean-stop`` into the index's folder
when it closes the cache: the index file's inode and last transaction id (Index.identity) and
the quota rules it ran with. The next
start takes the marker away (durably, before anything is served) and walks the records only
when it is absent or does not match: after a crash, a kill, or a stop that could not close
the index, or when any process (an older version too, which knows nothing of the marker) has
committed to the index since, or when cache.quotas groups objects differently now.

What the walk finds is what a crash leaves: an index bit whose chunk file a lost rename took
(a power cut), or an inline value gone. A clean stop leaves neither (records, their inline
values and their bits commit in one LMDB transaction, each file fsynced and renamed into
place first), and a read that finds a chunk file gone refetches that chunk (Reads.
refill_missing). Chunk files no record references (a fill cancelled by the stop between
rename and commit) take room, never a read: they go at the next walk.

Every function here blocks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from proxy.cache.quota import QuotaRule

NAME = "clean-stop"
VERSION = 1


def fingerprint(rules: Sequence[QuotaRule]) -> list[list[str]]:
    """What decides each record's quota group (limits do not)."""
    return sorted([r.name, r.backend, r.bucket, r.prefix] for r in rules)


def write(root: Path, inode: int, txnid: int, rules: Sequence[QuotaRule]) -> None:
    """Mark a clean stop of index ``inode`` at transaction ``txnid`` (temp file, fsync,
    rename, fsync the folder)."""
    body = json.dumps(
        {"version": VERSION, "inode": inode, "txnid": txnid, "quotas": fingerprint(rules)}
    )
    tmp = root / f".{NAME}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, root / NAME)
    _sync_dir(root)


def take(root: Path, inode: int, txnid: int, rules: Sequence[QuotaRule]) -> bool:
    """Remove the marker, durably; True if it said this index (``inode``) was closed cleanly
    at ``txnid`` (nothing committed since) with quota rules that group as ``rules`` do."""
    path = root / NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    path.unlink()
    _sync_dir(root)
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return (
        isinstance(doc, dict)
        and doc.get("version") == VERSION
        and doc.get("inode") == inode
        and doc.get("txnid") == txnid
        and doc.get("quotas") == fingerprint(rules)
    )


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
