"""Supervisor -> workers: the prefetch fetches of the supervisor's jobs, filled in the workers.

With several workers the prefetch jobs run in the supervisor (they follow every worker's
reads, proxy/readfeed.py), but a fill costs ~1 ms of CPU: filled in the supervisor, every
job of the server would share one core, and the workers' reads of those keys would wait on
its fills across processes. So the supervisor hands each fetch to the worker with the fewest
in flight: ``WarmDispatch.warm`` sends ``(id, bucket, key)`` on that worker's connection and
the worker answers with the size filled (or "was cached", or the S3 error code) once the
fill is committed. A read of the key in that worker joins the fill in-process.

Each worker connects once at start to the supervisor's unix socket (Linux abstract
namespace, a random name) and serves on it until it stops; a connection from a process of
another user is refused. With no worker connected (starting, restarting), or when a worker
dies with fetches in flight, the supervisor fills those keys itself.

Frames, network byte order: a request is ``!IHH`` (id, bucket length, key length) then the
bucket and the key in UTF-8; an answer is ``!IBqH`` (id, outcome, size, code length) then the
code in ASCII.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from proxy import errors, log, metrics
from proxy.core.prefetch import Warm
from proxy.routing import Mount, Router

_REQUEST = struct.Struct("!IHH")
_ANSWER = struct.Struct("!IBqH")
_FILLED, _CACHED, _S3_ERROR = 0, 1, 2
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


def new_address() -> str:
    return f"\0slipstream-warms-{os.getpid()}-{os.urandom(6).hex()}"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _frames(
    buf: bytearray, head: struct.Struct, length: Callable[[tuple[Any, ...]], int]
) -> list[tuple[tuple[Any, ...], bytes]]:
    """The whole frames at the start of ``buf`` (removed from it): each its head and body."""
    out = []
    at = 0
    while len(buf) - at >= head.size:
        fields = head.unpack_from(buf, at)
        end = at + head.size + length(fields)
        if end > len(buf):
            break
        out.append((fields, bytes(buf[at + head.size : end])))
        at = end
    del buf[:at]
    return out


class WorkerGone(ConnectionError):
    """The worker filling a key went away before it answered."""


# -- the supervisor's side ----------------------------------------------------------------------


class _Worker(asyncio.Protocol):
    def __init__(self, dispatch: WarmDispatch) -> None:
        self._dispatch = dispatch
        self._buf = bytearray()
        self.pending: dict[int, asyncio.Future[int | None]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        _pid, uid, _gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        if uid != os.getuid():
            log.server.warning("warm feed: a connection from another user refused")
            transport.close()
            return
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._dispatch.workers.append(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        for (rid, outcome, size, _), code in _frames(self._buf, _ANSWER, lambda f: f[3]):
            fut = self.pending.pop(rid, None)
            if fut is None or fut.done():
                continue
            if outcome == _FILLED:
                fut.set_result(size)
            elif outcome == _CACHED:
                fut.set_result(None)
            else:
                fut.set_exception(_remote_error(code.decode("ascii", "replace")))

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._dispatch.workers:
            self._dispatch.workers.remove(self)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(WorkerGone("the worker filling it went away"))
        self.pending.clear()

    def send(self, rid: int, bucket: str, key: str) -> asyncio.Future[int | None]:
        assert self.transport is not None
        b, k = _encode(bucket), _encode(key)
        self.transport.write(_REQUEST.pack(rid, len(b), len(k)) + b + k)
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        return fut


def _remote_error(code: str) -> errors.S3Error:
    err = errors.S3Error(f"filled in a worker: {code}")
    err.code = code
    return err


class WarmDispatch:
    """The supervisor's ``Warm``: a key goes to the connected worker with the fewest fetches
    in flight; ``local`` fills it here when no worker can."""

    def __init__(self, address: str, local: Warm) -> None:
        self.address, self._local = address, local
        self.workers: list[_Worker] = []
        self._by_workers = metrics.PREFETCH_FILLS.labels("worker")
        self._by_us = metrics.PREFETCH_FILLS.labels("supervisor")
        self._ids = 0
        self._server: asyncio.AbstractServer | None = None

    async def listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.address)
        sock.listen(64)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Worker(self), sock=sock)

    async def warm(self, mount: Mount, key: str) -> int | None:
        if self.workers:
            worker = min(self.workers, key=lambda w: len(w.pending))
            self._ids = (self._ids + 1) & 0xFFFFFFFF
            try:  # cancelled, the answer still comes (the fill goes on): it is dropped then
                size = await worker.send(self._ids, mount.name, key)
            except WorkerGone:
                pass
            else:
                self._by_workers.inc()
                return size
        size = await self._local(mount, key)
        self._by_us.inc()
        return size

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for worker in list(self.workers):
            if worker.transport is not None:
                worker.transport.close()


# -- a worker's side ----------------------------------------------------------------------------


class _Supervisor(asyncio.Protocol):
    def __init__(self, warm: Warm, router: Router) -> None:
        self._warm, self._router = warm, router
        self._buf = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buf += data
        for (rid, blen, _), body in _frames(self._buf, _REQUEST, lambda f: f[1] + f[2]):
            bucket = body[:blen].decode("utf-8", "surrogatepass")
            key = body[blen:].decode("utf-8", "surrogatepass")
            task = asyncio.create_task(self._fill(rid, bucket, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill(self, rid: int, bucket: str, key: str) -> None:
        outcome, size, code = _FILLED, 0, ""
        try:
            filled = await self._warm(self._router.resolve(bucket), key)
        except errors.S3Error as exc:
            outcome, code = _S3_ERROR, exc.code
        except Exception:
            log.cache.exception("prefetch of a key failed in a worker")
            outcome, code = _S3_ERROR, errors.InternalError.code
        else:
            if filled is None:
                outcome = _CACHED
            else:
                size = filled
        if self.transport is not None and not self.transport.is_closing():
            raw = code.encode("ascii", "replace")
            self.transport.write(_ANSWER.pack(rid, outcome, size, len(raw)) + raw)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks:
            task.cancel()


async def serve(address: str, warm: Warm, router: Router) -> asyncio.Transport | None:
    """Connect to the supervisor at ``address`` and fill what it hands over with ``warm``
    until the returned transport is closed; None (logged) when it cannot connect."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, address)
        transport, _ = await loop.create_unix_connection(
            lambda: _Supervisor(warm, router), sock=sock
        )
    except OSError as exc:
        sock.close()
        log.server.warning("warm feed: cannot reach the supervisor (%s); it fills alone", exc)
        return None
    return transport
