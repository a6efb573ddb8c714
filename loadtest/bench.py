"""End-to-end throughput benchmark: SeaweedFS direct vs Slipstream cold/warm vs a ceiling.

    .venv/bin/python loadtest/bench.py [--quick] [--workers N] [--store-latency-ms MS]
                                       [--json out.json]

One run starts everything itself in a temporary directory and removes it at the end:
SeaweedFS (``weed server``, SigV4) as the store, optionally a CountingRelay subprocess in
front of it that adds latency per request (``--store-latency-ms``, to emulate a remote
store), Slipstream as ``python -m proxy serve`` with ``workers: N`` and a backend of type
``s3``, and the ceiling servers of ``loadtest/baseline_server.py`` with N processes.

Workload A: many 16 KiB objects (10,000; --quick: 2,000) at concurrency 64.
Workload B: one 256 MiB object read in 8 MiB ranges at concurrency 4.

Rows: direct to the store, Slipstream cold (every key/range exactly once, through a Python
aiohttp client that checks every body), Slipstream warm, and the ceiling (aiohttp+uvloop
from memory for A, ``web.FileResponse`` from local disk for B). Workload A has two warm
rows: the first pass after the fills (hit counters still growing, so hits write the index)
and the next one (steady state; the ratios use it). Slipstream runs with
``cache.metadata_ttl: 10m`` so no warm row revalidates (``--metadata-ttl proxy`` keeps the
proxy's own 60 s; a warm row that reaches the store is flagged). Timed rows use wrk with
``loadtest/wrk_paths.lua`` (direct rows: presigned URLs). Every timed phase is preceded by
a sample check of status and body bytes; any error, non-2xx status, or wrong body size makes
the run INVALID (exit status 1).

CPU is accounted per process from /proc (100% = one core), with what the machine spent
outside the processes of this benchmark shown as "other" (noise from other tenants).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests` and `loadtest` importable
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from yarl import URL  # noqa: E402

from tests.proxyproc import ProxyProcess  # noqa: E402
from tests.servers import (  # noqa: E402
    S3Endpoint,
    SeaweedFS,
    die_with_parent,
    free_port,
    log_tail,
    make_s3_client,
    wait_for_http,
)

BUCKET = "bench"
SMALL_SIZE = 16 * 1024
BIG_SIZE = 256 * 1024**2
RANGE_SIZE = 8 * 1024**2
BIG_KEY = "big/blob-256MiB.bin"
LUA_SCRIPT = REPO_ROOT / "loadtest" / "wrk_paths.lua"
BASELINE = REPO_ROOT / "loadtest" / "baseline_server.py"
RELAY = REPO_ROOT / "tests" / "relay.py"
ACCESS_ENV = "BENCH_STORE_ACCESS_KEY"
SECRET_ENV = "BENCH_STORE_SECRET_KEY"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1_000_000


class BenchError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data ----------------------------------------------------------------------------------------


def small_key(i: int) -> str:
    return f"small/{i // 1000:03d}/obj-{i:06d}.bin"


class Data:
    """Deterministic object contents: every object and every MiB of the big one differ."""

    def __init__(self, big_path: Path) -> None:
        rnd = random.Random(20240607)
        self.small_base = rnd.randbytes(SMALL_SIZE)
        self.big_block = rnd.randbytes(1024**2)
        self.big_path = big_path

    def small(self, i: int) -> bytes:
        return f"{i:015d}\n".encode() + self.small_base[16:]

    def write_big(self) -> None:
        with open(self.big_path, "wb") as f:
            for n in range(BIG_SIZE // 1024**2):
                f.write(f"MiB{n:012d}\n".encode() + self.big_block[16:])

    def big_slice(self, start: int, length: int) -> bytes:
        with open(self.big_path, "rb") as f:
            return os.pread(f.fileno(), length, start)


def ranges() -> list[tuple[int, int]]:
    return [(s, s + RANGE_SIZE - 1) for s in range(0, BIG_SIZE, RANGE_SIZE)]


# -- processes and CPU accounting ----------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(process group, CPU seconds) of ``pid``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return int(rest[2]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def _machine_cpu() -> tuple[float, float, float, float]:
    """(busy, total, steal, irq+softirq) CPU seconds of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return (
        (total - idle) / CLK_TCK,
        total / CLK_TCK,
        fields[7] / CLK_TCK,
        (fields[5] + fields[6]) / CLK_TCK,
    )


