"""Training benchmark: does the GPU wait for data? Direct vs nginx vs Slipstream, one run.

    .venv/bin/python loadtest/training.py [--quick] [--json OUT] [--readers 32] ...

Needs Debian's nginx (``apt-get install nginx-light``; the slice module is in it). One run
starts everything itself in a temporary directory, on free loopback ports, and stops it all
at the end (exit status 1 when any read failed or returned the wrong size):

- the store: nginx serving a directory (``ROOT/BUCKET/KEY``). It answers S3 path-style GET
  and HEAD with Range, ETag and Last-Modified at a few µs of CPU each, so the store's own CPU
  does not hide the proxy's on this 2-core machine (SeaweedFS spends ~0.7 ms per GET; it and
  moto stay the stores of the correctness tests). Slipstream reaches it with its ``s3``
  backend: GetObject and HeadObject are plain signed HTTP requests (nginx ignores the
  signature), which is all the read path needs. nginx cannot list, so the warm job is a
  ``keys`` job (no listing) and training-aware prefetch posts keys anyway. Its access log
  counts the store requests of each epoch (one line per request that reached the store).
- the network: loadtest/netdelay.py in front of the store, a TCP relay that passes each
  request's bytes on 20 ms (``--latency-ms``) after they came, at ~0.1 ms of CPU a request:
  every row reaches the store through it. ``--network http`` uses tests/relay.py instead (an
  aiohttp proxy, as until 2026-11-30: ~0.5 ms of CPU a request, which capped every row near
  900 samples/s on 2 cores, direct included).
- rows, each from an empty cache: direct to the store (through the relay); nginx
  ``proxy_cache`` in front of the relay (slice 8m, proxy_cache_lock on); Slipstream without
  prefetch; Slipstream with a warm job of every key started at t=0 beside training
  (``POST /admin/v1/warm``); Slipstream with training-aware prefetch (``POST
  /admin/v1/prefetch`` with each epoch's shuffled order, posted as the epoch starts).
- workload "small": ``--readers`` readers (32) fetch a shuffled list of ``--objects``
  objects of 16 KiB (10,000; quick 2,500) per epoch, 2 epochs. A simulated GPU takes batches
  of 64 in order and spends ``--step-ms`` (20) on each; readers run at most ``--ahead``
  batches (4) ahead of it, as a DataLoader's prefetch does. The GPU keeps its own timeline
  (a step starts when the GPU is free and the batch's last sample has arrived), so a late
  wake-up of the client's event loop is neither GPU time nor stall. Stall = time the GPU
  waited for its next batch / epoch time; samples/s and MB/s are over the epoch's time (from
  its start to the end of the last GPU step).
- workload "half-cache": the same, with cache.max_size (Slipstream) and proxy_cache max_size
  (nginx) at half the dataset's bytes; it reports the hit ratio per epoch, counted as
  1 - store GETs / reads (without prefetch every store GET is a miss; with training-aware
  prefetch, the last row, it is the share of reads whose object no fetch had to bring).
- workload "shards": ``--shards`` objects (8 x 64 MiB; quick 4 x 32 MiB) read by
  ``--shard-readers`` readers (4), each shard in order in 8 MiB ranged GETs; the GPU spends
  ``--step-ms`` on each range as it arrives (at most ``--ahead`` ranges per reader waiting).
  Rows: direct, nginx, Slipstream (its sequential read-ahead is on by default).

The client is one session per row (keep-alive pool of ``--readers``), unsigned path-style
GETs (Slipstream on loopback serves anonymous reads), on uvloop: loadtest/leanget.py by default
(~0.05 ms of CPU a request), aiohttp's client with ``--client aiohttp`` (~0.25 ms; the client
until 2026-11-30). It shares the machine's cores with the store, the relay and the proxy: the
CPU each used per row is in the JSON (``cpu``).

Each Slipstream epoch's line (and its JSON) also gives Slipstream's own misses and, from its
metrics, the reads that waited on another worker's fill of the same chunk (count, mean wait, how
many waited over 100 ms) and its index write transactions (count, mean hold of LMDB's write
lock, how many held it over 100 ms, mean wait for it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests` and `loadtest` importable
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

from loadtest.bench import (  # noqa: E402
    BenchError,
    CpuSnap,
    CpuWatch,
    _machine_cpu,
    background,
    profiler,
    say,
    scrape,
    source_state,
    stop_profiler,
)
from loadtest.leanget import LeanError, LeanSession  # noqa: E402
from tests.proxyproc import ProxyProcess  # noqa: E402
from tests.servers import free_port, log_tail, wait_for_http  # noqa: E402

BUCKET = "train"
SMALL_SIZE = 16 * 1024
RANGE_SIZE = 8 * 1024**2
MB = 1_000_000
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
TOKEN_ENV = "BENCH_ADMIN_TOKEN"  # not SLIPSTREAM_*: those override config fields
STORE_KEY_ENV = ("BENCH_STORE_ACCESS_KEY", "BENCH_STORE_SECRET_KEY")
ROWS = ("direct", "nginx", "plain", "warm", "prefetch")  # --rows
PREFETCH_ROW = "Slipstream + training-aware prefetch"
SERVER_GROUPS = ("slipstream:", "nginx-cache:")  # CpuWatch labels of a row's caching server

# -- the store and nginx -------------------------------------------------------------------------


def nginx_conf(tmp: Path, http_body: str) -> str:
    # As root nginx's workers would run as nobody, who cannot read our private temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
{http_body}
}}
"""


