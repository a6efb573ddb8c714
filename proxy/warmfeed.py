"""Supervisor -> workers: the fetches of the supervisor's jobs, filled in the workers.

With several workers the jobs (prefetch and warm-up) run in the supervisor (prefetch follows
every worker's reads, proxy/readfeed.py), but a fill costs ~1 ms of CPU: filled in the
supervisor, every job of the server would share one core, and the workers' reads of those
keys would wait on its fills across processes. So the supervisor hands each key to the worker
with the fewest in flight: ``WarmDispatch.warm`` (a prefetch job's key: ``prefetch.warm``) or
``WarmDispatch.drain`` (a warm job's object: ``jobs.warm.drain``) sends ``(id, op, bucket,
key)`` on that worker's connection, and the worker answers with the object's size and whether
it was cached already (or the S3 error code): a prefetch key once its bytes are in (its commit
follows; proxy/core/prefetch.py, ``warm``), a warm job's object once its fills committed (the
job may pin it next). A read of the key in that worker joins the fill in-process.

The same connection carries a scrape's flush: before the admin listener answers /metrics,
``WarmDispatch.flush`` asks every worker to write its tallies out (``metrics.flush``; a
worker counts in plain numbers, proxy/metrics.py) and waits for their answers, at most
FLUSH_WAIT, so a scrape sees every count made before it.

Each worker connects once at start to the supervisor's unix socket (Linux abstract
namespace, a random name) and serves on it until it stops; a connection from a process of
another user is refused; a worker is ready once the supervisor has greeted it (one byte), so
keys go to the workers from the moment the server is. With no worker connected (starting,
restarting), or when a worker dies with keys in flight, the supervisor fills those keys
itself.

Frames, network byte order: a request is ``!IBHH`` (id, op, bucket length, key length) then
the bucket and the key in UTF-8 (a flush's are empty); an answer is ``!IBqH`` (id, outcome,
size, code length) then the code in ASCII. The frames one side writes in a turn of its event
loop go out in one write.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Literal, cast

from proxy import errors, log, metrics
from proxy.core.prefetch import Warm
from proxy.routing import Mount, Router

Drain = Callable[[Mount, str], Awaitable[tuple[str, int]]]  # its source ("cache"...) and size
Kind = Literal["prefetch", "warm"]

_REQUEST = struct.Struct("!IBHH")
_ANSWER = struct.Struct("!IBqH")
_WARM, _DRAIN, _FLUSH = 0, 1, 2  # ops
_FILLED, _CACHED, _S3_ERROR = 0, 1, 2  # outcomes
_HELLO = b"\x01"  # the supervisor's first byte: this worker is one it hands keys to
GREETING_TIMEOUT = 10.0
FLUSH_WAIT = 0.5  # a scrape waits no longer than this for a busy worker's counts
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


class _Coalesced:
    """Frames written in one turn of the event loop go out in one write (a write per frame cost
    a syscall and a wake-up of the peer each: ~3% of a worker's CPU under a prefetch job)."""

    __slots__ = ("transport", "_out")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._out = bytearray()

    def write(self, frame: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out += frame

    def _flush(self) -> None:
        out, self._out = bytes(self._out), bytearray()
        if not self.transport.is_closing():
            self.transport.write(out)


class WorkerGone(ConnectionError):
    """The worker filling a key went away before it answered."""


# -- the supervisor's side ----------------------------------------------------------------------


class _Worker(asyncio.Protocol):
    def __init__(self, dispatch: WarmDispatch) -> None:
        self._dispatch = dispatch
        self._buf = bytearray()
        self.pending: dict[int, asyncio.Future[tuple[bool, int]]] = {}
        self.transport: asyncio.Transport | None = None
        self._frames: _Coalesced | None = None

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
        self._frames = _Coalesced(self.transport)
        self._dispatch.workers.append(self)
        self.transport.write(_HELLO)  # the worker is ready once it knows it is counted

    def data_received(self, data: bytes) -> None:
        self._buf += data
        for (rid, outcome, size, _), code in _frames(self._buf, _ANSWER, lambda f: f[3]):
            fut = self.pending.pop(rid, None)
            if fut is None or fut.done():
                continue
            if outcome == _S3_ERROR:
                fut.set_exception(_remote_error(code.decode("ascii", "replace")))
            else:
                fut.set_result((outcome == _CACHED, size))

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._dispatch.workers:
            self._dispatch.workers.remove(self)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(WorkerGone("the worker filling it went away"))
        self.pending.clear()

    def send(self, rid: int, op: int, bucket: str, key: str) -> asyncio.Future[tuple[bool, int]]:
        """The answer to come: (was cached, size)."""
        assert self._frames is not None
        b, k = _encode(bucket), _encode(key)
        self._frames.write(_REQUEST.pack(rid, op, len(b), len(k)) + b + k)
        fut: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        return fut


def _s3_errors(cls: type[errors.S3Error]) -> dict[str, type[errors.S3Error]]:
    """Each S3 error code's class (the first of a code found)."""
    out: dict[str, type[errors.S3Error]] = {}
    for sub in cls.__subclasses__():
        out.setdefault(sub.code, sub)
        for code, found in _s3_errors(sub).items():
            out.setdefault(code, found)
    return out


_ERRORS = _s3_errors(errors.S3Error)


def _remote_error(code: str) -> errors.S3Error:
    """The error a worker answered, as its class (its standard message)."""
    cls = _ERRORS.get(code)
    if cls is not None:
        return cls()
    err = errors.S3Error(f"a worker's fill failed: {code}")
    err.code = code
    return err


class WarmDispatch:
    """The supervisor's jobs' fills: a key goes to the connected worker with the fewest in
    flight; ``local_warm`` and ``local_drain`` fill it here when no worker can."""

    def __init__(self, address: str, local_warm: Warm, local_drain: Drain) -> None:
        self.address = address
        self._local_warm, self._local_drain = local_warm, local_drain
        self.workers: list[_Worker] = []
        self._counts = {
            (kind, process): metrics.Tally(metrics.JOB_FILLS.labels(kind, process))
            for kind in ("prefetch", "warm")
            for process in ("worker", "supervisor")
        }
        self._ids = 0
        self._server: asyncio.AbstractServer | None = None

    async def listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.address)
        sock.listen(64)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Worker(self), sock=sock)

    async def warm(self, mount: Mount, key: str) -> int | None:
        """``prefetch.warm`` in a worker: the size filled, None when it was cached."""
        answer = await self._handed("prefetch", _WARM, mount, key)
        if answer is None:
            return await self._local_warm(mount, key)
        cached, size = answer
        return None if cached else size

    async def drain(self, mount: Mount, key: str) -> tuple[str, int]:
        """``jobs.warm.drain`` in a worker: the object's source and size."""
        answer = await self._handed("warm", _DRAIN, mount, key)
        if answer is None:
            return await self._local_drain(mount, key)
        cached, size = answer
        return ("cache" if cached else "backend"), size

    async def _handed(self, kind: Kind, op: int, mount: Mount, key: str) -> tuple[bool, int] | None:
        """A worker's answer; None when no worker could (the caller fills it here)."""
        if self.workers:
            worker = min(self.workers, key=lambda w: len(w.pending))
            try:  # cancelled, the answer still comes (the fill goes on): it is dropped then
                answer = await worker.send(self._next_id(), op, mount.name, key)
            except WorkerGone:
                pass
            else:
                self._counts[kind, "worker"].inc()
                return answer
        self._counts[kind, "supervisor"].inc()
        return None

    def _next_id(self) -> int:
        self._ids = (self._ids + 1) & 0xFFFFFFFF  # a frame's id is 32 bits (``!I``)
        return self._ids

    async def flush(self) -> None:
        """Every connected worker's tallies written out (those that answer within
        FLUSH_WAIT: a scrape is not held up by a stuck worker; its counts follow within
        metrics.FLUSH_EVERY)."""
        asked = []
        for worker in self.workers:
            rid = self._next_id()
            asked.append((worker, rid, worker.send(rid, _FLUSH, "", "")))
        if not asked:
            return
        await asyncio.wait([fut for _, _, fut in asked], timeout=FLUSH_WAIT)
        for worker, rid, fut in asked:
            if fut.done():
                fut.exception()  # a worker gone meanwhile: retrieved, not logged
            else:
                fut.cancel()
                worker.pending.pop(rid, None)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for worker in list(self.workers):
            if worker.transport is not None:
                worker.transport.close()


