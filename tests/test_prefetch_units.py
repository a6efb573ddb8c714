"""The prefetcher in-process over the core of tests/test_core_units.py (a real cache and fs
store): the bounds of listing-driven prefetch, and streamed parts joining a running job."""

from __future__ import annotations

import asyncio
import functools

import pytest

from proxy.config import MountConfig
from proxy.core import prefetch
from proxy.core.prefetch import Prefetcher
from proxy.core.prefetch_order import encode_lines
from proxy.jobs.gate import JobGate, gated, jobs_gate
from proxy.routing import Router
from tests.faultkit import eventually
from tests.test_core_units import BUCKET, Core, _read, core, writer_held  # noqa: F401 (the fixture)
from tests.test_warm_units import JOB_KEYS, Order


def prefetcher_of(core: Core, mode: str = "listing") -> Prefetcher:  # noqa: F811
    mounts = {BUCKET: MountConfig(name=BUCKET, backend="fs", prefetch=mode)}  # type: ignore[arg-type]
    p = Prefetcher()
    p.attach(core.reads, Router(mounts, {"fs": core.store}, core.cache.cfg))
    return p


async def test_listing_jobs_are_bounded(core: Core) -> None:  # noqa: F811
    core.store.gate.clear()  # the store answers nothing: the jobs hold their queues
    p = prefetcher_of(core)
    page = [f"k{i:04d}" for i in range(1000)]
    for n in range(prefetch.LISTING_JOBS + 1):
        p.listed(BUCKET, f"prefix{n}/", page)
    listing = [j for j in p.jobs() if j.origin == "listing"]
    assert len(listing) == prefetch.LISTING_JOBS  # the least recently listed was dropped
    assert {j.state for j in listing} == {"running"}
    for _ in range(prefetch.LISTING_QUEUE // 1000 + 5):  # one prefix listed on and on
        p.listed(BUCKET, "prefix1/", page)
    job = next(j for j in p.jobs() if j.origin == "listing")
    assert len(job.keys) - job.next <= prefetch.LISTING_QUEUE
    assert len(job.keys) >= prefetch.LISTING_QUEUE - 1000
    core.store.gate.set()
    await p.close()


async def test_a_page_listed_again_while_its_keys_are_fetched_queues_none_twice(
    core: Core,  # noqa: F811
) -> None:
    for i in range(5):
        core.put_file(f"p{i}", b"p" * (100 + i))
    core.store.gate.clear()  # the store holds every GET: the keys stay in flight
    p = prefetcher_of(core)
    page = [f"p{i}" for i in range(5)]
    p.listed(BUCKET, "", page)
    (job,) = p.jobs()
    await asyncio.sleep(0.05)
    assert job.next == 5  # all five in flight
    p.listed(BUCKET, "", page)  # listed again before any landed
    p.listed(BUCKET, "", page + ["p9"])  # and once more with one new key
    assert len(job.keys) == 6
    core.store.gate.set()
    await eventually(lambda: job.state != "running")
    assert (job.progress.fetched, core.store.gets) == (5, 6)  # each once; p9: no such key
    assert job.progress.failed == 1


async def test_listing_skips_cached_objects_and_other_buckets(core: Core) -> None:  # noqa: F811
    core.put_file("a", b"x" * 100)
    await _read(core, "a")
    await core.reads.fills.wait_idle()
    assert core.record("a") is not None  # now cached
    p = prefetcher_of(core)
    p.listed(BUCKET, "", ["a", "dir/"])
    p.listed("not-configured", "", ["b"])
    assert p.jobs() == []
    off = prefetcher_of(core, "off")
    off.listed(BUCKET, "", ["b"])
    assert off.jobs() == []


async def test_a_streamed_order_waits_for_its_parts(core: Core) -> None:  # noqa: F811
    for i in range(6):
        core.put_file(f"s{i}", b"y" * (2000 + i))
    p = prefetcher_of(core, "off")
    job = p.open(BUCKET, 10)
    job.add(encode_lines(b'"s0"\n"s1"\n', 1))
    for _ in range(200):
        if job.progress.fetched == 2:
            break
        await asyncio.sleep(0.01)
    assert job.progress.fetched == 2 and job.state == "running"  # waits for more keys
    job.add(encode_lines(b'{"key": "s2"}\n\n"s3"', 3))
    job.received()
    for _ in range(200):
        if job.state == "done":
            break
        await asyncio.sleep(0.01)
    assert job.state == "done" and job.progress.fetched == 4
    await p.close()


async def test_reads_pass_over_what_was_fetched_before_them(core: Core) -> None:  # noqa: F811
    # Window 8: a key is wasted once the reads are 8 // 4 = 2 past it (concurrent readers
    # finish out of order). "a" is listed twice: its later place (6) counts.
    for name in "abcdef":
        core.put_file(name, b"z" * 3000)
    p = prefetcher_of(core, "off")
    job = await p.start(BUCKET, ["a", "b", "c", "d", "e", "f", "a"], 8)
    for _ in range(200):
        if job.state == "done":
            break
        await asyncio.sleep(0.01)
    assert job.state == "done" and job.progress.fetched + job.progress.cached == 7
    p.note_read(BUCKET, "d")  # position 3: "b" (1) and "c" (2) may still be read
    assert (job.progress.used, job.progress.wasted) == (1, 0)
    p.note_read(BUCKET, "c")  # a late read, still a use
    assert (job.progress.used, job.progress.wasted) == (2, 0)
    p.note_read(BUCKET, "f")  # position 5: 2 past "b", which goes unread; "e" (4) may come
    assert (job.progress.used, job.progress.wasted) == (3, 1)
    p.note_read(BUCKET, "e")
    p.note_read(BUCKET, "a")  # position 6, the last: nothing more to wait for
    assert (job.progress.used, job.progress.wasted) == (5, 1)
    assert not job.busy()
    await p.close()


async def test_an_order_of_cached_keys_asks_the_store_nothing(core: Core) -> None:  # noqa: F811
    # more cached keys than a job passes over in one turn of the loop, then two missing ones
    many = prefetch.CHECKS_PER_TURN * 2 + 5
    names = [f"c{i:03d}" for i in range(many)]
    for name in names:
        core.put_file(name, b"q" * 1000)
        await _read(core, name)
    await core.reads.fills.wait_idle()
    core.put_file("new1", b"n" * 1000)
    core.put_file("new2", b"m" * 1000)
    gets = core.store.gets
    p = prefetcher_of(core, "off")
    job = await p.start(BUCKET, [*names, "new1", "new2"], prefetch.MAX_WINDOW)
    for _ in range(300):
        if job.state == "done":
            break
        await asyncio.sleep(0.01)
    assert job.state == "done"
    assert (job.progress.cached, job.progress.fetched) == (many, 2)
    assert core.store.gets - gets == 2
    await p.close()


async def _client_position(c: Core, top: str, gate: JobGate | None) -> int:
    """A prefetch job (concurrency 32) over 40 objects takes the fill slots while the store
    holds every GET; then a client misses: how many GETs began before the client's."""
    keys = [f"{top}-{i:02d}" for i in range(JOB_KEYS)]
    for key in [*keys, f"{top}-client"]:
        c.put_file(key, b"p" * 2000)
    order = Order(c)
    mounts = {BUCKET: MountConfig(name=BUCKET, backend="fs")}  # type: ignore[arg-type]
    p = Prefetcher()
    fetch = functools.partial(prefetch.warm, c.reads)
    p.attach(
        c.reads, Router(mounts, {"fs": c.store}, c.cache.cfg), gated(gate, fetch) if gate else fetch
    )  # type: ignore[dict-item]
    c.store.gate.clear()
    job = await p.start(BUCKET, keys, prefetch.MAX_WINDOW, concurrency=32)
    await eventually(lambda: len(order.keys) >= 6, interval=0.005)
    await asyncio.sleep(0.05)  # every job fetch that can start has started
    client = asyncio.create_task(_read(c, f"{top}-client"))
    await asyncio.sleep(0.05)
    c.store.gate.set()
    assert (await client)[1] == b"p" * 2000
    await eventually(lambda: job.state == "done")
    assert job.progress.fetched == JOB_KEYS
    await p.close()
    return order.keys.index(f"{top}-client")


async def test_client_misses_go_before_prefetch_fetches(core: Core) -> None:  # noqa: F811
    max_fills = core.cache.cfg.max_fills  # 8
    # ungated, the job takes every slot and queues more: the client waits behind them
    assert await _client_position(core, "plain", None) >= max_fills + 4
    # through the jobs' gate (as the server wires it) the job holds 6 of the 8 slots
    gate = jobs_gate(core.reads.fills)
    assert await _client_position(core, "first", gate) <= max_fills


async def test_a_prefetch_fetch_is_over_once_its_bytes_are_in(core: Core) -> None:  # noqa: F811
    """A job's key is done when its bytes are in, not when the index commits them, so a
    job's concurrency counts store fetches, not commit latency; the commit still lands."""
    core.put_file("w", b"w" * 300)
    with writer_held(core):
        size = await asyncio.wait_for(prefetch.warm(core.reads, core.mount, "w"), 5)
        assert size == 300
        assert core.record("w") is None  # the commit waits for the writer
        _, body = await _read(core, "w")  # a read meanwhile joins the fill: no second GET
        assert body == b"w" * 300 and core.store.gets == 1
    await asyncio.wait_for(core.reads.fills.wait_idle(), 10)
    assert core.record("w") is not None


async def test_a_job_fetches_at_most_an_eighth_of_the_cache_ahead(
    core: Core,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever its window (2048 keys by default), a job stops while what it fetched ahead and
    not yet read passes cache.max_size / AHEAD_SHARE; a read makes room again."""
    monkeypatch.setattr(prefetch, "AHEAD_SHARE", core.cache.cfg.max_size // 1000)  # ~1,000 B
    keys = [f"s{i:02d}" for i in range(20)]
    for key in keys:
        core.put_file(key, b"s" * 400)
    p = prefetcher_of(core, "off")
    job = await p.start(BUCKET, keys, None, None, 1)  # one at a time: the count is exact
    assert job.window == prefetch.DEFAULT_WINDOW == 2048
    assert job.describe()["bytes_ahead_max"] == core.cache.cfg.max_size // prefetch.AHEAD_SHARE
    await eventually(lambda: job.progress.fetched == 3)  # 1,200 bytes ahead: over the bound
    await asyncio.sleep(0.1)
    assert job.progress.fetched == 3 and core.store.gets == 3
    await _read(core, "s00")  # read: 800 bytes ahead, room for one more
    await eventually(lambda: job.progress.fetched == 4)
    await asyncio.sleep(0.1)
    assert job.progress.fetched == 4 and core.store.gets == 4
    await p.close()
