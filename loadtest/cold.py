"""fastpath.py's two cold rows alone (issue 10: a cold small GET at concurrency 8 adds at most
3 ms to the direct store's p50), round after round, with another checkout alternating.

    .venv/bin/python loadtest/cold.py [--rounds 5] [--cold 1000] [--against CHECKOUT]

SeaweedFS starts once and holds rounds x checkouts x ``--cold`` 16 KiB objects. Each round, for
each checkout in turn (this one, then ``--against``'s; the order flips every round): the direct
row over a block of keys nobody has read, then a new Slipstream of that checkout (an empty cache
of its own) over the same keys, as fastpath.py's "cold GET c8: direct store" and "cold GET c8:
slipstream" rows. A round's added p50 is the Slipstream row's p50 minus the direct row's just
before it. One round is noisy on a shared machine (the other tenants' CPU moves both rows by
milliseconds): the medians over the rounds are the figures. Beside each: Slipstream's CPU per
request (all its processes), which the added p50 follows where the CPUs are all busy (every
process of a cold row, client and store included, shares them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests`, `loadtest`, `proxy` importable
    sys.path.insert(0, str(REPO_ROOT))

from loadtest import fastpath  # noqa: E402
from loadtest.bench import BUCKET, SMALL_SIZE, Req, Row, _raise_interrupt, say  # noqa: E402
from tests import proxyproc  # noqa: E402
from tests.servers import S3Endpoint, make_s3_client  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", type=int, default=1000, help="cold 16 KiB objects per row")
    ap.add_argument("--cold-concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="Slipstream processes")
    ap.add_argument("--against", type=Path, help="another checkout (e.g. a clone of main)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    mine = ap.parse_args(argv)
    checkouts = 2 if mine.against else 1
    args = fastpath.parse_args(
        ["--workers", str(mine.workers), "--cold-concurrency", str(mine.cold_concurrency)]
        + ["--cold", str(mine.cold * mine.rounds * checkouts)]
    )
    args.objects = 0  # no warm objects: the cold keys only
    for k in ("rounds", "against", "json"):
        setattr(args, k, getattr(mine, k))
    args.per_row = mine.cold
    return args


def run(bench: fastpath.FastBench, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every round's rows; per checkout, one entry a round."""
    checkouts = {"this": REPO_ROOT}
    if args.against:
        checkouts["against"] = args.against.resolve()
    presigner = make_s3_client(
        S3Endpoint(bench.store_url, bench.weed.access_key, bench.weed.secret_key)
    )
    cc = args.cold_concurrency
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
    block = 0
    for r in range(args.rounds):
        order = list(checkouts.items())
        for name, checkout in order if r % 2 == 0 else order[::-1]:
            n0 = block * args.per_row
            keys = list(enumerate(bench.cold_keys))[n0 : n0 + args.per_row]
            block += 1
            expect = [partial(bench.data.small, n) for n, _ in keys]
            direct = [
                Req(bench.store_url + fastpath.presign_path(presigner, BUCKET, k), {}, 200,
                    SMALL_SIZE, e)
                for (_, k), e in zip(keys, expect, strict=True)
            ]  # fmt: skip
            d = bench.py_cold_row(f"cold GET c{cc}: direct store [{r} {name}]", direct, None)
            config, env = bench.proxy_config()
            config["cache"]["dir"] = str(bench.tmp / f"cache-{r}-{name}")
            saved, proxyproc.REPO_ROOT = proxyproc.REPO_ROOT, checkout
            try:
                proxy = bench.launch_proxy(
                    config, env, name=f"start Slipstream ({name})", where=f"proxy-{r}-{name}"
                )
            finally:
                proxyproc.REPO_ROOT = saved
            through = [
                Req(f"{proxy.url}/{BUCKET}/{k}", {}, 200, SMALL_SIZE, e)
                for (_, k), e in zip(keys, expect, strict=True)
            ]
            s = bench.py_cold_row(
                f"cold GET c{cc}: slipstream [{r} {name}]", through, proxy.admin_url
            )
            bench.stop_proxy(proxy)
            entry = _entry(d, s)
            out[name].append(entry)
            say(
                f"  round {r} {name}: direct p50 {d.p50_ms:.2f} ms, slipstream p50 "
                f"{s.p50_ms:.2f} ms, added {entry['added_p50_ms']:+.2f} ms, Slipstream CPU "
                f"{entry['slipstream_cpu_ms_per_request']} ms/request"
            )
    return out


def _entry(direct: Row, slip: Row) -> dict[str, Any]:
    cpu = 1000 / slip.req_per_cpu_s if slip.req_per_cpu_s else None
    return {
        "direct_p50_ms": round(direct.p50_ms, 2),
        "slipstream_p50_ms": round(slip.p50_ms, 2),
        "added_p50_ms": round(slip.p50_ms - direct.p50_ms, 2),
        "slipstream_cpu_ms_per_request": None if cpu is None else round(cpu, 3),
        "errors": {**direct.errors, **slip.errors},
    }


def report(results: dict[str, list[dict[str, Any]]], cc: int) -> bool:
    ok = True
    print()
    print(f"cold GET c{cc}: p50 added to the store's (target <= {fastpath.COLD_TARGET_MS} ms)")
    for name, entries in results.items():
        added = [e["added_p50_ms"] for e in entries]
        cpu = [
            e["slipstream_cpu_ms_per_request"]
            for e in entries
            if e["slipstream_cpu_ms_per_request"]
        ]
        bad = [e["errors"] for e in entries if e["errors"]]
        ok = ok and not bad
        print(
            f"  {name:<8} added p50 by round {added}: median {statistics.median(added):+.2f} ms; "
            f"Slipstream CPU ms/request median {statistics.median(cpu) if cpu else '-'}"
            + (f"  ERRORS {bad}" if bad else "")
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
        results = run(bench, args)
        ok = report(results, args.cold_concurrency) and not bench.proxy_log_problems
        for problem in bench.proxy_log_problems:
            print(f"  proxy log: {problem}")
        if args.json:
            args.json.write_text(json.dumps({"valid": ok, "rounds": results}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
