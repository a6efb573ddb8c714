"""Hot inline objects (proxy/core/hot.py, proxy/s3/hot.py) through real proxy subprocesses:
answers identical to the usual path's (headers, metrics, auth), and every change of the
object seen by the very next request through every worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from proxy.config import from_mapping
from proxy.errors import ConfigError
from proxy.jobs.client import AdminClient
from tests.conformance import Raw, raw_request, scrape
from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess

BUCKET = "demo"
KEY = "hot/obj.bin"
PATH = f"/{BUCKET}/{KEY}"
BODY = b"hot object " * 300
VOLATILE = {"date", "x-amz-request-id", "x-amz-id-2"}
SECRET_ENV = "HOT_TEST_SECRET"


def _config(tmp_path: Path, workers: int, **extra: Any) -> dict[str, Any]:
    (tmp_path / "store" / BUCKET).mkdir(parents=True, exist_ok=True)
    return {
        "workers": workers,
        "cache": {"dir": str(tmp_path / "cache")},
        "backends": {"local": {"type": "fs", "root": str(tmp_path / "store")}},
        "buckets": {BUCKET: {"backend": "local", "metadata_ttl": "2s"}},
        "log": {"access_log": True},
        **extra,
    }


def _client(proxy: ProxyProcess, key: str = "k", secret: str = "s") -> Any:
    return boto3.client(
        "s3",
        endpoint_url=proxy.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def _hot_hits(proxy: ProxyProcess) -> float:
    return sum(v for n, _, v in scrape(proxy.admin_url) if n == "slipstream_hot_hits_total")


def _counts(proxy: ProxyProcess) -> dict[tuple[str, str], float]:
    """Every slipstream counter and histogram count but the hot table's own."""
    return {
        (n, lab): v
        for n, lab, v in scrape(proxy.admin_url)
        if n.startswith("slipstream_")
        and (n.endswith("_total") or n.endswith("_count"))
        and n != "slipstream_hot_hits_total"
    }


def _delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _pid(raw: Raw) -> str:
    return raw.headers["x-amz-request-id"].split("-")[0]


def _heat(proxy: ProxyProcess, workers: int, path: str = PATH) -> None:
    """GET ``path`` until every worker answers it from its table (each keeps an entry from
    its first read of the cached object), then check that the table answers."""
    for _ in range(10):
        assert raw_request(proxy.url, "GET", path).status == 200
    time.sleep(1.5)
    before = _hot_hits(proxy)
    pids = {_pid(raw_request(proxy.url, "GET", path)) for _ in range(12 * workers)}
    assert len(pids) == workers
    time.sleep(1.2)  # a worker's tallies reach the scrape within a second
    assert _hot_hits(proxy) - before >= 12 * workers - 2 * workers


def _every_worker(proxy: ProxyProcess, workers: int, path: str = PATH) -> list[Raw]:
    answers = [raw_request(proxy.url, "GET", path) for _ in range(12 * workers)]
    assert len({_pid(a) for a in answers}) == workers
    return answers


