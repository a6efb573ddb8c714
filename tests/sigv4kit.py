"""Test helpers for SigV4: capture what boto3 would send, build aws-chunked bodies, send raw.

The chunk signing here is written from the AWS documentation on its own (not with the proxy's
code), checked against the documented example and against SeaweedFS, so a test that feeds its
output to the proxy compares two independent implementations.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.auth
from aiohttp import StreamReader, web
from aiohttp.test_utils import make_mocked_request
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from tests.conformance import Raw

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Wire:
    """One request as it goes over the wire: method, raw target, headers, body."""

    method: str
    target: str  # raw path and query, as sent
    headers: dict[str, str]
    body: bytes = b""

    def with_headers(self, **changes: str) -> Wire:
        headers = dict(self.headers)
        for name, value in changes.items():
            headers[name.replace("_", "-")] = value
        return Wire(self.method, self.target, headers, self.body)


class _Captured(Exception):
    pass


def capture(client: Any, operation: str, **params: Any) -> Wire:
    """What ``client.<operation>(**params)`` would send, signed, without sending it."""
    box: list[Any] = []

    def before_send(request: Any, **_: Any) -> None:
        box.append(request)
        raise _Captured

    client.meta.events.register_first("before-send.s3", before_send)
    try:
        getattr(client, operation)(**params)
    except _Captured:
        pass
    finally:
        client.meta.events.unregister("before-send.s3", before_send)
    prepared = box[0]
    return from_url(prepared.method, prepared.url, dict(prepared.headers.items()), prepared.body)


def from_url(method: str, url: str, headers: Mapping[str, Any], body: Any = b"") -> Wire:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray):
        data = bytes(body)
    else:
        data = body.read()
    text = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers.items()}
    if not any(k.lower() == "host" for k in text):
        text["Host"] = parts.netloc
    return Wire(method, target, text, data)


@contextmanager
def python_signer() -> Iterator[None]:
    """Make boto3 sign with botocore's pure-Python SigV4 instead of the CRT's."""
    with mock.patch.dict(
        botocore.auth.AUTH_TYPE_MAPS,
        {"s3v4": botocore.auth.S3SigV4Auth, "s3v4-query": botocore.auth.S3SigV4QueryAuth},
    ):
        yield


class _FixedPayloadSigner(botocore.auth.S3SigV4Auth):  # type: ignore[misc]
    def __init__(self, credentials: Credentials, region: str, content_sha256: str) -> None:
        super().__init__(credentials, "s3", region)
        self._content_sha256 = content_sha256

    def payload(self, request: Any) -> str:
        return self._content_sha256


def sign_header(
    method: str,
    host: str,
    target: str,
    headers: Mapping[str, str],
    access_key: str,
    secret: str,
    *,
    content_sha256: str,
    region: str = "us-east-1",
    body: bytes = b"",
) -> Wire:
    """Header-signed with botocore's Python signer and a given x-amz-content-sha256."""
    request = AWSRequest(method=method, url=f"http://{host}{target}", headers=dict(headers))
    signer = _FixedPayloadSigner(Credentials(access_key, secret), region, content_sha256)
    signer.add_auth(request)
    return Wire(method, target, {"Host": host, **dict(request.headers.items())}, body)


def signing_key(secret: str, date: str, region: str = "us-east-1") -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _hmac_hex(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed_chunks(
    data: bytes,
    chunk_size: int,
    key: bytes,
    timestamp: str,
    seed: str,
    *,
    trailer: tuple[str, str] | None = None,
    region: str = "us-east-1",
) -> bytes:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER) framing of ``data``."""
    scope = f"{timestamp[:8]}/{region}/s3/aws4_request"
    out = io.BytesIO()
    previous = seed
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    for piece in pieces:
        sts = "\n".join(
            (
                "AWS4-HMAC-SHA256-PAYLOAD",
                timestamp,
                scope,
                previous,
                EMPTY_SHA256,
                hashlib.sha256(piece).hexdigest(),
            )
        )
        previous = _hmac_hex(key, sts)
        out.write(f"{len(piece):x};chunk-signature={previous}\r\n".encode())
        if piece:
            out.write(piece + b"\r\n")
    if trailer is None:
        out.write(b"\r\n")
        return out.getvalue()
    name, value = trailer
    canonical = f"{name}:{value}\n"
    sts = "\n".join(
        (
            "AWS4-HMAC-SHA256-TRAILER",
            timestamp,
            scope,
            previous,
            hashlib.sha256(canonical.encode()).hexdigest(),
        )
    )
    out.write(f"{name}:{value}\r\n".encode())
    out.write(f"x-amz-trailer-signature:{_hmac_hex(key, sts)}\r\n\r\n".encode())
    return out.getvalue()


def unsigned_trailer_chunks(data: bytes, chunk_size: int, algorithm: str) -> bytes:
    """STREAMING-UNSIGNED-PAYLOAD-TRAILER framing made by botocore's own AwsChunkedWrapper."""
    from botocore.httpchecksum import _CHECKSUM_CLS, AwsChunkedWrapper

    wrapper = AwsChunkedWrapper(
        io.BytesIO(data),
        checksum_cls=_CHECKSUM_CLS[algorithm],
        checksum_name=f"x-amz-checksum-{algorithm}",
        chunk_size=chunk_size,
    )
    return bytes(wrapper.read())


def stream_reader(body: bytes, piece: int = 4096) -> StreamReader:
    """A request body as aiohttp's server would hand it over, ``piece`` bytes per read."""
    protocol = mock.Mock(_reading_paused=False)
    loop = asyncio.get_running_loop()
    reader = StreamReader(protocol, 2**16, loop=loop)

    async def feed() -> None:  # one piece per loop turn, as reads from a socket arrive
        for i in range(0, len(body), piece):
            reader.feed_data(body[i : i + piece])
            await asyncio.sleep(0)
        reader.feed_eof()

    _feeders.add(task := loop.create_task(feed()))
    task.add_done_callback(_feeders.discard)
    return reader


_feeders: set[asyncio.Task[None]] = set()


def mocked(wire: Wire, *, piece: int = 4096, with_body: bool = False) -> web.BaseRequest:
    """``wire`` as an aiohttp request (the body is attached when ``with_body``: needs a loop)."""
    kwargs: dict[str, Any] = {}
    if with_body:
        kwargs["payload"] = stream_reader(wire.body, piece)
    return make_mocked_request(wire.method, wire.target, CIMultiDict(wire.headers), **kwargs)


def send(base_url: str, wire: Wire) -> Raw:
    """Send ``wire`` byte for byte (its Host header included) to ``base_url``."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest(wire.method, wire.target, skip_host=True, skip_accept_encoding=True)
        names = {k.lower() for k in wire.headers}
        for name, value in wire.headers.items():
            conn.putheader(name, value)
        if wire.body and "content-length" not in names and "transfer-encoding" not in names:
            conn.putheader("Content-Length", str(len(wire.body)))
        conn.endheaders()
        if wire.body:
            conn.send(wire.body)
        resp = conn.getresponse()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@contextmanager
def shifted_clock(seconds: float) -> Iterator[None]:
    """botocore's signers (Python and CRT) sign as if the clock were ``seconds`` ahead."""
    import datetime

    import botocore.crt.auth

    real = botocore.auth.get_current_datetime

    def shifted(*args: Any, **kwargs: Any) -> datetime.datetime:
        return real(*args, **kwargs) + datetime.timedelta(seconds=seconds)

    with (
        mock.patch.object(botocore.auth, "get_current_datetime", shifted),
        mock.patch.object(botocore.crt.auth, "get_current_datetime", shifted),
    ):
        yield