def store_conf(tmp: Path, port: int, root: Path, log: Path) -> str:
    return nginx_conf(
        tmp,
        f"""    log_format store '$request_method $uri $status';
    server {{
        listen 127.0.0.1:{port};
        root {root};
        access_log {log} store;
        location / {{ }}
    }}""",
    )


def cache_conf(tmp: Path, port: int, relay_port: int, max_size: int) -> str:
    return nginx_conf(
        tmp,
        f"""    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bench:64m max_size={max_size}
                     inactive=1d use_temp_path=off;
    upstream relay {{ server 127.0.0.1:{relay_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            slice 8m;
            proxy_cache bench;
            proxy_cache_key $uri$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://relay;
        }}
    }}""",
    )


@contextmanager
def nginx(name: str, tmp: Path, conf: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "nginx.conf"
    path.write_text(conf)
    with background([NGINX, "-c", str(path), "-p", str(tmp)], tmp / "stdout.log") as proc:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", 15)
        except TimeoutError as exc:
            raise BenchError(f"{name} did not start: {log_tail(tmp / 'error.log')}") from exc
        yield proc


class StoreLog:
    """Counts the store's requests from its access log (lines appended since the last call)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def take(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return {}
        end = data.rfind(b"\n") + 1
        self.offset += end
        out: dict[str, int] = {}
        for line in data[:end].splitlines():
            method = line.split(b" ", 1)[0].decode(errors="replace")
            out[method] = out.get(method, 0) + 1
        return out


# -- the training loop ---------------------------------------------------------------------------


@dataclass
class Epoch:
    seconds: float
    samples: int
    bytes: int
    stall: float  # share of the epoch the GPU waited for data
    store_requests: int = 0
    store_gets: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_ms: float | None = None  # the cache's processes (Slipstream, nginx) per sample
    machine_busy: float = 0.0  # share of all the machine's cores busy through the epoch
    # Slipstream's own count of the epoch's GETs that waited for store bytes (its misses)
    proxy_misses: int | None = None
    # Slipstream's waits (proxy_waits): reads that waited on another worker's fill, their mean
    # wait, and its index write transactions' mean hold of LMDB's write lock and mean wait for it
    fill_waits: int | None = None
    fill_wait_ms: float | None = None
    fill_waits_long: int | None = None  # over LONG_WAIT
    index_transactions: int | None = None
    index_hold_ms: float | None = None
    index_holds_long: int | None = None
    index_lock_wait_ms: float | None = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / MB

    @property
    def hit_ratio(self) -> float:
        return max(0.0, 1 - self.store_gets / max(self.samples, 1))

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            samples_per_s=round(self.samples_per_s, 1),
            mb_per_s=round(self.mb_per_s, 1),
            stall=round(self.stall, 4),
            hit_ratio=round(self.hit_ratio, 4),
            seconds=round(self.seconds, 3),
        )
        return d


@dataclass
class Row:
    workload: str
    path: str
    epochs: list[Epoch]
    cpu: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "path": self.path,
            "epochs": [e.as_json() for e in self.epochs],
            "cpu_pct_of_one_core": self.cpu,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Item:
    key: str
    size: int
    start: int | None = None  # a ranged GET of [start, start + size)


class Getter(Protocol):
    """What the readers need of an HTTP client: a GET's status and body, or an exception."""

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]: ...


class AiohttpGetter:
    """aiohttp's client session (``--client aiohttp``)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.session.get(f"{self.base}{path}", headers=headers) as r:
            return r.status, await r.read()


async def fetch(client: Getter, item: Item, errors: dict[str, int]) -> int:
    headers = {}
    if item.start is not None:
        headers["Range"] = f"bytes={item.start}-{item.start + item.size - 1}"
    want = 200 if item.start is None else 206
    try:
        status, body = await client.get(f"/{BUCKET}/{item.key}", headers)
    except (aiohttp.ClientError, LeanError, OSError, TimeoutError) as exc:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        return 0
    if status != want:
        errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
    elif len(body) != item.size:
        errors["wrong body size"] = errors.get("wrong body size", 0) + 1
    return len(body)


class Gpu:
    """The simulated GPU's own timeline: a step starts once the GPU is free and its data has
    arrived, and takes ``step`` seconds whatever the client's event loop is doing (a real GPU
    runs beside the CPU; a late wake-up of ``asyncio.sleep`` on a busy machine must count
    neither as GPU time nor as stall)."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.started = self.free_at = time.perf_counter()
        self.waited = 0.0

    async def take(self, data_at: float) -> None:
        """Run a step on data that arrived at ``data_at``; returns when the step starts (the
        batch leaves the readers' queue then)."""
        start = max(self.free_at, data_at)
        self.waited += max(0.0, data_at - self.free_at)
        self.free_at = start + self.step
        delay = start - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)

    @property
    def seconds(self) -> float:
        return self.free_at - self.started


