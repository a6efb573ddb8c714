"""kit/http1.py against a tiny real asyncio HTTP server in this test: Content-Length, chunked and
HEAD answers, 1xx skipped, keep-alive reuse (and none after Connection: close or HTTP/1.0), the
keep-alive race retried on a fresh connection, read and connect timeouts, an answer released
early closes its connection, max_connections queues, backpressure bounds what is buffered of a
64 MiB body read slowly, and https with certificate verification."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.backends.kit.http1 import Http1Pool

Handler = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    """Answers each request by its path's handler; the handler returns False to stop serving
    the connection (which is then closed)."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.closed_by_client = 0
        self.sent = 0
        self.requests: list[str] = []
        self.none_open = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                line = head.split(b"\r\n", 1)[0].decode()
                self.requests.append(head.decode())
                path = line.split(" ")[1]
                if not await self.handlers[path](line, reader, writer):
                    return
        finally:
            self.open -= 1
            if not self.open:
                self.none_open.set()
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def answer(body: bytes, extra: str = "", status: str = "200 OK") -> Handler:
    async def handle(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        w.write(head if line.startswith("HEAD") else head + body)
        await w.drain()
        return True

    return handle


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handlers: dict[str, Handler]) -> Server:
        server = Server(handlers)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def pool(**kw: float) -> Http1Pool:
    return Http1Pool(int(kw.get("max_connections", 4)), kw.get("connect", 5.0), kw.get("read", 5.0))


async def get(p: Http1Pool, server: Server, path: str, method: str = "GET") -> tuple[int, bytes]:
    resp = await p.request(method, "http", f"127.0.0.1:{server.port}", path, {"X-Test": "1"})
    body = b"".join([piece async for piece in resp.pieces(65536)])
    return resp.status, body


