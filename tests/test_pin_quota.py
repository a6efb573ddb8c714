"""Pinning, quotas and eviction by hand (issue 9): the index in-process (pin rules, quota
FIFOs, prefix scans), then a proxy over SeaweedFS behind a relay that counts store requests
(the admin routes, the counters on /admin/v1/cache and /metrics, `slipstream pin|unpin|evict`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.cache import pins
from proxy.cache.index import Index, Txn
from proxy.cache.quota import QuotaRule, used_key
from proxy.cache.record import Record, object_id
from proxy.cache.store import CacheStore
from proxy.config import CacheConfig
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import (
    KEY_ENV,
    SECRET_ENV,
    eventually,
    get_body,
    new_bucket,
    payload,
    scrape,
    store_env,
    wait_until,
)
from tests.proxyproc import REPO_ROOT, ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint
from tests.test_core_units import BUCKET, Core, core  # noqa: F401 (the fixture)
from tests.test_core_units import _read as read_in_core

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


async def test_pinned_entries_of_a_quota_stay_while_the_rest_cycles(tmp_path: Path) -> None:
    index = _open(tmp_path, UNLIMITED, [QuotaRule("C", "store", "rc", "", MIB)])
    await pins.pin(index, pins.Target("store", "rc", "keep/"))
    for key in ("keep/0", "keep/1", *(f"tmp/{i}" for i in range(10))):
        assert await _fill(index, "rc", key, 256 * KIB)
    held = [
        k for k in ("keep/0", "keep/1", *(f"tmp/{i}" for i in range(10))) if _cached(index, "rc", k)
    ]
    assert held == ["keep/0", "keep/1", "tmp/8", "tmp/9"]
    assert index.counters(used_key("C")) == [MIB]
    await asyncio.to_thread(index.close)


def test_a_quota_added_later_counts_what_was_cached_before(tmp_path: Path) -> None:
    """The start-up check (CacheStore.fsck) moves cached objects to the quotas configured now."""
    cfg = CacheConfig(dir=tmp_path, max_size=UNLIMITED, index_map_size=BIG_MAP)

    def put(t: Txn) -> None:
        for key in ("0", "1", "2"):
            oid = object_id("store", "ra", key)
            t.txn.put(oid, b"x" * 1000, db=t.index.data)
            t.insert(oid, _rec("ra", key, 1000))

    before = CacheStore(cfg)
    before.open_sync()
    assert before.index is not None
    before.index.run_sync(put)
    before.index.close()

    rules = [QuotaRule("A", "store", "ra", "", 2500)]
    after = CacheStore(cfg, rules)
    after.open_sync()
    assert after.index is not None
    after.fsck()
    assert after.index.counters(used_key("A")) == [3000]
    assert after.quota_room("A") == 0
    after.index.close()


# -- a proxy over SeaweedFS ------------------------------------------------------------------

SIZE = 100 * KIB  # two chunks of 64 KiB
QUOTA = 600 * KIB
TOKEN_ENV = "PIN_TEST_TOKEN"
TOKEN = "pin-s3cret"


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url) as r:
        yield r


@pytest.fixture
def buckets(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> tuple[str, str]:
    """(A, B): A holds keep/0..3 and tmp/0..9, B holds x/0..2 and y/0..1."""
    client = s3_client_factory(seaweedfs)
    a, b = new_bucket("quota-a"), new_bucket("quota-b")
    for name, keys in ((a, [f"keep/{i}" for i in range(4)] + [f"tmp/{i}" for i in range(10)]),
                       (b, ["x/0", "x/1", "x/2", "y/0", "y/1"])):  # fmt: skip
        client.create_bucket(Bucket=name)
        for key in keys:
            client.put_object(Bucket=name, Key=key, Body=payload(SIZE, seed=hash(key) % 1000))
    return a, b


@pytest.fixture
def start_proxy(
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    buckets: tuple[str, str],
    tmp_path: Path,
) -> Callable[..., ProxyProcess]:
    """``start_proxy(workers=1)``: a proxy of both buckets through the relay, A with a quota
    of 600 KiB, the admin token required."""
    a, b = buckets

    def start(workers: int = 1) -> ProxyProcess:
        cfg = {
            "workers": workers,
            "cache": {
                "dir": str(tmp_path / "cache"),
                "chunk_size": "64KiB",
                "inline_max": "4KiB",
                "quotas": {a: "600KiB"},
            },
            "backends": {
                "store": {
                    "type": "s3",
                    "endpoint": relay.url,
                    "access_key_env": KEY_ENV,
                    "secret_key_env": SECRET_ENV,
                }
            },
            "buckets": {a: {"backend": "store"}, b: {"backend": "store"}},
            "admin": {"token_env": TOKEN_ENV},
            "log": {"access_log": False},
        }
        return proxy_factory(cfg, {**store_env(seaweedfs), TOKEN_ENV: TOKEN})

    return start


def _post(
    proxy: ProxyProcess, action: str, body: Any, token: str | None = TOKEN
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{proxy.admin_url}/admin/v1/{action}", data=data, method="POST")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def _info(proxy: ProxyProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{proxy.admin_url}/admin/v1/cache", timeout=10) as resp:
        got: dict[str, Any] = json.loads(resp.read())
    return got


def _settled(proxy: ProxyProcess) -> dict[str, Any]:
    """/admin/v1/cache once the last fill's commits landed (a response may end before its
    last chunk is committed): three reads a quarter second apart agree (a loaded machine's
    index writers can stall on an fsync for longer than one quarter)."""
    last, same = _info(proxy), 0
    for _ in range(80):
        time.sleep(0.25)
        now = _info(proxy)
        same = same + 1 if now == last else 0
        if same == 2:
            return now
        last = now
    raise AssertionError(f"the cache kept changing: {last}")


def _read(proxy: ProxyProcess, bucket: str, key: str) -> None:
    status, body = get_body(f"{proxy.url}/{bucket}/{key}")
    assert (status, body) == (200, payload(SIZE, seed=hash(key) % 1000)), (status, key)


def _fetched(relay: CountingRelay, bucket: str) -> set[str]:
    """The keys of ``bucket`` whose bytes the store served since the last reset."""
    return {
        path[len(bucket) + 2 :]
        for (method, path), n in relay.counts.items()
        if method == "GET" and path.startswith(f"/{bucket}/") and path != f"/{bucket}/"
    }


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_pin_quota_and_evict_through_the_admin_api(
    workers: int,
    start_proxy: Callable[..., ProxyProcess],
    relay: CountingRelay,
    buckets: tuple[str, str],
) -> None:
    a, b = buckets
    proxy = start_proxy(workers)
    assert _post(proxy, "pin", {"bucket": a, "prefix": "keep/"}, token=None)[0] == 401
    assert _post(proxy, "pin", {"bucket": a, "prefix": "keep/"}) == (
        200,
        {"objects": 0, "bytes": 0},
    )
    for key in ("x/0", "x/1", "x/2", "y/0", "y/1"):
        _read(proxy, b, key)
    for key in ("keep/0", "keep/1", *(f"tmp/{i}" for i in range(10))):
        _read(proxy, a, key)  # 1.2 MiB through a 600 KiB quota

    # the pinned copies' commits may land after their answers (and after a stalled fsync)
    assert wait_until(lambda: _info(proxy)["pinned_bytes"] == 2 * SIZE, 20), _info(proxy)
    info = _settled(proxy)
    assert info["pinned_bytes"] == 2 * SIZE
    assert info["quotas"][a]["limit"] == QUOTA
    assert info["quotas"][a]["pinned"] == 2 * SIZE
    assert 2 * SIZE < info["quotas"][a]["used"] <= QUOTA
    assert info["bytes"] == info["quotas"][a]["used"] + 5 * SIZE  # all of B stayed
    m = scrape(proxy.admin_url)
    assert m.get("slipstream_cache_quota_bytes", bucket=a) == QUOTA
    assert m.get("slipstream_cache_quota_used_bytes", bucket=a) == info["quotas"][a]["used"]
    assert m.get("slipstream_cache_pinned_bytes") == 2 * SIZE

    relay.reset()
    for key in ("x/0", "x/1", "x/2", "y/0", "y/1"):
        _read(proxy, b, key)
    for key in ("keep/0", "keep/1", "tmp/0"):
        _read(proxy, a, key)
    assert _fetched(relay, b) == set()  # A's fills evicted none of B
    assert _fetched(relay, a) == {"tmp/0"}  # A's own oldest went; the pinned ones stayed

    relay.reset()
    assert _post(proxy, "evict", {"bucket": b, "prefix": "x/"}) == (
        200,
        {"objects": 3, "bytes": 3 * SIZE},
    )
    for key in ("x/0", "x/1", "x/2", "y/0", "y/1"):
        _read(proxy, b, key)
    assert _fetched(relay, b) == {"x/0", "x/1", "x/2"}  # exactly the prefix was dropped

    assert _post(proxy, "unpin", {"bucket": a, "prefix": "keep/"}) == (
        200,
        {"objects": 2, "bytes": 2 * SIZE},
    )
    assert _info(proxy)["pinned_bytes"] == 0

    # bad input: the field is named
    assert _post(proxy, "pin", {"bucket": "nope", "prefix": ""}) == (
        404,
        {"error": "bucket: no such bucket is configured", "field": "bucket"},
    )
    assert _post(proxy, "evict", b"{not json")[1]["field"] == "body"
    assert _post(proxy, "evict", [1])[1]["field"] == "body"
    status, err = _post(proxy, "evict", {"bucket": a})
    assert (status, err["field"]) == (400, "prefix") and "missing" in err["error"]
    assert _post(proxy, "pin", {"bucket": a, "prefix": 3})[1]["field"] == "prefix"
    assert _post(proxy, "pin", {"bucket": a, "prefix": "", "x": 1})[1]["field"] == "x"
    assert _post(proxy, "unpin", {"bucket": a, "prefix": "keep/"})[0] == 404  # gone already


def test_a_pin_survives_a_restart_and_applies_to_later_fills(
    start_proxy: Callable[..., ProxyProcess], relay: CountingRelay, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    proxy = start_proxy()
    _read(proxy, a, "keep/0")
    _settled(proxy)
    assert _post(proxy, "pin", {"bucket": a, "prefix": "keep/"}) == (
        200,
        {"objects": 1, "bytes": SIZE},
    )
    proxy.stop()
    proxy.start()
    for key in ("keep/1", "keep/2", "keep/3"):  # cached after the pin, after the restart
        _read(proxy, a, key)
    assert _settled(proxy)["quotas"][a]["pinned"] == 4 * SIZE
    for i in range(10):
        _read(proxy, a, f"tmp/{i}")
    relay.reset()
    for i in range(4):
        _read(proxy, a, f"keep/{i}")
    assert _fetched(relay, a) == set()
    # the quota is 600 KiB and pins hold 400 KiB of it: a 100 KiB object still fits, and
    # tmp/ objects came and went without touching the pinned ones
    assert _info(proxy)["quotas"][a]["used"] <= QUOTA


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_cli_pin_unpin_evict(
    start_proxy: Callable[..., ProxyProcess], relay: CountingRelay, buckets: tuple[str, str]
) -> None:
    a, b = buckets
    proxy = start_proxy()
    _read(proxy, b, "x/0")
    _read(proxy, b, "y/0")
    _settled(proxy)
    admin = ("--admin", proxy.admin_url, "--token-env", TOKEN_ENV)
    env = {TOKEN_ENV: TOKEN}

    pinned = _cli("pin", f"s3://{b}/x/", "--json", *admin, env=env)
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads(pinned.stdout) == {"objects": 1, "bytes": SIZE}

    no_token = _cli("pin", f"s3://{b}/x/", "--admin", proxy.admin_url)
    assert no_token.returncode == 2 and "401" in no_token.stderr

    evicted = _cli("evict", f"s3://{b}/", *admin, env=env)
    assert evicted.returncode == 0, evicted.stderr
    assert evicted.stdout.strip() == f"evicted 2 objects (200.0 KiB) under s3://{b}/"
    assert _info(proxy)["objects"] == 0

    unpinned = _cli("unpin", f"s3://{b}/x/", *admin, env=env)
    assert unpinned.returncode == 0, unpinned.stderr
    assert unpinned.stdout.startswith("unpinned 0 objects")  # evicted already; the rule went
    again = _cli("unpin", f"s3://{b}/x/", *admin, env=env)
    assert again.returncode == 2 and "no pin on this bucket and prefix" in again.stderr

    unknown = _cli("evict", "s3://no-such-bucket/", *admin, env=env)
    assert unknown.returncode == 2 and "no such bucket" in unknown.stderr
    bad_url = _cli("pin", "http://x/y", *admin, env=env)
    assert bad_url.returncode == 2 and "s3://BUCKET/PREFIX" in bad_url.stderr
    helped = _cli("pin", "--help")
    assert helped.returncode == 0 and "never evicted" in helped.stdout


def test_quotas_are_validated_at_load(tmp_path: Path) -> None:
    from proxy.config import from_mapping
    from proxy.errors import ConfigError

    base = {
        "backends": {"s": {"type": "fs", "root": "/tmp"}},
        "buckets": {"data": {"backend": "s"}},
    }
    cfg = from_mapping({**base, "cache": {"quotas": {"data": "80MiB"}}}, "t")
    assert cfg.cache.quotas == {"data": 80 * MIB}
    for quotas, message in (
        ({"nope": "1GiB"}, "cache.quotas.nope: no such bucket"),
        ({"data": "lots"}, "cache.quotas.data: expected a size"),
        ({"data": 0}, "cache.quotas.data: must be at least 1 byte"),
        (["data"], "cache.quotas: expected a mapping"),
    ):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            from_mapping({**base, "cache": {"quotas": quotas}}, "t")

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({**base, "cache": {"quotas": {"data": "80MiB"}}}))
    shown = _cli("check-config", "--config", str(path))
    assert shown.returncode == 0 and f"quotas data={80 * MIB}" in shown.stdout, shown.stderr
    path.write_text(json.dumps({**base, "cache": {"quotas": {"nope": "80MiB"}}}))
    refused = _cli("check-config", "--config", str(path))
    assert refused.returncode == 2 and "cache.quotas.nope: no such bucket" in refused.stderr


def test_a_read_in_flight_finishes_across_an_evict(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    start_proxy: Callable[..., ProxyProcess],
    relay: CountingRelay,
    buckets: tuple[str, str],
) -> None:
    _, b = buckets
    body = payload(8 * MIB, seed=7)  # 128 chunk files: more than the socket buffers hold
    s3_client_factory(seaweedfs).put_object(Bucket=b, Key="big", Body=body)
    proxy = start_proxy()
    assert get_body(f"{proxy.url}/{b}/big") == (200, body)
    _settled(proxy)
    relay.reset()
    with urllib.request.urlopen(f"{proxy.url}/{b}/big", timeout=60) as resp:
        head = resp.read(64 * KIB)
        assert _post(proxy, "evict", {"bucket": b, "prefix": "big"})[1]["objects"] == 1
        rest = resp.read()
    assert head + rest == body
    assert ("GET", f"/{b}/big") in relay.counts  # the chunks it had not sent came from the store


def _warm_until_ended(proxy: ProxyProcess, spec: dict[str, Any]) -> dict[str, Any]:
    status, job = _post(proxy, "warm", spec)
    assert status == 202, job
    deadline = time.monotonic() + 60
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        req = urllib.request.Request(f"{proxy.admin_url}/admin/v1/jobs/{job['id']}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            job = json.loads(resp.read())
    return job


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_warm_with_pin_pins_what_it_caches(
    workers: int,
    start_proxy: Callable[..., ProxyProcess],
    relay: CountingRelay,
    buckets: tuple[str, str],
) -> None:
    """A prefix job with pin adds a pin rule (what it caches is never evicted, even through
    A's quota); a keys job with pin pins the objects it cached (with 2 workers, read in a
    worker: committed before the supervisor pins them)."""
    a, b = buckets
    proxy = start_proxy(workers)
    assert _post(proxy, "warm", {"bucket": a, "prefix": "keep/", "pin": "yes"})[0] == 400
    job = _warm_until_ended(proxy, {"bucket": a, "prefix": "keep/", "pin": True})
    assert (job["state"], job["fetched"], job["pin"]) == ("done", 4, True), job
    assert _settled(proxy)["pinned_bytes"] == 4 * SIZE
    relay.reset()
    for i in range(10):
        _read(proxy, a, f"tmp/{i}")  # 1 MiB through A's 600 KiB quota: tmp/ cycles
    for i in range(4):
        _read(proxy, a, f"keep/{i}")
    assert not {k for k in _fetched(relay, a) if k.startswith("keep/")}  # pinned: still cached

    job = _warm_until_ended(proxy, {"bucket": b, "keys": ["x/0", "x/1"], "pin": True})
    assert (job["state"], job["fetched"]) == ("done", 2), job
    assert _settled(proxy)["pinned_bytes"] == 6 * SIZE
    # the keys job pinned those objects only, not a prefix: a later fill of B is not pinned
    _read(proxy, b, "x/2")
    assert _settled(proxy)["pinned_bytes"] == 6 * SIZE


@pytest.mark.parametrize("size", [100, 3000, 9000], ids=["inline", "one-chunk", "three-chunks"])
async def test_an_evict_fences_off_the_fills_in_flight_under_its_prefix(
    core: Core,  # noqa: F811
    size: int,
) -> None:
    """A fill in flight when an evict of its prefix commits nothing, though its object had no
    record to drop yet (a dataset rewritten in place: the fill may carry the old bytes); its
    reader still gets the bytes. A fill outside the prefix, or begun after, commits (chunks
    4 KiB here)."""
    (core.root / BUCKET / "ev").mkdir()
    (core.root / BUCKET / "keep").mkdir()
    for key in ("ev/a", "keep/a"):
        core.put_file(key, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    core.store.gate.clear()  # both fills wait on the store
    reads = [asyncio.create_task(read_in_core(core, key)) for key in ("ev/a", "keep/a")]
    await eventually(lambda: core.store.gets >= 2, within=5)
    target = pins.Target(core.mount.backend.name, core.mount.bucket, "ev/")
    assert (await pins.evict(core.cache.index, target)).objects == 0  # nothing cached yet
    core.store.gate.set()
    for task in reads:
        _, body = await task
        assert len(body) == size  # the readers are served all the same
    await core.reads.fills.wait_idle()
    fenced = core.record("ev/a")  # the chunk in flight at the evict is not cached; the next
    # ones were fetched after it, with If-Match on the version the first one saw: cached
    assert fenced is None or (size > 4096 and not fenced.has_chunk(0)), fenced
    assert core.record("keep/a") is not None
    await read_in_core(core, "ev/a")  # a fill begun after the evict caches it
    await core.reads.fills.wait_idle()
    assert core.record("ev/a") is not None


def test_fences_are_bounded_and_a_fill_older_than_the_floor_commits_nothing(
    tmp_path: Path,
) -> None:
    index = _open(tmp_path / "index", 10 * MIB)
    rec = _rec("b", "deep/key", 100)
    seen = index.write_mark()
    for n in range(pins.FENCE_LIMIT + 1):
        target = pins.Target("store", "b", f"other{n}/")
        index.run_sync(lambda t, target=target: pins.fence(t, target))
    with index.env.begin(db=index.meta) as txn:
        fences = sum(1 for k, _ in txn.cursor() if bytes(k).startswith(b"fence\x00"))
    assert fences == pins.FENCE_LIMIT
    assert index.run_sync(lambda t: pins.fenced(t, rec, seen))  # the oldest one went: the floor
    later = index.write_mark()
    assert not index.run_sync(lambda t: pins.fenced(t, rec, later))
    index.run_sync(lambda t: pins.fence(t, pins.Target("store", "b", "deep/")))
    assert index.run_sync(lambda t: pins.fenced(t, rec, later))
    assert not index.run_sync(lambda t: pins.fenced(t, _rec("b", "shallow", 100), later))
    assert not index.run_sync(lambda t: pins.fenced(t, _rec("other-bucket", "deep/k", 1), later))
    index.close()