def test_hot_answer_is_the_usual_answer(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """The same object's usual and hot answers, GET and HEAD: the same headers byte for byte
    (but Date and the request ids), body, and counters moved."""
    proxy = proxy_factory(_config(tmp_path, 1))
    _client(proxy).put_object(
        Bucket=BUCKET, Key=KEY, Body=BODY, ContentType="text/x-hot", ChecksumAlgorithm="CRC32"
    )
    _heat(proxy, 1)
    mode = {"x-amz-checksum-mode": "ENABLED"}
    ranges = ({"Range": "bytes=5-14"}, {"Range": "bytes=-10", **mode}, {"Range": "bytes=0-"})
    for method, asked in [
        (method, asked)
        for method in ("GET", "HEAD")
        for asked in ({}, mode, {"Range": "bytes=x"}, *ranges)
    ]:
        answers = {}
        for hot, extra in ((False, {"X-Not-Listed": "1"}), (True, {})):
            raw_request(proxy.url, method, PATH)  # admitted (HEAD's own entry)
            before, hits = _counts(proxy), _hot_hits(proxy)
            raw = raw_request(proxy.url, method, PATH, {**extra, **asked})
            assert _hot_hits(proxy) - hits == (1 if hot else 0)
            answers[hot] = (raw, _delta(before, _counts(proxy)))
        (usual, usual_counts), (hot_raw, hot_counts) = answers[False], answers[True]
        partial = "Range" in asked and asked["Range"] != "bytes=x"  # S3 ignores a bad Range
        assert hot_raw.status == usual.status == (206 if partial else 200)
        want = BODY[_span(asked.get("Range"))] if partial else BODY
        assert hot_raw.body == usual.body == (want if method == "GET" else b"")
        strip = lambda h: [(k, v) for k, v in h.items() if k not in VOLATILE]  # noqa: E731
        assert strip(hot_raw.headers) == strip(usual.headers)
        checksum = "x-amz-checksum-mode" in asked and not partial
        assert ("x-amz-checksum-crc32" in usual.headers) == checksum
        assert hot_counts.keys() == usual_counts.keys()
        for name, value in usual_counts.items():
            if not name[0].endswith("_seconds_total"):
                assert hot_counts[name] == value, name
        ops = [k for k in usual_counts if k[0] == "slipstream_requests_total"]
        assert ops and all((f'status="{usual.status}"' in k[1]) for k in ops)
    log = (proxy.tmpdir / "proxy.log").read_text()
    assert log.count(f"GET {PATH} 200") >= 2  # the access log has the hot GETs too


@pytest.mark.parametrize("workers", [1, 2])
def test_every_change_is_seen_next(
    proxy_factory: ProxyFactory, tmp_path: Path, workers: int
) -> None:
    """A rewrite, a DELETE, an eviction and a change at the store (revalidated) are each
    answered right by the very next GETs, through every worker that had the object hot."""
    proxy = proxy_factory(_config(tmp_path, workers))
    s3 = _client(proxy)
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=BODY)
    _heat(proxy, workers)

    s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"rewritten")
    assert {a.body for a in _every_worker(proxy, workers)} == {b"rewritten"}

    _heat(proxy, workers)
    AdminClient(proxy.admin_url).call("POST", "/admin/v1/evict", {"bucket": BUCKET, "prefix": KEY})
    answers = _every_worker(proxy, workers)
    assert {a.body for a in answers} == {b"rewritten"}

    _heat(proxy, workers)
    (tmp_path / "store" / BUCKET / KEY).write_bytes(b"changed at the store, not here")
    time.sleep(2.2)  # metadata_ttl 2s: the next read revalidates
    answers = _every_worker(proxy, workers)
    assert {a.body for a in answers} == {b"changed at the store, not here"}

    _heat(proxy, workers)
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    assert {a.status for a in _every_worker(proxy, workers)} == {404}


def _span(header: str | None) -> slice:
    first, last = (header or "").removeprefix("bytes=").split("-")
    if not first:
        return slice(len(BODY) - int(last), None)
    return slice(int(first), int(last) + 1 if last else None)


