"""loadtest/leanget.py, the training benchmark's GET client, against a real aiohttp server:
bodies intact whatever their size, connections kept alive and reused, Range passed on, every
answer's status given back, a server that closes the connection or sends a chunked body an
error (never a short or wrong body counted as read)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from loadtest.leanget import LeanError, LeanSession
from tests.servers import serve_app

BIG = os.urandom(5 * 1024 * 1024 + 3)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def obj(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        body = bytes([n % 251]) * n
        rng = request.headers.get("Range")
        if rng:
            first, last = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            return web.Response(status=206, body=body[first : last + 1])
        return web.Response(body=body)

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404, body=b"<Error><Code>NoSuchKey</Code></Error>")

    async def closing(_: web.Request) -> web.Response:
        return web.Response(body=b"bye", headers={"Connection": "close"})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"part")
        await resp.write_eof()
        return resp

    async def silent(_: web.Request) -> web.Response:
        await asyncio.sleep(2)  # past the client's 0.2 s
        return web.Response(body=b"late")

    app = web.Application()
    app.router.add_get("/silent", silent)
    app.router.add_get("/obj/{n}", obj)
    app.router.add_get("/big", big)
    app.router.add_get("/missing", missing)
    app.router.add_get("/closing", closing)
    app.router.add_get("/chunked", chunked)
    async with serve_app(app) as where:
        yield f"http://{where}"


async def test_bodies_come_whole_over_reused_connections(server: str) -> None:
    session = LeanSession(server, limit=4)
    try:
        sizes = [0, 1, 100, 16 * 1024, 70_000] * 8
        answers = await asyncio.gather(*(session.get(f"/obj/{n}") for n in sizes))
        for n, (status, body) in zip(sizes, answers, strict=True):
            assert status == 200 and body == bytes([n % 251]) * n
        assert len(session.idle) <= 4  # never more connections than the limit
        kept = list(session.idle)
        status, body = await session.get("/big")
        assert status == 200 and body == BIG
        assert session.idle[-1] in kept  # a kept-alive connection served it
        status, body = await session.get("/obj/1000", {"Range": "bytes=10-19"})
        assert status == 206 and body == bytes([1000 % 251]) * 10
        status, body = await session.get("/missing")
        assert status == 404 and b"NoSuchKey" in body
    finally:
        await session.close()


async def test_a_closing_server_and_a_chunked_body(server: str) -> None:
    session = LeanSession(server, limit=2)
    try:
        assert await session.get("/closing") == (200, b"bye")
        assert not session.idle  # told to close: not reused
        with pytest.raises(LeanError):
            await session.get("/chunked")  # no Content-Length: an error, not a short body
        assert await session.get("/obj/5") == (200, bytes([5]) * 5)
    finally:
        await session.close()


async def test_only_http_bases() -> None:
    with pytest.raises(ValueError):
        LeanSession("https://127.0.0.1:1", limit=1)


async def test_a_silent_server_times_out(server: str) -> None:
    session = LeanSession(server, limit=1, timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await session.get("/silent")
        assert not session.idle  # its connection is dropped, not reused
        assert await session.get("/obj/3") == (200, bytes([3]) * 3)
    finally:
        await session.close()