async def train_epoch(
    client: Getter,
    order: Sequence[Item],
    *,
    readers: int,
    batch: int,
    ahead: int,
    step: float,
) -> Epoch:
    """Readers fetch ``order`` (at most ``ahead`` batches past the GPU); the GPU takes each
    batch in order once all of it has arrived and spends ``step`` seconds on it."""
    n = len(order)
    batches = math.ceil(n / batch)
    missing = [min(batch, n - b * batch) for b in range(batches)]
    ready = [asyncio.Event() for _ in range(batches)]
    ready_at = [0.0] * batches
    slots = asyncio.Semaphore(ahead * batch)
    errors: dict[str, int] = {}
    got = 0
    next_pos = 0

    async def reader() -> None:
        nonlocal got, next_pos
        while True:
            await slots.acquire()
            pos = next_pos
            if pos >= n:
                slots.release()
                return
            next_pos += 1
            size = await fetch(client, order[pos], errors)
            got += size
            b = pos // batch
            missing[b] -= 1
            if missing[b] == 0:
                ready_at[b] = time.perf_counter()
                ready[b].set()

    gpu = Gpu(step)
    tasks = [asyncio.create_task(reader()) for _ in range(readers)]
    for b in range(batches):
        await ready[b].wait()
        await gpu.take(ready_at[b])
        for _ in range(min(batch, n - b * batch)):
            slots.release()
    await asyncio.gather(*tasks)
    stall = gpu.waited / gpu.seconds
    return Epoch(seconds=gpu.seconds, samples=n, bytes=got, stall=stall, errors=errors)


async def shard_epoch(
    client: Getter,
    shards: Sequence[tuple[str, int]],
    *,
    readers: int,
    ahead: int,
    step: float,
) -> Epoch:
    """Each reader takes the next shard and reads it in order in RANGE_SIZE pieces (at most
    ``ahead`` pieces fetched and not yet consumed per reader); the GPU spends ``step`` on
    each piece in the order they arrive."""
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    slots = asyncio.Semaphore(ahead * readers)
    todo = list(shards)
    errors: dict[str, int] = {}
    pieces = sum(math.ceil(size / RANGE_SIZE) for _, size in shards)

    async def reader() -> None:
        while todo:
            key, size = todo.pop(0)
            for start in range(0, size, RANGE_SIZE):
                await slots.acquire()
                item = Item(key, min(RANGE_SIZE, size - start), start)
                got = await fetch(client, item, errors)
                await queue.put((got, time.perf_counter()))

    gpu = Gpu(step)
    tasks = [asyncio.create_task(reader()) for _ in range(readers)]
    got = 0
    for _ in range(pieces):
        size, at = await queue.get()
        got += size
        await gpu.take(at)
        slots.release()
    await asyncio.gather(*tasks)
    stall = gpu.waited / gpu.seconds
    return Epoch(seconds=gpu.seconds, samples=pieces, bytes=got, stall=stall, errors=errors)


# -- admin calls ---------------------------------------------------------------------------------


