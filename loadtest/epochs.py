"""Hit ratio per pass of the eviction policy, before and after admission, in one table.

    .venv/bin/python loadtest/epochs.py [--objects N] [--cache-fraction F] [--seed S]

The pure policy (proxy/cache/eviction.py) in the in-memory model of the index
(loadtest/cachesim.py), no proxy: objects of 16 KiB, a cache of a fraction of the dataset.
Workloads: shuffled epochs over the whole dataset; Zipf-skewed reads (s=1) over twice as
many objects; a working set of 80% of the cache read in shuffled passes that changes to a new
set of the same size half way. Then the shuffled epochs again with a training-aware prefetch
job fetching each epoch's order ahead of the reads (as far ahead as the job's byte bound lets
it: an eighth of the cache, proxy/core/prefetch.py): the share of each epoch's reads whose
object needed no store fetch, with the job's fills committed unread (now: the first read is
the use the fill counted, and a refused fill is kept until that read, then goes first) and
as a read's fills (until 2026-12-01: refused, then fetched again by the read).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterator

from loadtest.cachesim import Policy, SimCache
from proxy.core.prefetch import AHEAD_SHARE  # a job runs this share of the cache ahead at most

SIZE = 16 * 1024
Workload = Callable[[random.Random], Iterator[list[int]]]


def epochs(objects: int, passes: int) -> Workload:
    def run(rng: random.Random) -> Iterator[list[int]]:
        ids = list(range(objects))
        for _ in range(passes):
            rng.shuffle(ids)
            yield ids

    return run


def zipf(objects: int, passes: int, reads: int) -> Workload:
    weights = [1 / (n + 1) for n in range(objects)]

    def run(rng: random.Random) -> Iterator[list[int]]:
        for _ in range(passes):
            yield rng.choices(range(objects), weights=weights, k=reads)

    return run


def shifting(objects: int, passes: int) -> Workload:
    def run(rng: random.Random) -> Iterator[list[int]]:
        for n in range(passes):
            base = 0 if n < passes // 2 else 10**9
            ids = list(range(base, base + objects))
            rng.shuffle(ids)
            yield ids

    return run


def ratios(policy: Policy, capacity: int, workload: Workload, seed: int) -> list[float]:
    cache = SimCache(capacity, policy)
    out = []
    for ids in workload(random.Random(seed)):
        hits = sum(cache.read(n.to_bytes(8, "big"), SIZE) for n in ids)
        out.append(hits / len(ids))
    return out


def prefetched(
    capacity: int, objects: int, passes: int, seed: int, ahead_is_use: bool = False
) -> list[float]:
    """Shuffled epochs, each read in order behind a prefetch job that runs up to an
    AHEAD_SHARE of the cache ahead: per epoch, the share of reads whose object no fetch (the
    job's or the read's own) had to bring."""
    rng = random.Random(seed)
    cache = SimCache(capacity, "admission", ahead_is_use=ahead_is_use)
    lead = max(1, capacity // SIZE // AHEAD_SHARE)
    ids = [n.to_bytes(8, "big") for n in range(objects)]
    out = []
    for _ in range(passes):
        rng.shuffle(ids)
        fetched, ahead = 0, 0
        for i, oid in enumerate(ids):
            while ahead < min(objects, i + lead):
                fetched += cache.prefetch(ids[ahead], SIZE)
                ahead += 1
            fetched += not cache.read(oid, SIZE)
        out.append(1 - fetched / objects)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--cache-fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n = args.objects
    capacity = int(n * SIZE * args.cache_fraction)
    held = capacity // SIZE
    workloads = {
        f"epochs: {n} objects, cache {args.cache_fraction:.0%}": epochs(n, 5),
        f"zipf s=1: {2 * n} objects": zipf(2 * n, 5, n),
        f"shift: sets of {int(held * 0.8)}, new at pass 6": shifting(int(held * 0.8), 10),
    }
    print(f"{'workload':44} {'policy':10} hit ratio per pass")
    for name, workload in workloads.items():
        for policy in ("s3fifo", "admission"):
            row = " ".join(f"{r:5.0%}" for r in ratios(policy, capacity, workload, args.seed))
            print(f"{name:44} {policy:10} {row}")
    name = f"prefetched epochs: {n} objects, cache {args.cache_fraction:.0%}"
    for label, before in (("now", False), ("until 12-01", True)):
        got = prefetched(capacity, n, 5, args.seed, ahead_is_use=before)
        print(f"{name:44} {label:10} " + " ".join(f"{r:5.0%}" for r in got))


if __name__ == "__main__":
    main()
