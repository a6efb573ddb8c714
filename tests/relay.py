"""Counting HTTP reverse proxy ("relay") used by tests and the benchmark.

The relay forwards every request verbatim to a target origin: method, raw path and query
string, and all end-to-end headers including ``Host`` and ``Authorization`` (so AWS SigV4
signatures computed for the relay's address still verify at the target). Bodies are
streamed in both directions. Optionally every request is delayed by a fixed latency
(to emulate a remote object store), and requests are counted per ``(method, path)``.

For fault tests the relay can also throttle each response body (``bandwidth``, bytes per
second per response) and cut responses short (``cut_after``: forward that many body bytes,
then abort the connection). Both are plain attributes and may be changed while it runs.

Use it from async code (``async with CountingRelay(...)``), from sync code in a
background thread (``with CountingRelay(...)``), or as a separate process::

    python tests/relay.py --listen 127.0.0.1:9100 --target http://127.0.0.1:8333 \
        --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections import Counter
from types import TracebackType

import aiohttp
from aiohttp import web
from yarl import URL

__all__ = ["CountingRelay", "main", "parse_listen"]

# Connection-level headers (RFC 9110 section 7.6.1) are never forwarded. ``Expect`` is
# answered by the relay itself (aiohttp sends ``100 Continue``); SigV4 never signs it.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Headers aiohttp's client would otherwise add on its own; we send only what we got.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_CHUNK = 256 * 1024
_SLOW_CHUNK = 16 * 1024  # smaller pieces keep a throttled stream smooth
_SHUTDOWN_GRACE = 1.0  # seconds close() lets in-flight forwards finish


class CountingRelay:
    """Reverse proxy to ``target`` that counts the requests it forwards.

    Counting happens when a request arrives, before the optional latency and before the
    request is forwarded. Paths in :attr:`counts` are percent-decoded and exclude the
    query string, e.g. ``("GET", "/bucket/some key")``.
    """

    def __init__(
        self,
        target: str,
        *,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        bandwidth: float = 0.0,
        cut_after: int | None = None,
    ) -> None:
        self.target = target.rstrip("/")
        self.latency = latency
        self.bandwidth = bandwidth  # bytes/s per response body; 0: unlimited
        self.cut_after = cut_after  # abort each response after this many body bytes
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self.in_flight = 0  # requests being forwarded now
        self.most_in_flight = 0  # the most at once since start or the last reset
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- counters -------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Total number of requests received since start or the last :meth:`reset`."""
        with self._lock:
            return sum(self._counts.values())

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """Snapshot of request counts keyed by ``(method, decoded path)``."""
        with self._lock:
            return dict(self._counts)

    def count_of(self, method: str, path: str) -> int:
        with self._lock:
            return self._counts[(method.upper(), path)]

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self.most_in_flight = self.in_flight

    # -- addresses ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("relay is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- async lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("relay already started")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Bodies pass verbatim: a "Content-Encoding: gzip" request body is not inflated.
        # A forward still streaming at close must not hold the test's teardown for aiohttp's
        # default 60 s grace: a relay that closes cuts its connections after a short one.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            auto_decompress=False,
            shutdown_timeout=_SHUTDOWN_GRACE,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, backlog=1024)
        await site.start()
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> CountingRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- threaded lifecycle (for sync code) -----------------------------------------

    def start_thread(self, timeout: float = 10.0) -> None:
        """Run the relay on a private event loop in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("relay thread already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="counting-relay", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout)
        except BaseException:
            self.stop_thread()
            raise

    def stop_thread(self, timeout: float = 30.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> CountingRelay:
        self.start_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    # -- forwarding -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._counts[(request.method, request.path)] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._forward(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        url = URL(self.target + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
                await response.prepare(request)
                bandwidth, cut_after = self.bandwidth, self.cut_after
                piece = _SLOW_CHUNK if bandwidth > 0 else _CHUNK
                sent = 0
                async for chunk in upstream.content.iter_chunked(piece):
                    if cut_after is not None and sent + len(chunk) > cut_after:
                        await response.write(chunk[: cut_after - sent])
                        _abort(request)
                        return response
                    await response.write(chunk)
                    sent += len(chunk)
                    if bandwidth > 0:
                        await asyncio.sleep(len(chunk) / bandwidth)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"relay: upstream error: {exc!r}\n")


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    relay = CountingRelay(args.target, latency=args.latency_ms / 1000.0, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with relay:
        print(f"relay listening on {relay.url} -> {relay.target}", flush=True)
        await stop.wait()
    print(f"relay forwarded {relay.count} requests", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Counting HTTP reverse proxy.")
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0))
    parser.add_argument("--target", required=True, help="origin URL, e.g. http://127.0.0.1:8333")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added per request")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
