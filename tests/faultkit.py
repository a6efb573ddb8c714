"""Helpers for the fault tests: proxy configs over a store, seeding, metrics, cache audits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import lmdb
from prometheus_client.parser import text_string_to_metric_families

from proxy.cache.record import Record
from tests.servers import S3Endpoint

KEY_ENV = "FAULT_STORE_ACCESS_KEY"
SECRET_ENV = "FAULT_STORE_SECRET_KEY"


def new_bucket(prefix: str = "fault") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes: no two offsets look alike, so a misplaced slice shows."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_env(store: S3Endpoint) -> dict[str, str]:
    return {KEY_ENV: store.access_key, SECRET_ENV: store.secret_key}


def proxy_config(
    endpoint_url: str,
    bucket: str,
    cache_dir: Path,
    *,
    cache: Mapping[str, Any] | None = None,
    backend: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """A proxy serving ``bucket`` from the S3 store at ``endpoint_url`` (often a relay)."""
    return {
        "workers": workers,
        "cache": {"dir": str(cache_dir), **(cache or {})},
        "backends": {
            "store": {
                "type": "s3",
                "endpoint": endpoint_url,
                "access_key_env": KEY_ENV,
                "secret_key_env": SECRET_ENV,
                **(backend or {}),
            }
        },
        "buckets": {bucket: {"backend": "store"}},
        "server": dict(server or {}),
        "log": {"access_log": False},
    }


# -- metrics ----------------------------------------------------------------------------------


@dataclass
class Metrics:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def get(self, name: str, **labels: str) -> float:
        """Sum of every sample called ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lbl), v in self.samples.items() if n == name and want <= set(lbl))

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)


def scrape(admin_url: str) -> Metrics:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Metrics(samples)


def wait_until(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


async def eventually(
    check: Callable[[], bool], within: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``check`` on the event loop until it holds (for states with no event of their
    own); AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not true within {within}s"
        await asyncio.sleep(interval)


def http_status(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def get_body(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


async def fetch_many(url: str, n: int, *, limit: int = 0) -> list[tuple[int, bytes]]:
    """``n`` concurrent GETs of ``url`` from one session; (status, body) each."""
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[int, bytes]:
            async with session.get(url) as resp:
                return resp.status, await resp.read()

        return await asyncio.gather(*(one() for _ in range(n)))


# -- the cache on disk ------------------------------------------------------------------------


@dataclass
class Audit:
    records: dict[bytes, Record]
    blob_files: dict[tuple[bytes, str, int], int]  # (oid, gen, index) -> size
    odd_files: list[str]
    tmp_files: dict[str, list[str]]  # tmp/<pid> -> files in it

    def unreferenced(self) -> list[tuple[bytes, str, int]]:
        out = []
        for oid, gen, i in self.blob_files:
            rec = self.records.get(oid)
            if rec is None or rec.inline or rec.gen != gen or not rec.has_chunk(i):
                out.append((oid, gen, i))
        return out

    def missing_or_wrong_size(self, chunk_size: int) -> list[tuple[bytes, int]]:
        out = []
        for oid, rec in self.records.items():
            for i in range(rec.chunks.bit_length()):
                if not rec.has_chunk(i):
                    continue
                want = min(chunk_size, rec.size - i * chunk_size)
                if self.blob_files.get((oid, rec.gen, i)) != want:
                    out.append((oid, i))
        return out


def audit_cache(cache_dir: Path) -> Audit:
    """Read the index and the blob tree (safe while the proxy is idle: LMDB readers are fine
    across processes)."""
    records: dict[bytes, Record] = {}
    env = lmdb.open(str(cache_dir / "index"), readonly=True, max_dbs=8, subdir=True, lock=True)
    try:
        objects = env.open_db(b"objects", create=False)
        with env.begin(db=objects) as txn:
            for oid, raw in txn.cursor():
                records[bytes(oid)] = Record.loads(bytes(raw))
    finally:
        env.close()
    blob_files: dict[tuple[bytes, str, int], int] = {}
    odd: list[str] = []
    for dirpath, _, files in os.walk(cache_dir / "blobs"):
        for name in files:
            path = os.path.join(dirpath, name)
            parts = name.split(".")
            try:
                blob_files[(bytes.fromhex(parts[0]), parts[1], int(parts[2]))] = os.path.getsize(
                    path
                )
            except (ValueError, IndexError):
                odd.append(path)
    tmp: dict[str, list[str]] = {}
    tmp_root = cache_dir / "tmp"
    if tmp_root.is_dir():
        for entry in tmp_root.iterdir():
            tmp[entry.name] = sorted(os.listdir(entry)) if entry.is_dir() else ["<file>"]
    return Audit(records, blob_files, odd, tmp)