# -- a worker's side ----------------------------------------------------------------------------


class _Supervisor(asyncio.Protocol):
    def __init__(self, warm: Warm, drain: Drain, router: Router) -> None:
        self._warm, self._drain, self._router = warm, drain, router
        self._buf = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()
        self.transport: asyncio.Transport | None = None
        self._frames: _Coalesced | None = None
        self.greeted = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._frames = _Coalesced(self.transport)

    def data_received(self, data: bytes) -> None:
        if not self.greeted.done():
            if data[:1] != _HELLO:
                log.server.warning("warm feed: the supervisor did not greet; closing")
                self.greeted.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.greeted.set_result(True)
            data = data[1:]
        self._buf += data
        for (rid, op, blen, _), body in _frames(self._buf, _REQUEST, lambda f: f[2] + f[3]):
            if op == _FLUSH:
                metrics.flush()
                self._answer(rid, _FILLED, 0, "")
                continue
            bucket = body[:blen].decode("utf-8", "surrogatepass")
            key = body[blen:].decode("utf-8", "surrogatepass")
            task = asyncio.create_task(self._fill(rid, op, bucket, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill(self, rid: int, op: int, bucket: str, key: str) -> None:
        outcome, size, code = _FILLED, 0, ""
        try:
            mount = self._router.resolve(bucket)
            if op == _DRAIN:
                source, size = await self._drain(mount, key)
                outcome = _CACHED if source == "cache" else _FILLED
            else:
                filled = await self._warm(mount, key)
                outcome, size = (_CACHED, 0) if filled is None else (_FILLED, filled)
        except errors.S3Error as exc:
            outcome, code = _S3_ERROR, exc.code
        except Exception:
            log.cache.exception("a job's fill failed in a worker")
            outcome, code = _S3_ERROR, errors.InternalError.code
        self._answer(rid, outcome, size, code)

    def _answer(self, rid: int, outcome: int, size: int, code: str) -> None:
        if self._frames is not None:  # (dropped at its flush if the connection is closing)
            raw = code.encode("ascii", "replace")
            self._frames.write(_ANSWER.pack(rid, outcome, size, len(raw)) + raw)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeted.done():
            self.greeted.set_result(False)
        for task in self._tasks:
            task.cancel()


async def serve(address: str, warm: Warm, drain: Drain, router: Router) -> asyncio.Transport | None:
    """Connect to the supervisor at ``address`` and fill what it hands over (``warm``: a
    prefetch job's key, ``drain``: a warm job's object) until the returned transport is
    closed; None (logged) when it cannot connect."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, address)
        transport, supervisor = await loop.create_unix_connection(
            lambda: _Supervisor(warm, drain, router), sock=sock
        )
    except OSError as exc:
        sock.close()
        log.server.warning("warm feed: cannot reach the supervisor (%s); it fills alone", exc)
        return None
    try:  # counted among its workers (so handed keys from now on), or refused
        async with asyncio.timeout(GREETING_TIMEOUT):
            greeted = await asyncio.shield(supervisor.greeted)
    except TimeoutError:
        greeted = False
    if not greeted:
        log.server.warning("warm feed: the supervisor did not take this worker; it fills alone")
        transport.close()
        return None
    return transport
