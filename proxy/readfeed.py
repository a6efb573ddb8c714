"""Workers -> supervisor: which keys the clients read, while a prefetch job wants to know.

With several workers the prefetcher runs in the supervisor, but the reads arrive in the
workers. Each worker sends ``bucket/key`` of a read as one datagram on a Linux abstract unix
socket, only while the shared ``active`` flag is set (a byte of shared memory: a read costs
nothing when no prefetch job runs). Sends never block: a datagram that finds the queue full is
dropped, and the prefetcher's window then only lags (it fetches less, never more).

A listing of a ``prefetch: listing`` bucket goes the same way, whatever the flag: ``\0bucket
\0prefix\0key\0key...`` in datagrams of at most ``LIST_DATAGRAM`` bytes (a listing never holds
NUL: XML cannot carry it). A dropped one is a page not prefetched.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from typing import Any

from proxy import log
from proxy.core.listing import OnList

OnRead = Callable[[str, str], None]
LIST_DATAGRAM = 60_000


class ReadFeed:
    def __init__(self, ctx: SpawnContext) -> None:
        self.address = f"\0slipstream-reads-{os.getpid()}-{os.urandom(6).hex()}"
        self.active: Any = ctx.Value("b", 0, lock=False)  # a c_byte in shared memory

    # -- a worker's side ------------------------------------------------------------------------
    def sender(self) -> OnRead:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        active, address = self.active, self.address

        def send(bucket: str, key: str) -> None:
            if not active.value:
                return
            try:
                sock.sendto(f"{bucket}/{key}".encode("utf-8", "surrogatepass"), address)
            except OSError:  # queue full or the supervisor gone: the window lags, no more
                pass

        return send

    def list_sender(self) -> OnList:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        address = self.address

        def send(bucket: str, prefix: str, keys: list[str]) -> None:
            if "\0" in prefix:
                return
            head = f"\0{bucket}\0{prefix}".encode("utf-8", "surrogatepass")
            out = bytearray(head)
            for key in keys:
                raw = b"\0" + key.encode("utf-8", "surrogatepass")
                if len(out) + len(raw) > LIST_DATAGRAM and len(out) > len(head):
                    _send(sock, bytes(out), address)
                    out = bytearray(head)
                out += raw
            if len(out) > len(head):
                _send(sock, bytes(out), address)

        return send

    # -- the supervisor's side ------------------------------------------------------------------
    async def listen(self, on_read: OnRead, on_list: OnList) -> asyncio.DatagramTransport:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024**2)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(on_read, on_list), sock=sock
        )
        return transport


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_read: OnRead, on_list: OnList) -> None:
        self._on_read, self._on_list = on_read, on_list

    def datagram_received(self, data: bytes, addr: Any) -> None:
        text = data.decode("utf-8", "surrogatepass")
        try:
            if text.startswith("\0"):
                bucket, prefix, *keys = text[1:].split("\0")
                self._on_list(bucket, prefix, keys)
            else:
                bucket, _, key = text.partition("/")
                self._on_read(bucket, key)
        except Exception:
            log.server.exception("prefetch read note failed")


def _send(sock: socket.socket, data: bytes, address: str) -> None:
    try:
        sock.sendto(data, address)
    except OSError:  # queue full or the supervisor gone: this page is not prefetched
        pass
