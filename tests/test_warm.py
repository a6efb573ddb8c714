"""Warm-up jobs (issue 9): POST /admin/v1/warm, the jobs API, `slipstream warm|jobs`, against
SeaweedFS behind a relay that counts store requests."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.jobs.client import AdminClient, AdminError
from tests.conftest import ProxyFactory, S3ClientFactory
from tests.faultkit import get_body, new_bucket, payload, proxy_config, scrape, store_env
from tests.proxyproc import REPO_ROOT, ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint

PROCESSES = ("worker", "supervisor")

KIB = 1024
N = 24
SIZE = 150 * KIB
ENDED = ("done", "failed", "cancelled")


@pytest.fixture
def relay(seaweedfs: S3Endpoint) -> Iterator[CountingRelay]:
    with CountingRelay(seaweedfs.url, latency=0.01) as r:
        yield r


@pytest.fixture
def bucket(seaweedfs: S3Endpoint, s3_client_factory: S3ClientFactory) -> str:
    name = new_bucket("warm")
    client = s3_client_factory(seaweedfs)
    client.create_bucket(Bucket=name)
    for i in range(N):
        client.put_object(Bucket=name, Key=f"ds/{i:03d}", Body=payload(SIZE + i, seed=i))
    client.put_object(Bucket=name, Key="other/x", Body=b"not selected")
    return name


def _proxy(
    factory: ProxyFactory,
    relay: CountingRelay,
    store: S3Endpoint,
    bucket: str,
    tmp_path: Path,
    workers: int = 1,
    **cache: Any,
) -> ProxyProcess:
    cfg = proxy_config(
        relay.url,
        bucket,
        tmp_path / "cache",
        workers=workers,
        cache={"chunk_size": "64KiB", "inline_max": "4KiB", **cache},
    )
    return factory(cfg, store_env(store))


@pytest.fixture
def proxy(
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> ProxyProcess:
    return _proxy(proxy_factory, relay, seaweedfs, bucket, tmp_path)


def _wait(client: AdminClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["state"] in ENDED:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {client.job(job_id)}")


def _object_gets(relay: CountingRelay, bucket: str) -> dict[str, int]:
    """Store GETs of objects (listings are GETs of the bucket itself: left out)."""
    return {
        path: n
        for (method, path), n in relay.counts.items()
        if method == "GET" and path.startswith(f"/{bucket}/") and path != f"/{bucket}/"
    }


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_prefix_job_caches_everything_once(
    workers: int,
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    proxy = _proxy(proxy_factory, relay, seaweedfs, bucket, tmp_path, workers)
    admin = AdminClient(proxy.admin_url)
    relay.reset()
    job = _wait(admin, admin.warm({"bucket": bucket, "prefix": "ds/", "concurrency": 4}))
    assert job["state"] == "done", (job, proxy.log())
    assert (job["objects_done"], job["fetched"], job["cached"]) == (N, N, 0)
    assert job["total_known"] == N and job["listing_done"]
    assert job["bytes_done"] == sum(SIZE + i for i in range(N))
    gets = _object_gets(relay, bucket)
    assert f"/{bucket}/other/x" not in gets  # outside the prefix
    # every object is 3 chunks of 64 KiB: one store GET each, none twice
    assert set(gets) == {f"/{bucket}/ds/{i:03d}" for i in range(N)}
    assert set(gets.values()) == {3}, gets

    relay.reset()
    again = _wait(admin, admin.warm({"bucket": bucket, "prefix": "ds/"}))
    assert (again["state"], again["cached"], again["fetched"]) == ("done", N, 0)
    assert _object_gets(relay, bucket) == {}  # a fresh cached object costs no store request

    for i in range(N):  # client reads afterwards are hits
        status, body = get_body(f"{proxy.url}/{bucket}/ds/{i:03d}")
        assert (status, body) == (200, payload(SIZE + i, seed=i))
    assert _object_gets(relay, bucket) == {}
    m = scrape(proxy.admin_url)
    assert m.get("slipstream_warm_objects_total", result="fetched") == N
    assert m.get("slipstream_warm_objects_total", result="cached") == N
    assert m.get("slipstream_warm_bytes_total") == 2 * job["bytes_done"]
    assert m.get("slipstream_jobs", state="done") == 2
    assert m.get("slipstream_jobs", state="running") == 0
    by = {p: m.get("slipstream_job_fills_total", kind="warm", process=p) for p in PROCESSES}
    assert by == {"worker": 2 * N if workers > 1 else 0, "supervisor": 0}  # drained in workers
    listed = admin.jobs()
    assert [j["id"] for j in listed] == [job["id"], again["id"]]


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_keys_job_lists_a_missing_key_as_failed(
    workers: int,
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    """With 2 workers a worker drains each key: its error comes back as the same S3 error."""
    proxy = _proxy(proxy_factory, relay, seaweedfs, bucket, tmp_path, workers)
    admin = AdminClient(proxy.admin_url)
    keys = ["ds/001", "ds/missing", "ds/002", "other/x"]
    relay.reset()
    job = _wait(admin, admin.warm({"bucket": bucket, "keys": keys}))
    assert job["state"] == "failed"
    assert job["objects_done"] == 3 and job["total_known"] == 4
    assert job["failures"] == [
        {"key": "ds/missing", "error": "NoSuchKey: The specified key does not exist."}
    ]
    assert relay.count_of("GET", f"/{bucket}/ds/missing") == 2  # tried, then retried once
    assert relay.count_of("GET", f"/{bucket}/ds/003") == 0  # only what was asked for
    assert scrape(proxy.admin_url).get("slipstream_warm_objects_total", result="failed") == 1


def test_bad_input_and_unknown_bucket(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str, tmp_path: Path
) -> None:
    admin = AdminClient(proxy.admin_url)
    cases: list[tuple[Any, str]] = [
        ({"prefix": "x"}, "bucket"),
        ({"bucket": bucket, "keys": []}, "keys"),
        ({"bucket": bucket, "keys": ["a", 3]}, "keys"),
        ({"bucket": bucket, "prefix": "a", "keys": ["a"]}, "keys"),
        ({"bucket": bucket, "concurrency": 0}, "concurrency"),
        ({"bucket": bucket, "concurrency": "8"}, "concurrency"),
        ({"bucket": bucket, "bandwidth": "fast"}, "bandwidth"),
        ({"bucket": bucket, "allow_partial": "yes"}, "allow_partial"),
        ({"bucket": bucket, "verify": 1}, "verify"),
        ({"bucket": bucket, "keys": ["a"], "verify": True}, "verify"),
        ({"bucket": bucket, "colour": "blue"}, "colour"),
        (["not", "an", "object"], "body"),
    ]
    for body, field in cases:
        req = urllib.request.Request(
            f"{proxy.admin_url}/admin/v1/warm", data=json.dumps(body).encode(), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 400, body
        assert json.loads(info.value.read())["field"] == field, body
    req = urllib.request.Request(f"{proxy.admin_url}/admin/v1/warm", data=b"{nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    with pytest.raises(AdminError, match="^404: bucket"):
        admin.warm({"bucket": "no-such-bucket-here"})
    with pytest.raises(AdminError, match="^404"):
        admin.job("0123456789abcdef")


def test_cancel_stops_a_throttled_job(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str, tmp_path: Path
) -> None:
    admin = AdminClient(proxy.admin_url)
    # 100 KiB/s: the job cannot finish its 3.6 MB for half a minute
    job_id = admin.warm(
        {"bucket": bucket, "prefix": "ds/", "concurrency": 1, "bandwidth": "100KiB/s"}
    )
    deadline = time.monotonic() + 30
    while admin.job(job_id)["objects_done"] < 1:
        assert time.monotonic() < deadline, admin.job(job_id)
        time.sleep(0.05)
    cancelled = admin.cancel(job_id)
    assert cancelled["state"] == "cancelled"
    assert 1 <= cancelled["objects_done"] < N
    relay.reset()
    time.sleep(0.5)
    assert _object_gets(relay, bucket) == {}  # nothing runs on after the cancel
    assert admin.job(job_id)["objects_done"] == cancelled["objects_done"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_warm_wait_json_and_jobs(
    proxy: ProxyProcess, relay: CountingRelay, bucket: str, tmp_path: Path
) -> None:
    done = _cli("warm", f"s3://{bucket}/ds/", "--wait", "--json", "--admin", proxy.admin_url)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert (job["state"], job["objects_done"], job["fetched"]) == ("done", N, 0 + N)

    manifest = tmp_path / "keys.txt"
    manifest.write_text("001\n\nnope\n002\n")
    failed = _cli(
        "warm", f"s3://{bucket}/ds/", "--manifest", str(manifest), "--wait",
        "--admin", proxy.admin_url,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert "2 objects (0 fetched, 2 already cached)" in failed.stdout
    assert "'ds/nope': NoSuchKey" in failed.stdout
    assert "[failed] 2/3 objects" in failed.stderr  # the last progress line (not a TTY)

    whole = _cli("warm", f"s3://{bucket}/", "--wait", "--json", "--admin", proxy.admin_url)
    assert whole.returncode == 0, whole.stderr
    whole_id = json.loads(whole.stdout)["id"]

    listed = _cli("jobs", "--admin", proxy.admin_url)
    assert listed.returncode == 0, listed.stderr
    assert "None" not in listed.stdout
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert f"s3://{bucket}/ds/  [done]" in lines[job["id"]]  # a prefix job: its prefix
    assert f"s3://{bucket}/ (3 keys)  [failed]" in listed.stdout  # a manifest's: its keys' count
    assert f"s3://{bucket}/  [done]" in lines[whole_id]  # the whole bucket

    unreachable = _cli("warm", f"s3://{bucket}/", "--admin", "http://127.0.0.1:9")
    assert unreachable.returncode == 2
    assert "cannot reach the admin listener" in unreachable.stderr
    bad = _cli("warm", "gs://x/y", "--admin", proxy.admin_url)
    assert bad.returncode == 2 and "s3://BUCKET/PREFIX" in bad.stderr


def test_a_selection_larger_than_the_cache_stops_before_evicting(
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    # 24 x 150 KiB (3.6 MiB) against a 1 MiB cache
    proxy = _proxy(proxy_factory, relay, seaweedfs, bucket, tmp_path, max_size="1MiB")
    admin = AdminClient(proxy.admin_url)
    job = _wait(admin, admin.warm({"bucket": bucket, "prefix": "ds/", "concurrency": 2}))
    assert job["state"] == "failed" and "allow_partial" in job["error"], job
    assert job["needed_bytes"] > 1024 * KIB
    assert job["objects_done"] * SIZE <= 1024 * KIB
    assert scrape(proxy.admin_url).get("slipstream_evictions_total") == 0

    cli = _cli("warm", f"s3://{bucket}/ds/", "--allow-partial", "--wait", "--json",
               "--admin", proxy.admin_url)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    partial = json.loads(cli.stdout)
    assert (partial["state"], partial["objects_done"]) == ("done", N)
    assert partial["allow_partial"] is True


@pytest.mark.parametrize(
    ("how", "workers"), [("SIGKILL", 1), ("SIGTERM", 1), ("SIGKILL", 2)], ids=str
)
def test_a_job_resumes_after_a_restart(
    how: str,
    workers: int,
    seaweedfs: S3Endpoint,
    proxy_factory: ProxyFactory,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    proxy = _proxy(proxy_factory, relay, seaweedfs, bucket, tmp_path, workers)
    admin = AdminClient(proxy.admin_url)
    first = _wait(admin, admin.warm({"bucket": bucket, "keys": ["other/x"]}))
    assert first["state"] == "done"
    # one object at a time, capped: 3.6 MB take about 6 s
    job_id = admin.warm(
        {"bucket": bucket, "prefix": "ds/", "concurrency": 1, "bandwidth": "600KiB/s"}
    )
    deadline = time.monotonic() + 30
    while (done := admin.job(job_id)["objects_done"]) < 3:
        assert time.monotonic() < deadline, admin.job(job_id)
        time.sleep(0.02)
    if how == "SIGKILL":
        proxy.kill9()
    else:
        proxy.stop()
    assert done < N
    relay.reset()
    proxy.start()  # the same config: the same cache dir and its jobs/ beside it
    admin = AdminClient(proxy.admin_url)
    job = _wait(admin, job_id)
    assert (job["state"], job["resumed"], job["objects_done"]) == ("done", True, N), job
    # one object at a time in listing order: the first `done` were read before the kill; the
    # cache's commit of the last one may still have been under way (SIGKILL loses it)
    kept = done - 1
    assert job["cached"] >= kept and job["fetched"] == N - job["cached"]
    gets = _object_gets(relay, bucket)
    assert not {f"/{bucket}/ds/{i:03d}" for i in range(kept)} & set(gets), gets
    assert sum(gets.values()) <= 3 * (N - kept)
    assert [j["id"] for j in admin.jobs()] == [first["id"], job_id]  # ended jobs are kept
    assert admin.job(first["id"])["state"] == "done"
    for i in (0, N - 1):
        assert get_body(f"{proxy.url}/{bucket}/ds/{i:03d}") == (200, payload(SIZE + i, seed=i))


def test_verify_fetches_what_appeared_during_the_job(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy: ProxyProcess,
    relay: CountingRelay,
    bucket: str,
    tmp_path: Path,
) -> None:
    client = s3_client_factory(seaweedfs)
    for top in ("v", "w"):
        for i in range(8):
            client.put_object(Bucket=bucket, Key=f"{top}/{i:03d}", Body=payload(SIZE, seed=i))
    admin = AdminClient(proxy.admin_url)

    def during(top: str, verify: bool) -> dict[str, Any]:
        """A slow job on top/; once it has cached top/000, top/late appears and top/000
        is rewritten in the store."""
        job_id = admin.warm(
            {"bucket": bucket, "prefix": f"{top}/", "concurrency": 1,
             "bandwidth": "600KiB/s", "verify": verify}
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while admin.job(job_id)["objects_done"] < 2:
            assert time.monotonic() < deadline, admin.job(job_id)
            time.sleep(0.02)
        client.put_object(Bucket=bucket, Key=f"{top}/late", Body=b"late" * 100)
        client.put_object(Bucket=bucket, Key=f"{top}/000", Body=b"rewritten")
        return _wait(admin, job_id)

    plain = during("w", verify=False)
    assert (plain["state"], plain["objects_done"], plain["verify"]) == ("done", 8, False)
    assert (plain["verified"], plain["added"]) == (0, 0)
    checked = during("v", verify=True)
    assert (checked["state"], checked["verified"], checked["added"]) == ("done", 9, 2), checked
    assert checked["objects_done"] == 10 and checked["total_known"] == 9

    relay.reset()
    assert get_body(f"{proxy.url}/{bucket}/v/late") == (200, b"late" * 100)
    assert get_body(f"{proxy.url}/{bucket}/v/000") == (200, b"rewritten")
    assert _object_gets(relay, bucket) == {}  # both were cached by the verify pass
    assert get_body(f"{proxy.url}/{bucket}/w/late") == (200, b"late" * 100)
    assert relay.count_of("GET", f"/{bucket}/w/late") == 1  # without verify: a miss

    started = _cli("warm", f"s3://{bucket}/v/", "--verify", "--json", "--admin", proxy.admin_url)
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["verify"] is True
    keys = tmp_path / "keys.txt"
    keys.write_text("001\n")
    manifest = _cli("warm", f"s3://{bucket}/v/", "--manifest", str(keys), "--verify",
                    "--admin", proxy.admin_url)  # fmt: skip
    assert manifest.returncode == 2 and "verify re-lists a prefix" in manifest.stderr


def test_a_large_object_is_warmed_with_parallel_ranged_gets(
    seaweedfs: S3Endpoint,
    s3_client_factory: S3ClientFactory,
    proxy: ProxyProcess,
    relay: CountingRelay,
    bucket: str,
) -> None:
    big = payload(64 * KIB * 6 + 7, seed=99)  # 7 chunks of 64 KiB
    s3_client_factory(seaweedfs).put_object(Bucket=bucket, Key="big/obj", Body=big)
    admin = AdminClient(proxy.admin_url)
    relay.reset()
    relay.bandwidth = 256 * KIB  # per response: each chunk takes about a quarter second
    try:
        job = _wait(admin, admin.warm({"bucket": bucket, "keys": ["big/obj"]}))
    finally:
        relay.bandwidth = 0
    assert (job["state"], job["fetched"], job["bytes_done"]) == ("done", 1, len(big)), job
    assert relay.count_of("GET", f"/{bucket}/big/obj") == 7  # one ranged GET per chunk
    assert relay.most_in_flight >= 4  # several chunks of the one object at once
    relay.reset()
    status, body = get_body(f"{proxy.url}/{bucket}/big/obj")
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    assert relay.count_of("GET", f"/{bucket}/big/obj") == 0  # read back from the cache
