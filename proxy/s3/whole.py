"""A whole answer from memory (an inline object's GET, any HEAD) written in one go.

aiohttp's ``web.Response`` copies the headers into a multidict, then walks them three times
(content length, defaults, connection) before rendering. An answer whose headers we already
hold as a plain dict needs none of that: they are rendered once by aiohttp's own serializer
(which refuses CR/LF in a value, as for any response) and written with the body through the
connection's writer, so flow control (drain) stays aiohttp's. Only for keep-alive HTTP/1.1
requests (``fits``); any other goes the usual way.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

__all__ = ["WholeResponse", "fits", "respond"]

_REASONS = {200: "OK", 206: "Partial Content"}


def fits(request: web.BaseRequest, status: int) -> bool:
    return status in _REASONS and request.version == HttpVersion11 and request.keep_alive


class WholeResponse(web.StreamResponse):
    """Status ``status`` with ``fields`` as its headers and ``body`` (empty for HEAD, which
    still announces ``length``)."""

    def __init__(self, status: int, fields: dict[str, str], body: bytes, length: int) -> None:
        super().__init__(status=status, reason=_REASONS[status])
        self._fields = fields
        self._whole = body
        self._length = length

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        writer = request._payload_writer
        fields = self._fields
        fields["Content-Length"] = str(self._length)
        fields["Date"] = rfc822_formatted_time()
        fields["Server"] = SERVER_SOFTWARE
        self._keep_alive = True
        await writer.write_headers(f"HTTP/1.1 {self.status} {self.reason}", fields)  # type: ignore[arg-type]
        await writer.write_eof(b"" if request.method == "HEAD" else self._whole)
        self._eof_sent = True
        return None


def respond(
    request: web.BaseRequest, status: int, fields: dict[str, str], body: bytes, length: int
) -> web.StreamResponse:
    """The whole answer: a WholeResponse where it fits, else aiohttp's usual response."""
    if fits(request, status):
        return WholeResponse(status, fields, body, length)
    if request.method == "HEAD":
        resp = web.StreamResponse(status=status, headers=fields)
        resp.content_length = length
        return resp
    return web.Response(status=status, headers=fields, body=body)