async def test_content_length_chunked_head_and_reuse(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def chunked(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Amz-Meta-A: b\r\n\r\n")
        for part in (b"hello ", b"chunked ", b"world"):
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")
        return True

    async def interim(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    server = await serve(
        {
            "/cl": answer(b"x" * 100_000, 'ETag: "e"\r\n'),
            "/chunked": chunked,
            "/interim": interim,
            "/head": answer(b"y" * 1000),
        }
    )
    p = pool()
    try:
        assert await get(p, server, "/cl") == (200, b"x" * 100_000)
        resp = await p.request("GET", "http", f"127.0.0.1:{server.port}", "/chunked", {})
        assert resp.headers["x-amz-meta-a"] == "b"  # case-insensitive
        assert b"".join([x async for x in resp.pieces(4)]) == b"hello chunked world"
        assert await get(p, server, "/interim") == (200, b"ok")
        head = await p.request("HEAD", "http", f"127.0.0.1:{server.port}", "/head", {})
        assert head.status == 200 and head.headers["Content-Length"] == "1000"
        assert head.at_eof()
        head.release()
        assert await get(p, server, "/cl") == (200, b"x" * 100_000)
        assert server.connections == 1  # every answer read to its end: one connection reused
        assert f"Host: 127.0.0.1:{server.port}" in server.requests[0]
        assert "X-Test: 1" in server.requests[0]
    finally:
        await p.close()


async def test_no_reuse_after_connection_close_or_http10(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def http10(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return True  # the server would serve more: the client must not ask

    async def until_close(line: str, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await w.drain()
        return False

    server = await serve(
        {"/close": answer(b"ok", "Connection: close\r\n"), "/10": http10, "/eof": until_close}
    )
    p = pool()
    try:
        for n, path in enumerate(["/close", "/10", "/eof", "/close"], start=1):
            expected = b"all of it" if path == "/eof" else b"ok"
            assert await get(p, server, path) == (200, expected)
            assert server.connections == n
    finally:
        await p.close()


async def test_keepalive_race_is_retried_on_a_fresh_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """The server closes a kept-alive connection as the next request arrives (its idle timeout
    raced the request): the client sends it again on a new connection, once."""
    seen: set[int] = set()

    async def once(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if id(w) in seen:
            return False  # the second request on this connection: close without a byte
        seen.add(id(w))
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return True

    async def never(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        return False

    server = await serve({"/once": once, "/never": never})
    p = pool()
    try:
        assert await get(p, server, "/once") == (200, b"ok")
        assert await get(p, server, "/once") == (200, b"ok")
        assert server.connections == 2 and len(server.requests) == 3
        # A fresh connection that closes before answering is not retried: an error, once.
        p2 = pool()
        with pytest.raises(ConnectionError):
            await get(p2, server, "/never")
        await p2.close()
        assert len(server.requests) == 4
    finally:
        await p.close()


async def test_read_and_connect_timeouts(serve: Callable[..., Awaitable[Server]]) -> None:
    async def silent(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    async def stalls(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await w.drain()
        await asyncio.sleep(30)
        return False

    server = await serve({"/silent": silent, "/stalls": stalls})
    p = pool(read=0.3)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(TimeoutError):
                await get(p, server, "/silent")
            resp = await p.request("GET", "http", f"127.0.0.1:{server.port}", "/stalls", {})
            assert await resp.read(100) == b"abc"
            with pytest.raises(TimeoutError):
                await resp.read(100)
            resp.release()
        # Nothing listens: connecting fails as an OSError (what StoreCalls calls unreachable).
        await server.stop()
        await asyncio.sleep(0.05)
        with pytest.raises(OSError):
            await get(p, server, "/silent")
    finally:
        await p.close()


async def test_read_timeout_bounds_each_wait_not_the_answer(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """read_timeout bounds each wait for bytes: an answer that trickles in for longer than it,
    but faster between pieces, is read whole, on a connection whose timer an earlier answer's
    wait armed (it goes off mid-trickle and must wait on); a stall after it still times out."""

    async def trickles(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
        await w.drain()
        for piece in (b"ab", b"cd", b"ef", b"gh", b"ij"):
            await asyncio.sleep(0.15)
            w.write(piece)
            await w.drain()
        await asyncio.sleep(30)
        return False

    server = await serve({"/small": answer(b"s"), "/trickles": trickles})
    p = pool(read=0.6, max_connections=1)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(10):
            assert await get(p, server, "/small") == (200, b"s")
            resp = await p.request("GET", "http", f"127.0.0.1:{server.port}", "/trickles", {})
            got = b""
            while len(got) < 10:
                got += await resp.read(100)
            assert got == b"abcdefghij"
            waited = loop.time()
            with pytest.raises(TimeoutError):
                await resp.read(100)
            assert loop.time() - waited >= 0.5  # from the last wait's start, not the first's
            resp.release()
        assert server.connections == 1  # the trickle came on the first answer's connection
    finally:
        await p.close()


async def test_early_release_closes_the_connection(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve({"/big": answer(b"z" * (8 << 20)), "/small": answer(b"s")})
    p = pool()
    try:
        resp = await p.request("GET", "http", f"127.0.0.1:{server.port}", "/big", {})
        assert len(await resp.read(65536)) > 0
        resp.release()
        async with asyncio.timeout(10):
            await server.none_open.wait()
        assert server.connections == 1
        assert await get(p, server, "/small") == (200, b"s")
        assert server.connections == 2  # the early-released connection was not reused
    finally:
        await p.close()


async def test_max_connections_queue(serve: Callable[..., Awaitable[Server]]) -> None:
    async def slow(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.1)
        return await answer(b"ok")(line, reader, w)

    server = await serve({"/slow": slow})
    p = pool(max_connections=2)
    try:
        results = await asyncio.gather(*(get(p, server, "/slow") for _ in range(6)))
        assert results == [(200, b"ok")] * 6
        assert server.most_open <= 2 and server.connections == 2
    finally:
        await p.close()


async def test_backpressure_bounds_a_slowly_read_64_mib_body(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    size = 64 << 20
    block = b"b" * (1 << 20)
    server_ref: list[Server] = []

    async def huge(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()
            server_ref[0].sent += len(block)
        return True

    server = await serve({"/huge": huge})
    server_ref.append(server)
    p = pool()
    try:
        resp = await p.request("GET", "http", f"127.0.0.1:{server.port}", "/huge", {})
        got = 0
        for _ in range(20):  # a slow reader: 20 pieces, a pause after each
            got += len(await resp.read(65536))
            await asyncio.sleep(0.02)
        # Unpaused, localhost would have delivered all 64 MiB by now; paused, the server is
        # held back by the socket buffers (a few MiB at most).
        assert server.sent - got < 24 << 20, (server.sent, got)
        async for piece in resp.pieces(256 * 1024):
            got += len(piece)
        assert got == size
        assert await get(p, server, "/huge") == (200, b"b" * size)
        assert server.connections == 1
    finally:
        await p.close()


def _cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_verifies_the_certificate_with_sni(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path)
    names: list[str | None] = []
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    def remember(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name)

    tls.sni_callback = remember
    server = Server({"/s": answer(b"secure")})
    await server.start(tls)
    trusting = ssl.create_default_context(cafile=str(cert))
    p = Http1Pool(2, 5.0, 5.0, ssl_context=trusting)
    try:
        for _ in range(2):
            resp = await p.request("GET", "https", f"localhost:{server.port}", "/s", {})
            assert b"".join([x async for x in resp.pieces(1024)]) == b"secure"
        assert server.connections == 1 and names == ["localhost"]
    finally:
        await p.close()
    untrusting = Http1Pool(2, 5.0, 5.0)  # the system's CAs: the self-signed cert fails
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusting.request("GET", "https", f"localhost:{server.port}", "/s", {})
    finally:
        await untrusting.close()
        await server.stop()


async def test_a_flood_of_headers_is_refused(serve: Callable[..., Awaitable[Server]]) -> None:
    """A store answering endless headers costs a bounded amount of memory: the answer fails
    (an OSError, mapped like a broken connection) once it passes MAX_HEAD bytes of headers."""

    async def flood(line: str, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(20_000):  # ~1 MiB of headers
            w.write(b"X-Pad-%d: %s\r\n" % (i, b"p" * 40))
        w.write(b"Content-Length: 0\r\n\r\n")
        await w.drain()
        return True

    server = await serve({"/flood": flood, "/ok": answer(b"fine")})
    p = pool()
    try:
        with pytest.raises(OSError, match="bytes of headers"):
            await get(p, server, "/flood")
        assert await get(p, server, "/ok") == (200, b"fine")  # the pool goes on
    finally:
        await p.close()
