"""A lean HTTP/1.1 keep-alive client for a store's hot GET and HEAD: asyncio Protocols and the
httptools response parser (llhttp, as uvicorn uses it), no request or response body layers.

aiohttp's client spends about as much CPU per small GET as the rest of a cold fill (request
building, timers, writer, payload streams); a store's hottest calls need only: one request line
and headers out, a parsed status and headers in, and a body streamed with backpressure.

- A pool of keep-alive connections per (scheme, host, port); at most ``max_connections`` in
  use at once across them (a request waits for a free one, in order, as aiohttp's connector
  limit). A connection goes back only once its response was read to the end and both sides
  keep it alive (HTTP/1.1 without ``Connection: close``); one released early is closed.
- A reused connection that fails before any byte of its answer (the server closed it while it
  sat idle: the keep-alive race) is replaced by a fresh one, once; only GET and HEAD are sent.
- ``connect_timeout`` bounds connecting (TLS included); ``read_timeout`` bounds each wait for
  bytes (the headers, then each piece of body), as aiohttp's sock_connect and sock_read.
  Timeouts raise TimeoutError, a broken or unparsable connection ConnectionError (an OSError):
  the errors StoreCalls maps to "could not be reached".
- Bodies: Content-Length, chunked, or until close; 1xx answers skipped; HEAD has none. Reading
  pauses while more than HIGH_WATER bytes wait unread and resumes when they fall to LOW_WATER.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from proxy.memo import remember
from proxy.slots import Slots

HIGH_WATER = 2 * 64 * 1024
LOW_WATER = 64 * 1024
MAX_HEAD = 64 * 1024  # bytes of response headers, at most (aiohttp: 8190 per field, 100 fields)
KEEPALIVE = 15.0  # seconds an idle connection is kept (aiohttp's keepalive_timeout)
_PORTS = {"http": 80, "https": 443}


_NAMES: dict[bytes, str] = {}  # header names as sent, decoded (few: decoded once each)
_NAMES_MAX = 512


def _name(raw: bytes) -> str:
    return remember(_NAMES, raw, raw.decode("utf-8", "surrogateescape"), _NAMES_MAX)


class Http1Error(ConnectionError):
    """The connection broke, or the server answered something that is not HTTP/1.x."""


class _Stale(Http1Error):
    """The connection closed before any byte of the answer came."""


@lru_cache(maxsize=256)
def address(scheme: str, netloc: str) -> tuple[str, int]:
    """(host, port) to connect to for ``netloc`` ("host", "host:port", "[v6]:port")."""
    parts = urlsplit(f"//{netloc}")
    return parts.hostname or netloc, parts.port or _PORTS[scheme]


class Response:
    """One answer: ``status``, ``headers`` (case-insensitive), the body by ``read``. Call
    ``release`` when done (reading to the end through ``pieces`` does it)."""

    __slots__ = ("status", "headers", "method", "_conn", "_pool", "_key", "_released")

    def __init__(
        self,
        conn: _Connection,
        pool: Http1Pool,
        key: tuple[str, str, int],
        method: str,
        status: int,
        headers: CIMultiDict[str],
    ) -> None:
        self.status = status
        self.headers = headers
        self.method = method
        self._conn = conn
        self._pool = pool
        self._key = key
        self._released = False

    def at_eof(self) -> bool:
        return self._conn.complete and not self._conn.body

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body; b"" at its end."""
        return await self._conn.read(n)

    async def pieces(self, size: int) -> AsyncGenerator[bytes, None]:
        """The body in pieces of at most ``size`` bytes; released at its end."""
        while piece := await self._conn.read(size):
            yield piece
        self.release()

    def release(self) -> None:
        """Done with this answer: its connection goes back to the pool if the body was read to
        the end and both sides keep it alive, else it is closed."""
        if not self._released:
            self._released = True
            self._pool.put_back(self._key, self._conn, self.at_eof())

    close = release


