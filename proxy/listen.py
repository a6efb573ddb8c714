"""Binding the listeners: an address that cannot be bound stops the server, named.

Each failure becomes one ``ListenError`` whose message names the address and its config field
(``listen`` or ``admin_listen``) and says why, e.g. ``cannot listen on 127.0.0.1:9900
(listen): Address already in use``.
"""

from __future__ import annotations

import asyncio
import os
import socket

from aiohttp import web

from proxy.errors import ListenError


def _error(field: str, address: str, exc: OSError) -> ListenError:
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        reason = exc.strerror or str(exc)
    else:  # the event loop's text repeats the address; the plain reason is enough
        reason = os.strerror(exc.errno)
    return ListenError(f"cannot listen on {address} ({field}): {reason}")


async def start_site(site: web.TCPSite, field: str, address: str) -> None:
    """Start ``site``; raises ListenError when its address cannot be bound."""
    try:
        await site.start()
    except OSError as exc:
        raise _error(field, address, exc) from exc


async def probe(field: str, address: str, host: str, port: int, *, reuse_port: bool) -> None:
    """Bind ``host:port`` as a listener would, without listening, and let it go at once.

    Run before the slow parts of a start (the cache check, the workers), so that an address
    the listener will not get stops the server then. Raises ListenError.
    """
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            asyncio.Protocol, host, port, reuse_port=reuse_port, start_serving=False
        )
    except OSError as exc:
        raise _error(field, address, exc) from exc
    server.close()
    await server.wait_closed()
