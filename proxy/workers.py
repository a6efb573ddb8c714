"""The supervisor's worker processes: spawned, watched, restarted when one dies, stopped.

A worker that cannot bind the S3 address exits with ``EXIT_CANNOT_LISTEN``; restarting it
would fail the same way, so the supervisor stops the server instead.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from prometheus_client import multiprocess

from proxy import log
from proxy.errors import ListenError

EXIT_CANNOT_LISTEN = 3
WATCH_INTERVAL = 1.0

Main = Callable[[Any, MpEvent], None]


def _entry(main: Main, arg: Any, ready: MpEvent) -> None:
    """A worker process: ``main(arg, ready)``, with a bind failure turned into its exit code."""
    try:
        main(arg, ready)
    except ListenError as exc:
        log.server.error("%s", exc)
        sys.exit(EXIT_CANNOT_LISTEN)


class WorkerPool:
    """``count`` processes running ``main(arg, ready)``; each sets ``ready`` once it serves.

    ``main`` and ``arg`` must pickle: workers are spawned, not forked. ``address`` is the S3
    listen address, named in the error when a worker cannot bind it.
    """

    def __init__(self, main: Main, arg: Any, count: int, address: str) -> None:
        self._main, self._arg, self._count, self._address = main, arg, count, address
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[tuple[BaseProcess, MpEvent]] = []

    def __len__(self) -> int:
        return len(self._procs)

    def _spawn(self) -> tuple[BaseProcess, MpEvent]:
        ready = self._ctx.Event()
        proc = self._ctx.Process(
            target=_entry, args=(self._main, self._arg, ready), name="slipstream-worker"
        )
        proc.start()
        return proc, ready

    def start(self) -> None:
        self._procs.extend(self._spawn() for _ in range(self._count))

    def ready(self) -> bool:
        return all(r.is_set() and p.is_alive() for p, r in self._procs)

    async def watch(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, restart any worker that died.

        Raises ListenError when a worker could not bind the S3 address.
        """
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=WATCH_INTERVAL)
            except TimeoutError:
                for n, (proc, _) in enumerate(self._procs):
                    if not proc.is_alive() and not stop.is_set():
                        self._procs[n] = self._replace(proc)

    def _replace(self, proc: BaseProcess) -> tuple[BaseProcess, MpEvent]:
        if proc.exitcode == EXIT_CANNOT_LISTEN:
            reason = "a worker could not bind it"
            raise ListenError(f"cannot listen on {self._address} (listen): {reason}")
        log.server.error("worker %s exited with %s; restarting it", proc.pid, proc.exitcode)
        multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
        return self._spawn()

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker, wait up to ``grace`` s in all, then SIGKILL what is left."""
        for proc, _ in self._procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc, _ in self._procs:
            await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
