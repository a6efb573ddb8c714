"""Warm hits per proxy CPU-second, this checkout against another, round by round.

    .venv/bin/python loadtest/hits.py [--against CHECKOUT] [--objects N] [--rounds R]
                                      [--duration S] [--profile out.txt] [--json out.json]

The CPU a warm 16 KiB hit costs is issue 10's main figure; on a shared machine req/s moves
with the other tenants, CPU per request much less. This starts SeaweedFS, seeds N objects
of 16 KiB, and starts Slipstream (``workers: 1``, no access log) twice per checkout: once
anonymous, once with a user (so requests are signed). Each proxy's cache is filled (every
key once), then each round runs wrk -c64 for S seconds per row, the checkouts alternately
(both see the same noise): GET, HEAD, GET with ``Range: bytes=0-4095`` (anonymous), GET
with SigV4 headers and presigned GETs (signed). Only the proxy's CPU is counted (its
process group's utime + stime from /proc). Prints hits per proxy CPU-second per row, the
median over rounds, and this/against.

``--profile out.txt`` runs ``py-spy record --format raw`` on this checkout's proxy during the
first round's GET and SigV4 rows (``--profile-rows``: others) into out-ROW.txt (collapsed
stacks; ``--gil`` samples only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from loadtest.bench import run_wrk  # noqa: E402
from loadtest.fastpath import (  # noqa: E402
    RANGE,
    USER_ENV,
    USER_KEY,
    USER_SECRET,
    amz_now,
    head_load,
    presign_path,
    sigv4_headers,
    wrk_line,
)
from loadtest.fills import (  # noqa: E402
    SIZE,
    _get_all,
    group_cpu,
    key,
    profiler,
    say,
    seed,
)
from loadtest.fills import start_proxy as fills_proxy  # noqa: E402
from tests.proxyproc import ProxyProcess  # noqa: E402
from tests.servers import SeaweedFS, make_s3_client  # noqa: E402

BUCKET = "fills"  # what loadtest.fills.seed creates


def start_proxy(
    stack: ExitStack, weed: SeaweedFS, root: Path, checkout: Path, signed: bool
) -> ProxyProcess:
    """fills.py's proxy (1 worker) with a long metadata_ttl; ``signed``: with a reading user."""
    more: dict[str, Any] = {"cache": {"metadata_ttl": "1h"}}
    env: dict[str, str] = {}
    if signed:
        more["auth"] = {
            "users": [{"access_key": USER_KEY, "secret_key_env": USER_ENV, "allow": {"*": "read"}}]
        }
        env[USER_ENV] = USER_SECRET
    return fills_proxy(stack, weed, root, checkout, 1, more, env)


async def _fill_signed(url: str, n: int) -> None:
    """Every key once through a signed client (its cache then holds them all)."""
    from concurrent.futures import ThreadPoolExecutor

    client = make_s3_client(url, USER_KEY, USER_SECRET, max_pool_connections=16)

    def one(i: int) -> None:
        body = client.get_object(Bucket=BUCKET, Key=key(i))["Body"].read()
        if len(body) != SIZE:
            raise SystemExit(f"signed fill: {key(i)} gave {len(body)} bytes")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))


