"""Fast-path benchmark (issue 10): warm hits beside a bare aiohttp+uvloop server, one run.

    .venv/bin/python loadtest/fastpath.py [--quick] [--workers N] [--scale N] [--json out.json]
    .venv/bin/python loadtest/fastpath.py --only restart --scale 1000000 [--against CHECKOUT]

Everything starts in a temporary directory and goes at the end: SeaweedFS as the store,
Slipstream (``python -m proxy serve``, ``workers: N``), and two ceiling servers of
``loadtest/baseline_server.py`` (N processes, one 16 KiB and one 4 KiB body from memory).
Every Slipstream row is followed by the ceiling row it is compared with, so both see about
the same noise from the other tenants of this machine; only ratios within one run count.

Rows (wrk -c64 unless said; 16 KiB objects, all inline in the index):
  warm GET, anonymous (Slipstream without users)               target >= 0.7x (aim 0.8x),
                                                               p99 < 5 ms
  warm HEAD (vs the ceiling's HEAD)                            target >= 0.7x
  warm ranged GET bytes=0-4095 (vs the 4 KiB ceiling)          target >= 0.7x
  warm GET, SigV4 header signatures (Slipstream with users)    target >= 0.5x
  warm GET, presigned URLs (same; boto3's default form, SigV2)  target >= 0.5x
  warm GET, presigned URLs signed with SigV4 (same)            target >= 0.5x
  cold GET at concurrency 8: Slipstream p50 - the store's p50  target <= 3 ms
  at scale (fs store, N distinct 4 KiB objects): index bytes per object, restart to ready,
  warm GET over all N keys vs over 5,000 keys (target >= 0.9x) and vs the 4 KiB ceiling.

wrk cannot sign, so the signed rows replay requests signed beforehand: one per path, with
botocore's S3SigV4Auth and one fixed X-Amz-Date (valid for the 15 minutes of clock skew
Slipstream allows), or botocore's presigned URLs. wrk 4.1 waits for a body after a HEAD, so
HEAD rows (Slipstream and ceiling alike) use a small raw-socket keep-alive client here.
The scale cache is built in this process through Slipstream's own CacheStore.commit_inline
(batches of 2,000), not by N HTTP fills; a warm row that reaches the store or misses the
cache is invalid, which checks the records are the ones Slipstream would have made.

``--only scale`` runs the scale phase alone (no SeaweedFS, no 16 KiB rows); ``--only restart``
only builds the scale cache (records of files it does not write: same metadata shape) and times
restarts on it: ``--restarts R`` rounds, each a start
to ready after a clean stop (SIGTERM) and one after kill -9, of this checkout and, with
``--against CHECKOUT`` (e.g. a clone of main), of that one alternately on the same cache;
each start's own "cache check done in X s" log line is shown beside it. The cache is written
by this checkout: ``--against`` must name one that reads its records (main before the compact
record form, FORMAT2, does not).

Every timed row is preceded by a sample check of status and body; an error makes the run
INVALID (exit status 1). CPU per process and the other tenants' share are shown per row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests`, `loadtest`, `proxy` importable
    sys.path.insert(0, str(REPO_ROOT))

from loadtest.bench import (  # noqa: E402
    BASELINE,
    BUCKET,
    SMALL_SIZE,
    Bench,
    BenchError,
    CpuWatch,
    Load,
    Req,
    Row,
    _percentile,
    _raise_interrupt,
    background,
    machine_info,
    make_row,
    metric_delta,
    print_footer,
    proxy_problems,
    py_load,
    say,
    scrape_settled,
    small_key,
    verify,
    wait_listeners,
)
from tests.proxyproc import ProxyProcess  # noqa: E402
from tests.servers import S3Endpoint, free_port, make_s3_client, wait_for_http  # noqa: E402

SCALE_BUCKET = "scale"
SCALE_SIZE = 4096
NEAR_KEYS = 5000
PASS_READS = 8  # reads of each key in the untimed pass before warm rows (untimed_pass)
PASS_RATE = 20_000  # requests a second assumed for its length
RANGE = "bytes=0-4095"
USER_KEY = "benchuser"
USER_SECRET = "bench-user-secret-0123456789"
USER_ENV = "FASTPATH_USER_SECRET"
# (row, ceiling row, floor, aim): rows compared by req/s with the ceiling beside them
RATIO_TARGETS: list[tuple[str, str, float, float | None]] = [
    ("warm GET anonymous", "ceiling GET 16 KiB", 0.7, 0.8),
    ("warm HEAD anonymous", "ceiling HEAD 16 KiB", 0.7, 0.8),
    ("warm GET range 4 KiB", "ceiling GET 4 KiB", 0.7, 0.8),
    ("warm GET SigV4 header", "ceiling GET 16 KiB (signed)", 0.5, None),
    ("warm GET presigned", "ceiling GET 16 KiB (signed)", 0.5, None),
    ("warm GET presigned SigV4", "ceiling GET 16 KiB (signed)", 0.5, None),
    ("scale: warm GET all keys", "ceiling GET 4 KiB (scale)", 0.7, 0.8),
]
P99_TARGET_MS = 5.0
COLD_TARGET_MS = 3.0
NO_CLIFF_TARGET = 0.9
INDEX_TARGET_BYTES = 200  # a third of the ~600 bytes of JSON per object the issue measured
RESTART_TARGET_S = 5.0  # the target is at 1,000,000 objects


def scale_key(i: int) -> str:
    return f"d{i // 1000:04d}/f{i:07d}.bin"


def scale_body(base: bytes, i: int) -> bytes:
    return f"{i:015d}\n".encode() + base[16:SCALE_SIZE]


# -- signed requests -----------------------------------------------------------------------------


def amz_now() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def sigv4_headers(
    url: str, access_key: str, secret_key: str, amz_date: str, region: str = "us-east-1"
) -> dict[str, str]:
    """The headers botocore's S3SigV4Auth adds to a GET of ``url`` signed at ``amz_date``
    (add_auth's steps with a fixed timestamp instead of the clock). Host is not returned:
    the client sends the URL's host:port, which is what was signed."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="GET", url=url)
    auth = S3SigV4Auth(Credentials(access_key, secret_key), "s3", region)
    req.context["timestamp"] = amz_date
    auth._modify_request_before_signing(req)
    signature = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    auth._inject_signature_to_request(req, signature)
    return {k: v for k, v in req.headers.items() if k.lower() != "host"}


def wrk_line(path: str, range_: str = "", headers: Mapping[str, str] | None = None) -> str:
    """One line of a wrk_paths.lua target file."""
    fields = [path]
    if range_ or headers:
        fields.append(range_)
    for name, value in (headers or {}).items():
        if "\t" in value or "\n" in value or ":" in name:
            raise ValueError(f"header {name!r} cannot go in a target file")
        fields.append(f"{name}: {value}")
    return "\t".join(fields) + "\n"


def unsigned_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def presign_path(client: Any, bucket: str, key: str) -> str:
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=6 * 3600
    )
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# -- HEAD load (wrk 4.1 waits for a body after HEAD) ---------------------------------------------


