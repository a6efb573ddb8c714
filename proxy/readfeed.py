"""Workers -> supervisor: which keys the clients read, while a prefetch job wants to know.

With several workers the prefetcher runs in the supervisor, but the reads arrive in the
workers. A worker notes ``bucket/key`` of each read only while the shared ``active`` flag is
set (a byte of shared memory: a read costs nothing when no prefetch job runs), and sends the
reads of the last millisecond as one datagram on a Linux abstract unix socket
(``\1bucket/key\0bucket/key...``, at most ``BATCH_BYTES``). One datagram per read cost the
supervisor a wake-up each, and a unix datagram queue holds few datagrams
(``net.unix.max_dgram_qlen`` is 10 on some kernels), so reads went unreported under load.
Sends never block: what finds the queue full is sent at the next flush, and beyond
``MAX_PENDING`` bytes the oldest is dropped (the prefetcher's window then only lags: it
fetches less, never more). A key holding NUL is not reported.

A listing of a ``prefetch: listing`` bucket goes the same way, whatever the flag, queued behind
the reads: ``\0bucket\0prefix\0key\0key...`` in datagrams of at most ``LIST_DATAGRAM`` bytes
(a listing never holds NUL: XML cannot carry it). A dropped one is a page not prefetched.
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
BATCH_BYTES = 60_000  # of reads in one datagram
MAX_PENDING = 4 * BATCH_BYTES  # of reads waiting for room in the queue; older ones are dropped
FLUSH_S = 0.001  # a read is reported at most this late (and when a batch is full)
READS = b"\1"


class ReadFeed:
    def __init__(self, ctx: SpawnContext) -> None:
        self.address = f"\0slipstream-reads-{os.getpid()}-{os.urandom(6).hex()}"
        self.active: Any = ctx.Value("b", 0, lock=False)  # a c_byte in shared memory
        self._worker_side: _Batcher | None = None

    # -- a worker's side ------------------------------------------------------------------------
    def sender(self) -> OnRead:
        """The reads' hook in a worker (call it on the worker's running loop)."""
        return self._batcher().note

    def list_sender(self) -> OnList:
        batcher = self._batcher()

        def send(bucket: str, prefix: str, keys: list[str]) -> None:
            if "\0" in prefix:
                return
            head = f"\0{bucket}\0{prefix}".encode("utf-8", "surrogatepass")
            out = bytearray(head)
            for key in keys:
                raw = b"\0" + key.encode("utf-8", "surrogatepass")
                if len(out) + len(raw) > LIST_DATAGRAM and len(out) > len(head):
                    batcher.datagram(out)
                    out = bytearray(head)
                out += raw
            if len(out) > len(head):
                batcher.datagram(out)

        return send

    def _batcher(self) -> _Batcher:
        if self._worker_side is None:
            self._worker_side = _Batcher(self.active, self.address)
        return self._worker_side

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


class _Batcher:
    def __init__(self, active: Any, address: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._active, self._address = active, address
        self._loop = asyncio.get_running_loop()
        self._batches: list[bytearray] = []  # oldest first; each at most BATCH_BYTES
        self._pending = 0  # their bytes
        self._timer: asyncio.TimerHandle | None = None

    def note(self, bucket: str, key: str) -> None:
        if not self._active.value or "\0" in key:
            return
        raw = f"{bucket}/{key}".encode("utf-8", "surrogatepass")
        batches = self._batches
        if not batches or batches[-1][:1] != READS or len(batches[-1]) + len(raw) >= BATCH_BYTES:
            batches.append(bytearray(READS))
        else:
            batches[-1] += b"\0"
        batches[-1] += raw
        self._pending += 1 + len(raw)  # the separator or READS, and the read
        self._arm()

    def datagram(self, data: bytearray) -> None:
        """Queue a whole datagram (a listing's page) behind the reads noted before it."""
        self._batches.append(data)
        self._pending += len(data)
        self._arm()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        self._timer = None
        batches = self._batches
        while batches:
            try:
                self._sock.sendto(batches[0], self._address)
            except BlockingIOError:  # the queue is full: again at the next flush
                break
            except OSError:  # the supervisor is gone: nobody to tell
                batches.clear()
                self._pending = 0
                return
            self._pending -= len(batches.pop(0))
        while self._pending > MAX_PENDING:
            self._pending -= len(batches.pop(0))
        if batches:
            self._arm()


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_read: OnRead, on_list: OnList) -> None:
        self._on_read, self._on_list = on_read, on_list

    def datagram_received(self, data: bytes, addr: Any) -> None:
        text = data.decode("utf-8", "surrogatepass")
        try:
            if text.startswith("\0"):
                bucket, prefix, *keys = text[1:].split("\0")
                self._on_list(bucket, prefix, keys)
            elif text.startswith("\1"):
                on_read = self._on_read
                for read in text[1:].split("\0"):
                    bucket, _, key = read.partition("/")
                    on_read(bucket, key)
        except Exception:
            log.server.exception("prefetch read note failed")