class _Connection(asyncio.Protocol):
    """One connection; one exchange at a time. Also the parser's callbacks."""

    def __init__(self, read_timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._parser: httptools.HttpResponseParser | None = None
        self._head = False
        self._got_bytes = False
        self._header_list: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._until_close = False
        self.status = 0
        self.headers: CIMultiDict[str] | None = None
        self.complete = False
        self.keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # the loop time the wait under way times out at
        self._timer: asyncio.TimerHandle | None = None

    # -- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self.complete:  # nothing asked: the connection is unusable
            self.close()
            return
        self._got_bytes = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._head_bytes > MAX_HEAD:
                self._fail(Http1Error(f"the store's answer has over {MAX_HEAD} bytes of headers"))
            else:
                self._fail(Http1Error(f"unparsable answer from the store: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()  # a wait under way ends below
        if self._parser is None or self.complete:
            return
        if self.headers is not None and self._until_close:
            self._finish()  # a body delimited by the connection's end
        elif self._got_bytes:
            self._fail(Http1Error("the store closed the connection mid-answer"))
        else:
            self._fail(_Stale("the store closed the connection before answering"))

    def close(self) -> None:
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- one exchange

    async def exchange(self, request: bytes, head: bool) -> None:
        """Send ``request``; return once the answer's status and headers are in."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._head = head
        self._got_bytes = False
        self._header_list = []
        self._head_bytes = 0
        self._until_close = False
        self.headers = None
        self.complete = False
        self.keep_alive = False
        self._error = None
        self.body.clear()
        self._buffered = 0
        if self.closed:
            raise _Stale("the connection is closed")
        self.transport.write(request)
        while self.headers is None:
            await self._wait()

    async def read(self, n: int) -> bytes:
        body = self.body
        while not body:
            if self.complete:
                return b""
            await self._wait()
        piece = body.popleft()
        if len(piece) > n:
            body.appendleft(piece[n:])
            piece = piece[:n]
        else:
            while body and len(piece) + len(body[0]) <= n:
                piece += body.popleft()
        self._buffered -= len(piece)
        if self._paused and self._buffered <= LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return piece

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        if self._read_timeout:
            # One timer per connection, not one per wait: each wait moves the deadline on;
            # the timer, when it fires early (armed by an earlier wait), re-arms itself for it.
            self._deadline = self._loop.time() + self._read_timeout
            if self._timer is None:
                self._timer = self._loop.call_at(self._deadline, self._time_out)
        try:
            await waiter
        finally:
            self._waiter = None

    def _time_out(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait under way: the next one arms it again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._time_out)
            return
        self._error = TimeoutError("no answer from the store within read_timeout")
        waiter.set_exception(self._error)
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _finish(self) -> None:
        self.complete = True
        self._parser = None
        self._wake()

    # -- parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD:  # stops feed_data (a callback error: data_received)
            raise Http1Error("too many header bytes")
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self._header_list = []
            self._head_bytes = 0
            return
        self.status = status
        names = _NAMES
        self.headers = headers = CIMultiDict(
            [
                (names.get(k) or _name(k), v.decode("utf-8", "surrogateescape"))
                for k, v in self._header_list
            ]
        )
        self.keep_alive = parser.should_keep_alive()
        if self._head:
            self._finish()
            return
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._until_close = (
            not chunked and "Content-Length" not in headers and status not in (204, 304)
        )
        if self._until_close:
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headers is None or self.complete:  # the end of a 1xx, or of a HEAD's answer
            return
        parser = self._parser
        if parser is not None:
            self.keep_alive = self.keep_alive and parser.should_keep_alive()
        self._finish()


class Http1Pool:
    """Keep-alive connections per (scheme, host, port); ``max_connections`` in use at most."""

    def __init__(
        self,
        max_connections: int,
        connect_timeout: float | None,
        read_timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl_context
        self._keepalive = keepalive
        self._slots = Slots(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._live: set[_Connection] = set()

    async def request(
        self, method: str, scheme: str, netloc: str, target: str, headers: Mapping[str, str]
    ) -> Response:
        """Send ``method target`` to ``scheme://netloc`` (GET or HEAD, no body); the answer's
        status and headers. Raises TimeoutError or ConnectionError (OSError)."""
        lines = [f"{method} {target} HTTP/1.1"]
        if "Host" not in headers:
            lines.append(f"Host: {netloc}")
        for k, v in headers.items():
            if "\r" in v or "\n" in v:
                raise ValueError(f"header {k} holds a line break")
            lines.append(f"{k}: {v}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        host, port = address(scheme, netloc)
        key = (scheme, host, port)
        await self._slots.take(None)
        conn = self._idle_one(key)
        try:
            reused = conn is not None
            if conn is None:
                conn = await self._connect(scheme, host, port)
            try:
                await conn.exchange(request, method == "HEAD")
            except _Stale:
                if not reused:
                    raise
                self._drop(conn)
                conn = await self._connect(scheme, host, port)  # the keep-alive race: once
                await conn.exchange(request, method == "HEAD")
        except BaseException:
            if conn is not None:
                self._drop(conn)
            self._slots.release()
            raise
        assert conn.headers is not None
        return Response(conn, self, key, method, conn.status, conn.headers)

    def _idle_one(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive:
                return conn
            self._drop(conn)
        return None

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        conn = _Connection(self._read_timeout)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except BaseException:
            conn.close()
            raise
        self._live.add(conn)
        return conn

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._live.discard(conn)

    def put_back(self, key: tuple[str, str, int], conn: _Connection, done: bool) -> None:
        """A response is finished with: keep its connection if it can serve another."""
        self._slots.release()
        idle = self._idle.setdefault(key, [])
        if done and conn.keep_alive and not conn.closed and len(idle) < self._max:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            self._drop(conn)

    async def close(self) -> None:
        for conn in list(self._live):
            conn.close()
        self._live.clear()
        self._idle.clear()
