"""The supervisor handing prefetch fetches to its workers (proxy/warmfeed.py), in-process over
the core of tests/test_core_units.py (a real cache and fs store): both ends of the socket run
here, the "worker" end filling through its own counting ``warm``."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from proxy import errors, warmfeed
from proxy.config import MountConfig
from proxy.core import prefetch
from proxy.jobs.warm import drain
from proxy.routing import Mount, Router
from tests.faultkit import eventually
from tests.test_core_units import BUCKET, Core, core  # noqa: F401 (the fixture)

Warm = Callable[[Mount, str], Awaitable[int | None]]
Drain = Callable[[Mount, str], Awaitable[tuple[str, int]]]


# uvloop, as the server runs (its transports are not asyncio's classes). pytest-asyncio's new
# way (the loop-factories hook) would apply to every test of the suite, not this module's.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture(scope="module")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
    return policy


def counted(core: Core, calls: list[str]) -> Warm:  # noqa: F811
    async def warm(mount: Mount, key: str) -> int | None:
        calls.append(key)
        return await prefetch.warm(core.reads, mount, key)

    return warm


def drained(core: Core, calls: list[str]) -> Drain:  # noqa: F811
    async def run(mount: Mount, key: str) -> tuple[str, int]:
        calls.append(f"drain:{key}")
        return await drain(core.reads, mount, key)

    return run


def router_of(core: Core) -> Router:  # noqa: F811
    mounts = {BUCKET: MountConfig(name=BUCKET, backend="fs")}
    return Router(mounts, {"fs": core.store}, core.cache.cfg)


async def connected(core: Core) -> tuple[warmfeed.WarmDispatch, list[str], list[str], Any]:  # noqa: F811
    """A dispatch with one worker connected: (dispatch, its local calls, the worker's calls,
    the worker's transport)."""
    local: list[str] = []
    worker: list[str] = []
    dispatch = supervisor(core, local)
    await dispatch.listen()
    transport = await a_worker(core, dispatch, worker)
    await eventually(lambda: len(dispatch.workers) == 1, within=5)
    return dispatch, local, worker, transport


def supervisor(core: Core, calls: list[str]) -> warmfeed.WarmDispatch:  # noqa: F811
    """Its own fills counted in ``calls`` (a warm as the key, a drain as "drain:" + the key)."""
    return warmfeed.WarmDispatch(warmfeed.new_address(), counted(core, calls), drained(core, calls))


async def a_worker(core: Core, dispatch: warmfeed.WarmDispatch, calls: list[str]) -> Any:  # noqa: F811
    transport = await warmfeed.serve(
        dispatch.address, counted(core, calls), drained(core, calls), router_of(core)
    )
    assert transport is not None
    return transport


async def test_a_handed_fetch_fills_in_the_worker(core: Core) -> None:  # noqa: F811
    keys = ["plain", "naïve/ключ", "new\nline", "sp ace%2F"]
    for n, key in enumerate(keys):
        if "/" in key:
            (core.root / BUCKET / key).parent.mkdir(parents=True, exist_ok=True)
        core.put_file(key, b"z" * (100 + n))
    dispatch, local, worker, transport = await connected(core)
    sizes = await asyncio.gather(*(dispatch.warm(core.mount, k) for k in keys))
    assert sizes == [100, 101, 102, 103]
    assert sorted(worker) == sorted(keys) and local == []
    await core.reads.fills.wait_idle()  # answered once the bytes were in; the commits follow
    assert all(core.record(k) is not None for k in keys)
    assert await dispatch.warm(core.mount, "plain") is None  # cached now: nothing filled
    transport.close()
    await dispatch.close()


async def test_a_warm_jobs_object_drains_in_the_worker(core: Core) -> None:  # noqa: F811
    """A warm job's object (several chunks here) is read through to its end in the worker;
    the answer says whether it came from the store or was cached."""
    data = bytes(range(256)) * 40  # 10,240 bytes: three chunks of 4 KiB
    core.put_file("big", data)
    dispatch, local, worker, transport = await connected(core)
    assert await dispatch.drain(core.mount, "big") == ("backend", len(data))
    await core.reads.fills.wait_idle()  # its chunks committed
    assert await dispatch.drain(core.mount, "big") == ("cache", len(data))
    assert worker == ["drain:big", "drain:big"] and local == []
    rec = core.record("big")
    assert rec is not None and all(rec.has_chunk(i) for i in range(3))
    transport.close()
    await dispatch.close()


async def test_a_workers_error_comes_back_as_its_code(core: Core) -> None:  # noqa: F811
    dispatch, local, worker, transport = await connected(core)
    with pytest.raises(errors.S3Error) as missing:
        await dispatch.warm(core.mount, "never-written")
    assert isinstance(missing.value, errors.NoSuchKey)  # the same error as here
    with pytest.raises(errors.NoSuchKey):
        await dispatch.drain(core.mount, "never-written")
    other = Mount(name="elsewhere", backend=core.store, bucket=BUCKET, prefix="", metadata_ttl=None)
    with pytest.raises(errors.S3Error) as bucket:
        await dispatch.warm(other, "plain")
    assert bucket.value.code == "NoSuchBucket"  # the worker resolves the bucket by its name
    assert local == []
    transport.close()
    await dispatch.close()


async def test_with_no_worker_or_a_worker_gone_the_supervisor_fills(core: Core) -> None:  # noqa: F811
    core.put_file("a", b"a" * 500)
    core.put_file("b", b"b" * 600)
    local: list[str] = []
    dispatch = supervisor(core, local)
    await dispatch.listen()
    assert await dispatch.warm(core.mount, "a") == 500 and local == ["a"]  # none connected
    worker: list[str] = []
    transport = await a_worker(core, dispatch, worker)
    await eventually(lambda: len(dispatch.workers) == 1, within=5)
    core.store.gate.clear()  # the worker's fill waits on the store ...
    handed = asyncio.create_task(dispatch.warm(core.mount, "b"))
    await eventually(lambda: worker == ["b"], within=5)
    transport.close()  # ... and the worker goes away
    await eventually(lambda: not dispatch.workers, within=5)
    core.store.gate.set()
    assert await handed == 600
    assert local == ["a", "b"]
    await dispatch.close()


async def stand_in(
    core: Core,  # noqa: F811
    calls: list[str],
) -> tuple[socket.socket, socket.socket, asyncio.Task[Any]]:
    """A stand-in supervisor's socket, a worker connecting to it (``serve`` as a task, its
    calls in ``calls``) and the connection accepted."""
    address = warmfeed.new_address()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(1)
    server.setblocking(False)
    serving = asyncio.create_task(
        warmfeed.serve(address, counted(core, calls), drained(core, calls), router_of(core))
    )
    conn, _ = await asyncio.get_running_loop().sock_accept(server)
    return server, conn, serving


async def test_the_worker_reads_frames_split_and_joined(core: Core) -> None:  # noqa: F811
    """A stand-in supervisor greets the worker, writes one request a byte at a time, then two
    in one write."""
    for key in ("x", "y", "z"):
        core.put_file(key, key.encode() * 10)
    loop = asyncio.get_running_loop()
    worker: list[str] = []
    server, conn, serving = await stand_in(core, worker)
    await loop.sock_sendall(conn, b"\x01")  # the greeting: the worker is counted
    transport = await serving
    assert transport is not None

    def request(rid: int, key: str) -> bytes:
        head = struct.pack("!IBHH", rid, 0, len(BUCKET), len(key))
        return head + BUCKET.encode() + key.encode()

    for byte in request(7, "x"):
        await loop.sock_sendall(conn, bytes([byte]))
        await asyncio.sleep(0)
    await loop.sock_sendall(conn, request(8, "y") + request(9, "z"))
    answers: dict[int, tuple[int, int]] = {}
    buf = b""
    async with asyncio.timeout(5):
        while len(answers) < 3:
            buf += await loop.sock_recv(conn, 4096)
            while len(buf) >= 15:
                rid, outcome, size, n = struct.unpack_from("!IBqH", buf)
                answers[rid] = (outcome, size)
                buf = buf[15 + n :]
    assert answers == {7: (0, 10), 8: (0, 10), 9: (0, 10)}
    assert sorted(worker) == ["x", "y", "z"]
    transport.close()
    conn.close()
    server.close()


@pytest.mark.may_skip("runs a client as another user: needs root")
async def test_a_connection_from_another_user_is_refused(core: Core) -> None:  # noqa: F811
    if os.getuid() != 0:
        pytest.skip("needs root to run a process as another user")
    dispatch = supervisor(core, [])
    await dispatch.listen()
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM)\n"
        "s.connect(bytes.fromhex(sys.argv[1]))\n"
        "s.settimeout(5)\n"
        "print(repr(s.recv(10)))\n"
    )

    # a Python that user can run (this one may sit under /root)
    python = shutil.which("python3", path="/usr/bin") or sys.executable

    def run() -> str:
        return subprocess.run(
            [python, "-c", probe, dispatch.address.encode().hex()],
            user=65534,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()

    assert await asyncio.to_thread(run) == "b''"  # closed at once, never used
    assert dispatch.workers == []
    await dispatch.close()


async def test_a_worker_the_supervisor_does_not_greet_fills_nothing(core: Core) -> None:  # noqa: F811
    """The supervisor greets a worker it counts; anything else on the socket (here: a request
    before any greeting) and the worker closes, logs, and serves S3 alone."""
    loop = asyncio.get_running_loop()
    worker: list[str] = []
    server, conn, serving = await stand_in(core, worker)
    await loop.sock_sendall(conn, struct.pack("!IBHH", 1, 0, 1, 1) + b"bk")
    assert await serving is None
    assert await loop.sock_recv(conn, 100) == b""  # closed
    assert worker == []
    conn.close()
    server.close()


async def test_a_flush_has_each_worker_write_its_tallies_out(
    core: Core,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushes: list[int] = []
    monkeypatch.setattr(warmfeed.metrics, "flush", lambda: flushes.append(1))
    monkeypatch.setattr(warmfeed, "FLUSH_WAIT", 30.0)
    dispatch, _, _, transport = await connected(core)
    began = asyncio.get_running_loop().time()
    await dispatch.flush()  # returns once the worker has answered, not after FLUSH_WAIT
    assert asyncio.get_running_loop().time() - began < 5
    assert flushes == [1]
    assert not dispatch.workers[0].pending
    transport.close()
    await dispatch.close()


async def test_a_flush_waits_no_longer_than_flush_wait_for_a_silent_worker(
    core: Core,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warmfeed, "FLUSH_WAIT", 0.2)
    dispatch = supervisor(core, [])
    await dispatch.listen()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connects, never answers
    silent.setblocking(False)
    await asyncio.get_running_loop().sock_connect(silent, dispatch.address)
    await eventually(lambda: len(dispatch.workers) == 1, within=5)
    began = asyncio.get_running_loop().time()
    await dispatch.flush()
    assert 0.15 < asyncio.get_running_loop().time() - began < 2
    assert not dispatch.workers[0].pending  # the unanswered flush is not counted as in flight
    silent.close()
    await dispatch.close()
