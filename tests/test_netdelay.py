"""loadtest/netdelay.py, the latency relay of the training benchmark: bytes pass intact both
ways, large bodies under backpressure, many connections at once, each request no sooner than
the latency, and a dead target closes the client's connection instead of hanging it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from loadtest.netdelay import DelayRelay
from tests.servers import serve_app

LATENCY = 0.03
BIG = os.urandom(3 * 1024 * 1024 + 7)
HUGE = BIG * 8  # more than the kernel's socket buffers hold: the relay must stop reading


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=8 * 1024 * 1024)

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=HUGE)

    app.router.add_get("/big", big)
    app.router.add_get("/huge", huge)
    app.router.add_post("/echo", echo)
    async with serve_app(app) as where:
        yield where


async def test_bytes_pass_intact_and_late(origin: str) -> None:
    relay = DelayRelay(origin, LATENCY)
    await relay.start()
    url = f"http://127.0.0.1:{relay.port}"
    try:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.get(f"{url}/big") as r:
                assert r.status == 200 and await r.read() == BIG
            assert time.monotonic() - started >= LATENCY

            async def echo(n: int) -> bytes:
                body = n.to_bytes(4, "big") * (256 * 1024)
                async with session.post(f"{url}/echo", data=body) as r:
                    assert await r.read() == body
                return body

            await asyncio.gather(*(echo(n) for n in range(24)))
    finally:
        await relay.close()


async def test_a_dead_target_closes_the_connection() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now
    relay = DelayRelay(f"127.0.0.1:{port}", LATENCY)
    await relay.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{relay.port}/x") as r:
                    await r.read()
    finally:
        await relay.close()


async def test_a_slow_reader_gets_every_byte(origin: str) -> None:
    relay = DelayRelay(origin, LATENCY)
    await relay.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect
        sock.connect(("127.0.0.1", relay.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /huge HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        got = bytearray()
        async with asyncio.timeout(60):  # a relay that never resumes reading fails, not hangs
            while chunk := await reader.read(64 * 1024):  # the relay's buffer fills meanwhile
                got += chunk
                await asyncio.sleep(0.001)
        writer.close()
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == HUGE
    finally:
        await relay.close()
