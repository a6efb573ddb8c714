"""Cluster benchmark: 1 node vs 3 nodes (static membership, replicas 1, 1 worker each), one run.

    .venv/bin/python loadtest/cluster.py [--quick] [--json OUT] [--objects N] ...

Needs Debian's nginx, as loadtest/training.py, whose store helpers it reuses: the store is
nginx serving a directory of ``--objects`` objects of 16 KiB (4,000; quick 1,000), reached
through tests/relay.py adding ``--latency-ms`` (20) per request; nginx's access log counts
the store's requests. Every node is a Slipstream subprocess with its own cache directory.

Figures, each from empty caches:

- cold pass: every object read once, ``--clients`` (64) concurrent readers spreading the
  requests round-robin over the nodes; store GETs per object read (target 1.0: each object
  fetched once for the whole cluster, whichever node is asked).
- warm throughput: then for ``--seconds`` (10; quick 5) the same readers fetch random objects,
  round-robin over the nodes; aggregate requests/s. With 3 nodes two requests in three reach
  a node that does not own the object, which streams it from its owner (two hops); the row
  "3 nodes, client sends each key to its owner" shows the cluster without that hop.
- large objects: ``--shards`` (6; quick 3) objects of ``--shard-mib`` (32) MiB, read whole once
  each (one reader per shard) round-robin over the nodes, then again: MB/s of each pass,
  store GETs per chunk (the nodes run with ``cache.chunk_size: 2MiB``; target 1.0), and with
  3 nodes the share of the shards' bytes each node caches beside the share the ring gives it
  (per-chunk placement: about a third each, not whole shards on one node).
- node join: 2 nodes of a 3-member list up and warm (the dataset read once through them),
  then the third starts; once all see it live the dataset is read again, spread over the 3:
  store GETs (with replicas 1 the new node's share is fetched from the store again; nothing
  hands it over; a read through the old owner is still served from its cache) and peer
  bytes (object bytes streamed owner -> asking node). The nodes count no peer bytes, so the
  client derives them from the ring and what each node holds (an owner keeps what it reads,
  a non-owner nothing); the same model predicts the store GETs, printed beside the measured.

The client is one aiohttp session on uvloop in this process: on a 2-core machine it shares
the cores with every node, the relay and the store, and is itself a ceiling of a few thousand
requests/s (an estimate), so the ratios say what 2 cores allow, not what 3 machines would.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests` and `loadtest` importable
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
import uvloop  # noqa: E402

from loadtest.bench import _raise_interrupt, say, source_state  # noqa: E402
from loadtest.training import (  # noqa: E402
    BUCKET,
    NGINX,
    SMALL_SIZE,
    STORE_KEY_ENV,
    Bench,
    Item,
)
from proxy.cache.record import object_id  # noqa: E402
from proxy.cluster import ring  # noqa: E402
from tests.proxyproc import ProxyProcess  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.test_cluster import wait_live  # noqa: E402

SECRET_ENV = "BENCH_CLUSTER_SECRET"
CHUNK_MIB = 2  # the nodes' cache.chunk_size: a quick run's shards make 48 chunks


def cached_bytes(node: ProxyProcess) -> int:
    """What the node's cache holds, as its admin API says (its own totals)."""
    with urllib.request.urlopen(f"{node.admin_url}/admin/v1/cache", timeout=10) as resp:
        return int(json.loads(resp.read())["bytes"])


@dataclass
class Pass:
    """One pass of reads: how many, how fast, what reached the store and the peers."""

    reads: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    store_gets: int = 0
    store_requests: int = 0
    peer_bytes: int = 0
    fills: int = 0  # store fetches the ring and what each node holds predict

    @property
    def per_s(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "per_s": round(self.per_s, 1)}


