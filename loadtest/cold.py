"""fastpath.py's cold GET figure alone (issue 10: a cold small GET at concurrency 8 adds at most
3 ms to the direct store's p50), measured so that the other tenants' noise cancels out.

    .venv/bin/python loadtest/cold.py [--blocks 20] [--block 100] [--against CHECKOUT]

fastpath.py times the direct store and Slipstream in two rows one after the other: on a shared
machine the other tenants' CPU moves each row's p50 by milliseconds, so one run's difference
says little (rounds here gave -1.6 to +14 ms for the same checkout). This script interleaves:
SeaweedFS holds ``blocks x block`` 16 KiB objects; Slipstream runs once (``--against``: a
second Slipstream of that checkout beside it, its own empty cache); then block after block, in
turn (the order rotates each block), ``--block`` requests at ``--cold-concurrency`` go to the
store directly (presigned) and the same keys through each Slipstream (every request a miss:
checked at the end from its /metrics). Each arm's p50 is over all its requests; the added p50
is an arm's minus the direct one's. Also shown: the median over blocks of a block's added p50,
each Slipstream's CPU per request (all its processes; where every CPU is busy, as at c8 on two
cores with client and store beside it, the added p50 follows it) and its workers' shares of
that CPU (SO_REUSEPORT hashes an arm's few connections over the workers: an uneven split makes
one worker the bottleneck for the whole run).

Resolution: main against itself gave added p50s 0.0 to 2.8 ms apart in a run while the other
tenants were busy (direct p50 8-11 ms), and CPU per request within ~5%: compare several runs,
and the CPU figure first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests`, `loadtest`, `proxy` importable
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
import uvloop  # noqa: E402
from yarl import URL  # noqa: E402

from loadtest import fastpath  # noqa: E402
from loadtest.bench import (  # noqa: E402
    BUCKET,
    SMALL_SIZE,
    Req,
    _percentile,
    _proc_stat,
    _raise_interrupt,
    metric_delta,
    proxy_problems,
    say,
    scrape,
    scrape_settled,
)
from tests.proxyproc import ProxyProcess  # noqa: E402
from tests.servers import S3Endpoint, make_s3_client  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--block", type=int, default=100, help="requests per arm and block")
    ap.add_argument("--cold-concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="Slipstream processes")
    ap.add_argument("--against", type=Path, help="another checkout (e.g. a clone of main)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    mine = ap.parse_args(argv)
    args = fastpath.parse_args(
        ["--workers", str(mine.workers), "--cold-concurrency", str(mine.cold_concurrency)]
        + ["--cold", str(mine.blocks * mine.block)]
    )
    args.objects = 0  # no warm objects: the cold keys only
    for k in ("blocks", "block", "against", "json"):
        setattr(args, k, getattr(mine, k))
    return args


class Arm:
    """One target of the interleaved load: its requests (one per key), latencies, session."""

    def __init__(self, name: str, reqs: Sequence[Req], concurrency: int) -> None:
        self.name = name
        self.reqs = reqs
        self.concurrency = concurrency
        self.latencies: list[float] = []
        self.block_p50: list[float] = []
        self.errors: dict[str, int] = {}
        self.session: aiohttp.ClientSession | None = None

    async def run_block(self, reqs: Sequence[Req]) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=300),
                auto_decompress=False,
            )
        session = self.session
        pending = iter(reqs)
        got: list[float] = []

        async def worker() -> None:
            for req in pending:
                started = time.perf_counter()
                try:
                    async with session.get(URL(req.url, encoded=True), headers=req.headers) as r:
                        body = await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._error(f"client {type(exc).__name__}")
                    continue
                got.append(time.perf_counter() - started)
                if status != req.status:
                    self._error(f"HTTP {status}")
                elif req.expected is not None and body != req.expected():
                    self._error("body differs")

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        self.latencies += got
        self.block_p50.append(1000 * statistics.median(got) if got else 0.0)

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def p50_ms(self) -> float:
        return 1000 * _percentile(sorted(self.latencies), 50)


def _cpu_seconds(pgid: int) -> dict[int, float]:
    """CPU seconds of each live process of the process group ``pgid``, by pid."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None and st[0] == pgid:
                out[int(entry.name)] = st[1]
    return out


async def interleave(arms: Sequence[Arm], blocks: int, size: int) -> None:
    try:
        for b in range(blocks):
            order = list(arms[b % len(arms) :]) + list(arms[: b % len(arms)])
            for arm in order:
                await arm.run_block(arm.reqs[b * size : (b + 1) * size])
    finally:
        for arm in arms:
            if arm.session is not None:
                await arm.session.close()


def start(bench: fastpath.FastBench, name: str, checkout: Path) -> ProxyProcess:
    config, env = bench.proxy_config()
    config["cache"]["dir"] = str(bench.tmp / f"cache-{name}")
    return bench.launch_proxy(
        config, env, name=f"start Slipstream ({name})", where=name, source=checkout
    )


