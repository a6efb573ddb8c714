"""The Grafana dashboard (config/grafana/slipstream.json) against a real Prometheus.

A proxy over moto serves some hits, misses and a store error; Debian's ``prometheus`` scrapes its
admin /metrics every second; then every panel query of the dashboard goes through Prometheus's
HTTP API and must return series. The per-bucket metrics behind those panels are checked first,
from the proxy's own scrape: counts, bytes by source, stall, and the "*" label for a wildcard
mapping's buckets; ``promtool check metrics`` lints the exposition and ``promtool check config``
the scrape config. A third test shows what stall seconds count, over a slow store.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faultkit import get_body, new_bucket, payload, proxy_config, scrape, store_env
from tests.proxyproc import REPO_ROOT
from tests.relay import CountingRelay
from tests.servers import S3Endpoint, die_with_parent, free_port

DASHBOARD = REPO_ROOT / "config" / "grafana" / "slipstream.json"
# The warm-job metrics come from the jobs slice: a proxy that ran no job has no series for them,
# so only panel queries that use nothing but these names may come back empty.
JOB_METRICS = frozenset(
    {"slipstream_warm_objects_total", "slipstream_warm_bytes_total", "slipstream_jobs"}
)
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$bucket": ".*"}
METRIC_NAME = re.compile(r"\bslipstream_[a-z_]+\b")
CHUNK = 64 * 1024


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets() -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def defined_metrics() -> set[str]:
    """Metric names the proxy defines (metrics.py, and the scrape-time gauges of admin.py),
    with the series names of histograms."""
    names: set[str] = set()
    for path in ("proxy/metrics.py", "proxy/admin.py"):
        names |= set(re.findall(r'"(slipstream_[a-z_]+)"', (REPO_ROOT / path).read_text()))
    return names | {f"{n}_bucket" for n in names}


def test_dashboard_is_well_formed_and_uses_only_defined_metrics() -> None:
    dash = dashboard()
    assert dash["title"] and dash["uid"] == "slipstream"
    panels = dash["panels"]
    assert len(panels) >= 10
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    defined = defined_metrics() | JOB_METRICS
    for panel in panels:
        assert panel["title"] and panel["type"] == "timeseries", panel
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            used = set(METRIC_NAME.findall(target["expr"]))
            assert used, f"{panel['title']!r}: a query with no Slipstream metric"
            assert used <= defined, f"{panel['title']!r}: undefined {used - defined}"
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("hit ratio by requests", "hit ratio by bytes", "source", "stall", "first byte"):
        assert topic in titles
    for topic in ("store latency", "errors", "capacity", "evictions", "coalesced", "jobs"):
        assert topic in titles


def get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping ``target`` every second."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: slipstream\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        check = subprocess.run(
            ["promtool", "check", "config", str(self.config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(self.workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )
        log.close()
        return self

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        answer = get(f"{self.url}/api/v1/query?{q}")
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for_scrapes(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` scrapes of the target succeeded in the last minute."""
        deadline = time.monotonic() + timeout
        got = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                result = self.query('sum_over_time(up{job="slipstream"}[1m])')
                if result and float(result[0]["value"][1]) >= n:
                    return
                got = str(result)
            except OSError as exc:
                got = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"prometheus did not scrape {n} times: {got}\n{self.log()}")

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_every_panel_query_returns_series_on_prometheus(
    moto_server: S3Endpoint, s3_client_factory: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.skip("Debian's prometheus is not installed (scripts/setup installs it)")
    store = s3_client_factory(moto_server)
    named, other = new_bucket("dash"), new_bucket("dashwild")
    sizes = {"small": 1000, "chunked": 3 * CHUNK + 123}
    for bucket in (named, other):
        store.create_bucket(Bucket=bucket)
        for key, size in sizes.items():
            store.put_object(Bucket=bucket, Key=key, Body=payload(size, seed=size))
    config = proxy_config(
        moto_server.url, named, tmp_path / "cache", cache={"chunk_size": CHUNK, "inline_max": 4096}
    )
    config["buckets"]["*"] = {"backend": "store"}
    proxy = proxy_factory(config, env=store_env(moto_server))
    client = s3_client_factory(proxy.url)

    def read_all() -> None:
        for bucket in (named, other):
            for key, size in sizes.items():
                assert len(client.get_object(Bucket=bucket, Key=key)["Body"].read()) == size

    read_all()  # misses
    fills = 2 * (1 + -(-sizes["chunked"] // CHUNK))  # one per chunk
    deadline = time.monotonic() + 30  # a fill is committed just after its last byte is sent
    while scrape(proxy.admin_url).get("slipstream_fills_total", result="cached") < fills:
        assert time.monotonic() < deadline, "the misses were never cached"
        time.sleep(0.1)
    read_all()  # hits
    with pytest.raises(client.exceptions.NoSuchKey):  # a miss, and a store error
        client.get_object(Bucket=named, Key="absent")

    m = scrape(proxy.admin_url)
    total = sum(sizes.values())
    for label in (named, "*"):
        misses = 3 if label == named else 2
        assert m.get("slipstream_bucket_requests_total", bucket=label, result="miss") == misses
        assert m.get("slipstream_bucket_requests_total", bucket=label, result="hit") == 2
        assert m.get("slipstream_bucket_bytes_total", bucket=label, source="backend") == total
        assert m.get("slipstream_bucket_bytes_total", bucket=label, source="cache") == total
        assert m.get("slipstream_stall_seconds_total", bucket=label) > 0
    assert m.get("slipstream_bucket_requests_total", bucket=other) == 0, "a label from a client"
    # the metrics that were there before stay, with the same totals
    assert m.get("slipstream_cache_hits_total") == 4
    assert m.get("slipstream_cache_misses_total") == 5
    assert m.get("slipstream_bytes_served_total", source="cache") == 2 * total
    assert m.get("slipstream_first_byte_seconds_count", result="hit") == 4
    assert m.get("slipstream_first_byte_seconds_count", result="miss") == 4

    with urllib.request.urlopen(f"{proxy.admin_url}/metrics", timeout=10) as resp:
        exposition = resp.read()
    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr

    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    prometheus = Prometheus(proxy.config["admin_listen"], workdir).start()
    try:
        prometheus.wait_for_scrapes(3)
        empty = []
        for title, expr in targets():
            if prometheus.query(promql(expr)):
                continue
            if set(METRIC_NAME.findall(expr)) <= JOB_METRICS:
                continue  # no job ran: see JOB_METRICS
            empty.append(f"{title}: {expr}")
        assert not empty, "panel queries with no series:\n" + "\n".join(empty)
        variable = dashboard()["templating"]["list"][0]["definition"]
        found = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable)
        assert found, variable
        metric, label = found.groups()
        values = get(f"{prometheus.url}/api/v1/label/{label}/values?match[]={metric}")["data"]
        assert sorted(values) == sorted(["*", named])
    finally:
        prometheus.stop()


def test_stall_counts_the_wait_for_store_bytes_and_nothing_for_hits(
    moto_server: S3Endpoint, s3_client_factory: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    """A store 0.2 s away that sends 128 KiB/s per response: a miss's stall is at least the
    store's latency and most of the GET's time (the body waits too, not only the first byte);
    never more than the GET took; a hit adds none."""
    store = s3_client_factory(moto_server)
    bucket = new_bucket("stall")
    store.create_bucket(Bucket=bucket)
    body = payload(4 * CHUNK, seed=4)
    store.put_object(Bucket=bucket, Key="obj", Body=body)
    with CountingRelay(moto_server.url, latency=0.2, bandwidth=128 * 1024) as relay:
        config = proxy_config(
            relay.url, bucket, tmp_path / "cache", cache={"chunk_size": CHUNK, "inline_max": 4096}
        )
        proxy = proxy_factory(config, env=store_env(moto_server))
        client = s3_client_factory(proxy.url)
        started = time.perf_counter()
        assert client.get_object(Bucket=bucket, Key="obj")["Body"].read() == body
        took = time.perf_counter() - started
        stall = scrape(proxy.admin_url).get("slipstream_stall_seconds_total", bucket=bucket)
        assert 0.2 <= stall <= took, (stall, took)
        assert stall >= 0.6 * took, f"only {stall:.2f}s of a {took:.2f}s miss counted as stall"
        deadline = time.monotonic() + 30
        while scrape(proxy.admin_url).get("slipstream_fills_total", result="cached") < 4:
            assert time.monotonic() < deadline, "the miss was never cached"
            time.sleep(0.1)
        assert client.get_object(Bucket=bucket, Key="obj")["Body"].read() == body
        m = scrape(proxy.admin_url)
        assert m.get("slipstream_bucket_requests_total", bucket=bucket, result="hit") == 1
        assert m.get("slipstream_stall_seconds_total", bucket=bucket) == stall


def test_two_workers_tallies_reach_the_supervisor(
    moto_server: S3Endpoint, s3_client_factory: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    """Per-bucket counts and the first-byte histogram are kept in plain numbers in each worker
    and written to the shared metric files about once a second: the supervisor's scrape sums
    what both workers counted, without another request to push them out."""
    store = s3_client_factory(moto_server)
    bucket = new_bucket("tally")
    store.create_bucket(Bucket=bucket)
    body = payload(1000, seed=7)
    store.put_object(Bucket=bucket, Key="k", Body=body)
    config = proxy_config(moto_server.url, bucket, tmp_path / "cache", workers=2)
    proxy = proxy_factory(config, env=store_env(moto_server))
    reads = 40
    for _ in range(reads):  # a new connection each: SO_REUSEPORT spreads them
        assert get_body(f"{proxy.url}/{bucket}/k") == (200, body)

    def counted(m: Any) -> tuple[float, float, float]:
        return (
            m.get("slipstream_bucket_requests_total", bucket=bucket, result="hit")
            + m.get("slipstream_bucket_requests_total", bucket=bucket, result="miss"),
            m.get("slipstream_first_byte_seconds_count", result="hit")
            + m.get("slipstream_first_byte_seconds_count", result="miss"),
            m.get("slipstream_bucket_bytes_total", bucket=bucket, source="cache")
            + m.get("slipstream_bucket_bytes_total", bucket=bucket, source="backend"),
        )

    deadline = time.monotonic() + 20
    while (now := counted(scrape(proxy.admin_url))) != (reads, reads, reads * len(body)):
        assert time.monotonic() < deadline, f"the workers' tallies were never flushed: {now}"
        time.sleep(0.2)