def rows_for(url: str, n: int, signed: bool) -> dict[str, tuple[list[str], str, int]]:
    """Row name -> (wrk target lines, method, body bytes per response)."""
    paths = [f"/{BUCKET}/{key(i)}" for i in range(n)]
    if not signed:
        plain = [p + "\n" for p in paths]
        return {
            "GET": (plain, "GET", SIZE),
            "HEAD": (plain, "HEAD", 0),
            "range": ([wrk_line(p, RANGE) for p in paths], "GET", 4096),
        }
    date = amz_now()
    heads = [wrk_line(p, "", sigv4_headers(url + p, USER_KEY, USER_SECRET, date)) for p in paths]
    client = make_s3_client(url, USER_KEY, USER_SECRET)
    pre = [presign_path(client, BUCKET, key(i)) + "\n" for i in range(n)]
    return {"SigV4": (heads, "GET", SIZE), "presigned": (pre, "GET", SIZE)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--against", type=Path, help="also run this checkout's proxy, alternately")
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3, help="seconds per row")
    ap.add_argument("--only", default="", help="comma-separated rows (GET,HEAD,range,SigV4,...)")
    ap.add_argument("--profile", help="py-spy collapsed stacks of the first GET row (.txt)")
    ap.add_argument(
        "--profile-rows", default="GET,SigV4", help="the rows --profile records (comma-separated)"
    )
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    profile_rows = {s for s in args.profile_rows.split(",") if s}
    checkouts = {"this": REPO_ROOT}
    if args.against:
        checkouts["against"] = args.against.resolve()
    results: dict[str, dict[str, list[float]]] = {name: {} for name in checkouts}
    problems: list[str] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hits-")))
        say("start SeaweedFS ...")
        weed = SeaweedFS(workdir=tmp / "weed")
        stack.callback(weed.stop)
        weed.start()
        seed(weed, args.objects)
        for signed in (False, True):
            kinds = {"GET", "HEAD", "range"} if not signed else {"SigV4", "presigned"}
            if only and not kinds & only:
                continue
            proxies = {
                name: start_proxy(stack, weed, tmp / f"{name}-{signed}", path, signed)
                for name, path in checkouts.items()
            }
            files: dict[str, dict[str, tuple[Path, str, int]]] = {}
            for name, proxy in proxies.items():
                files[name] = {}
                for row, (lines, method, size) in rows_for(proxy.url, args.objects, signed).items():
                    if only and row not in only:
                        continue
                    f = tmp / f"{name}-{row}.txt"
                    f.write_text("".join(lines))
                    files[name][row] = (f, method, size)
                if not signed:  # fill every key (the signed proxy is filled the same way)
                    got = asyncio.run(
                        _get_all(proxy.url, [key(i) for i in range(args.objects)], 32)
                    )
                    if got:
                        raise SystemExit(f"fill through {name} failed: {got}")
                else:
                    asyncio.run(_fill_signed(proxy.url, args.objects))
                f, method, size = next(iter(files[name].values()))
                run_wrk(
                    proxy.url, f, connections=64, threads=2, duration=2, payload=size, method=method
                )
            for r in range(args.rounds):
                for row in next(iter(files.values())):
                    for name, proxy in proxies.items():
                        f, method, size = files[name][row]
                        spy = None
                        if args.profile and r == 0 and name == "this" and row in profile_rows:
                            out = args.profile.replace(".txt", f"-{row}.txt")
                            spy = profiler(proxy.pid, out)
                        (u0, s0) = group_cpu(proxy.pid)
                        if method == "HEAD":  # wrk 4.1 waits for a body after a HEAD
                            paths = [ln.rstrip("\n") for ln in f.read_text().splitlines()]
                            load = head_load(proxy.url, paths, 64, args.duration)
                        else:
                            load = run_wrk(
                                proxy.url, f, connections=64, threads=2, duration=args.duration,
                                payload=size, method=method,
                            )  # fmt: skip
                        (u1, s1) = group_cpu(proxy.pid)
                        if spy is not None:
                            spy.send_signal(2)
                            spy.wait(timeout=60)
                        cpu = u1 - u0 + s1 - s0
                        per = load.requests / max(cpu, 1e-9)
                        if spy is None:  # py-spy's sampling costs the proxy CPU too
                            results[name].setdefault(row, []).append(per)
                        if load.errors:
                            problems.append(f"{name} {row}: {load.errors}")
                        say(
                            f"round {r + 1} {name:>7} {row:<9} {load.requests / load.seconds:>7.0f}"
                            f" req/s {per:>7.0f} req/CPU-s (sys {(s1 - s0) / max(cpu, 1e-9):.0%})"
                            f" p99 {load.p99_ms:.2f} ms"
                        )
            for proxy in proxies.values():
                proxy.stop()
            time.sleep(0.5)
    summary = {
        n: {row: statistics.median(v) for row, v in rows.items()} for n, rows in results.items()
    }
    for row in summary["this"]:
        line = f"{row:<9} this {summary['this'][row]:>7.0f} req/CPU-s"
        if "against" in summary:
            a = summary["against"][row]
            line += f"  against {a:>7.0f}  this/against {summary['this'][row] / a:.3f}x"
        say(line)
    for p in problems:
        say(f"PROBLEM {p}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": results, "median": summary}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
