"""Ceiling servers for the benchmark: the least an aiohttp + uvloop server can do per request.

``--mode mem``: every GET answers the same ``--size`` bytes from memory (200, no Range).
``--mode file``: every GET answers ``web.FileResponse(--file)`` (Range, sendfile, 206).
``--mode store``: every GET ``/BUCKET/KEY`` is one GET of that object from the S3 store at
``--endpoint`` through Slipstream's own store client (proxy/backends/s3/http.py: SigV4 with
the cached signing key, the keep-alive HTTP/1.1 pool), answered whole: the floor of a cache
miss (fills.py ``--floor``), with nothing of the cache, routing or S3 dispatch. The store's
keys come from the variables ``--access-key-env`` and ``--secret-key-env`` name.

``--workers N`` processes share the port with SO_REUSEPORT, like Slipstream's workers. The
parent only supervises; SIGTERM/SIGINT stop every worker::

    python loadtest/baseline_server.py --mode mem --size 16384 --port 9200 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

if __package__ in (None, ""):  # run as a script: make `proxy` importable (--mode store)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

__all__ = ["build_app", "main"]


def build_app(
    mode: str, size: int, file: Path | None, store: argparse.Namespace | None = None
) -> web.Application:
    app = web.Application()
    if mode == "store":
        assert store is not None
        _through_store(app, store)
    elif mode == "mem":
        payload = bytes(os.urandom(1024)) * (size // 1024) + os.urandom(size % 1024)

        async def mem(request: web.Request) -> web.Response:
            return web.Response(body=payload, content_type="application/octet-stream")

        app.router.add_get("/{tail:.*}", mem)
    else:
        assert file is not None
        path = file

        async def serve_file(request: web.Request) -> web.FileResponse:
            return web.FileResponse(path)

        app.router.add_get("/{tail:.*}", serve_file)
    return app


def _through_store(app: web.Application, args: argparse.Namespace) -> None:
    from botocore.credentials import Credentials

    from proxy.backends.s3.http import S3HttpReader
    from proxy.config import from_mapping

    backend = {"type": "s3", "endpoint": args.endpoint}
    for field in ("access_key_env", "secret_key_env"):
        if getattr(args, field):
            backend[field] = getattr(args, field)
    cfg = from_mapping(
        {"backends": {"store": backend}, "buckets": {"*": {"backend": "store"}}}, "--endpoint"
    ).backends["store"]
    reader = S3HttpReader(cfg)

    async def client(app: web.Application) -> Any:
        keys = cfg.credentials()
        await reader.start(Credentials(*keys) if keys else None)
        yield
        await reader.close()

    async def through(request: web.Request) -> web.Response:
        bucket, _, key = request.path[1:].partition("/")
        got = await reader.get(bucket, key, None, None, None)
        body = b"".join([piece async for piece in got.body])
        return web.Response(body=body, headers={"ETag": got.meta.etag})

    app.cleanup_ctx.append(client)
    app.router.add_get("/{tail:.*}", through)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(args.mode, args.size, args.file, args), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_port=True, backlog=1024)
    await site.start()
    await stop.wait()
    await runner.cleanup()


def _worker(args: argparse.Namespace) -> None:
    import uvloop

    uvloop.run(_serve(args))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Minimal aiohttp+uvloop ceiling server.")
    parser.add_argument("--mode", choices=("mem", "file", "store"), default="mem")
    parser.add_argument("--size", type=int, default=16 * 1024, help="body size (mem mode)")
    parser.add_argument("--file", type=Path, help="file to serve (file mode)")
    parser.add_argument("--endpoint", help="the S3 store's URL (store mode)")
    parser.add_argument("--access-key-env", help="variable holding the store's access key")
    parser.add_argument("--secret-key-env", help="variable holding the store's secret key")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode == "file" and (args.file is None or not args.file.is_file()):
        parser.error("--mode file needs --file pointing at an existing file")
    if args.mode == "store" and not args.endpoint:
        parser.error("--mode store needs --endpoint")
    if args.workers <= 1:
        _worker(args)
        return
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = [
        ctx.Process(target=_worker, args=(args,), name=f"baseline-{n}") for n in range(args.workers)
    ]

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.start()
    print(f"baseline {args.mode} on http://{args.host}:{args.port} x{args.workers}", flush=True)
    for p in procs:
        p.join()
    sys.exit(0)


if __name__ == "__main__":
    main()