def test_conditions_bypass(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    proxy = proxy_factory(_config(tmp_path, 1))
    _client(proxy).put_object(Bucket=BUCKET, Key=KEY, Body=BODY)
    _heat(proxy, 1)
    etag = raw_request(proxy.url, "HEAD", PATH).headers["etag"]
    hits = _hot_hits(proxy)
    beyond = raw_request(proxy.url, "GET", PATH, {"Range": f"bytes={len(BODY)}-"})
    assert (beyond.status, b"<Code>InvalidRange</Code>" in beyond.body) == (416, True)
    assert raw_request(proxy.url, "GET", PATH, {"If-None-Match": etag}).status == 304
    assert raw_request(proxy.url, "GET", PATH, {"If-Match": '"other"'}).status == 412
    assert raw_request(proxy.url, "HEAD", PATH, {"If-None-Match": etag}).status == 304
    over = raw_request(proxy.url, "GET", PATH + "?response-content-type=x/y")
    assert (over.status, over.headers["content-type"]) == (200, "x/y")
    assert raw_request(proxy.url, "GET", PATH + "?partNumber=1").status == 206
    assert _hot_hits(proxy) == hits


def test_auth_still_decides(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """With users and no anonymous access, a hot object is still refused to an unsigned
    request (the usual error), and served to header-signed and presigned GETs."""
    users = [{"access_key": "trainer", "secret_key_env": SECRET_ENV, "allow": {BUCKET: "read"}}]
    proxy = proxy_factory(
        _config(tmp_path, 1, auth={"users": users}), env={SECRET_ENV: "tr41ner-secret"}
    )
    (tmp_path / "store" / BUCKET / "hot").mkdir()
    (tmp_path / "store" / BUCKET / KEY).write_bytes(BODY)
    s3 = _client(proxy, "trainer", "tr41ner-secret")
    refused = raw_request(proxy.url, "GET", PATH)
    assert refused.status == 403
    for _ in range(10):
        assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == BODY
    time.sleep(1.5)
    hits = _hot_hits(proxy)
    for _ in range(5):
        assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == BODY
    assert _hot_hits(proxy) - hits >= 4
    again = raw_request(proxy.url, "GET", PATH)
    assert (again.status, again.body) == (
        refused.status,
        refused.body.replace(_rid(refused), _rid(again)),
    )
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": KEY})
    hits = _hot_hits(proxy)
    signed_path = url[len(proxy.url) :]
    got = raw_request(proxy.url, "GET", signed_path)
    assert (got.status, got.body) == (200, BODY)
    assert _hot_hits(proxy) - hits == 1
    bad = raw_request(proxy.url, "GET", signed_path.replace("Signature=", "Signature=0"))
    assert bad.status == 403
    assert _hot_hits(proxy) - hits == 1


def _rid(raw: Raw) -> bytes:
    return raw.headers["x-amz-request-id"].encode()


def test_hot_objects_config(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """server.hot_objects is a size (default 64 MiB), validated at start; 0 turns it off."""
    assert from_mapping({}, "t", environ={}).server.hot_objects == 64 * 1024**2
    raw = {"server": {"hot_objects": "1MiB"}}
    assert from_mapping(raw, "t", environ={}).server.hot_objects == 1024**2
    with pytest.raises(ConfigError, match="server.hot_objects"):
        from_mapping({"server": {"hot_objects": "-1"}}, "t", environ={})
    with pytest.raises(ConfigError, match="server.hot_objects"):
        from_mapping({"server": {"hot_objects": "lots"}}, "t", environ={})
    proxy = proxy_factory(_config(tmp_path, 1, server={"hot_objects": 0}))
    _client(proxy).put_object(Bucket=BUCKET, Key=KEY, Body=BODY)
    for _ in range(10):
        assert raw_request(proxy.url, "GET", PATH).body == BODY
    time.sleep(1.2)
    for _ in range(10):
        assert raw_request(proxy.url, "GET", PATH).body == BODY
    assert _hot_hits(proxy) == 0


def _scan_objects(tmp_path: Path, n: int) -> list[str]:
    paths = [f"/{BUCKET}/scan/{i:02d}.bin" for i in range(n)]
    for path in paths:
        file = tmp_path / "store" / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(BODY)
    return paths


def _cached_then_restarted(proxy: ProxyProcess, paths: list[str]) -> None:
    for path in paths:
        assert raw_request(proxy.url, "GET", path).body == BODY  # filled
    time.sleep(1.5)  # the fills' commits and their first hit counts are written
    proxy.stop()
    proxy.start()  # a new process: nothing seen yet, an empty table; the objects cached


@pytest.mark.parametrize("table", ["64MiB", "2KiB"])
def test_every_read_of_a_cached_inline_object_takes_the_short_path(
    proxy_factory: ProxyFactory, tmp_path: Path, table: str
) -> None:
    """A new process, its table empty: the first read of each cached inline object is already
    answered the short way, whether the table keeps the entry (room) or not (2 KiB: full after
    one entry, so a scan's reads are answered without cycling it). A miss is not: it fills."""
    config = _config(tmp_path, 1, server={"hot_objects": table})
    config["buckets"][BUCKET]["metadata_ttl"] = "1h"
    paths = _scan_objects(tmp_path, 10)
    proxy = proxy_factory(config)
    hits = _hot_hits(proxy)
    assert raw_request(proxy.url, "GET", paths[0]).body == BODY  # a miss: the usual path
    assert _hot_hits(proxy) == hits
    _cached_then_restarted(proxy, paths)
    hits = _hot_hits(proxy)
    for path in paths:
        assert raw_request(proxy.url, "GET", path).body == BODY
        assert raw_request(proxy.url, "GET", path).body == BODY
    assert _hot_hits(proxy) - hits == 2 * len(paths)


def test_a_hit_flush_keeps_the_entry(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """The first hit's count rewrites the object's record (its frequency) a moment after the
    entry was admitted from it: only statistics changed, so the entry stays and every later
    read comes from the table (dropping it would send two more reads the usual way)."""
    config = _config(tmp_path, 1, buckets={BUCKET: {"backend": "local", "metadata_ttl": "1h"}})
    proxy = proxy_factory(config)
    (tmp_path / "store" / BUCKET / "flush.bin").write_bytes(BODY)
    path = f"/{BUCKET}/flush.bin"
    assert raw_request(proxy.url, "GET", path).body == BODY  # the fill: seen
    time.sleep(1.5)  # the fill is committed
    assert raw_request(proxy.url, "GET", path).body == BODY  # the first hit: admitted
    time.sleep(1.5)  # its count is flushed: the record is rewritten
    hits = _hot_hits(proxy)
    for _ in range(3):
        assert raw_request(proxy.url, "GET", path).body == BODY
    time.sleep(1.2)  # a worker's tallies reach the scrape within a second
    assert _hot_hits(proxy) - hits == 3
