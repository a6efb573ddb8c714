"""Cold fills per proxy CPU-second: the miss path's cost, beside warm hits in the same run.

    .venv/bin/python loadtest/fills.py [--objects N] [--concurrency C] [--rounds R]
                                       [--workers W] [--against CHECKOUT] [--floor]
                                       [--profile out.svg] [--json out.json]

Starts SeaweedFS, seeds ``N x R`` objects of 16 KiB, and starts Slipstream (``workers: 1``,
an ``s3`` backend, no access log). Each round GETs N keys never read before (every one a
miss that fills the cache), then the same N keys again (every one a hit), at concurrency C,
from an aiohttp client in this process that checks each body's size. Only the proxy's CPU
is counted (utime + stime of its process group, from /proc): the store and the client run
on the same cores but are not charged. Prints fills per proxy CPU-second, hits per proxy
CPU-second, and their ratio, per round and as the best and median over rounds (the
machine is shared: the best round has the least noise).

``--against /path/to/other/checkout`` starts a second proxy from that checkout (e.g. a clone
of main) on the same store, and runs its rounds alternately with this one's, so both see
the same noise; it prints this/against for fills and hits per CPU-second.

``--floor`` adds two arms, run in turn with the others on keys of their own (cold GETs only:
neither caches): Slipstream with caching off for every bucket (its store client, routing and
S3 dispatch: what a fill costs without the cache), and the floor: a bare aiohttp server that
answers each GET with one store GET through Slipstream's own store client
(``baseline_server.py --mode store``). It prints each arm's CPU per request and what the cache
adds to a miss. Each Slipstream arm's line also gives the share of its CPU spent off the event
loop's thread (the index writer thread's LMDB commits, the blocking-I/O pool), which a
``py-spy --gil`` profile does not show.

``--profile out.svg`` runs ``py-spy record`` on the proxy during the cold phase of the
first round (py-spy from the virtualenv; the flame graph shows where a miss spends its CPU;
``out.txt``: collapsed stacks, one line per stack with its sample count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

from loadtest.bench import BASELINE, background, profiler, stop_profiler  # noqa: E402
from tests.proxyproc import ProxyProcess  # noqa: E402
from tests.servers import SeaweedFS, free_port, make_s3_client, wait_for_http  # noqa: E402

BUCKET = "fills"
SIZE = 16 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
ACCESS_ENV = "FILLS_STORE_ACCESS_KEY"
SECRET_ENV = "FILLS_STORE_SECRET_KEY"


def say(msg: str) -> None:
    print(msg, flush=True)


def group_cpu(pgid: int) -> tuple[float, float, float]:
    """(user, system, off the main threads) CPU seconds of the live processes of process group
    ``pgid``; the third: what each process's threads other than its first used."""
    user = system = off_main = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            rest = raw[raw.rfind(")") + 2 :].split()
            if int(rest[2]) != pgid:
                continue
            user += int(rest[11]) / CLK_TCK
            system += int(rest[12]) / CLK_TCK
            for tid in os.listdir(f"/proc/{entry}/task"):
                if tid != entry:
                    task = Path(f"/proc/{entry}/task/{tid}/stat").read_text()
                    fields = task[task.rfind(")") + 2 :].split()
                    off_main += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError):
            continue  # gone meanwhile
    return user, system, off_main


def key(i: int) -> str:
    return f"obj/{i:07d}.bin"


