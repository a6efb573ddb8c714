"""Training-aware prefetch: a posted order is fetched just ahead of the reads, never more than
``window`` keys ahead (counted at the store, behind a CountingRelay), and reads become hits."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import (
    get_body,
    new_bucket,
    payload,
    proxy_config,
    scrape,
    store_env,
    wait_until,
)
from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint
from tests.servers import make_s3_client as make_client

N = 24
WINDOW = 4
SLACK = 1  # a fetch may start in the instant between a read and its count


@pytest.fixture(params=["seaweedfs", "moto"])
def store(request: pytest.FixtureRequest) -> S3Endpoint:
    name = "moto_server" if request.param == "moto" else "seaweedfs"
    endpoint: S3Endpoint = request.getfixturevalue(name)
    return endpoint


@pytest.fixture
def relay(store: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(store.url, latency=0.01) as r:
        yield r


@pytest.fixture
def bucket(store: S3Endpoint, s3_client_factory: S3ClientFactory) -> str:
    name = new_bucket("pref")
    client = s3_client_factory(store)
    client.create_bucket(Bucket=name)
    for i in range(N):
        client.put_object(Bucket=name, Key=f"epoch/{i:03d}", Body=payload(4096 + i, seed=i))
        client.put_object(Bucket=name, Key=f"other/{i:03d}", Body=payload(100, seed=i))
    return name


@pytest.fixture
def start_proxy(
    proxy_factory: ProxyFactory,
    store: S3Endpoint,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> Callable[..., ProxyProcess]:
    """``start_proxy(workers=1, token=None, cache=None)``: a proxy of ``bucket`` through the
    relay (``cache``: settings beside the cache's dir)."""

    def start(
        workers: int = 1, token: str | None = None, cache: dict[str, Any] | None = None
    ) -> ProxyProcess:
        cfg = proxy_config(relay.url, bucket, tmp_path / "cache", workers=workers, cache=cache)
        env = store_env(store)
        if token is not None:
            cfg["admin"] = {"token_env": "PREFETCH_TEST_TOKEN"}
            env["PREFETCH_TEST_TOKEN"] = token
        return proxy_factory(cfg, env)

    return start


@pytest.fixture
def proxy(start_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    return start_proxy()


def admin(proxy: ProxyProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{proxy.admin_url}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def gets(relay: CountingRelay, prefix: str) -> int:
    return sum(n for (m, p), n in relay.counts.items() if m == "GET" and prefix in p)


def progress(proxy: ProxyProcess, job: str) -> dict[str, Any]:
    status, body = admin(proxy, "GET", f"/admin/v1/prefetch/{job}")
    assert status == 200, body
    return dict(body)


def fetched_at_least(proxy: ProxyProcess, job: str, n: int) -> Callable[[], bool]:
    return lambda: progress(proxy, job)["fetched"] >= n


def read_slowly(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str, job: str, window: int
) -> None:
    """Read epoch/000.. in order, each once the prefetcher has had time to get ``window``
    ahead of it; it must never get further (counted at the store) and every key is one GET."""
    for i in range(N):
        # i keys read so far: the prefetcher may hold positions up to i - 1 + window
        assert wait_until(fetched_at_least(proxy, job, min(N, i + window))), progress(proxy, job)
        time.sleep(0.05)  # room to overshoot, were the window not kept
        assert gets(relay, "/epoch/") <= i + window + SLACK, (i, relay.counts)
        status, body = get_body(f"{proxy.url}/{bucket}/epoch/{i:03d}")
        assert status == 200 and body == payload(4096 + i, seed=i)
    assert gets(relay, "/epoch/") == N  # each key fetched once: the reads were all hits


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_prefetch_stays_within_window_and_reads_hit(
    workers: int, start_proxy: Callable[..., ProxyProcess], relay: CountingRelay, bucket: str
) -> None:
    """With 2 workers the prefetcher runs in the supervisor, learns the reads from them, and
    hands them its fetches: each key is filled in a worker."""
    proxy = start_proxy(workers=workers)
    keys = [f"epoch/{i:03d}" for i in range(N)]
    relay.reset()
    hits0 = scrape(proxy.admin_url).get("slipstream_cache_hits_total")
    status, job = admin(
        proxy, "POST", "/admin/v1/prefetch", {"bucket": bucket, "keys": keys, "window": WINDOW}
    )
    assert status == 201, job
    assert job["keys"] == N and job["window"] == WINDOW
    read_slowly(proxy, relay, bucket, job["id"], WINDOW)

    def hits() -> float:  # a worker's counts reach the supervisor within a second
        return scrape(proxy.admin_url).get("slipstream_cache_hits_total") - hits0

    assert wait_until(lambda: hits() == N, 5), hits()
    metrics = scrape(proxy.admin_url)
    assert metrics.get("slipstream_prefetch_objects_total", result="fetched") == N
    assert metrics.get("slipstream_prefetch_objects_total", result="used") == N
    assert metrics.get("slipstream_prefetch_objects_total", result="wasted") == 0
    by = {
        p: metrics.get("slipstream_job_fills_total", kind="prefetch", process=p)
        for p in ("worker", "supervisor")
    }
    assert by == {"worker": N if workers > 1 else 0, "supervisor": 0}  # workers filled them
    final = progress(proxy, job["id"])
    assert final["state"] == "done" and final["used"] == N and final["read_position"] == N


def test_window_in_bytes(proxy: ProxyProcess, relay: CountingRelay, bucket: str) -> None:
    keys = [f"epoch/{i:03d}" for i in range(N)]
    relay.reset()
    order = {"bucket": bucket, "keys": keys, "window": 100, "window_bytes": 3 * 4096 + 200}
    status, job = admin(proxy, "POST", "/admin/v1/prefetch", order)
    assert status == 201, job
    read_slowly(proxy, relay, bucket, job["id"], 3)  # ~4 KiB objects: 3 fit, never 4
    assert progress(proxy, job["id"])["bytes_ahead"] == 0


@pytest.mark.parametrize("concurrency", [2, 12])
def test_concurrency_bounds_the_fetches_in_flight(
    concurrency: int, proxy: ProxyProcess, relay: CountingRelay, bucket: str
) -> None:
    """A job runs ``concurrency`` store fetches at once: fewer would not keep up with readers
    over a slow store, more would not be bounded."""
    keys = [f"other/{i:03d}" for i in range(N)]
    relay.reset()
    relay.latency = 0.1
    try:
        order = {"bucket": bucket, "keys": keys, "window": N, "concurrency": concurrency}
        status, job = admin(proxy, "POST", "/admin/v1/prefetch", order)
        assert status == 201 and job["concurrency"] == concurrency, job
        assert wait_until(lambda: progress(proxy, job["id"])["state"] == "done", timeout=60)
    finally:
        relay.latency = 0.01
    assert progress(proxy, job["id"])["fetched"] == N
    assert relay.most_in_flight <= concurrency
    assert relay.most_in_flight >= min(concurrency, 6)


def test_read_out_of_order_and_reads_that_overtake(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str
) -> None:
    keys = [f"other/{i:03d}" for i in range(N)]
    status, job = admin(
        proxy, "POST", "/admin/v1/prefetch", {"bucket": bucket, "keys": keys, "window": 2}
    )
    assert status == 201, job
    # a key far outside the window reads fine (a plain miss)
    assert get_body(f"{proxy.url}/{bucket}/{keys[-1]}") == (200, payload(100, seed=N - 1))
    # the reads jump ahead of the prefetcher: it skips to them instead of stalling behind
    assert wait_until(lambda: progress(proxy, job["id"])["fetched"] >= 2)
    assert get_body(f"{proxy.url}/{bucket}/{keys[3]}") == (200, payload(100, seed=3))
    assert wait_until(lambda: progress(proxy, job["id"])["read_position"] == 4)
    assert wait_until(lambda: progress(proxy, job["id"])["queued"] <= N - 6)


def test_cancel_stops_fetching(proxy: ProxyProcess, relay: CountingRelay, bucket: str) -> None:
    keys = [f"epoch/{i:03d}" for i in range(N)]
    relay.reset()
    status, job = admin(
        proxy, "POST", "/admin/v1/prefetch", {"bucket": bucket, "keys": keys, "window": 3}
    )
    assert status == 201, job
    assert wait_until(lambda: progress(proxy, job["id"])["fetched"] == 3)
    time.sleep(0.3)
    assert gets(relay, "/epoch/") == 3  # nobody reads: the window holds
    status, body = admin(proxy, "DELETE", f"/admin/v1/prefetch/{job['id']}")
    assert status == 200 and body["state"] == "cancelled"
    for i in range(3):
        assert get_body(f"{proxy.url}/{bucket}/{keys[i]}")[0] == 200
    time.sleep(0.3)
    assert gets(relay, "/epoch/") == 3  # the reads moved on, the cancelled job did not follow


def test_bad_requests(proxy: ProxyProcess, bucket: str) -> None:
    post = "/admin/v1/prefetch"
    for body, needle in [
        ({"bucket": bucket, "keys": ["a"], "window": 0}, "window"),
        ({"bucket": bucket, "keys": ["a"], "window_bytes": "1GB"}, "window_bytes"),
        ({"bucket": bucket, "keys": ["a"], "concurrency": 0}, "concurrency"),
        ({"bucket": bucket, "keys": ["a"], "concurrency": 257}, "concurrency"),
        ({"bucket": bucket, "keys": "a"}, "keys"),
        ({"bucket": bucket, "keys": ["a", 7]}, "keys"),
        ({"bucket": bucket, "keys": ["x" * 2000]}, "keys"),
        ({"bucket": "no-such-bucket", "keys": ["a"]}, "bucket"),
        ([1, 2], "JSON object"),
    ]:
        status, answer = admin(proxy, "POST", post, body)
        assert status == 400 and needle in answer["error"], (body, answer)
    req = urllib.request.Request(f"{proxy.admin_url}{post}", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400
    assert admin(proxy, "GET", "/admin/v1/prefetch/999")[0] == 404
    assert admin(proxy, "DELETE", "/admin/v1/prefetch/999")[0] == 404


def test_appended_parts_are_prefetched_in_order(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str
) -> None:
    keys = [f"epoch/{i:03d}" for i in range(N)]
    relay.reset()
    post = {"bucket": bucket, "keys": keys[:5], "window": 3}
    status, job = admin(proxy, "POST", "/admin/v1/prefetch", post)
    assert status == 201, job
    status, job = admin(proxy, "POST", f"/admin/v1/prefetch/{job['id']}/keys", {"keys": keys[5:]})
    assert status == 200 and job["keys"] == N, job
    for i, key in enumerate(keys):
        assert wait_until(fetched_at_least(proxy, job["id"], min(N, i + 3)))
        assert get_body(f"{proxy.url}/{bucket}/{key}")[0] == 200
    assert gets(relay, "/epoch/") == N
    assert progress(proxy, job["id"])["used"] == N


CS = 64 * 1024
CHUNKS = 10


def ranged(url: str, first: int, last: int) -> bytes:
    req = urllib.request.Request(url, headers={"Range": f"bytes={first}-{last}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 206
        return bytes(resp.read())


@pytest.fixture
def chunked_proxy(
    proxy_factory: ProxyFactory, store: S3Endpoint, relay: CountingRelay, tmp_path: Path
) -> tuple[ProxyProcess, str]:
    name = new_bucket("seq")
    client = make_client(store)
    client.create_bucket(Bucket=name)
    for key in ("shard-a", "shard-b"):
        client.put_object(Bucket=name, Key=key, Body=payload(CHUNKS * CS, seed=7))
    cache = {"chunk_size": "64KiB", "inline_max": "16KiB"}
    cfg = proxy_config(relay.url, name, tmp_path / "cache", cache=cache)
    return proxy_factory(cfg, store_env(store)), name


def test_sequential_ranged_reads_are_read_ahead(
    chunked_proxy: tuple[ProxyProcess, str], relay: CountingRelay
) -> None:
    proxy, name = chunked_proxy
    body = payload(CHUNKS * CS, seed=7)
    url = f"{proxy.url}/{name}/shard-a"
    relay.reset()
    path = f"/{name}/shard-a"

    def store_gets() -> int:
        return relay.count_of("GET", path)

    assert ranged(url, 0, CS - 1) == body[:CS]
    assert ranged(url, CS, 2 * CS - 1) == body[CS : 2 * CS]
    # chunk 0 then 1: a stream; chunks 2..5 (SEQ_AHEAD = 4) are fetched before they are asked
    assert wait_until(lambda: store_gets() >= 6), relay.counts
    time.sleep(0.3)
    assert store_gets() == 6, relay.counts  # bounded: not the whole object
    for i in range(2, CHUNKS):
        assert ranged(url, i * CS, (i + 1) * CS - 1) == body[i * CS : (i + 1) * CS]
        assert store_gets() <= i + 1 + 4, relay.counts
    assert wait_until(lambda: store_gets() == CHUNKS)
    time.sleep(0.2)
    assert store_gets() == CHUNKS, relay.counts  # each chunk fetched once


def test_random_ranged_reads_are_not_read_ahead(
    chunked_proxy: tuple[ProxyProcess, str], relay: CountingRelay
) -> None:
    proxy, name = chunked_proxy
    body = payload(CHUNKS * CS, seed=7)
    url = f"{proxy.url}/{name}/shard-b"
    relay.reset()
    for i in (7, 2, 5):
        assert ranged(url, i * CS, (i + 1) * CS - 1) == body[i * CS : (i + 1) * CS]
    time.sleep(0.3)
    assert relay.count_of("GET", f"/{name}/shard-b") == 3, relay.counts


def test_prefetch_routes_need_the_admin_token(
    start_proxy: Callable[..., ProxyProcess], bucket: str
) -> None:
    proxy = start_proxy(token="s3cret")
    order = json.dumps({"bucket": bucket, "keys": ["epoch/000"]}).encode()
    url = f"{proxy.admin_url}/admin/v1/prefetch"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        req = urllib.request.Request(url, data=order, method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 401
    req = urllib.request.Request(
        url, data=order, method="POST", headers={"Authorization": "Bearer s3cret"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
    assert admin(proxy, "GET", "/admin/v1/prefetch")[0] == 200  # reads stay open


# -- big orders: NDJSON streams, several ranks ---------------------------------------------------


def post_ndjson(proxy: ProxyProcess, path: str, body: Any) -> tuple[int, Any]:
    """POST an NDJSON body (bytes, or an iterable of byte pieces: sent chunked as they come)."""
    req = urllib.request.Request(
        f"{proxy.admin_url}{path}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/x-ndjson"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


BIG = 1_000_000


@pytest.mark.parametrize("store", ["seaweedfs"], indirect=True)
def test_a_million_key_ndjson_order_streams_in(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str
) -> None:
    """The first keys are prefetched while the rest of the order is still being sent, the
    order is held compactly (the proxy's RSS grows by far less than a list of str would), and
    the reads then hit."""
    head = b"".join(json.dumps(f"epoch/{i:03d}").encode() + b"\n" for i in range(4))
    head += b'{"key": "epoch/004"}\n'
    first_sent = threading.Event()
    go_on = threading.Event()

    def pieces() -> Iterator[bytes]:
        yield head
        first_sent.set()
        assert go_on.wait(60)
        for start in range(0, BIG - 5, 50_000):
            stop = min(BIG - 5, start + 50_000)
            yield b"".join(b'"later/%07d"\n' % i for i in range(start, stop))

    relay.reset()
    before = rss(proxy.pid)
    result: list[tuple[int, Any]] = []
    sender = threading.Thread(
        target=lambda: result.append(
            post_ndjson(proxy, f"/admin/v1/prefetch?bucket={bucket}&window=5", pieces())
        )
    )
    sender.start()
    try:
        assert first_sent.wait(30)

        def started() -> bool:
            jobs = admin(proxy, "GET", "/admin/v1/prefetch")[1]["jobs"]
            return bool(jobs) and jobs[-1]["fetched"] == 5

        assert wait_until(started, timeout=30), admin(proxy, "GET", "/admin/v1/prefetch")
        assert gets(relay, "/epoch/") == 5  # fetched before the order had been read
        assert gets(relay, "/later/") == 0  # nobody reads: the window holds
    finally:
        go_on.set()
        sender.join(180)
    status, job = result[0]
    assert status == 201 and job["keys"] == BIG, job
    grown = rss(proxy.pid) - before
    print(f"RSS growth for a {BIG}-key NDJSON order: {grown / 1024**2:.1f} MiB")
    assert grown < 100 * 1024**2, grown
    for i in range(5):
        assert get_body(f"{proxy.url}/{bucket}/epoch/{i:03d}")[0] == 200
    assert gets(relay, "/epoch/") == 5
    assert progress(proxy, job["id"])["used"] == 5


def test_ndjson_errors_name_the_line(proxy: ProxyProcess, bucket: str) -> None:
    status, body = post_ndjson(
        proxy, f"/admin/v1/prefetch?bucket={bucket}", b'"epoch/000"\n"epoch/001"\n7\n'
    )
    assert status == 400 and "line 3" in body["error"], body
    jobs = admin(proxy, "GET", "/admin/v1/prefetch")[1]["jobs"]
    assert [j["state"] for j in jobs] == ["cancelled"]
    status, body = post_ndjson(proxy, f"/admin/v1/prefetch?bucket={bucket}", b"{oops\n")
    assert status == 400 and "line 1" in body["error"], body
    status, body = post_ndjson(proxy, f"/admin/v1/prefetch?bucket={bucket}&window=x", b"")
    assert status == 400 and "window" in body["error"], body
    status, body = post_ndjson(proxy, "/admin/v1/prefetch", b'"a"\n')
    assert status == 400 and "bucket" in body["error"], body
    status, job = post_ndjson(proxy, f"/admin/v1/prefetch?bucket={bucket}&window=2", b'"a"\n')
    assert status == 201 and job["keys"] == 1
    status, job = post_ndjson(proxy, f"/admin/v1/prefetch/{job['id']}/keys", b'"b"\n{"key":"c"}')
    assert status == 200 and job["keys"] == 3, job


def test_each_rank_posts_its_share(proxy: ProxyProcess, relay: CountingRelay, bucket: str) -> None:
    """Two jobs on one bucket (rank 0 the even positions, rank 1 the odd ones): each read is
    credited to the job that holds its key, and both windows slide."""
    keys = [f"epoch/{i:03d}" for i in range(N)]
    relay.reset()
    ids = []
    for rank in range(2):
        post = {"bucket": bucket, "keys": keys[rank::2], "window": 2}
        status, job = admin(proxy, "POST", "/admin/v1/prefetch", post)
        assert status == 201, job
        ids.append(job["id"])
    for i, key in enumerate(keys):
        job = ids[i % 2]
        assert wait_until(fetched_at_least(proxy, job, min(N // 2, i // 2 + 2))), progress(
            proxy, job
        )
        assert get_body(f"{proxy.url}/{bucket}/{key}")[0] == 200
    assert gets(relay, "/epoch/") == N
    for job in ids:
        p = progress(proxy, job)
        assert p["used"] == N // 2 and p["wasted"] == 0 and p["state"] == "done", p


def test_a_cut_ndjson_body_cancels_its_job(proxy: ProxyProcess, bucket: str) -> None:
    host, port = proxy.admin_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /admin/v1/prefetch?bucket={bucket}&window=1 HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            '1c\r\n"epoch/000"\n"epoch/001"\n"epo\r\n'.encode()
        )

        def opened() -> bool:
            return bool(admin(proxy, "GET", "/admin/v1/prefetch")[1]["jobs"])

        assert wait_until(opened)
    # the client went away mid-line: the job is cancelled, the proxy serves on
    jobs = lambda: admin(proxy, "GET", "/admin/v1/prefetch")[1]["jobs"]  # noqa: E731
    assert wait_until(lambda: jobs()[0]["state"] == "cancelled"), jobs()
    assert get_body(f"{proxy.url}/{bucket}/epoch/002")[0] == 200


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_a_job_leaves_fill_slots_to_client_misses(
    start_proxy: Callable[..., ProxyProcess], relay: CountingRelay, bucket: str, workers: int
) -> None:
    """A job asking for more fetches at once than a process has fill slots holds at most three
    quarters of them in each process (the jobs' gate, in the worker that fills its keys), so
    a client miss finds one free."""
    proxy = start_proxy(workers=workers, cache={"max_fills": 4})
    relay.latency = 0.2  # the job's fetches overlap
    relay.reset()
    keys = [f"epoch/{i:03d}" for i in range(N)]
    status, job = admin(
        proxy,
        "POST",
        "/admin/v1/prefetch",
        {"bucket": bucket, "keys": keys, "window": N, "concurrency": N},
    )
    assert status == 201, job
    assert wait_until(fetched_at_least(proxy, job["id"], N), timeout=60), progress(proxy, job["id"])
    # 3 of each process's 4 slots (ungated: all 4, and client misses queued behind the job)
    assert 3 <= relay.most_in_flight <= 3 * workers, relay.most_in_flight
    assert get_body(f"{proxy.url}/{bucket}/other/000")[0] == 200