def count_listeners(port: int) -> int:
    """TCP sockets listening on ``port`` (SO_REUSEPORT gives one per process)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def wait_listeners(port: int, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while count_listeners(port) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"only {count_listeners(port)} of {n} processes listen on {port}")
        time.sleep(0.05)


@dataclass
class CpuSnap:
    wall: float
    procs: dict[int, tuple[str, float]]  # our processes: pid -> (label, CPU seconds)
    others: dict[int, float]  # every other visible process: pid -> CPU seconds
    machine: tuple[float, float, float, float]
    self_cpu: float
    children_cpu: float


def _role(pid: int, leader: int) -> str:
    if pid == leader:
        return "main"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return "tracker" if b"resource_tracker" in cmdline else "w"


class CpuWatch:
    """CPU per process of named process groups; this process; reaped children (wrk); and
    every other visible process (other tenants of this machine)."""

    def __init__(self) -> None:
        self.groups: dict[str, int] = {}

    def snap(self) -> CpuSnap:
        procs: dict[int, tuple[str, float]] = {}
        others: dict[int, float] = {}
        by_pgid = {pgid: name for name, pgid in self.groups.items()}
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            st = _proc_stat(pid)
            if st is None:
                continue
            if st[0] in by_pgid:
                procs[pid] = (f"{by_pgid[st[0]]}:{_role(pid, st[0])}", st[1])
            else:
                others[pid] = st[1]
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return CpuSnap(
            wall=time.monotonic(),
            procs=procs,
            others=others,
            machine=_machine_cpu(),
            self_cpu=ru_self.ru_utime + ru_self.ru_stime,
            children_cpu=kids.ru_utime + kids.ru_stime,
        )

    @staticmethod
    def report(a: CpuSnap, b: CpuSnap, generator: str) -> dict[str, float]:
        """CPU in % of one core over the interval: our processes (>= 1%), the load generator,
        other tenants' processes, kernel irq/softirq (loopback networking), the machine."""
        wall = max(b.wall - a.wall, 1e-9)

        def pct(seconds: float) -> float:
            return round(100 * seconds / wall, 1)

        out: dict[str, float] = {}
        accounted = 0.0
        per_label: dict[str, list[tuple[int, float]]] = {}
        for pid, (label, cpu) in b.procs.items():
            used = cpu - a.procs.get(pid, (label, 0.0))[1]
            per_label.setdefault(label, []).append((pid, used))
        for label, items in sorted(per_label.items()):
            items.sort()
            for n, (_, used) in enumerate(items):
                accounted += used
                if used / wall >= 0.01:
                    out[f"{label}{n}" if label.endswith(":w") else label] = pct(used)
        gen = (b.children_cpu - a.children_cpu) if generator == "wrk" else 0.0
        mine = b.self_cpu - a.self_cpu
        accounted += gen + mine
        if gen:
            out["wrk"] = pct(gen)
        out["bench.py" if generator == "wrk" else "bench.py(client)"] = pct(mine)
        others = sum(cpu - a.others.get(pid, 0.0) for pid, cpu in b.others.items())
        irq = b.machine[3] - a.machine[3]
        busy = b.machine[0] - a.machine[0]
        out["other tenants"] = pct(others)
        out["irq+softirq"] = pct(irq)
        out["others, short-lived"] = pct(max(0.0, busy - accounted - others - irq))
        out["machine busy"] = pct(busy)
        steal = b.machine[2] - a.machine[2]
        if steal > 0:
            out["steal"] = pct(steal)
        return out