class Cluster:
    """The store (nginx behind the relay, from loadtest/training.py) and the nodes."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack, tmp: Path) -> None:
        self.args, self.stack, self.tmp = args, stack, tmp
        store_args = argparse.Namespace(
            objects=args.objects,
            shards=args.shards,
            shard_mib=args.shard_mib,
            seed=args.seed,
            latency_ms=args.latency_ms,
        )
        self.store = Bench(store_args, stack, tmp)
        self.items: list[Item] = self.store.small
        self.rng = random.Random(args.seed)
        self.held: dict[str, set[str]] = {}  # node -> keys it holds (owners keep what they read)

    def start_store(self) -> None:
        self.store.seed()
        self.store.start_store()

    def nodes(self, listens: list[str], start: int) -> list[ProxyProcess]:
        """Nodes for ``listens`` (the member list), the first ``start`` of them started."""
        env = {SECRET_ENV: os.urandom(16).hex()} if len(listens) > 1 else {}
        out = []
        self.held = {listen: set() for listen in listens}
        for listen in listens:
            tmp = Path(tempfile.mkdtemp(prefix="node-", dir=self.tmp))
            config: dict[str, Any] = {
                "workers": 1,
                "listen": listen,
                "cache": {
                    "dir": str(tmp / "cache"),
                    "metadata_ttl": "10m",
                    "chunk_size": f"{CHUNK_MIB}MiB",
                },
                "backends": {
                    "store": {
                        "type": "s3",
                        "endpoint": self.store.relay,
                        "region": "us-east-1",
                        "access_key_env": STORE_KEY_ENV[0],
                        "secret_key_env": STORE_KEY_ENV[1],
                    }
                },
                "buckets": {BUCKET: {"backend": "store"}},
                "log": {"level": "warning", "access_log": False},
            }
            if len(listens) > 1:
                config["cluster"] = {"secret_env": SECRET_ENV, "members": listens, "replicas": 1}
            out.append(ProxyProcess(config, tmp, env))
        for node in out[:start]:
            self.stack.callback(node.stop)
            node.start()
        return out

    def start(self, node: ProxyProcess) -> None:
        self.stack.callback(node.stop)
        node.start()

    # -- reads --------------------------------------------------------------------------------

    def run(
        self, nodes: list[ProxyProcess], keys: Sequence[Item] | None, seconds: float, smart: bool
    ) -> Pass:
        """Read ``keys`` once each (or random keys for ``seconds``) with ``--clients`` readers,
        round-robin over ``nodes`` (``smart``: each key to its owner)."""
        members = [n.config["listen"] for n in nodes]
        self.store.store_log.take()
        result = Pass()
        todo = iter(keys) if keys is not None else None
        turn = itertools.count()
        items = self.items

        async def reader(session: aiohttp.ClientSession, until: float) -> None:
            while True:
                if todo is not None:
                    item = next(todo, None)
                    if item is None:
                        return
                elif time.perf_counter() >= until:
                    return
                else:
                    item = items[self.rng.randrange(len(items))]
                owner = ""
                if len(members) > 1:
                    owner = ring.owners(object_id("store", BUCKET, item.key), members, 1)[0]
                node = owner if smart else members[next(turn) % len(members)]
                try:
                    async with session.get(f"http://{node}/{BUCKET}/{item.key}") as r:
                        body = await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    why = type(exc).__name__
                    result.errors[why] = result.errors.get(why, 0) + 1
                    continue
                if status != 200 or len(body) != item.size:
                    why = f"HTTP {status}, {len(body)} bytes"
                    result.errors[why] = result.errors.get(why, 0) + 1
                result.reads += 1
                self.account(result, node, owner or node, item.key, len(body))

        async def main() -> None:
            connector = aiohttp.TCPConnector(limit=self.args.clients, ttl_dns_cache=None)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            ) as session:
                started = time.perf_counter()
                until = started + seconds
                await asyncio.gather(*(reader(session, until) for _ in range(self.args.clients)))
                result.seconds = time.perf_counter() - started

        uvloop.run(main())
        counts = self.store.store_log.take()
        result.store_gets = counts.get("GET", 0)
        result.store_requests = sum(counts.values())
        return result

    def run_shards(self, nodes: list[ProxyProcess]) -> dict[str, Any]:
        """Every shard read whole once, one reader each, round-robin over ``nodes``: the pass's
        MB/s, store GETs and errors."""
        self.store.store_log.take()
        errors: dict[str, int] = {}
        total = 0

        async def one(session: aiohttp.ClientSession, i: int, key: str, size: int) -> None:
            nonlocal total
            node = nodes[i % len(nodes)].config["listen"]
            try:
                async with session.get(f"http://{node}/{BUCKET}/{key}") as r:
                    got = 0
                    async for piece in r.content.iter_any():
                        got += len(piece)
                    ok = r.status == 200 and got == size
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            total += got
            if not ok:
                errors["short or failed"] = errors.get("short or failed", 0) + 1

        async def main() -> float:
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
                started = time.perf_counter()
                shards = self.store.shards
                await asyncio.gather(*(one(session, i, k, n) for i, (k, n) in enumerate(shards)))
                return time.perf_counter() - started

        seconds = uvloop.run(main())
        counts = self.store.store_log.take()
        return {
            "mb_s": round(total / seconds / 1e6, 1) if seconds else 0.0,
            "store_gets": counts.get("GET", 0),
            "errors": errors,
        }

    def shard_shares(self, nodes: list[ProxyProcess], before: list[int]) -> dict[str, Any]:
        """The bytes of the shards each node cached (its cache's growth since ``before``, once
        the fills committed) beside what the ring says it owns."""
        members = [n.config["listen"] for n in nodes]
        owned = dict.fromkeys(members, 0)
        size = CHUNK_MIB * 1024**2
        for key, length in self.store.shards:
            oid = object_id("store", BUCKET, key)
            for i in range(-(-length // size)):
                owner = ring.chunk_owners(oid, i, members, 1)[0]
                owned[owner] += min(size, length - i * size)
        deadline = time.monotonic() + 30
        while True:
            grown = [cached_bytes(n) - b for n, b in zip(nodes, before, strict=True)]
            if grown == list(owned.values()) or time.monotonic() > deadline:
                return {"cached": grown, "owned": list(owned.values())}
            time.sleep(0.5)

    def account(self, result: Pass, node: str, owner: str, key: str, size: int) -> None:
        """A read of ``key`` through ``node``: served from its cache if it holds the key, else
        (not the owner) streamed from the owner, who fetches it from the store unless it holds
        it (node.py's read hook: a non-owner keeps nothing)."""
        if key in self.held[node]:
            return
        if node != owner:
            result.peer_bytes += size
        if key not in self.held[owner]:
            self.held[owner].add(key)
            result.fills += 1

    def stop(self, nodes: list[ProxyProcess]) -> None:
        for node in nodes:
            node.stop()


# -- the rows ------------------------------------------------------------------------------------


def measure(bench: Cluster) -> dict[str, Any]:
    args = bench.args
    out: dict[str, Any] = {}
    for n in (1, 3):
        listens = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        nodes = bench.nodes(listens, n)
        if n > 1:
            wait_live(nodes, listens, timeout=30)
        say(f"{n} node(s): cold pass of {len(bench.items)} objects")
        cold = bench.run(nodes, bench.items, 0, smart=False)
        say(f"  {cold.per_s:.0f}/s, store GETs {cold.store_gets}, errors {cold.errors}")
        say(f"{n} node(s): warm, {args.seconds:.0f} s")
        warm = bench.run(nodes, None, args.seconds, smart=False)
        say(f"  {warm.per_s:.0f}/s, store GETs {warm.store_gets}, errors {warm.errors}")
        out[f"{n}"] = {"cold": cold.as_json(), "warm": warm.as_json()}
        if n > 1:
            smart = bench.run(nodes, None, args.seconds, smart=True)
            say(f"  to the owner: {smart.per_s:.0f}/s, errors {smart.errors}")
            out[f"{n}"]["warm_to_owner"] = smart.as_json()
        if bench.store.shards:
            say(f"{n} node(s): {len(bench.store.shards)} shards read whole, cold then warm")
            before = [cached_bytes(node) for node in nodes]
            cold_shards, warm_shards = bench.run_shards(nodes), bench.run_shards(nodes)
            shares = bench.shard_shares(nodes, before)
            say(f"  cold {cold_shards}, warm {warm_shards}, {shares}")
            out[f"{n}"]["shards"] = {"cold": cold_shards, "warm": warm_shards, **shares}
        bench.stop(nodes)
    listens = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = bench.nodes(listens, 2)
    wait_live(nodes[:2], listens[:2], timeout=30)
    say("join: 2 of 3 nodes up, dataset read once through them")
    first = bench.run(nodes[:2], bench.items, 0, smart=False)
    bench.start(nodes[2])
    waited = time.monotonic()
    wait_live(nodes, listens, timeout=30)
    say(f"join: the third node is live everywhere after {time.monotonic() - waited:.1f} s")
    again = bench.run(nodes, bench.items, 0, smart=False)
    say(
        f"  re-read: store GETs {again.store_gets} (predicted {again.fills}), "
        f"peer bytes {again.peer_bytes}"
    )
    moved = sum(
        1
        for i in bench.items
        if ring.owners(object_id("store", BUCKET, i.key), listens, 1)[0] == listens[2]
    )
    out["join"] = {"warm_up": first.as_json(), "reread": again.as_json(), "new_owner": moved}
    bench.stop(nodes)
    return out


def markdown(res: dict[str, Any], info: dict[str, Any]) -> str:
    one, three, join = res["1"], res["3"], res["join"]
    n = info["objects"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    w1, w3, ws = one["warm"]["per_s"], three["warm"]["per_s"], three["warm_to_owner"]["per_s"]
    c1, c3 = one["cold"]["store_gets"] / n, three["cold"]["store_gets"] / n
    re = join["reread"]
    lines = [
        f"Cluster benchmark: {n} objects of {SMALL_SIZE // 1024} KiB, {info['clients']} "
        f"concurrent readers, store +{info['latency_ms']:.0f} ms per request, "
        f"{info['nproc']} cores (client, relay, store and every node share them), "
        f"Slipstream {info['slipstream_source']}.",
        "",
        "| figure | 1 node | 3 nodes | 3 / 1 |",
        "|---|---|---|---|",
        f"| warm reads/s, round-robin over the nodes | {w1:.0f} | {w3:.0f} | {ratio(w3, w1)} |",
        f"| warm reads/s, each key to its owner | {w1:.0f} | {ws:.0f} | {ratio(ws, w1)} |",
        f"| cold pass: store GETs per object read (target 1.0) | {c1:.2f} | {c3:.2f} "
        f"| {ratio(c3, c1)} |",
        f"| cold pass reads/s | {one['cold']['per_s']:.0f} | {three['cold']['per_s']:.0f} "
        f"| {ratio(three['cold']['per_s'], one['cold']['per_s'])} |",
        *_shard_rows(one, three, info),
        "",
        f"Node join (2 warm nodes, a third added, the dataset read again over the 3): "
        f"{re['store_gets']} store GETs for {n} reads ({join['new_owner']} objects now owned by "
        f"the new node: the old owner hands them over, warmed ahead of reads or on a miss, "
        f"so the store is not asked again); {re['peer_bytes'] / 1e6:.1f} MB streamed owner -> "
        f"asking node ({re['peer_bytes'] // SMALL_SIZE} of {n} reads). Peer bytes are derived by "
        f"the client from the ring and what each node holds; that model (no handoff: the new "
        f"owner's misses go to the store) predicts {re['fills']} store GETs (measured "
        f"{re['store_gets']}).",
        "",
        f"What {info['nproc']} cores allow: the 3 nodes, the relay, the store and the client "
        "share them, so 3 nodes cannot add CPU here; round-robin adds a peer hop to 2 reads "
        "in 3 (two proxies' work per read). The client, one Python process, is itself a ceiling "
        "of a few thousand requests/s (an estimate: the 1-node row is near it). The ratios "
        "show the cost of the hop and the store savings, not scaling; figures move by tens "
        "of percent with other load on the machine (load average at start: "
        f"{info['loadavg']}).",
    ]
    passes = [p for r in (one, three) for name, p in r.items() if name != "shards"]
    passes += [r["shards"][k] for r in (one, three) if "shards" in r for k in ("cold", "warm")]
    errors = sum(sum(p["errors"].values()) for p in passes)
    errors += sum(sum(p["errors"].values()) for p in (join["warm_up"], re))
    if errors:
        lines.append(f"\nINVALID: {errors} reads failed or returned the wrong size")
    return "\n".join(lines)


def _shard_rows(one: dict[str, Any], three: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """The large-object rows (none without shards)."""
    if "shards" not in one:
        return []
    chunks = info["shards"] * -(-info["shard_mib"] // CHUNK_MIB)
    s1, s3 = one["shards"], three["shards"]
    cached, owned = s3["cached"], s3["owned"]
    shares = " / ".join(f"{c / max(1, sum(cached)):.2f}" for c in cached)
    ring_shares = " / ".join(f"{c / max(1, sum(owned)):.2f}" for c in owned)
    rows = [
        f"| large objects ({info['shards']} x {info['shard_mib']} MiB, whole GETs), cold MB/s "
        f"| {s1['cold']['mb_s']:.0f} | {s3['cold']['mb_s']:.0f} "
        f"| {s3['cold']['mb_s'] / max(s1['cold']['mb_s'], 0.1):.2f} |",
        f"| large objects, warm MB/s | {s1['warm']['mb_s']:.0f} | {s3['warm']['mb_s']:.0f} "
        f"| {s3['warm']['mb_s'] / max(s1['warm']['mb_s'], 0.1):.2f} |",
        f"| large objects: store GETs per {CHUNK_MIB} MiB chunk, cold (target 1.0) "
        f"| {s1['cold']['store_gets'] / chunks:.2f} | {s3['cold']['store_gets'] / chunks:.2f} "
        "| - |",
        "",
        f"With 3 nodes each node caches this share of the large objects' bytes: {shares} "
        f"(the ring's chunk owners: {ring_shares}; {'equal' if cached == owned else 'NOT equal'}"
        " byte for byte); a whole-object placement would put each shard on one node. Warm "
        f"store GETs: 1 node {s1['warm']['store_gets']}, 3 nodes {s3['warm']['store_gets']}.",
    ]
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1,000 objects, 5 s warm passes")
    ap.add_argument("--objects", type=int, help="objects of 16 KiB (4000; quick 1000)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent readers (64)")
    ap.add_argument("--seconds", type=float, help="each warm pass (10; quick 5)")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="relay delay per request (20)")
    ap.add_argument("--shards", type=int, help="large objects (6; quick 3; 0: none)")
    ap.add_argument("--shard-mib", type=int, default=32, help="MiB per large object (32)")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    args.objects = args.objects or (1000 if args.quick else 4000)
    args.seconds = args.seconds or (5.0 if args.quick else 10.0)
    if args.shards is None:
        args.shards = 3 if args.quick else 6
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.access(NGINX, os.X_OK):
        print(f"cluster: {NGINX} not found (apt-get install nginx-light)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    os.environ.setdefault(STORE_KEY_ENV[0], "bench")  # nginx ignores the signature
    os.environ.setdefault(STORE_KEY_ENV[1], "bench-secret")
    info = {
        "nproc": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
        "slipstream_source": source_state(),
        **{k: v for k, v in vars(args).items() if k != "json"},
    }
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="slipstream-cluster-"))
        stack.callback(shutil.rmtree, tmp, True)
        bench = Cluster(args, stack, tmp)
        bench.start_store()
        res = measure(bench)
    text = markdown(res, info)
    print(text)
    if args.json:
        result = {"valid": "INVALID" not in text, "machine": info, "results": res}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        say(f"results written to {args.json}")
    return 1 if "INVALID" in text else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