async def admin_post(admin: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{admin}{path}", json=body, headers=headers) as r:
            text = await r.text()
            if r.status >= 300:
                raise BenchError(f"POST {path}: HTTP {r.status}: {text[:300]}")
            result: dict[str, Any] = json.loads(text)
            return result


def proxy_misses(admin: str) -> float:
    """Slipstream's count of GETs of the bucket that waited for store bytes, so far."""
    series = scrape(admin).get("slipstream_bucket_requests_total", {})
    return sum(v for labels, v in series.items() if ("result", "miss") in labels)


LONG_WAIT = 0.1  # a bucket bound of proxy.metrics._LATENCY_BUCKETS
WAITS = (
    "slipstream_fill_wait_seconds",
    "slipstream_index_transaction_seconds",
    "slipstream_index_lock_wait_seconds",
)


def proxy_waits(admin: str) -> dict[str, tuple[float, float, float]]:
    """(count, sum, count over LONG_WAIT) of each histogram in WAITS, so far (see
    Epoch.fill_waits)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    got = {name: [0.0, 0.0, 0.0] for name in WAITS}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            name, _, part = sample.name.rpartition("_")
            if name not in got:
                continue
            if part == "count":
                got[name][0] += sample.value
                got[name][2] += sample.value
            elif part == "sum":
                got[name][1] += sample.value
            elif part == "bucket" and float(sample.labels["le"]) == LONG_WAIT:
                got[name][2] -= sample.value
    return {name: (count, total, over) for name, (count, total, over) in got.items()}


def note_waits(
    e: Epoch, a: dict[str, tuple[float, float, float]], b: dict[str, tuple[float, float, float]]
) -> None:
    """The epoch's part of proxy_waits: ``b`` at its end less ``a`` at its start."""

    def delta(name: str) -> tuple[int, float | None, int]:
        count, total, over = (b[name][i] - a[name][i] for i in range(3))
        return int(count), (round(1000 * total / count, 2) if count else None), int(over)

    e.fill_waits, e.fill_wait_ms, e.fill_waits_long = delta(WAITS[0])
    e.index_transactions, e.index_hold_ms, e.index_holds_long = delta(WAITS[1])
    _, e.index_lock_wait_ms, _ = delta(WAITS[2])


def _waits_said(e: Epoch) -> str:
    if e.index_transactions is None:
        return ""
    long = f"{1000 * LONG_WAIT:.0f} ms"
    return (
        f" waits on other workers' fills {e.fill_waits}"
        + (f" (mean {e.fill_wait_ms} ms, {e.fill_waits_long} over {long})" if e.fill_waits else "")
        + f"; index transactions {e.index_transactions}"
        + (
            f" (mean hold {e.index_hold_ms} ms, {e.index_holds_long} over {long};"
            f" lock wait {e.index_lock_wait_ms} ms)"
            if e.index_transactions
            else ""
        )
    )


async def admin_get(admin: str, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{admin}{path}") as r:
        result: dict[str, Any] = await r.json()
        return result


# -- the benchmark -------------------------------------------------------------------------------

EpochHook = Callable[[int, list[Item]], Awaitable[None]]


class Bench:
    def __init__(self, args: argparse.Namespace, stack: ExitStack, tmp: Path) -> None:
        self.args = args
        self.stack = stack
        self.tmp = tmp
        self.data = tmp / "data"
        self.rows: list[Row] = []
        self.cpu = CpuWatch()
        self.small = [
            Item(f"small/{i // 1000:03d}/obj-{i:06d}.bin", SMALL_SIZE) for i in range(args.objects)
        ]
        self.shards = [
            (f"shards/shard-{i:03d}.bin", args.shard_mib * 1024**2) for i in range(args.shards)
        ]
        self.rng = random.Random(args.seed)

    # data, store and relay

    def seed(self) -> None:
        started = time.monotonic()
        root = self.data / BUCKET
        for item in self.small:
            p = root / item.key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(item.size))
        block = os.urandom(1024**2)
        for key, size in self.shards:
            p = root / key
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                for n in range(size // 1024**2):
                    f.write(n.to_bytes(8, "big") + block[8:])
        say(f"dataset written in {time.monotonic() - started:.1f}s under {self.data}")

    def start_store(self) -> None:
        port = free_port()
        log = self.tmp / "store" / "access.log"
        conf = store_conf(self.tmp / "store", port, self.data, log)
        store = self.stack.enter_context(nginx("store nginx", self.tmp / "store", conf, port))
        self.store_log = StoreLog(log)
        self.cpu.groups["store"] = store.pid
        relay_port = free_port()
        if self.args.network == "http":  # tests/relay.py: an aiohttp server and client
            code = "import sys, uvloop; uvloop.install(); from tests.relay import main; "
            code += "main(sys.argv[1:])"
            target = f"http://127.0.0.1:{port}"
        else:  # loadtest/netdelay.py: bytes delayed, no HTTP parsed
            code = "import sys; from loadtest.netdelay import main; main(sys.argv[1:])"
            target = f"127.0.0.1:{port}"
        cmd = [sys.executable, "-c", code, "--listen", f"127.0.0.1:{relay_port}"]
        cmd += ["--target", target, "--latency-ms", str(self.args.latency_ms)]
        env_py = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        os.environ["PYTHONPATH"] = env_py
        proc = self.stack.enter_context(background(cmd, self.tmp / "relay.log"))
        self.cpu.groups["relay"] = proc.pid
        self.relay = f"http://127.0.0.1:{relay_port}"
        self.relay_port = relay_port
        wait_for_http(f"{self.relay}/{BUCKET}/{self.small[0].key}", 15, status=200)
        self.store_log.take()
        say(f"store nginx :{port}, relay {self.relay} (+{self.args.latency_ms} ms per request)")

    # one row

    def run_row(
        self,
        workload: str,
        path: str,
        base: str,
        on_epoch: EpochHook | None = None,
        after_epoch: Callable[[Epoch], Awaitable[None]] | None = None,
    ) -> Row:
        args = self.args
        epochs: list[Epoch] = []
        a = self.cpu.snap()

        async def run() -> None:
            async with AsyncExitStack() as clients:
                client: Getter
                if args.client == "lean":
                    client = LeanSession(base, args.readers)
                    clients.push_async_callback(client.close)
                else:
                    connector = aiohttp.TCPConnector(limit=args.readers, ttl_dns_cache=None)
                    session = await clients.enter_async_context(
                        aiohttp.ClientSession(
                            connector=connector,
                            timeout=aiohttp.ClientTimeout(total=600),
                            auto_decompress=False,
                        )
                    )
                    client = AiohttpGetter(session, base)
                for n in range(args.epochs):
                    self.store_log.take()
                    before = self.cpu.snap()  # the hook's work (posting an order) counts too
                    if workload == "shards":
                        if on_epoch is not None:
                            await on_epoch(n, [])
                        e = await shard_epoch(
                            client,
                            self.shards,
                            readers=args.shard_readers,
                            ahead=args.ahead,
                            step=args.step_ms / 1000,
                        )
                    else:
                        order = list(self.small)
                        self.rng.shuffle(order)
                        if on_epoch is not None:
                            await on_epoch(n, order)
                        e = await train_epoch(
                            client,
                            order,
                            readers=args.readers,
                            batch=args.batch,
                            ahead=args.ahead,
                            step=args.step_ms / 1000,
                        )
                    e.server_cpu_ms, e.machine_busy = _epoch_cpu(before, self.cpu.snap(), e.samples)
                    counts = self.store_log.take()
                    e.store_requests = sum(counts.values())
                    e.store_gets = counts.get("GET", 0)
                    if after_epoch is not None:
                        await after_epoch(e)
                    epochs.append(e)
                    say(
                        f"  {workload:10} {path:36} epoch {n + 1}: "
                        f"{e.samples_per_s:7.0f}/s "
                        f"{e.mb_per_s:7.1f} MB/s stall {100 * e.stall:5.1f}% "
                        f"store requests {e.store_requests}"
                        + (f" misses {e.proxy_misses}" if e.proxy_misses is not None else "")
                        + _waits_said(e)
                        + (f" ERRORS {e.errors}" if e.errors else "")
                    )

        import uvloop

        uvloop.run(run())
        b = self.cpu.snap()
        row = Row(workload, path, epochs, cpu=CpuWatch.report(a, b, "python"))
        self.rows.append(row)
        return row

    # the paths

    def direct(self, workload: str) -> None:
        self.run_row(workload, "direct to the store", self.relay)

    def nginx_cache(self, workload: str, max_size: int) -> None:
        port = free_port()
        tmp = Path(tempfile.mkdtemp(prefix="nginx-cache-", dir=self.args.cache_root or self.tmp))
        conf = cache_conf(tmp, port, self.relay_port, max_size)
        with nginx("nginx proxy_cache", tmp, conf, port) as proc:
            self.cpu.groups["nginx-cache"] = proc.pid
            self.store_log.take()
            self.run_row(workload, "nginx proxy_cache", f"http://127.0.0.1:{port}")
        self.cpu.groups.pop("nginx-cache", None)
        shutil.rmtree(tmp, ignore_errors=True)

    def slipstream(self, workload: str, path: str, max_size: int, mode: str = "") -> None:
        """The row from this checkout; with --against, alternately from both, --pairs times."""
        against = self.args.against
        for _ in range(self.args.pairs):
            self.slipstream_row(workload, path, max_size, mode)
            if against is not None:
                self.slipstream_row(workload, f"{path} [against]", max_size, mode, against)

    def slipstream_row(
        self, workload: str, path: str, max_size: int, mode: str = "", source: Path | None = None
    ) -> Row:
        args = self.args
        tmp = Path(tempfile.mkdtemp(prefix="slipstream-", dir=self.tmp))
        cache_dir = Path(tempfile.mkdtemp(prefix="slipstream-cache-", dir=args.cache_root or tmp))
        config = {
            "workers": args.workers,
            "admin": {"token_env": TOKEN_ENV},
            "cache": {
                "dir": str(cache_dir),
                "max_size": max_size,
                "metadata_ttl": "10m",
                **({"max_fills": args.max_fills} if args.max_fills else {}),
            },
            "backends": {
                "store": {
                    "type": "s3",
                    "endpoint": self.relay,
                    "region": "us-east-1",
                    "access_key_env": STORE_KEY_ENV[0],
                    "secret_key_env": STORE_KEY_ENV[1],
                }
            },
            "buckets": {BUCKET: {"backend": "store"}},
            "log": {"level": "warning", "access_log": False},
        }
        proxy = ProxyProcess(config, tmp, source=source)
        proxy.start()
        self.cpu.groups["slipstream"] = proxy.pid
        spy = None
        if args.profile:
            side = "-against" if source is not None else ""
            spy = profiler(proxy.pid, f"{args.profile}-{mode or 'plain'}{side}.txt")
        jobs: list[str] = []

        async def on_epoch(n: int, order: list[Item]) -> None:
            if n == 1 and spy is not None:  # the profile is of epoch 1 (and the start)
                stop_profiler(spy)
            admin = proxy.admin_url
            if mode == "warm" and n == 0:
                keys = (
                    [i.key for i in self.small]
                    if workload != "shards"
                    else [k for k, _ in self.shards]
                )
                job = await admin_post(
                    admin,
                    "/admin/v1/warm",
                    {"bucket": BUCKET, "keys": keys, "concurrency": args.warm_concurrency},
                )
                jobs.append(f"/admin/v1/jobs/{job['id']}")
            elif mode == "prefetch":
                body: dict[str, Any] = {"bucket": BUCKET, "keys": [i.key for i in order]}
                if args.window:
                    body["window"] = args.window
                if args.prefetch_concurrency:
                    body["concurrency"] = args.prefetch_concurrency
                job = await admin_post(admin, "/admin/v1/prefetch", body)
                jobs.append(f"/admin/v1/prefetch/{job['id']}")

        try:
            self.store_log.take()
            misses = [proxy_misses(proxy.admin_url)]
            waits = [proxy_waits(proxy.admin_url)]

            async def after_epoch(e: Epoch) -> None:
                misses.append(await asyncio.to_thread(proxy_misses, proxy.admin_url))
                e.proxy_misses = int(misses[-1] - misses[-2])
                waits.append(await asyncio.to_thread(proxy_waits, proxy.admin_url))
                note_waits(e, waits[-2], waits[-1])

            row = self.run_row(
                workload, path, proxy.url, on_epoch if mode or spy else None, after_epoch
            )

            async def states() -> list[dict[str, Any]]:
                return [await admin_get(proxy.admin_url, j) for j in jobs]

            for state in asyncio.run(states()):
                brief = {k: v for k, v in state.items() if not isinstance(v, list | dict)}
                row.notes.append(json.dumps(brief))
            problems = [
                ln for ln in proxy.log(200_000).splitlines() if "ERROR" in ln or "Traceback" in ln
            ]
            if problems:
                row.notes.append(
                    f"proxy log: {len(problems)} ERROR/Traceback lines: {problems[:3]}"
                )
        finally:
            if spy is not None:
                stop_profiler(spy)
            proxy.stop()
            self.cpu.groups.pop("slipstream", None)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(cache_dir, ignore_errors=True)
        return row

    def all_rows(self) -> None:
        args = self.args
        full = 4 * (args.objects * SMALL_SIZE + args.shards * args.shard_mib * 1024**2)
        half = args.objects * SMALL_SIZE // 2
        slip = self.slipstream
        plan: dict[str, tuple[str, list[tuple[str, Callable[[], object]]]]] = {
            "small": (
                "workload small",
                [
                    ("direct", partial(self.direct, "small")),
                    ("nginx", partial(self.nginx_cache, "small", full)),
                    ("plain", partial(slip, "small", "Slipstream, no prefetch", full)),
                    ("warm", partial(slip, "small", "Slipstream + warm job at t=0", full, "warm")),
                    ("prefetch", partial(slip, "small", PREFETCH_ROW, full, "prefetch")),
                ],
            ),
            "half": (
                f"workload half-cache (cache {half / MB:.1f} MB, half the dataset)",
                [
                    ("nginx", partial(self.nginx_cache, "half-cache", half)),
                    ("plain", partial(slip, "half-cache", "Slipstream, no prefetch", half)),
                    ("prefetch", partial(slip, "half-cache", PREFETCH_ROW, half, "prefetch")),
                ],
            ),
            "shards": (
                "workload shards",
                [
                    ("direct", partial(self.direct, "shards")),
                    ("nginx", partial(self.nginx_cache, "shards", full)),
                    ("plain", partial(slip, "shards", "Slipstream (read-ahead)", full)),
                ],
            ),
        }
        for workload, (title, rows) in plan.items():
            if workload in args.workloads:
                say(title)
                for name, run in rows:
                    if name in args.rows:
                        run()


# -- report --------------------------------------------------------------------------------------


def _epoch_cpu(a: CpuSnap, b: CpuSnap, samples: int) -> tuple[float | None, float]:
    """(CPU ms per sample of the caching server's processes, None where the row has none;
    the share of the machine's cores busy) between two snapshots."""
    server = [
        cpu - a.procs.get(pid, (label, 0.0))[1]
        for pid, (label, cpu) in b.procs.items()
        if label.startswith(SERVER_GROUPS)
    ]
    wall = max(b.wall - a.wall, 1e-9)
    busy = (b.machine[0] - a.machine[0]) / wall / (os.cpu_count() or 1)
    return (1000 * sum(server) / max(samples, 1) if server else None), busy


def _row(rows: Sequence[Row], workload: str, prefix: str) -> Row | None:
    return next((r for r in rows if r.workload == workload and r.path.startswith(prefix)), None)


def targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, ok: bool | None, want: str) -> None:
        out.append({"target": name, "value": value, "want": want, "pass": ok})

    pre = _row(rows, "small", PREFETCH_ROW)
    direct = _row(rows, "small", "direct")
    ngx = _row(rows, "small", "nginx")
    if pre and pre.epochs:
        s = pre.epochs[0].stall
        check("prefetch: epoch 1 GPU stall", round(100 * s, 1), s < 0.20, "< 20%")
        if direct and direct.epochs:
            x = pre.epochs[0].samples_per_s / direct.epochs[0].samples_per_s
            check("prefetch: epoch 1 samples/s vs direct", round(x, 2), x >= 2.0, ">= 2x")
        if ngx and len(ngx.epochs) > 1 and len(pre.epochs) > 1:
            a, b = pre.epochs[1].stall, ngx.epochs[1].stall
            ok = a <= b + 0.005  # within half a point of nginx's
            check(
                "prefetch: epoch 2 stall vs nginx",
                round(100 * a, 1),
                ok,
                f"<= nginx {100 * b:.1f}%",
            )
    half = _row(rows, "half-cache", "Slipstream, no prefetch")
    if half and len(half.epochs) > 1:
        h = half.epochs[1].hit_ratio
        check("half cache: epoch 2 hit ratio", round(100 * h, 1), h >= 0.40, "near 50% (>= 40%)")
    return out


def markdown(rows: Sequence[Row], info: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    p = lines.append
    p(
        f"Training benchmark ({info['objects']:,} x 16 KiB, {info['readers']} readers, batch "
        f"{info['batch']}, {info['step_ms']:g} ms GPU step, store +{info['latency_ms']:g} ms per "
        f"request; {info['nproc']} cores, Slipstream {info['slipstream_source']}, "
        f"{info['workers']} worker(s), {info['client']} client)"
    )
    p("")
    for workload, title in (
        ("small", "small objects"),
        ("half-cache", "half cache"),
        ("shards", "shards"),
    ):
        sel = [r for r in rows if r.workload == workload]
        if not sel:
            continue
        unit = "ranges" if workload == "shards" else "samples"
        p(
            f"**{title}**"
            + (
                f" ({info['shards']} x {info['shard_mib']} MiB in 8 MiB ranges, "
                f"{info['shard_readers']} readers)"
                if workload == "shards"
                else ""
            )
        )
        p("")
        head = (
            f"| path | epoch 1 {unit}/s | epoch 1 MB/s | epoch 1 GPU stall | epoch 1 store requests"
            f" | epoch 1 server CPU ms/{unit[:-1]} | epoch 1 machine busy"
            f" | epoch 2 {unit}/s | epoch 2 stall | epoch 2 store requests | others' CPU |"
        )
        if workload == "half-cache":
            head += " epoch 1 hit ratio | epoch 2 hit ratio |"
        p(head)
        p("| --- |" + " ---: |" * (head.count("|") - 2))
        for r in sel:
            cells = [r.path]
            e1 = r.epochs[0] if r.epochs else None
            e2 = r.epochs[1] if len(r.epochs) > 1 else None
            if e1:
                cells += [
                    f"{e1.samples_per_s:,.0f}",
                    f"{e1.mb_per_s:,.1f}",
                    f"{100 * e1.stall:.1f}%",
                    f"{e1.store_requests:,}",
                    "-" if e1.server_cpu_ms is None else f"{e1.server_cpu_ms:.2f}",
                    f"{100 * e1.machine_busy:.0f}%",
                ]
            else:
                cells += ["-"] * 6
            if e2:
                cells += [
                    f"{e2.samples_per_s:,.0f}",
                    f"{100 * e2.stall:.1f}%",
                    f"{e2.store_requests:,}",
                ]
            else:
                cells += ["-"] * 3
            others = r.cpu.get("other tenants", 0) + r.cpu.get("others, short-lived", 0)
            cells.append(f"{others:.0f}%")
            if workload == "half-cache":
                cells += [f"{100 * e.hit_ratio:.0f}%" for e in r.epochs[:2]]
            p("| " + " | ".join(cells) + " |")
        p("")
    p(
        f"Server CPU: the caching server's processes (all of Slipstream's, nginx's) per "
        f"sample of the epoch; machine busy: the share of all cores busy (the client, "
        f"relay and store included). "
        f"others' CPU: what processes outside this benchmark used meanwhile (% of one core, "
        f"short-lived ones included; "
        f"load average {info['loadavg']} at start). Half cache: nginx enforces max_size from "
        f"its cache manager, which wakes every 10 s, so short epochs overshoot it."
    )
    p("")
    if checks:
        p("| target | measured | want | |")
        p("| --- | ---: | --- | --- |")
        for c in checks:
            p(f"| {c['target']} | {c['value']} | {c['want']} | {'PASS' if c['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "",
    )
    busy0 = _machine_cpu()
    time.sleep(1.0)
    busy1 = _machine_cpu()
    nginx_version = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": nginx_version,
        "busy_before_start_pct": round(
            100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1e-9), 1
        ),
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
        "slipstream_source": source_state(),
        **{k: _plain(v) for k, v in vars(args).items() if k != "json"},
    }