def run(bench: fastpath.FastBench, args: argparse.Namespace) -> dict[str, Any]:
    checkouts = {"this": REPO_ROOT}
    if args.against:
        checkouts["against"] = args.against.resolve()
    presigner = make_s3_client(
        S3Endpoint(bench.store_url, bench.weed.access_key, bench.weed.secret_key)
    )
    keys = list(enumerate(bench.cold_keys))
    expect = [partial(bench.data.small, n) for n, _ in keys]
    cc = args.cold_concurrency
    direct = [
        Req(bench.store_url + fastpath.presign_path(presigner, BUCKET, k), {}, 200, SMALL_SIZE, e)
        for (_, k), e in zip(keys, expect, strict=True)
    ]
    arms = [Arm("direct store", direct, cc)]
    proxies = {name: start(bench, name, checkout) for name, checkout in checkouts.items()}
    for name, proxy in proxies.items():
        reqs = [
            Req(f"{proxy.url}/{BUCKET}/{k}", {}, 200, SMALL_SIZE, e)
            for (_, k), e in zip(keys, expect, strict=True)
        ]
        arms.append(Arm(name, reqs, cc))
    before = {name: (scrape(p.admin_url), _cpu_seconds(p.pid)) for name, p in proxies.items()}
    say(f"interleaving {args.blocks} blocks of {args.block} requests x {len(arms)} arms at c{cc}")
    uvloop.run(interleave(arms, args.blocks, args.block))
    out: dict[str, Any] = {"direct_p50_ms": round(arms[0].p50_ms(), 2), "arms": {}}
    for arm in arms[1:]:
        proxy = proxies[arm.name]
        was = before[arm.name][1]
        used = {pid: t - was.get(pid, 0.0) for pid, t in _cpu_seconds(proxy.pid).items()}
        cpu = sum(used.values())
        # SO_REUSEPORT hashes the arm's few connections over the workers: an uneven split
        # makes one worker the bottleneck for the whole run (shares of the workers' CPU)
        workers = sorted(
            (t for pid, t in used.items() if pid != proxy.pid and t > 0.01), reverse=True
        )
        delta = metric_delta(before[arm.name][0], scrape_settled(proxy.admin_url))
        hits = sum(delta.get("cache_hits_total", {}).values())
        misses = sum(delta.get("cache_misses_total", {}).values())
        if hits or misses != len(arm.reqs):
            arm.errors[f"{hits:g} hits, {misses:g} misses (want {len(arm.reqs)} misses)"] = 1
        by_block = [s - d for s, d in zip(arm.block_p50, arms[0].block_p50, strict=True)]
        out["arms"][arm.name] = {
            "p50_ms": round(arm.p50_ms(), 2),
            "added_p50_ms": round(arm.p50_ms() - arms[0].p50_ms(), 2),
            "median_block_added_p50_ms": round(statistics.median(by_block), 2),
            "cpu_ms_per_request": round(1000 * cpu / len(arm.reqs), 3),
            "worker_cpu_shares": [round(t / (sum(workers) or 1), 2) for t in workers],
            "errors": arm.errors,
        }
        bench.proxy_log_problems += proxy_problems(proxy)
        proxy.stop()
    out["direct_errors"] = arms[0].errors
    return out


def report(result: dict[str, Any], cc: int) -> bool:
    print()
    print(
        f"cold GET c{cc}: p50 added to the store's (target <= {fastpath.COLD_TARGET_MS} ms); "
        f"direct store p50 {result['direct_p50_ms']} ms"
    )
    ok = not result["direct_errors"]
    if not ok:
        print(f"  direct store ERRORS {result['direct_errors']}")
    for name, a in result["arms"].items():
        ok = ok and not a["errors"]
        print(
            f"  {name:<8} p50 {a['p50_ms']:.2f} ms, added {a['added_p50_ms']:+.2f} ms "
            f"(median over blocks {a['median_block_added_p50_ms']:+.2f} ms); "
            f"Slipstream CPU {a['cpu_ms_per_request']:.3f} ms/request, "
            f"workers' shares {a['worker_cpu_shares']}"
            + (f"  ERRORS {a['errors']}" if a["errors"] else "")
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="slipstream-cold-"))
        stack.callback(shutil.rmtree, tmp, True)
        bench = fastpath.FastBench(args, stack, tmp)
        bench.start_store()
        bench.seed_small()
        result = run(bench, args)
        ok = report(result, args.cold_concurrency) and not bench.proxy_log_problems
        for problem in bench.proxy_log_problems:
            print(f"  proxy log: {problem}")
        if args.json:
            args.json.write_text(json.dumps({"valid": ok, **result}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
