"""A network's latency, without a network's CPU: a TCP relay that delays the request side.

    .venv/bin/python loadtest/netdelay.py --listen 127.0.0.1:9100 --target 127.0.0.1:8080 \
        --latency-ms 20

Each accepted connection opens one to the target; bytes from the client reach the target
``latency`` seconds after they arrived, bytes back pass at once. An HTTP exchange therefore
takes the latency on top of the target's own time, as a far store's round trip does. No
HTTP is parsed: a 16 KiB GET costs the relay two reads, two writes and a timer (~0.1 ms of
its process's CPU, measured), where ``tests/relay.py`` (an aiohttp server and client, which
counts and can throttle or cut answers for fault tests) costs about half a millisecond. On
a machine whose cores the client, store and proxy share, that half millisecond per request is
CPU a real network would not take from them. Backpressure holds both ways: a side whose peer
cannot keep up stops being read.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.relay import parse_listen  # noqa: E402

__all__ = ["DelayRelay", "main"]


class _Half(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side's protocol."""

    def __init__(self, delay: float) -> None:
        self.delay = delay  # seconds added to what this side receives before it is passed on
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []  # received before the peer connected
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        elif self.delay > 0:
            asyncio.get_running_loop().call_later(self.delay, peer.send, data)
        else:
            peer.send(data)

    def send(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool:
        self._later(self._peer_eof)
        return True  # the other direction may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._later(self._peer_close)

    # flow control: our transport's buffer is full -> stop reading the peer
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _later(self, fn: Callable[[], None]) -> None:
        # after the delayed bytes already on their way
        loop = asyncio.get_running_loop()
        if self.delay > 0:
            loop.call_later(self.delay, fn)
        else:
            loop.call_soon(fn)

    def _peer_eof(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()

    def _peer_close(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()

    def link(self, peer: _Half) -> None:
        self.peer = peer
        pending, self.pending = self.pending, []
        for data in pending:
            self.data_received(data)


class DelayRelay:
    """Listens on ``host:port``; relays each connection to ``target`` (``host:port``)."""

    def __init__(self, target: str, latency: float, host: str = "127.0.0.1", port: int = 0):
        self.target_host, _, target_port = target.rpartition(":")
        self.target_port = int(target_port)
        self.latency = latency
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> _Half:
        client = _Half(self.latency)
        asyncio.get_running_loop().create_task(self._connect(client))
        return client

    async def _connect(self, client: _Half) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: _Half(0.0), self.target_host, self.target_port
            )
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        upstream.peer = client
        if client.closed:
            upstream.transport.close()  # type: ignore[union-attr]
            return
        client.link(upstream)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    relay = DelayRelay(args.target, args.latency_ms / 1000.0, host, port)
    await relay.start()
    print(f"netdelay listening on {host}:{relay.port} -> {args.target}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0))
    ap.add_argument("--target", required=True, help="HOST:PORT of the server behind")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added per request (20)")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
