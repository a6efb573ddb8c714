"""A load generator's HTTP/1.1 GET client that costs little CPU per request.

The training benchmark's readers share this 2-core machine with the proxy, the store and the
relay. aiohttp's client spends ~0.2 ms of CPU a request here (a third of a core at 1,500
requests/s), CPU that a training job's data loader would take from its own cores, not from the
node's cache. ``LeanSession`` keeps a pool of keep-alive connections, one asyncio protocol
each, writes one request and reads one answer sized by its Content-Length; nothing else of
HTTP (no chunked bodies, no redirects, no cookies, no decompression): an answer it cannot read
that way is an error, never a wrong count.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

__all__ = ["LeanError", "LeanSession"]

MAX_HEAD = 64 * 1024


class LeanError(Exception):
    """The server's answer was not one this client reads (or the connection failed)."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.status = 0
        self.need = -1  # body bytes still to come; -1 while the head is incomplete
        self.head_end = 0
        self.keep = True
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(LeanError(f"connection lost: {exc!r}" if exc else "connection closed"))

    def _fail(self, exc: Exception) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf.clear()
        self.need = -1
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail(LeanError("response head too large"))
                return
            try:
                self._parse_head(bytes(self.buf[:end]))
            except (ValueError, IndexError) as exc:
                self.keep = False
                self._fail(LeanError(f"unreadable response head: {exc}"))
                return
            self.head_end = end + 4
        if len(self.buf) - self.head_end >= self.need:
            body = bytes(self.buf[self.head_end : self.head_end + self.need])
            if len(self.buf) - self.head_end > self.need:
                self.keep = False  # bytes past the answer: do not reuse this connection
            w, self.waiter = self.waiter, None
            if w is not None and not w.done():
                w.set_result((self.status, body))

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        length = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                self.keep = False
            elif name == b"transfer-encoding":
                raise ValueError("chunked bodies are not read by this client")
        if length < 0:
            raise ValueError("no Content-Length")
        self.need = length


class LeanSession:
    """GETs against one ``http://host:port`` base, at most ``limit`` connections open."""

    def __init__(self, base: str, limit: int, timeout: float = 600.0) -> None:
        parts = urlsplit(base)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"LeanSession: http://host:port only, not {base!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authority = parts.netloc.encode("ascii")
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(limit)
        self.timeout = timeout  # per GET, connecting included (aiohttp's total timeout)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """The answer's status and body; raises LeanError (or OSError, or TimeoutError after
        ``timeout`` seconds) when it fails."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        data = f"GET {path} HTTP/1.1\r\nHost: ".encode("ascii") + self.authority
        data += f"\r\n{extra}\r\n".encode("ascii")
        async with self.slots, asyncio.timeout(self.timeout):
            while self.idle and self.idle[-1].lost:  # closed by the server while idle
                self._drop(self.idle.pop())
            conn = self.idle.pop() if self.idle else await self._connect()
            try:
                answer = await conn.request(data)
            except BaseException:  # a timeout included: the connection's state is unknown
                self._drop(conn)
                raise
            if conn.keep and not conn.lost:
                self.idle.append(conn)
            else:
                self._drop(conn)
            return answer

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        return conn

    @staticmethod
    def _drop(conn: _Conn) -> None:
        if conn.transport is not None:
            conn.transport.close()

    async def close(self) -> None:
        for conn in self.idle:
            self._drop(conn)
        self.idle.clear()