class _HeadConn(asyncio.Protocol):
    def __init__(self, run: _HeadRun, offset: int) -> None:
        self.run = run
        self.i = offset
        self.buf = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        reqs = self.run.reqs
        self.i = (self.i + 1) % len(reqs)
        self.sent = time.perf_counter()
        self.transport.write(reqs[self.i])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            now = time.perf_counter()
            self.run.note(head, now - self.sent)
            if now >= self.run.deadline:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _HeadRun:
    def __init__(self, reqs: list[bytes], deadline: float) -> None:
        self.reqs = reqs
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def note(self, head: bytes, latency: float) -> None:
        self.latencies.append(latency)
        status = head[9:12]
        if status != b"200":
            key = f"HEAD status {status.decode('latin-1')}"
            self.errors[key] = self.errors.get(key, 0) + 1


async def _head_load(host: str, port: int, paths: Sequence[str], conns: int, secs: float) -> Load:
    loop = asyncio.get_running_loop()
    reqs = [f"HEAD {p} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1") for p in paths]
    started = time.perf_counter()
    run = _HeadRun(reqs, started + secs)
    protos = []
    for n in range(conns):
        _, proto = await loop.create_connection(
            partial(_HeadConn, run, n * len(reqs) // conns), host, port
        )
        protos.append(proto)
    await asyncio.wait_for(asyncio.gather(*(p.closed for p in protos)), secs + 60)
    seconds = time.perf_counter() - started
    run.latencies.sort()
    if not run.latencies:
        run.errors["no HEAD completed"] = 1
    return Load(
        generator="python-raw",
        requests=len(run.latencies),
        seconds=seconds,
        body_bytes=0,
        p50_ms=1000 * _percentile(run.latencies, 50),
        p99_ms=1000 * _percentile(run.latencies, 99),
        errors=run.errors,
    )


def head_load(url: str, paths: Sequence[str], conns: int, secs: float) -> Load:
    import uvloop

    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80
    return uvloop.run(_head_load(host, port, paths, conns, secs))


# -- the scale cache -----------------------------------------------------------------------------


def _stat_all(paths: Sequence[Path]) -> list[os.stat_result]:
    return [p.stat() for p in paths]


def _stat_like(paths: Sequence[Path]) -> list[os.stat_result]:
    """What stat would say of files not written (``--only restart``): the same metadata
    shape (size, an inode per file, now as mtime), so records of the same length."""
    now = time.time_ns()
    return [
        os.stat_result(
            (0o100644, 10_000_000 + i, 1, 1, 0, 0, SCALE_SIZE, now // 10**9, now // 10**9, 0),
            {"st_mtime_ns": now, "st_mtime": now / 1e9},
        )
        for i in range(len(paths))
    ]


async def _build_cache(
    config: Path,
    root: Path,
    count: int,
    base: bytes,
    backend: str,
    batch: int = 2000,
    files: bool = True,
) -> int:
    """Commit ``count`` fs objects straight into the cache of ``config`` (as fills would);
    ``files`` False: records of files never written (a restart reads only the cache)."""
    from proxy import config as pconfig
    from proxy.backends.fs.root import file_meta
    from proxy.cache.record import object_id
    from proxy.cache.store import CacheStore, record_for

    cfg = pconfig.load(config)
    store = CacheStore(cfg.cache)
    await store.open()
    done = 0
    try:
        for first in range(0, count, batch):
            ids = range(first, min(count, first + batch))
            paths = [root / SCALE_BUCKET / scale_key(i) for i in ids]
            stats = await asyncio.to_thread(_stat_all if files else _stat_like, paths)
            seen = store.write_mark()
            oks = await asyncio.gather(
                *(
                    store.commit_inline(
                        object_id(backend, SCALE_BUCKET, scale_key(i)),
                        record_for(file_meta(p, st), backend, SCALE_BUCKET, scale_key(i)),
                        scale_body(base, i),
                        seen=seen,
                    )
                    for i, p, st in zip(ids, paths, stats, strict=True)
                )
            )
            done += sum(1 for ok in oks if ok)
    finally:
        await store.close()
    return done


def index_stats(index_dir: Path, objects: int) -> dict[str, float]:
    """Bytes per object of the LMDB index: its file, the record trees, the inline values."""
    import lmdb

    env = lmdb.open(str(index_dir), readonly=True, max_dbs=16, lock=False)
    try:
        out: dict[str, float] = {}
        with env.begin() as txn:
            psize = env.stat()["psize"]
            used = {}
            for name in (b"objects", b"uses", b"queues", b"ghost", b"written", b"data"):
                st = txn.stat(env.open_db(name, txn=txn, create=False))
                pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                used[name.decode()] = pages * psize
        per = max(objects, 1)
        out["file"] = round((env.info()["last_pgno"] + 1) * psize / per, 1)
        out["objects tree"] = round(used["objects"] / per, 1)
        out["records (objects+uses+queues)"] = round(
            (used["objects"] + used["uses"] + used["queues"]) / per, 1
        )
        out["inline data pages"] = round(used["data"] / per, 1)
        return out
    finally:
        env.close()


# -- the benchmark -------------------------------------------------------------------------------


class FastBench(Bench):
    def __init__(self, args: argparse.Namespace, stack: ExitStack, tmp: Path) -> None:
        super().__init__(args, stack, tmp)
        self.cold_keys = [small_key(args.objects + i) for i in range(args.cold)]
        self.ceilings: dict[int, str] = {}
        self.checks: dict[str, Any] = {}
        self.warm_paths = [f"/{BUCKET}/{k}" for k in self.keys]
        self.signed = False

    def small_head(self, i: int) -> bytes:
        return self.data.small(i)[:SCALE_SIZE]

    # -- setup -------------------------------------------------------------------------------

    def seed_small(self) -> None:
        everything = list(enumerate(self.keys)) + [
            (self.args.objects + i, k) for i, k in enumerate(self.cold_keys)
        ]
        with self.phase(f"seed {len(everything)} x 16 KiB"):
            client = make_s3_client(self.weed.endpoint, max_pool_connections=32)
            client.create_bucket(Bucket=BUCKET)
            with ThreadPoolExecutor(16) as pool:
                for fut in [
                    pool.submit(client.put_object, Bucket=BUCKET, Key=k, Body=self.data.small(i))
                    for i, k in everything
                ]:
                    fut.result()

    def start_ceilings(self) -> None:
        for size in (SMALL_SIZE, SCALE_SIZE):
            port = free_port()
            cmd = [sys.executable, str(BASELINE), "--mode", "mem", "--size", str(size)]
            cmd += ["--port", str(port), "--workers", str(self.args.workers)]
            proc = self.stack.enter_context(background(cmd, self.tmp / f"ceiling-{size}.log"))
            url = f"http://127.0.0.1:{port}"
            wait_listeners(port, self.args.workers)
            wait_for_http(url + "/ready", timeout=30, status=200)
            self.cpu.groups[f"ceiling{size // 1024}k"] = proc.pid
            self.ceilings[size] = url

    def proxy_config(self) -> tuple[dict[str, Any], dict[str, str]]:
        config, env = super().proxy_config()
        if self.signed:
            config["auth"] = {
                "users": [
                    {"access_key": USER_KEY, "secret_key_env": USER_ENV, "allow": {"*": "read"}}
                ]
            }
            env[USER_ENV] = USER_SECRET
        return config, env

    def paths_file(self, name: str, lines: Sequence[str]) -> Path:
        path = self.tmp / f"{name}.txt"
        path.write_text("".join(lines))
        return path

    # -- rows --------------------------------------------------------------------------------

    def warm_row(
        self,
        name: str,
        url: str,
        lines: Sequence[str],
        sample: Sequence[Req],
        payload: int,
        server: str,
        admin: str | None,
    ) -> Row:
        with self.phase(name):
            errs = verify(name, sample)
            row = self.wrk_row(
                "F",
                name,
                url,
                self.paths_file(name.replace(" ", "_").replace(":", ""), lines),
                connections=self.args.concurrency,
                payload=payload,
                verify_errors=errs,
                server=(server,),
                admin_url=admin,
            )
        self.hits_only(row)
        return row

    def hits_only(self, row: Row) -> None:
        """A warm row that asked the store or missed the cache is no hit row."""
        if not row.proxy_metrics:
            return
        backend = sum(row.proxy_metrics.get("backend_requests_total", {}).values())
        misses = sum(row.proxy_metrics.get("cache_misses_total", {}).values())
        if backend or misses:
            row.errors[f"warm row: {backend:g} store requests, {misses:g} misses"] = 1

    def head_row(self, name: str, url: str, server: str, admin: str | None) -> Row:
        with self.phase(name):
            if self.args.warmup > 0:
                head_load(url, self.warm_paths, self.args.concurrency, self.args.warmup)
            m0 = scrape_settled(admin) if admin else None
            c0 = self.cpu.snap()
            load = head_load(url, self.warm_paths, self.args.concurrency, self.args.duration)
            c1 = self.cpu.snap()
            metrics = metric_delta(m0, scrape_settled(admin)) if admin and m0 else None
            cpu = CpuWatch.report(c0, c1, "python")
            row = make_row("F", name, load, cpu, (server,), {}, metrics)
            self._record(row)
        self.hits_only(row)
        return row

    def ceiling_row(self, name: str, size: int, paths: Sequence[str], method: str = "GET") -> Row:
        url, server = self.ceilings[size], f"ceiling{size // 1024}k"
        if method == "HEAD":
            return self.head_row(name, url, server, None)
        sample = [Req(url + p, {}, 200, size) for p in paths[:: max(1, len(paths) // 32)]]
        return self.warm_row(name, url, [p + "\n" for p in paths], sample, size, server, None)

    def py_cold_row(self, name: str, reqs: Sequence[Req], admin: str | None) -> Row:
        with self.phase(name):
            m0 = scrape_settled(admin) if admin else None
            c0 = self.cpu.snap()
            load = py_load(reqs, self.args.cold_concurrency)
            c1 = self.cpu.snap()
            metrics = metric_delta(m0, scrape_settled(admin)) if admin and m0 else None
            server = ("slipstream",) if admin else ("weed",)
            row = make_row("F", name, load, CpuWatch.report(c0, c1, "python"), server, {}, metrics)
            self._record(row)
        if metrics is not None:
            hits = sum(metrics.get("cache_hits_total", {}).values())
            if hits:
                row.errors[f"cold row: {hits:g} cache hits"] = 1
        return row

    def fill(
        self,
        url: str,
        paths: Sequence[str],
        size: int,
        expect: Callable[[int], Callable[[], bytes]],
    ) -> None:
        """Every key once through the Python client (bodies checked), then a wrk pass: the
        first pass after the fills still raises hit counters."""
        with self.phase(f"fill {len(paths)} keys"):
            reqs = [Req(url + p, {}, 200, size, expect(i)) for i, p in enumerate(paths)]
            load = py_load(reqs, 32)
            if load.errors:
                raise BenchError(f"fill through Slipstream failed: {load.errors}")
            self.untimed_pass(url, paths, size)

    def untimed_pass(self, url: str, paths: Sequence[str], size: int) -> None:
        """Warm rows measure the steady state: each key's first reads in a worker cost more
        (its hot entry is made; the first hit rewrites the record's use count, which each
        entry then sees once), so the pass runs until a key was read ~PASS_READS times at
        PASS_RATE. With 3 s for 20,000 keys (~4 reads a key) the scale row measured 0.83x /
        0.91x of the 5,000-key row; with 10 s, 1.09x / 1.19x."""
        from loadtest.bench import run_wrk

        run_wrk(
            url,
            self.paths_file("pass", [p + "\n" for p in paths]),
            connections=self.args.concurrency,
            threads=self.wrk_threads,
            duration=max(2, len(paths) * PASS_READS // PASS_RATE + 1),
            payload=size,
        )

    # -- phases ------------------------------------------------------------------------------

    def anonymous(self) -> None:
        proxy = self.start_proxy()
        url, admin = proxy.url, proxy.admin_url
        presigner = make_s3_client(
            S3Endpoint(self.store_url, self.weed.access_key, self.weed.secret_key)
        )
        first = self.args.objects
        direct = [
            Req(self.store_url + presign_path(presigner, BUCKET, k), {}, 200, SMALL_SIZE,
                partial(self.data.small, first + n))
            for n, k in enumerate(self.cold_keys)
        ]  # fmt: skip
        self.py_cold_row("cold GET c8: direct store", direct, None)
        through = [
            Req(f"{url}/{BUCKET}/{k}", {}, 200, SMALL_SIZE, partial(self.data.small, first + n))
            for n, k in enumerate(self.cold_keys)
        ]
        self.py_cold_row("cold GET c8: slipstream", through, admin)
        self.fill(url, self.warm_paths, SMALL_SIZE, lambda i: partial(self.data.small, i))
        sample = [
            Req(url + p, {}, 200, SMALL_SIZE, partial(self.data.small, i))
            for i, p in enumerate(self.warm_paths)
        ][:: max(1, len(self.keys) // 32)]
        lines = [p + "\n" for p in self.warm_paths]
        self.warm_row("warm GET anonymous", url, lines, sample, SMALL_SIZE, "slipstream", admin)
        self.ceiling_row("ceiling GET 16 KiB", SMALL_SIZE, self.warm_paths)
        self.head_row("warm HEAD anonymous", url, "slipstream", admin)
        self.ceiling_row("ceiling HEAD 16 KiB", SMALL_SIZE, self.warm_paths, "HEAD")
        ranged = [
            Req(url + p, {"Range": RANGE}, 206, SCALE_SIZE, partial(self.small_head, i))
            for i, p in enumerate(self.warm_paths)
        ][:: max(1, len(self.keys) // 32)]
        lines = [wrk_line(p, RANGE) for p in self.warm_paths]
        self.warm_row("warm GET range 4 KiB", url, lines, ranged, SCALE_SIZE, "slipstream", admin)
        self.ceiling_row("ceiling GET 4 KiB", SCALE_SIZE, self.warm_paths)
        self.stop_proxy(proxy)

    def signed_rows(self) -> None:
        self.signed = True
        proxy = self.launch_proxy(*self.proxy_config(), name="restart Slipstream with users")
        url, admin = proxy.url, proxy.admin_url
        step = max(1, len(self.keys) // 32)
        amz_date = amz_now()
        heads = [sigv4_headers(url + p, USER_KEY, USER_SECRET, amz_date) for p in self.warm_paths]
        sample = [
            Req(url + p, h, 200, SMALL_SIZE, partial(self.data.small, i))
            for i, (p, h) in enumerate(zip(self.warm_paths, heads, strict=True))
        ][::step]
        refused = unsigned_status(url + self.warm_paths[0])
        if refused != 403:
            raise BenchError(f"Slipstream with users answered an unsigned GET with {refused}")
        lines = [wrk_line(p, "", h) for p, h in zip(self.warm_paths, heads, strict=True)]
        self.warm_row("warm GET SigV4 header", url, lines, sample, SMALL_SIZE, "slipstream", admin)
        # boto3's generate_presigned_url gives SigV2 URLs unless told s3v4: both forms
        for row, version in (("warm GET presigned", None), ("warm GET presigned SigV4", "s3v4")):
            config = {"signature_version": version} if version else {}
            client = make_s3_client(url, USER_KEY, USER_SECRET, **config)
            pre = [presign_path(client, BUCKET, k) for k in self.keys]
            if ("X-Amz-Signature=" in pre[0]) != bool(version):
                raise BenchError(f"{row}: not the form asked for: {pre[0]}")
            sample = [
                Req(url + p, {}, 200, SMALL_SIZE, partial(self.data.small, i))
                for i, p in enumerate(pre)
            ][::step]
            lines = [p + "\n" for p in pre]
            self.warm_row(row, url, lines, sample, SMALL_SIZE, "slipstream", admin)
        self.ceiling_row("ceiling GET 16 KiB (signed)", SMALL_SIZE, self.warm_paths)
        self.stop_proxy(proxy)

    def stop_proxy(self, proxy: ProxyProcess) -> None:
        self.proxy_log_problems += proxy_problems(proxy)
        proxy.stop()
        del self.cpu.groups["slipstream"]

    def scale(self) -> None:
        n = self.args.scale
        root = self.tmp / "fsroot"
        base = random.Random(7).randbytes(SCALE_SIZE)
        files = self.args.only != "restart"  # a restart reads only the cache
        with self.phase(f"scale: write {n if files else 0} files"):
            for d in range(0, n if files else 0, 1000):
                folder = root / SCALE_BUCKET / scale_key(d).split("/")[0]
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(d, min(n, d + 1000)):
                    (root / SCALE_BUCKET / scale_key(i)).write_bytes(scale_body(base, i))
        cache_dir = self.tmp / "scale" / "cache"
        config: dict[str, Any] = {
            "workers": self.args.workers,
            "log": {"access_log": False},
            "cache": {
                "dir": str(cache_dir),
                "max_size": f"{max(4, n * 3 * SCALE_SIZE // 1024**3 + 1)}GiB",
                "index_map_size": f"{max(2, n * 4 * SCALE_SIZE // 1024**3 + 1)}GiB",
                "metadata_ttl": "1h",
            },
            "backends": {"data": {"type": "fs", "root": str(root)}},
            "buckets": {"*": {"backend": "data"}},
        }
        (self.tmp / "scale").mkdir(exist_ok=True)
        cfg_path = self.tmp / "scale" / "build.yaml"
        import yaml

        cfg_path.write_text(yaml.safe_dump(config))
        with self.phase(f"scale: build cache of {n} (in-process commit_inline)"):
            t0 = time.monotonic()
            built = asyncio.run(_build_cache(cfg_path, root, n, base, "data", files=files))
            build_s = time.monotonic() - t0
        if built != n:
            raise BenchError(f"scale: only {built} of {n} objects were cached")
        stats = index_stats(cache_dir / "index", n)
        t0 = time.monotonic()
        proxy = self.launch_proxy(config, {}, name="scale: start to ready", where="scale")
        ready_s = time.monotonic() - t0
        self.checks["scale"] = {
            "objects": n,
            "build_s": round(build_s, 1),
            "index_bytes_per_object": stats,
            "start_to_ready_s": round(ready_s, 2),
            "cache_check_s": _check_seconds(proxy),
        }
        say(f"  scale: {self.checks['scale']}")
        if self.args.restarts or self.args.only == "restart":
            self.stop_proxy(proxy)
            self.restarts(config)
            if self.args.only == "restart":
                return
            proxy = self.launch_proxy(config, {}, name="scale: start again", where="scale")
        url, admin = proxy.url, proxy.admin_url
        paths = [f"/{SCALE_BUCKET}/{scale_key(i)}" for i in range(n)]
        with self.phase("scale: untimed pass over all keys"):
            self.untimed_pass(url, paths, SCALE_SIZE)

        def sample(ids: range) -> list[Req]:
            step = max(1, len(ids) // 32)
            return [
                Req(url + paths[i], {}, 200, SCALE_SIZE, partial(scale_body, base, i))
                for i in ids[::step]
            ]

        near = min(NEAR_KEYS, n)
        self.warm_row(
            f"scale: warm GET {near} keys",
            url,
            [p + "\n" for p in paths[:near]],
            sample(range(near)),
            SCALE_SIZE,
            "slipstream",
            admin,
        )
        self.warm_row(
            "scale: warm GET all keys",
            url,
            [p + "\n" for p in paths],
            sample(range(n)),
            SCALE_SIZE,
            "slipstream",
            admin,
        )
        self.ceiling_row("ceiling GET 4 KiB (scale)", SCALE_SIZE, paths[:near])
        self.stop_proxy(proxy)

    def restarts(self, config: Mapping[str, Any]) -> None:
        """Start to ready on the scale cache, round by round: after a clean stop and after
        kill -9, this checkout and (``--against``) the other alternately."""
        checkouts = {"this": REPO_ROOT}
        if self.args.against:
            checkouts["against"] = self.args.against.resolve()
        times: dict[str, dict[str, list[tuple[float, float | None]]]] = {
            name: {"clean": [], "kill -9": []} for name in checkouts
        }
        for r in range(max(1, self.args.restarts)):
            order = list(checkouts.items())
            for name, checkout in order if r % 2 == 0 else order[::-1]:
                for how in ("clean", "kill -9"):
                    proxy = ProxyProcess(
                        config, self.tmp / "scale", {}, ready_timeout=120, source=checkout
                    )
                    self.stack.callback(proxy.stop)
                    t0 = time.monotonic()
                    proxy.start()
                    port = int(proxy.config["listen"].rsplit(":", 1)[1])
                    wait_listeners(port, self.args.workers, timeout=120)
                    took = time.monotonic() - t0
                    check = _check_seconds(proxy)
                    times[name][how].append((round(took, 2), check))
                    say(f"  restart ({name}, after {how} stop): {took:.2f} s, check {check} s")
                    self.proxy_log_problems += proxy_problems(proxy)
                    # this start's stop is the next start's "how": clean, then a crash
                    if how == "clean":
                        proxy.kill9()
                    else:
                        proxy.stop()
        self.checks["restarts"] = {
            name: {how: [t for t, _ in v] for how, v in runs.items()}
            | {f"check {how}": [c for _, c in v] for how, v in runs.items()}
            for name, runs in times.items()
        }


def _check_seconds(proxy: ProxyProcess) -> float | None:
    """The seconds of the last "cache check done in X s" line of the proxy's log."""
    found = [
        line.split("cache check done in ", 1)[1].split("s", 1)[0]
        for line in proxy.log(200_000).splitlines()
        if "cache check done in " in line
    ]
    return float(found[-1]) if found else None


# -- report --------------------------------------------------------------------------------------


def _find(rows: Sequence[Row], name: str) -> Row | None:
    return next((r for r in rows if r.name == name), None)


def verdicts(rows: Sequence[Row], checks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target: the measured value, the target, PASS or BELOW (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, ok: bool | None, unit: str) -> None:
        out.append({"name": name, "value": value, "unit": unit, "target": target, "ok": ok})

    for row, ceiling, floor, aim in RATIO_TARGETS:
        a, b = _find(rows, row), _find(rows, ceiling)
        v = a.req_s / b.req_s if a and b and b.req_s else None
        target = f">= {floor}x" + (f" (aim {aim}x)" if aim else "")
        add(f"{row} / {ceiling}", v, target, None if v is None else v >= floor, "x")
        if a and b and b.req_per_cpu_s:  # less sensitive to the CPU other tenants take
            out[-1]["per_cpu"] = a.req_per_cpu_s / b.req_per_cpu_s
    warm = _find(rows, "warm GET anonymous")
    if warm is not None:
        p99 = warm.p99_ms
        bare = _find(rows, "ceiling GET 16 KiB")  # this machine's p99 for the least server
        target = f"< {P99_TARGET_MS} ms" + (f" (ceiling {bare.p99_ms:.2f} ms)" if bare else "")
        add("warm GET anonymous p99", p99, target, p99 < P99_TARGET_MS, "ms")
    cold, direct = _find(rows, "cold GET c8: slipstream"), _find(rows, "cold GET c8: direct store")
    if cold and direct:
        d = cold.p50_ms - direct.p50_ms
        add("cold GET c8: p50 added to the store's", d, f"<= {COLD_TARGET_MS} ms",
            d <= COLD_TARGET_MS, "ms")  # fmt: skip
    near = next((r for r in rows if r.name.startswith("scale: warm GET") and "all" not in r.name),
                None)  # fmt: skip
    far = _find(rows, "scale: warm GET all keys")
    scale = checks.get("scale")
    if near and far and near.req_s:
        v = far.req_s / near.req_s
        add(f"scale: all keys / {near.name.removeprefix('scale: warm GET ')}", v,
            f">= {NO_CLIFF_TARGET}x (no cliff)", v >= NO_CLIFF_TARGET, "x")  # fmt: skip
        if far.req_per_cpu_s and near.req_per_cpu_s:
            out[-1]["per_cpu"] = far.req_per_cpu_s / near.req_per_cpu_s
    if scale:
        # the issue's ~600 B/object was the objects tree's pages (120 MB for 200k records)
        idx = scale["index_bytes_per_object"]["objects tree"]
        add("scale: index bytes per object (objects tree pages)", idx, f"<= {INDEX_TARGET_BYTES} B",
            idx <= INDEX_TARGET_BYTES, "B")  # fmt: skip
        s = scale["start_to_ready_s"]
        at = f"< {RESTART_TARGET_S} s (target at 1,000,000)"
        n = scale["objects"]
        add(f"scale: start to ready, {n} objects (first start)", s, at, s < RESTART_TARGET_S, "s")
        for how, runs in checks.get("restarts", {}).get("this", {}).items():
            if not how.startswith("check"):
                s = statistics.median(runs)
                add(f"scale: restart to ready after {how} stop (median)", s, at,
                    s < RESTART_TARGET_S, "s")  # fmt: skip
    return out


def print_report(
    rows: Sequence[Row],
    info: Mapping[str, Any],
    checks: Mapping[str, Any],
    phases: Mapping[str, float],
    log_problems: Sequence[str],
) -> bool:
    p = print
    p()
    p("=" * 110)
    p("Slipstream fast-path benchmark  " + "  ".join(f"{k}={v}" for k, v in info.items()))
    p("NOTE: shared machine; ratios within this run count, absolute figures are noisy.")
    p("=" * 110)
    head = (
        f"{'row':<36}{'generator':<15}{'requests':>9}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'errors':>7}{'srv CPU%':>9}{'req/cpu-s':>10}"
    )
    p(head)
    p("-" * len(head))
    for r in rows:
        p(
            f"{r.name:<36}{r.generator:<15}{r.requests:>9}{r.req_s:>9.0f}{r.p50_ms:>8.2f}"
            f"{r.p99_ms:>8.2f}{sum(r.errors.values()):>7}{r.server_cpu_pct:>9.0f}"
            f"{r.req_per_cpu_s:>10.0f}"
        )
    p()
    p(
        f"CPU during each row (% of one core, the machine has {100 * (os.cpu_count() or 1)}%; "
        "'other tenants' = processes not of this benchmark):"
    )
    for r in rows:
        p(f"  {r.name:<36} " + ", ".join(f"{k} {v:g}" for k, v in r.cpu.items()))
    scale = checks.get("scale")
    if scale:
        p()
        p(
            f"Scale: {scale['objects']} objects of 4 KiB built in {scale['build_s']} s "
            "(in-process CacheStore.commit_inline, batches of 2,000); start to ready "
            f"{scale['start_to_ready_s']} s (python -m proxy serve until /readyz and every "
            "worker listens)"
        )
        p(
            "  index bytes per object: "
            + ", ".join(f"{k} {v:g}" for k, v in scale["index_bytes_per_object"].items())
        )
    for name, runs in checks.get("restarts", {}).items():
        p(f"  restarts ({name}): " + "; ".join(f"{how} {v}" for how, v in runs.items()))
    times = checks.get("restarts", {})
    if "this" in times and "against" in times:
        for how in ("clean", "kill -9"):
            a, b = times["this"][how], times["against"][how]
            p(f"  restart after {how} stop, this/against (medians): "
              f"{statistics.median(a) / statistics.median(b):.2f}x")  # fmt: skip
    p()
    p("Targets (issue 10; x: req/s of the row / req/s of the ceiling beside it; per CPU-s: the")
    p("same with req per CPU-second of the serving processes, less sensitive to other tenants):")
    for v in verdicts(rows, checks):
        value = "n/a" if v["value"] is None else f"{v['value']:.2f}{v['unit']}"
        mark = {True: "PASS", False: "BELOW", None: "n/a"}[v["ok"]]
        cpu = f"  (per CPU-s {v['per_cpu']:.2f}x)" if "per_cpu" in v else ""
        p(f"  {v['name']:<58} {value:>10}   target {v['target']:<30} {mark}{cpu}")
    bad = [(r.name, k, v) for r in rows for k, v in r.errors.items()]
    none = (
        "Errors: none (every row: samples checked byte for byte, 0 socket errors, no status",
        "        >= 400, body sizes checked; warm rows: no store request, no miss)",
    )
    return print_footer(phases, bad, none, log_problems)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short phases, ~2-3 minutes in all")
    ap.add_argument("--workers", type=int, default=2, help="Slipstream and ceiling processes")
    ap.add_argument(
        "--scale", type=int, help="distinct 4 KiB objects at scale (200000; quick 20000)"
    )
    ap.add_argument("--objects", type=int, help="warm 16 KiB objects (10000; quick 2000)")
    ap.add_argument("--cold", type=int, help="cold 16 KiB objects (3000; quick 1000)")
    ap.add_argument("--duration", type=int, help="seconds per timed row (10; quick 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed seconds before each row")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--cold-concurrency", type=int, default=8)
    ap.add_argument("--wrk-threads", type=int, default=0, help="default min(2, nproc)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--only", choices=("scale", "restart"), help="the scale phase alone; restart: no rows"
    )
    ap.add_argument("--restarts", type=int, default=0, help="restart rounds on the scale cache")
    ap.add_argument("--against", type=Path, help="restarts: also time this checkout's proxy")
    args = ap.parse_args(argv)
    args.scale = args.scale or (20_000 if args.quick else 200_000)
    args.objects = args.objects or (2000 if args.quick else 10_000)
    args.cold = args.cold or (1000 if args.quick else 3000)
    args.duration = args.duration or (3 if args.quick else 10)
    # what Bench and machine_info read
    args.store_latency_ms, args.relay, args.metadata_ttl = 0.0, False, "10m"
    args.concurrency_a, args.concurrency_b = args.concurrency, args.cold_concurrency
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("fastpath: wrk not found (apt-get install -y wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    info = machine_info(args)
    for k in ("store_latency_ms", "metadata_ttl", "concurrency_b"):
        info.pop(k, None)
    info["scale"] = args.scale
    info["cold_concurrency"] = args.cold_concurrency
    say(f"machine: {info}")
    started = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="slipstream-fastpath-"))
        stack.callback(shutil.rmtree, tmp, True)
        bench = FastBench(args, stack, tmp)
        try:
            if not args.only:
                bench.start_store()
                bench.seed_small()
            if args.only != "restart":
                bench.start_ceilings()
            if not args.only:
                bench.anonymous()
                bench.signed_rows()
            bench.scale()
        except KeyboardInterrupt:
            say("interrupted: stopping every process")
            raise
        finally:
            say("cleaning up")
        bench.phases["total"] = round(time.monotonic() - started, 1)
        ok = print_report(bench.rows, info, bench.checks, bench.phases, bench.proxy_log_problems)
        if args.json:
            result = {
                "valid": ok,
                "machine": info,
                "phases_s": bench.phases,
                "rows": [r.as_json() for r in bench.rows],
                "checks": bench.checks,
                "targets": verdicts(bench.rows, bench.checks),
                "proxy_log_problems": bench.proxy_log_problems,
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            say(f"results written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