def profiler(pid: int, out: str) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of process ``pid`` and its children into ``out`` (a flame graph, or
    collapsed stacks with sample counts when it ends in .txt); SIGINT it to write the file."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        say("  py-spy not found: no profile")
        return None
    fmt = ["--format", "raw"] if out.endswith(".txt") else []  # collapsed stacks
    # --gil: only samples holding the GIL. py-spy's idle detection misses the pool and LMDB
    # writer threads' blocking waits (they show up as a third of the "CPU" otherwise).
    cmd = [py_spy, "record", "--gil", "--subprocesses", "-r", "200", *fmt, "-o", out]
    cmd += ["--pid", str(pid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.5)  # py-spy attaches
    return proc


def stop_profiler(spy: subprocess.Popen[bytes]) -> None:
    """Stop a ``profiler`` and wait for it to write its file (once: later calls return)."""
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (its own session), then SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def background(cmd: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    try:
        yield proc
    finally:
        stop_group(proc)


# -- load generators -----------------------------------------------------------------------------


@dataclass
class Load:
    generator: str
    requests: int
    seconds: float
    body_bytes: int
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]


@dataclass(frozen=True)
class Req:
    url: str
    headers: Mapping[str, str]
    status: int
    size: int
    expected: Callable[[], bytes] | None = None  # None: check the size only


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def _py_load(reqs: Sequence[Req], concurrency: int) -> Load:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    body_bytes = 0
    pending = iter(reqs)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def worker() -> None:
            nonlocal body_bytes
            for req in pending:
                started = time.perf_counter()
                try:
                    async with session.get(URL(req.url, encoded=True), headers=req.headers) as r:
                        body = await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[f"client {type(exc).__name__}"] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                body_bytes += len(body)
                if status != req.status:
                    errors[f"HTTP {status}"] += 1
                elif len(body) != req.size:
                    errors[f"body size {len(body)} != {req.size}"] += 1
                elif req.expected is not None and body != req.expected():
                    errors["body bytes differ"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    latencies.sort()
    return Load(
        generator="python-aiohttp",
        requests=len(reqs),
        seconds=seconds,
        body_bytes=body_bytes,
        p50_ms=1000 * _percentile(latencies, 50),
        p99_ms=1000 * _percentile(latencies, 99),
        errors=dict(errors),
    )


def py_load(reqs: Sequence[Req], concurrency: int) -> Load:
    import uvloop

    return uvloop.run(_py_load(reqs, concurrency))


def verify(what: str, reqs: Sequence[Req]) -> dict[str, int]:
    """Check status and body of a sample; returns the errors (empty when all is right)."""
    load = py_load(reqs, min(8, len(reqs)))
    if load.errors:
        say(f"  verify {what}: ERRORS {load.errors}")
    else:
        say(f"  verify {what}: {len(reqs)} sample requests OK (status and body)")
    return {f"verify: {k}": v for k, v in load.errors.items()}


def run_wrk(
    url: str,
    paths: Path,
    *,
    connections: int,
    threads: int,
    duration: int,
    payload: int,
    timeout: int = 60,
    method: str = "GET",
) -> Load:
    """wrk over the targets in ``paths`` (see wrk_paths.lua); ``payload``: body bytes per
    response (0 for HEAD)."""
    threads = max(1, min(threads, connections))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout}s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(paths),
        str(threads),
        method,
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent(),
    )
    try:
        out, _ = proc.communicate(timeout=duration + timeout + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode("utf-8", "replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{text}")
    res = json.loads(line[len("WRK_RESULT ") :])
    errors = {
        f"wrk {k}": int(res[k]) for k in ("connect", "read", "write", "timeout") if int(res[k])
    }
    if res["status"]:
        errors["wrk HTTP status >= 400"] = int(res["status"])
    n = int(res["requests"])
    if n:
        # wrk counts every byte read, also of responses still in flight at the end (at most
        # one per connection); a response head is well under 1 KiB.
        got, low = int(res["bytes"]), n * payload
        if not low <= got <= n * (payload + 1024) + connections * payload:
            errors[f"wrk read {got} B for {n} responses of {payload} B body"] = n
    else:
        errors["wrk completed no request"] = 1
    return Load(
        generator="wrk",
        requests=n,
        seconds=res["duration_us"] / 1e6,
        body_bytes=n * payload,  # payload bytes: the size check above guards this
        p50_ms=res["p50_us"] / 1000,
        p99_ms=res["p99_us"] / 1000,
        errors=errors,
    )


# -- proxy metrics -------------------------------------------------------------------------------


Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(admin_url: str) -> Metrics:
    import urllib.request

    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: Metrics = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("slipstream_") and s.name.endswith("_total"):
                labels = tuple(sorted(s.labels.items()))
                out.setdefault(s.name, {})[labels] = out.get(s.name, {}).get(labels, 0) + s.value
    return out


def scrape_settled(admin_url: str, timeout: float = 20.0) -> Metrics:
    """Scrape until two scrapes 1.1 s apart agree: workers fold their hottest counters into
    Prometheus about once a second, so a single scrape can lag the traffic."""
    deadline = time.monotonic() + timeout
    prev = scrape(admin_url)
    while True:
        time.sleep(1.1)
        cur = scrape(admin_url)
        if cur == prev or time.monotonic() > deadline:
            return cur
        prev = cur


def metric_delta(a: Metrics, b: Metrics) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, series in b.items():
        for labels, value in series.items():
            d = value - a.get(name, {}).get(labels, 0.0)
            if d:
                key = ",".join(f"{k}={v}" for k, v in labels) or "-"
                out.setdefault(name.removeprefix("slipstream_"), {})[key] = d
    return out


# -- rows ----------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    name: str
    generator: str
    requests: int
    seconds: float
    body_bytes: int
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    backend_per_request: float | None = None
    proxy_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    server: list[str] = field(default_factory=list)  # process groups that did the serving
    server_cpu_pct: float = 0.0  # their CPU, % of one core
    proxy_counted: int | None = None  # requests Slipstream counted over the row

    @property
    def req_per_cpu_s(self) -> float:
        """Requests per CPU-second of the serving processes: robust to CPU taken by others."""
        return self.req_s / (self.server_cpu_pct / 100) if self.server_cpu_pct else 0.0

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_s(self) -> float:
        return self.body_bytes / MB / self.seconds if self.seconds else 0.0

    @property
    def mb_per_cpu_s(self) -> float:
        return self.mb_s / (self.server_cpu_pct / 100) if self.server_cpu_pct else 0.0

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["req_s"] = round(self.req_s, 1)
        d["mb_s"] = round(self.mb_s, 1)
        d["req_per_cpu_s"] = round(self.req_per_cpu_s, 1)
        d["mb_per_cpu_s"] = round(self.mb_per_cpu_s, 1)
        return d


def make_row(
    workload: str,
    name: str,
    load: Load,
    cpu: dict[str, float],
    server: Sequence[str],
    extra_errors: Mapping[str, int],
    metrics: dict[str, dict[str, float]] | None = None,
) -> Row:
    errors = {**extra_errors, **load.errors}
    per: float | None = None
    served: int | None = None
    server_cpu = sum(v for k, v in cpu.items() if k.split(":")[0] in server)
    if metrics is not None:
        served = int(sum(metrics.get("requests_total", {}).values()))
        backend = sum(metrics.get("backend_requests_total", {}).values())
        per = backend / load.requests if load.requests else None
        for labels, n in metrics.get("requests_total", {}).items():
            status = dict(kv.split("=", 1) for kv in labels.split(",")).get("status", "")
            if status and not status.startswith("2"):
                errors[f"proxy answered {labels}"] = int(n)
        for name_ in ("slowdown_total", "backend_errors_total", "integrity_failures_total"):
            for labels, n in metrics.get(name_, {}).items():
                errors[f"proxy {name_} {labels}"] = int(n)
    return Row(
        workload=workload,
        name=name,
        generator=load.generator,
        requests=load.requests,
        seconds=load.seconds,
        body_bytes=load.body_bytes,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        errors=errors,
        backend_per_request=per,
        proxy_metrics=metrics or {},
        cpu=cpu,
        server=list(server),
        server_cpu_pct=round(server_cpu, 1),
        proxy_counted=served,
    )


# -- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, stack: ExitStack, tmp: Path) -> None:
        self.args = args
        self.stack = stack
        self.tmp = tmp
        self.cpu = CpuWatch()
        self.rows: list[Row] = []
        self.phases: dict[str, float] = {}
        self.data = Data(tmp / "big.bin")
        self.keys = [small_key(i) for i in range(args.objects)]
        self.wrk_threads = args.wrk_threads or min(2, os.cpu_count() or 1)
        self.proxy_log_problems: list[str] = []
        self.direct_name = "direct store"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        say(f"{name} ...")
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - started, 2)

    # -- setup -------------------------------------------------------------------------------

    def start_store(self) -> None:
        with self.phase("start SeaweedFS"):
            weed = SeaweedFS(workdir=self.tmp / "weed")
            self.stack.callback(weed.stop)
            weed.start()
            self.weed = weed
            pid = self._find_pid(f"-dir={weed.workdir / 'data'}")
            if pid is not None:
                self.cpu.groups["weed"] = pid
        self.store_url = weed.url
        if self.args.store_latency_ms > 0 or self.args.relay:
            with self.phase("start relay"):
                port = free_port()
                cmd = [
                    sys.executable,
                    str(RELAY),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--target",
                    weed.url,
                    "--latency-ms",
                    str(self.args.store_latency_ms),
                ]
                relay = self.stack.enter_context(background(cmd, self.tmp / "relay.log"))
                self.store_url = f"http://127.0.0.1:{port}"
                wait_for_http(self.store_url + "/", timeout=30)
                self.cpu.groups["relay"] = relay.pid
                self.direct_name = "direct store via relay"

    @staticmethod
    def _find_pid(needle: str) -> int | None:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if needle.encode() in cmdline:
                    return int(entry)
        return None

    def seed(self) -> None:
        with self.phase(f"seed {len(self.keys)} x 16 KiB + 256 MiB"):
            client = make_s3_client(self.weed.endpoint, max_pool_connections=32)
            client.create_bucket(Bucket=BUCKET)
            pool = ThreadPoolExecutor(16)
            try:
                futures = [
                    pool.submit(client.put_object, Bucket=BUCKET, Key=k, Body=self.data.small(i))
                    for i, k in enumerate(self.keys)
                ]
                for fut in futures:
                    fut.result()
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
            self.data.write_big()
            with open(self.data.big_path, "rb") as f:
                client.put_object(Bucket=BUCKET, Key=BIG_KEY, Body=f)
            head = client.head_object(Bucket=BUCKET, Key=BIG_KEY)
            if int(head["ContentLength"]) != BIG_SIZE:
                raise BenchError(f"big object has {head['ContentLength']} bytes")

    def write_paths(self) -> None:
        presigner = make_s3_client(
            S3Endpoint(self.store_url, self.weed.access_key, self.weed.secret_key)
        )

        def presign(key: str) -> str:
            url = presigner.generate_presigned_url(
                "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=6 * 3600
            )
            parts = urlsplit(url)
            return f"{parts.path}?{parts.query}"

        self.direct_a = [presign(k) for k in self.keys]
        self.direct_big = presign(BIG_KEY)
        rng = [f"bytes={a}-{b}" for a, b in ranges()]
        self.paths_a_direct = self.tmp / "a_direct.txt"
        self.paths_a_direct.write_text("".join(p + "\n" for p in self.direct_a))
        self.paths_a_proxy = self.tmp / "a_proxy.txt"
        self.paths_a_proxy.write_text("".join(f"/{BUCKET}/{k}\n" for k in self.keys))
        self.paths_b_direct = self.tmp / "b_direct.txt"
        self.paths_b_direct.write_text("".join(f"{self.direct_big}\t{r}\n" for r in rng))
        self.paths_b_proxy = self.tmp / "b_proxy.txt"
        self.paths_b_proxy.write_text("".join(f"/{BUCKET}/{BIG_KEY}\t{r}\n" for r in rng))

    # -- request lists -----------------------------------------------------------------------

    def reqs_a(self, base: str, paths: Sequence[str], *, content: bool = True) -> list[Req]:
        out = []
        for i, p in enumerate(paths):
            expected = (lambda i=i: self.data.small(i)) if content else None
            out.append(Req(base + p, {}, 200, SMALL_SIZE, expected))
        return out

    def reqs_b(self, base: str, path: str) -> list[Req]:
        data = self.data

        def expect(start: int, end: int) -> Callable[[], bytes]:
            return lambda: data.big_slice(start, end - start + 1)

        return [
            Req(base + path, {"Range": f"bytes={a}-{b}"}, 206, b - a + 1, expect(a, b))
            for a, b in ranges()
        ]

    def sample_a(self, reqs: Sequence[Req]) -> list[Req]:
        step = max(1, len(reqs) // 32)
        return list(reqs[::step])

    # -- timed rows --------------------------------------------------------------------------

    def wrk_row(
        self,
        workload: str,
        name: str,
        url: str,
        paths: Path,
        *,
        connections: int,
        payload: int,
        verify_errors: Mapping[str, int],
        server: Sequence[str],
        admin_url: str | None = None,
        method: str = "GET",
    ) -> Row:
        if self.args.warmup > 0:
            run_wrk(
                url,
                paths,
                connections=connections,
                threads=self.wrk_threads,
                duration=self.args.warmup,
                payload=payload,
                method=method,
            )
        m0 = scrape_settled(admin_url) if admin_url else None
        c0 = self.cpu.snap()
        load = run_wrk(
            url,
            paths,
            connections=connections,
            threads=self.wrk_threads,
            duration=self.args.duration,
            payload=payload,
            method=method,
        )
        c1 = self.cpu.snap()
        metrics = None
        if admin_url and m0 is not None:
            metrics = metric_delta(m0, scrape_settled(admin_url))
        cpu = CpuWatch.report(c0, c1, "wrk")
        row = make_row(workload, name, load, cpu, server, verify_errors, metrics)
        self._record(row)
        return row

    def py_row(
        self, workload: str, name: str, reqs: Sequence[Req], concurrency: int, admin_url: str
    ) -> Row:
        m0 = scrape_settled(admin_url)
        c0 = self.cpu.snap()
        load = py_load(reqs, concurrency)
        c1 = self.cpu.snap()
        metrics = metric_delta(m0, scrape_settled(admin_url))
        cpu = CpuWatch.report(c0, c1, "python")
        row = make_row(workload, name, load, cpu, ("slipstream",), {}, metrics)
        self._record(row)
        return row

    def _record(self, row: Row) -> None:
        self.rows.append(row)
        bad = f"  ERRORS {row.errors}" if row.errors else ""
        say(
            f"  {row.workload} {row.name}: {row.requests} req in {row.seconds:.2f}s = "
            f"{row.req_s:.0f} req/s, {row.mb_s:.1f} MB/s, p50 {row.p50_ms:.2f} ms, "
            f"p99 {row.p99_ms:.2f} ms{bad}"
        )
        say(f"    cpu %: {row.cpu}")

    def direct(self) -> None:
        server = ("weed", "relay")
        with self.phase("A direct store"):
            reqs = self.reqs_a(self.store_url, self.direct_a)
            errs = verify("A direct", self.sample_a(reqs))
            self.wrk_row(
                "A",
                self.direct_name,
                self.store_url,
                self.paths_a_direct,
                connections=self.args.concurrency_a,
                payload=SMALL_SIZE,
                verify_errors=errs,
                server=server,
            )
        with self.phase("B direct store"):
            errs = verify("B direct", self.reqs_b(self.store_url, self.direct_big)[:8])
            self.wrk_row(
                "B",
                self.direct_name,
                self.store_url,
                self.paths_b_direct,
                connections=self.args.concurrency_b,
                payload=RANGE_SIZE,
                verify_errors=errs,
                server=server,
            )

    def ceiling(self, workload: str) -> None:
        mode = "mem" if workload == "A" else "file"
        with self.phase(f"{workload} ceiling ({mode})"):
            port = free_port()
            cmd = [
                sys.executable,
                str(BASELINE),
                "--mode",
                mode,
                "--port",
                str(port),
                "--workers",
                str(self.args.workers),
                "--size",
                str(SMALL_SIZE),
                "--file",
                str(self.data.big_path),
            ]
            log = self.tmp / f"baseline-{mode}.log"
            with background(cmd, log) as proc:
                self.cpu.groups["ceiling"] = proc.pid
                url = f"http://127.0.0.1:{port}"
                wait_listeners(port, self.args.workers)
                wait_for_http(url + "/ready", timeout=30, status=200)
                if workload == "A":
                    paths = [f"/{BUCKET}/{k}" for k in self.keys]
                    reqs = self.reqs_a(url, paths, content=False)
                    errs = verify("A ceiling", self.sample_a(reqs))
                    self.wrk_row(
                        "A",
                        "ceiling: aiohttp mem",
                        url,
                        self.paths_a_proxy,
                        connections=self.args.concurrency_a,
                        payload=SMALL_SIZE,
                        verify_errors=errs,
                        server=("ceiling",),
                    )
                else:
                    errs = verify("B ceiling", self.reqs_b(url, f"/{BUCKET}/{BIG_KEY}")[:8])
                    self.wrk_row(
                        "B",
                        "ceiling: FileResponse",
                        url,
                        self.paths_b_proxy,
                        connections=self.args.concurrency_b,
                        payload=RANGE_SIZE,
                        verify_errors=errs,
                        server=("ceiling",),
                    )
                del self.cpu.groups["ceiling"]
                if proc.poll() is not None:
                    raise BenchError(f"ceiling server died: {log_tail(log)}")

    def start_proxy(self) -> ProxyProcess:
        return self.launch_proxy(*self.proxy_config())

    def proxy_config(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Slipstream's config over the store, and the environment holding its credentials."""
        cache: dict[str, Any] = {"dir": str(self.tmp / "proxy" / "cache"), "max_size": "4GiB"}
        if self.args.metadata_ttl != "proxy":
            cache["metadata_ttl"] = self.args.metadata_ttl
        config: dict[str, Any] = {
            "workers": self.args.workers,
            "log": {"access_log": False},
            "cache": cache,
            "backends": {
                "store": {
                    "type": "s3",
                    "endpoint": self.store_url,
                    "access_key_env": ACCESS_ENV,
                    "secret_key_env": SECRET_ENV,
                }
            },
            "buckets": {"*": {"backend": "store"}},
        }
        env = {ACCESS_ENV: self.weed.access_key, SECRET_ENV: self.weed.secret_key}
        return config, env

    def launch_proxy(
        self,
        config: Mapping[str, Any],
        env: Mapping[str, str],
        name: str = "start Slipstream",
        where: str = "proxy",
        source: Path | None = None,
    ) -> ProxyProcess:
        """Start Slipstream (in ``tmp/where``; from the checkout ``source``, this one by
        default), wait until every worker listens."""
        with self.phase(name):
            proxy = ProxyProcess(config, self.tmp / where, env, ready_timeout=60, source=source)
            self.stack.callback(proxy.stop)
            proxy.start()
            wait_listeners(int(proxy.config["listen"].rsplit(":", 1)[1]), self.args.workers)
            self.cpu.groups["slipstream"] = proxy.pid
        return proxy

    def through_proxy(self) -> None:
        """Cold, warm, then the ceiling right after warm (similar noise for the ratio)."""
        proxy = self.start_proxy()
        url, admin = proxy.url, proxy.admin_url
        with self.phase("A slipstream cold"):
            reqs = self.reqs_a(url, [f"/{BUCKET}/{k}" for k in self.keys])
            self.py_row("A", "slipstream cold", reqs, self.args.concurrency_a, admin)
        # The first pass after the fills still grows every key's hit counter (S3-FIFO), which
        # writes the index; the second pass is the steady state the ceiling is compared with.
        for phase, name in (
            ("A slipstream warm 1st", "slipstream warm 1st pass"),
            ("A slipstream warm", "slipstream warm"),
        ):
            with self.phase(phase):
                errs = verify(name, self.sample_a(reqs))
                self.wrk_row(
                    "A",
                    name,
                    url,
                    self.paths_a_proxy,
                    connections=self.args.concurrency_a,
                    payload=SMALL_SIZE,
                    verify_errors=errs,
                    server=("slipstream",),
                    admin_url=admin,
                )
        self.ceiling("A")
        with self.phase("B slipstream cold"):
            reqs_b = self.reqs_b(url, f"/{BUCKET}/{BIG_KEY}")
            self.py_row("B", "slipstream cold", reqs_b, self.args.concurrency_b, admin)
        with self.phase("B slipstream warm"):
            errs = verify("B warm", reqs_b[:8])
            self.wrk_row(
                "B",
                "slipstream warm",
                url,
                self.paths_b_proxy,
                connections=self.args.concurrency_b,
                payload=RANGE_SIZE,
                verify_errors=errs,
                server=("slipstream",),
                admin_url=admin,
            )
        self.ceiling("B")
        self.proxy_log_problems = proxy_problems(proxy)


def proxy_problems(proxy: ProxyProcess) -> list[str]:
    """The problem lines of Slipstream's log; BenchError if it has exited."""
    problems = [
        ln
        for ln in proxy.log(200_000).splitlines()
        if any(w in ln for w in ("ERROR", "Traceback", "CRITICAL", "exception"))
    ]
    if proxy.proc is not None and proxy.proc.poll() is not None:
        raise BenchError(f"Slipstream exited with {proxy.proc.returncode}:\n{proxy.log()}")
    return problems


# -- report --------------------------------------------------------------------------------------


def _row(rows: Sequence[Row], workload: str, prefix: str) -> Row | None:
    """The row named ``prefix`` exactly, else the first whose name starts with it."""
    mine = [r for r in rows if r.workload == workload]
    exact = next((r for r in mine if r.name == prefix), None)
    return exact or next((r for r in mine if r.name.startswith(prefix)), None)


def _ratio(a: Row | None, b: Row | None, attr: str) -> float | None:
    if a is None or b is None:
        return None
    x, y = getattr(a, attr), getattr(b, attr)
    return x / y if y else None


def ratios(rows: Sequence[Row]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for w, attr in (("A", "req_s"), ("B", "mb_s")):
        warm, cold = _row(rows, w, "slipstream warm"), _row(rows, w, "slipstream cold")
        direct, ceiling = _row(rows, w, "direct"), _row(rows, w, "ceiling")
        out[f"{w} warm/ceiling ({attr})"] = _ratio(warm, ceiling, attr)
        out[f"{w} warm/direct ({attr})"] = _ratio(warm, direct, attr)
        out[f"{w} cold/direct ({attr})"] = _ratio(cold, direct, attr)
        per_cpu = "req_per_cpu_s" if w == "A" else "mb_per_cpu_s"
        out[f"{w} warm/ceiling ({per_cpu})"] = _ratio(warm, ceiling, per_cpu)
        first = _row(rows, w, "slipstream warm 1st pass")
        if first is not None:
            out[f"{w} warm 1st pass/ceiling ({attr})"] = _ratio(first, ceiling, attr)
    return out


TARGETS = {"A warm/ceiling (req_s)": (0.5, 0.7), "B warm/ceiling (mb_s)": (0.8, None)}


def print_report(
    rows: Sequence[Row],
    info: Mapping[str, Any],
    phases: Mapping[str, float],
    log_problems: Sequence[str],
) -> bool:
    p = print
    p()
    p("=" * 118)
    p("Slipstream benchmark  " + "  ".join(f"{k}={v}" for k, v in info.items()))
    p(
        "NOTE: shared machine; load generator, proxy, store and other tenants compete for the "
        "same cores (see 'other' CPU)."
    )
    p("=" * 118)
    titles = {
        "A": f"Workload A: {info['objects']} objects x 16 KiB, concurrency {info['concurrency_a']}",
        "B": f"Workload B: 1 object of 256 MiB, 8 MiB ranges, concurrency {info['concurrency_b']}",
    }
    for w in ("A", "B"):
        per_cpu = "req/cpu-s" if w == "A" else "MB/cpu-s"
        head = (
            f"{'row':<26}{'generator':<16}{'requests':>9}{'secs':>7}{'req/s':>9}{'MB/s':>8}"
            f"{'p50 ms':>8}{'p99 ms':>8}{'backend/req':>12}{'errors':>7}{'srv CPU%':>9}"
            f"{per_cpu:>10}"
        )
        p()
        p(titles[w])
        p(head)
        p("-" * len(head))
        for r in (r for r in rows if r.workload == w):
            bpr = "-" if r.backend_per_request is None else f"{r.backend_per_request:.3f}"
            eff = r.req_per_cpu_s if w == "A" else r.mb_per_cpu_s
            p(
                f"{r.name:<26}{r.generator:<16}{r.requests:>9}{r.seconds:>7.2f}{r.req_s:>9.0f}"
                f"{r.mb_s:>8.1f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{bpr:>12}"
                f"{sum(r.errors.values()):>7}{r.server_cpu_pct:>9.0f}{eff:>10.0f}"
            )
    p()
    p(
        "MB/s: response bodies, 10^6 B/s. backend/req: slipstream_backend_requests_total delta "
        "/ client requests."
    )
    p(
        "srv CPU%: CPU of the serving processes (direct: weed [+relay]; slipstream rows: its "
        "workers; ceiling: its workers),"
    )
    p(
        "  % of one core; req/cpu-s and MB/cpu-s divide by it, which takes out most of the CPU "
        "other tenants took."
    )
    p()
    cores = os.cpu_count() or 1
    p(
        f"CPU during each timed row (% of one core, the machine has {100 * cores}%; "
        "'other tenants' = processes not of this benchmark):"
    )
    for r in rows:
        p(f"  {r.workload} {r.name:<26} " + ", ".join(f"{k} {v:g}" for k, v in r.cpu.items()))
        for group in ("slipstream", "ceiling"):
            used = [r.cpu.get(f"{group}:w{k}", 0.0) for k in range(int(info["workers"]))]
            if max(used) > 0 and min(used) < 0.5 * max(used):
                p(
                    f"    ^ uneven load over {group} workers {used}: SO_REUSEPORT hashed the "
                    "connections unevenly (few connections)"
                )
    p()
    p("Seen by Slipstream's /metrics (delta over the row):")
    for r in rows:
        if r.proxy_metrics:
            ops = r.proxy_metrics.get("backend_requests_total", {})
            hits = r.proxy_metrics.get("cache_hits_total", {}).get("-", 0)
            misses = r.proxy_metrics.get("cache_misses_total", {}).get("-", 0)
            statuses = {
                k.split("status=")[-1]: int(v)
                for k, v in r.proxy_metrics.get("requests_total", {}).items()
            }
            p(
                f"  {r.workload} {r.name:<26} requests by status {statuses} (client got "
                f"{r.requests}); backend {dict(ops) or '{}'}; cache hits {hits:g}, "
                f"misses {misses:g}"
            )
    for r in rows:
        if "warm" in r.name and r.backend_per_request:
            p(
                f"  WARNING: {r.workload} {r.name} sent {r.backend_per_request:.3f} store "
                "requests per client request (revalidations?): not a pure cache-hit row"
            )
    p()
    p("Ratios:")
    for name, value in ratios(rows).items():
        mark = ""
        if name in TARGETS and value is not None:
            floor, aim = TARGETS[name]
            mark = f"   target >= {floor}x" + (f", aim {aim}x" if aim else "")
            mark += "  PASS" if value >= floor else "  BELOW TARGET"
        shown = "n/a" if value is None else f"{value:.2f}x"
        p(f"  {name:<34} {shown:>7}{mark}")
    errors = [(f"{r.workload} {r.name}", k, v) for r in rows for k, v in r.errors.items()]
    none = (
        "Errors: none (every row: 0 socket errors, 0 non-2xx, body sizes checked; samples",
        "        and every cold request also checked byte for byte)",
    )
    return print_footer(phases, errors, none, log_problems)


def print_footer(
    phases: Mapping[str, float],
    errors: Sequence[tuple[str, str, int]],
    none: Sequence[str],
    log_problems: Sequence[str],
) -> bool:
    """The end of a report: durations, environment notes, ``errors`` (row, kind, count; else
    the lines ``none``) and Slipstream's log problems. True when there were no errors."""
    p = print
    p()
    p("Durations (s): " + ", ".join(f"{k} {v}" for k, v in phases.items()))
    for note in environment_notes():
        p(f"Note: {note}")
    p()
    if errors:
        p(f"ERRORS ({sum(v for _, _, v in errors)}) -- this run is NOT a valid result:")
        for name, k, v in errors:
            p(f"  {name}: {k}: {v}")
    else:
        for line in none:
            p(line)
    if log_problems:
        p(f"Slipstream log: {len(log_problems)} problem line(s), first ones:")
        for ln in log_problems[:10]:
            p(f"  {ln}")
    else:
        p("Slipstream log: no ERROR/Traceback lines")
    return not errors


def environment_notes() -> list[str]:
    import uvloop

    notes = []
    if getattr(uvloop.Loop, "sendfile", None) is getattr(asyncio.AbstractEventLoop, "sendfile", 0):
        notes.append(
            "uvloop has no loop.sendfile(): under it aiohttp's FileResponse (the B ceiling) "
            "copies through user space in 256 KiB reads on the default thread pool, and "
            "Slipstream's cache path falls back to 1 MiB os.pread in the thread pool; "
            "neither row uses sendfile(2)."
        )
    return notes


def source_state() -> str:
    """The commit Slipstream runs from, and whether proxy/ differs from it."""

    def git(*a: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *a], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [ln for ln in git("status", "--porcelain", "--", "proxy").splitlines() if ln]
    return f"{head}+{len(dirty)} uncommitted file(s) in proxy/" if dirty else head


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    model = ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    busy0 = _machine_cpu()
    time.sleep(1.0)
    busy1 = _machine_cpu()
    background_load = 100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1e-9)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "workers": args.workers,
        "objects": args.objects,
        "concurrency_a": args.concurrency_a,
        "concurrency_b": args.concurrency_b,
        "duration_s": args.duration,
        "store_latency_ms": args.store_latency_ms,
        "metadata_ttl": args.metadata_ttl,
        "busy_before_start_pct": round(background_load, 1),
        "slipstream_source": source_state(),
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 objects, ~4 s per timed phase")
    ap.add_argument("--workers", type=int, default=2, help="Slipstream and ceiling processes")
    ap.add_argument("--store-latency-ms", type=float, default=0.0, help="relay delay per request")
    ap.add_argument("--relay", action="store_true", help="relay in front of the store even at 0 ms")
    ap.add_argument("--objects", type=int, help="workload A object count (10000; quick 2000)")
    ap.add_argument("--duration", type=int, help="seconds per timed phase (10; quick 4)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed wrk seconds before each row")
    ap.add_argument("--concurrency-a", type=int, default=64)
    ap.add_argument("--concurrency-b", type=int, default=4)
    ap.add_argument("--wrk-threads", type=int, default=0, help="default min(2, nproc)")
    ap.add_argument(
        "--metadata-ttl",
        default="10m",
        help="Slipstream cache.metadata_ttl (default 10m, so that warm rows measure hits and\n"
        "not revalidations of records older than the proxy's own 60s; 'proxy': its default)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    args.objects = args.objects or (2000 if args.quick else 10_000)
    args.duration = args.duration or (4 if args.quick else 10)
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk not found (apt-get install -y wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    info = machine_info(args)
    say(f"machine: {info}")
    started = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="slipstream-bench-"))
        stack.callback(shutil.rmtree, tmp, True)
        bench = Bench(args, stack, tmp)
        try:
            bench.start_store()
            bench.seed()
            bench.write_paths()
            bench.direct()
            bench.through_proxy()
        except KeyboardInterrupt:
            say("interrupted: stopping every process")
            raise
        finally:
            say("cleaning up")
        bench.phases["total"] = round(time.monotonic() - started, 1)
        ok = print_report(bench.rows, info, bench.phases, bench.proxy_log_problems)
        if args.json:
            result = {
                "valid": ok,
                "machine": info,
                "phases_s": bench.phases,
                "rows": [r.as_json() for r in bench.rows],
                "ratios": ratios(bench.rows),
                "targets": {k: {"floor": f, "aim": a} for k, (f, a) in TARGETS.items()},
                "proxy_log_problems": bench.proxy_log_problems,
                "notes": environment_notes(),
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            say(f"results written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