def _plain(value: Any) -> Any:
    """An option's value as JSON holds it (a set of rows as a sorted list, a path as text)."""
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="2,500 objects and 4 x 32 MiB shards (~3-4 min)"
    )
    ap.add_argument("--objects", type=int, help="small objects of 16 KiB (10000; quick 2500)")
    ap.add_argument("--readers", type=int, default=32, help="concurrent readers (32)")
    ap.add_argument("--batch", type=int, default=64, help="samples per GPU step (64)")
    ap.add_argument("--step-ms", type=float, default=20.0, help="simulated GPU step (20 ms)")
    ap.add_argument("--ahead", type=int, default=4, help="batches the readers may run ahead (4)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="relay delay per request (20)")
    ap.add_argument(
        "--network",
        choices=("tcp", "http"),
        default="tcp",
        help="the relay that adds the latency: tcp (loadtest/netdelay.py, bytes delayed, ~0.1"
        " ms of CPU a request) or http (tests/relay.py, an aiohttp proxy, ~0.5 ms of CPU a request,"
        " which the benchmark's 2 cores then lack)",
    )
    ap.add_argument(
        "--client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="the readers' HTTP client: lean (loadtest/leanget.py, a keep-alive GET client at"
        " a few tens of µs of CPU a request) or aiohttp's (~0.2 ms a request here, as until"
        " 2026-11-30: CPU a data loader spends on its own cores, which this machine's 2 cores"
        " then lack for the proxy)",
    )
    ap.add_argument("--workers", type=int, default=1, help="Slipstream worker processes (1)")
    ap.add_argument(
        "--window", type=int, help="prefetch window in keys (the server's default when not given)"
    )
    ap.add_argument(
        "--prefetch-concurrency",
        type=int,
        help="keys a prefetch job fetches at once (the server's default when not given)",
    )
    ap.add_argument(
        "--max-fills",
        type=int,
        help="Slipstream's cache.max_fills (store fetches per worker; the server's default when"
        " not given)",
    )
    ap.add_argument("--warm-concurrency", type=int, default=16, help="warm job concurrency (16)")
    ap.add_argument("--shards", type=int, help="large objects (8; quick 4)")
    ap.add_argument("--shard-mib", type=int, help="MiB per shard (64; quick 32)")
    ap.add_argument("--shard-readers", type=int, default=4, help="shard readers (4)")
    ap.add_argument(
        "--workloads",
        default="small,half,shards",
        help="comma-separated subset of small,half,shards (all)",
    )
    ap.add_argument(
        "--cache-root",
        type=Path,
        help="where Slipstream's and nginx's caches go (default: the run's temp dir under\n"
        "$TMPDIR; /dev/shm takes the disk's fsync latency out of the figures)",
    )
    ap.add_argument(
        "--rows",
        default=",".join(ROWS),
        help="comma-separated subset of " + ",".join(ROWS) + " (all; a target whose rows"
        " did not run is not judged)",
    )
    ap.add_argument(
        "--against",
        type=Path,
        help="another checkout (e.g. a clone of main): each Slipstream row also runs from it,"
        " right after this checkout's, marked [against]",
    )
    ap.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="run each Slipstream row this many times (with --against: pairs) (1)",
    )
    ap.add_argument(
        "--profile",
        help="py-spy each Slipstream row's epoch 1 (all its processes, --gil) into"
        " PROFILE-<plain|warm|prefetch>[-against].txt: collapsed stacks with sample counts",
    )
    ap.add_argument("--seed", type=int, default=9, help="shuffle seed")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    args.rows = {r.strip() for r in args.rows.split(",") if r.strip()}
    if args.against is not None:
        args.against = args.against.resolve()
        if not (args.against / "proxy" / "__main__.py").is_file():
            ap.error(f"--against: {args.against} is not a Slipstream checkout")
    if args.rows - set(ROWS):
        ap.error(f"--rows: unknown {sorted(args.rows - set(ROWS))}; known: {', '.join(ROWS)}")
    args.objects = args.objects or (2500 if args.quick else 10_000)
    args.shards = args.shards or (4 if args.quick else 8)
    args.shard_mib = args.shard_mib or (32 if args.quick else 64)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = set(args.workloads) - {"small", "half", "shards"}
    if bad:
        ap.error(f"--workloads: unknown {sorted(bad)}")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.access(NGINX, os.X_OK):
        print(f"training: {NGINX} not found (apt-get install nginx-light)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    os.environ.setdefault(TOKEN_ENV, os.urandom(16).hex())
    os.environ.setdefault(STORE_KEY_ENV[0], "bench")  # nginx ignores the signature
    os.environ.setdefault(STORE_KEY_ENV[1], "bench-secret")
    info = machine_info(args)
    say(
        f"machine: {info['nproc']} cores, {info['cpu']}, load {info['loadavg']}, "
        f"Slipstream {info['slipstream_source']}"
    )
    started = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="slipstream-training-"))
        stack.callback(shutil.rmtree, tmp, True)
        bench = Bench(args, stack, tmp)
        try:
            bench.seed()
            bench.start_store()
            bench.all_rows()
        except KeyboardInterrupt:
            say("interrupted: stopping every process")
            raise
        finally:
            say("cleaning up")
    info["total_s"] = round(time.monotonic() - started, 1)
    checks = targets(bench.rows)
    errors = sum(sum(e.errors.values()) for r in bench.rows for e in r.epochs)
    print(markdown(bench.rows, info, checks))
    if errors:
        print(f"\nINVALID: {errors} reads failed or returned the wrong size (see the log above)")
    if args.json:
        result = {
            "valid": not errors,
            "machine": info,
            "rows": [r.as_json() for r in bench.rows],
            "targets": checks,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        say(f"results written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