def body(i: int) -> bytes:
    return i.to_bytes(8, "big") * (SIZE // 8)


async def _get_all(base: str, keys: list[str], concurrency: int) -> dict[str, int]:
    pending = iter(keys)
    problems: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def worker() -> None:
            for k in pending:
                async with session.get(f"{base}/{BUCKET}/{k}") as r:
                    data = await r.read()
                    if r.status != 200 or len(data) != SIZE:
                        what = f"HTTP {r.status} / {len(data)} bytes"
                        problems[what] = problems.get(what, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return problems


def timed(pgid: int, base: str, keys: list[str], concurrency: int) -> dict[str, Any]:
    (user0, sys0, off0), wall0 = group_cpu(pgid), time.monotonic()
    problems = asyncio.run(_get_all(base, keys, concurrency))
    (user1, sys1, off1), wall = group_cpu(pgid), time.monotonic() - wall0
    cpu = user1 - user0 + sys1 - sys0
    return {
        "requests": len(keys),
        "wall_s": round(wall, 3),
        "proxy_cpu_s": round(cpu, 3),
        "proxy_system_share": round((sys1 - sys0) / max(cpu, 1e-9), 2),
        "off_loop_share": round((off1 - off0) / max(cpu, 1e-9), 2),
        "per_cpu_s": round(len(keys) / max(cpu, 1e-9)),
        "us_per_request": round(cpu / len(keys) * 1e6, 1),
        "per_s": round(len(keys) / wall),
        "problems": problems,
    }


def seed(weed: SeaweedFS, n: int) -> None:
    client = make_s3_client(weed.endpoint, max_pool_connections=32)
    client.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(16) as pool:
        for fut in [
            pool.submit(client.put_object, Bucket=BUCKET, Key=key(i), Body=body(i))
            for i in range(n)
        ]:
            fut.result()


def start_proxy(
    stack: ExitStack,
    weed: SeaweedFS,
    root: Path,
    checkout: Path,
    workers: int,
    more: dict[str, Any] | None = None,
    env_more: dict[str, str] | None = None,
) -> ProxyProcess:
    """Slipstream from ``checkout`` (its own cache under ``root``), in front of ``weed``;
    ``more``: config sections added (``cache`` merged), ``env_more``: its environment."""
    more = dict(more or {})
    config: dict[str, Any] = {
        "workers": workers,
        "log": {"access_log": False},
        "cache": {"dir": str(root / "cache"), "max_size": "4GiB", **more.pop("cache", {})},
        "backends": {
            "store": {
                "type": "s3",
                "endpoint": weed.url,
                "access_key_env": ACCESS_ENV,
                "secret_key_env": SECRET_ENV,
            }
        },
        "buckets": {"*": {"backend": "store"}},
    }
    config.update(more)
    env = {ACCESS_ENV: weed.access_key, SECRET_ENV: weed.secret_key, **(env_more or {})}
    proxy = ProxyProcess(config, root, env, ready_timeout=60, source=checkout)
    stack.callback(proxy.stop)
    proxy.start()
    return proxy


NO_CACHE, FLOOR = "no cache", "floor"  # the --floor arms: cold GETs only


def start_floor(stack: ExitStack, weed: SeaweedFS, root: Path) -> tuple[int, str]:
    """baseline_server.py --mode store in front of ``weed``: (its process group, its URL)."""
    port = free_port()
    cmd = [sys.executable, str(BASELINE), "--mode", "store", "--port", str(port)]
    cmd += ["--endpoint", weed.url, "--access-key-env", ACCESS_ENV, "--secret-key-env", SECRET_ENV]
    os.environ[ACCESS_ENV], os.environ[SECRET_ENV] = weed.access_key, weed.secret_key
    root.mkdir(parents=True, exist_ok=True)
    proc = stack.enter_context(background(cmd, root / "floor.log"))
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/{BUCKET}/{key(0)}", timeout=30)
    return proc.pid, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=2000, help="keys per round (2000)")
    ap.add_argument("--concurrency", type=int, default=32, help="client connections (32)")
    ap.add_argument("--rounds", type=int, default=3, help="cold+warm rounds on fresh keys (3)")
    ap.add_argument("--workers", type=int, default=1, help="proxy worker processes (1)")
    ap.add_argument(
        "--against", type=Path, help="also run the proxy of this checkout, round by round"
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also run Slipstream with caching off and a bare server through its store client",
    )
    ap.add_argument(
        "--profile",
        help="py-spy profile of the first cold phase: a flame graph (.svg) or collapsed"
        " stacks (.txt); Python CPU only (samples holding the GIL)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    checkouts = {"this": REPO_ROOT}
    if args.against:
        checkouts["against"] = args.against.resolve()
    arms = [*checkouts, *((NO_CACHE, FLOOR) if args.floor else ())]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fills-")))
        say("start SeaweedFS ...")
        weed = SeaweedFS(workdir=tmp / "weed")
        stack.callback(weed.stop)
        weed.start()
        n = args.objects * args.rounds * len(arms)
        say(f"seed {n} x 16 KiB ...")
        seed(weed, n)
        servers: dict[str, tuple[int, str]] = {}
        for name, path in checkouts.items():
            proxy = start_proxy(stack, weed, tmp / name, path, args.workers)
            servers[name] = (proxy.pid, proxy.url)
        if args.floor:
            uncached = {"buckets": {"*": {"backend": "store", "cache": False}}}
            proxy = start_proxy(stack, weed, tmp / "nocache", REPO_ROOT, args.workers, uncached)
            servers[NO_CACHE] = (proxy.pid, proxy.url)
            servers[FLOOR] = start_floor(stack, weed, tmp / "floor")
        for _, url in servers.values():  # untimed: connections and first calls warm up
            asyncio.run(_get_all(url, [key(i) for i in range(50)], args.concurrency))
        slot = 0
        for r in range(args.rounds):
            for name, (pid, url) in servers.items():  # in turn: all see the same noise
                first = max(slot * args.objects, 50)  # the warm-up took keys 0-49
                keys = [key(i) for i in range(first, (slot + 1) * args.objects)]
                slot += 1
                profile = args.profile if r == 0 and name == "this" else None
                spy = profiler(pid, profile) if profile else None
                cold = timed(pid, url, keys, args.concurrency)
                if spy is not None:
                    stop_profiler(spy)
                    say(f"  profile written to {profile}")
                if name in (NO_CACHE, FLOOR):
                    rows[name].append({"round": r + 1, "cold": cold})
                    say(
                        f"{name:>8} round {r + 1}: {cold['per_cpu_s']:>6} GETs/CPU-s "
                        f"({cold['us_per_request']} us each, {cold['per_s']}/s, "
                        f"{cold['proxy_system_share']:.0%} system)"
                    )
                    if cold["problems"]:
                        say(f"  PROBLEMS: {cold['problems']}")
                    continue
                warm = timed(pid, url, keys, args.concurrency)
                ratio = round(cold["per_cpu_s"] / max(warm["per_cpu_s"], 1), 3)
                rows[name].append(
                    {"round": r + 1, "cold": cold, "warm": warm, "fill_to_hit": ratio}
                )
                say(
                    f"{name:>8} round {r + 1}: {cold['per_cpu_s']:>6} fills/CPU-s "
                    f"({cold['per_s']} fills/s, {cold['proxy_system_share']:.0%} system, "
                    f"{cold['off_loop_share']:.0%} off the loop), "
                    f"{warm['per_cpu_s']:>6} hits/CPU-s ({warm['per_s']} hits/s, "
                    f"{warm['proxy_system_share']:.0%} system), fills/hits {ratio}"
                )
                for row in (cold, warm):
                    if row["problems"]:
                        say(f"  PROBLEMS: {row['problems']}")
    failed = any(
        row[phase]["problems"]
        for rs in rows.values()
        for row in rs
        for phase in row
        if phase in ("cold", "warm")
    )
    summary: dict[str, Any] = {}
    for name, rs in rows.items():
        fills = [row["cold"]["per_cpu_s"] for row in rs]
        summary[name] = {
            "fills_per_cpu_s": {"best": max(fills), "median": statistics.median(fills)},
            "us_per_cold_request": statistics.median(row["cold"]["us_per_request"] for row in rs),
        }
        if name in (NO_CACHE, FLOOR):
            say(
                f"{name}: cold GETs per proxy CPU-second: best {max(fills)}, median "
                f"{statistics.median(fills)} ({summary[name]['us_per_cold_request']} us each)"
            )
            continue
        hits = [row["warm"]["per_cpu_s"] for row in rs]
        summary[name] |= {
            "hits_per_cpu_s": {"best": max(hits), "median": statistics.median(hits)},
            "fill_to_hit_median": statistics.median(row["fill_to_hit"] for row in rs),
            "off_loop_share": statistics.median(row["cold"]["off_loop_share"] for row in rs),
        }
        say(
            f"{name} ({checkouts[name]}): fills per proxy CPU-second: best {max(fills)}, "
            f"median {statistics.median(fills)} ({summary[name]['us_per_cold_request']} us "
            f"each, {summary[name]['off_loop_share']:.0%} off the loop); hits per CPU-second: "
            f"best {max(hits)}, median {statistics.median(hits)}; fills/hits (median) "
            f"{summary[name]['fill_to_hit_median']}"
        )
    if args.against:
        for what in ("fills_per_cpu_s", "hits_per_cpu_s"):
            ratio = summary["this"][what]["median"] / max(summary["against"][what]["median"], 1)
            say(f"this/against, {what} (medians): {ratio:.2f}x")
    if args.floor:
        fill, bare = (
            summary["this"]["us_per_cold_request"],
            summary[NO_CACHE]["us_per_cold_request"],
        )
        floor = summary[FLOOR]["us_per_cold_request"]
        say(
            f"a fill's CPU (medians): {fill} us = floor {floor} us + S3 dispatch and routing "
            f"{bare - floor:.1f} us + the cache {fill - bare:.1f} us ({(fill - bare) / fill:.0%});"
            f" fill/floor {fill / floor:.2f}x, fill/no-cache {fill / bare:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rows, "summary": summary}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
