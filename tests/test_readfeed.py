"""The read feed (proxy/readfeed.py): a worker's reads reach the supervisor's prefetcher in
batches, in order, none lost while the supervisor's queue is full for a while. Both ends in
this process, over uvloop as the server runs, on a real abstract unix socket."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket

import pytest
import uvloop

from proxy import readfeed
from proxy.readfeed import ReadFeed
from tests.faultkit import eventually

pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')

ODD_KEYS = ["a/b/c", "é/ü 雪", "line\nbreak", "100% sure", "trailing/", " lead", "x" * 900]


@pytest.fixture(scope="module")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
    return policy


def new_feed() -> ReadFeed:
    feed = ReadFeed(multiprocessing.get_context("spawn"))
    feed.active.value = 1
    return feed


def raw_listener(feed: ReadFeed) -> socket.socket:
    """The supervisor's socket, read by hand: datagrams can be counted, or left queued."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(feed.address)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            return out


def decode(datagrams: list[bytes]) -> tuple[list[tuple[str, str]], list[list[str]]]:
    reads: list[tuple[str, str]] = []
    lists: list[list[str]] = []
    receiver = readfeed._Receiver(
        lambda b, k: reads.append((b, k)), lambda b, p, keys: lists.append([b, p, *keys])
    )
    for data in datagrams:
        receiver.datagram_received(data, None)
    return reads, lists


async def test_the_reads_of_a_turn_go_as_one_datagram_in_order() -> None:
    feed = new_feed()
    sock = raw_listener(feed)
    try:
        note = feed.sender()
        sent = [("bkt", f"{i:03d}/{k}") for i in range(40) for k in ODD_KEYS]
        for bucket, key in sent:
            note(bucket, key)
        note("bkt", "nul\0inside")  # not reported: NUL separates the reads
        assert drain(sock) == []  # nothing before the flush
        await asyncio.sleep(readfeed.FLUSH_S * 20)
        datagrams = drain(sock)
        # 40 x 7 reads of ~1.2 KiB in all would be 280 datagrams one by one
        assert len(datagrams) == 1, [len(d) for d in datagrams]
        assert decode(datagrams) == (sent, [])
    finally:
        sock.close()


async def test_nothing_is_sent_while_no_job_listens() -> None:
    feed = new_feed()
    feed.active.value = 0
    sock = raw_listener(feed)
    try:
        feed.sender()("bkt", "key")
        await asyncio.sleep(readfeed.FLUSH_S * 20)
        assert drain(sock) == []
    finally:
        sock.close()


def fill_queue(feed: ReadFeed) -> int:
    """Datagrams of another sender until the supervisor's queue takes no more."""
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    n = 0
    try:
        while True:
            filler.sendto(b"\1bkt/filler", feed.address)
            n += 1
    except BlockingIOError:
        return n
    finally:
        filler.close()


def worker_reads(datagrams: list[bytes]) -> list[tuple[str, str]]:
    """The reads in ``datagrams``, without fill_queue's."""
    return [r for r in decode(datagrams)[0] if r[1] != "filler"]


async def test_a_full_queue_delays_the_reads_without_losing_them() -> None:
    feed = new_feed()
    sock = raw_listener(feed)
    try:
        note = feed.sender()
        assert fill_queue(feed) > 0
        key = "k" * 1000
        sent = [("bkt", f"{i:06d}{key}") for i in range(readfeed.MAX_PENDING // 1100)]
        for bucket, k in sent:
            note(bucket, k)
        await asyncio.sleep(readfeed.FLUSH_S * 20)  # flushes that find the queue full
        assert feed._batcher()._pending > 0
        got: list[bytes] = []

        def all_came() -> bool:
            got.extend(drain(sock))
            return len(worker_reads(got)) >= len(sent)

        await eventually(all_came)
        assert worker_reads(got) == sent
    finally:
        sock.close()


async def test_past_max_pending_the_oldest_reads_are_dropped() -> None:
    feed = new_feed()
    sock = raw_listener(feed)
    try:
        note = feed.sender()
        blocker = feed._batcher()
        assert fill_queue(feed) > 0  # every flush finds it full until the drain below
        key = "k" * 1000
        total = 2 * readfeed.MAX_PENDING // len(key)
        sent = [("bkt", f"{i:06d}{key}") for i in range(total)]
        for bucket, k in sent:
            note(bucket, k)
        await asyncio.sleep(readfeed.FLUSH_S * 20)
        assert blocker._pending <= readfeed.MAX_PENDING
        got: list[bytes] = []

        def flushed() -> bool:
            got.extend(drain(sock))
            return blocker._pending == 0 and not blocker._batches

        await eventually(flushed)
        got.extend(drain(sock))
        reads = worker_reads(got)
        assert reads == sent[len(sent) - len(reads) :]  # the newest, in order
        assert len(sent) // 3 < len(reads) <= len(sent) // 2 + 1
    finally:
        sock.close()


async def test_a_listing_goes_behind_the_reads_before_it() -> None:
    feed = new_feed()
    got: list[object] = []
    transport = await feed.listen(
        lambda b, k: got.append(("read", b, k)), lambda b, p, keys: got.append((b, p, keys))
    )
    try:
        note, listed = feed.sender(), feed.list_sender()
        note("bkt", "before")
        keys = [f"p/{i:05d}-" + "y" * 200 for i in range(700)]  # spans several datagrams
        listed("bkt", "p/", keys)
        note("bkt", "after")

        def arrived() -> bool:
            return bool(got) and got[-1] == ("read", "bkt", "after")

        await eventually(arrived)
        assert got[0] == ("read", "bkt", "before")
        pages = got[1:-1]
        assert len(pages) > 1 and all(p[:2] == ("bkt", "p/") for p in pages)  # type: ignore[index]
        assert [k for p in pages for k in p[2]] == keys  # type: ignore[index]
    finally:
        transport.close()


async def test_no_supervisor_is_no_error() -> None:
    feed = new_feed()  # nobody bound the address
    note = feed.sender()
    for i in range(100):
        note("bkt", f"k{i}")
    await asyncio.sleep(readfeed.FLUSH_S * 20)
    assert feed._batcher()._pending == 0 and not feed._batcher()._batches
