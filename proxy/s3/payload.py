"""The request body as the object's bytes: aws-chunked framing removed, every claim verified.

``payload(request, spec)`` reads ``request.content`` piece by piece (never the whole body),
strips aws-chunked framing, checks each chunk signature and the trailer signature as they
arrive, and at the end the decoded length, x-amz-content-sha256, Content-MD5 and the
x-amz-checksum-* header or trailer.

Completion is the commit signal. The generator always holds back its most recent piece and
yields it only after the final checks have passed, so a consumer that streams into a store
sees an error (and never the end of iteration) when anything does not match: it must treat
the object as written only when ``async for`` finishes normally, and abort otherwise. Bytes
of a chunk are yielded before that chunk's signature is checked (the signature follows the
data); a bad signature raises before completion all the same.

https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html
https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming-trailers.html
https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming-unsigned-trailers.html

Hashing runs on the event loop, one piece (at most what one socket read gave) at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from proxy import errors
from proxy.s3 import checksums
from proxy.s3.auth import PayloadSpec

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_CHUNK_LINE = 4096  # "<hex size>;chunk-signature=<64 hex>" is about 90 bytes
MAX_TRAILER_LINE = 1024
MAX_TRAILERS = 16
_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_SIG = re.compile(rb"chunk-signature=([0-9a-f]{64})")
_SIGNED_MODES = ("streaming-signed", "streaming-signed-trailer")
_TRAILER_SIGNATURE = "x-amz-trailer-signature"


async def payload(request: web.BaseRequest, spec: PayloadSpec) -> AsyncGenerator[bytes, None]:
    """The decoded body, verified; see the module docstring for when errors are raised."""
    sums = _digests(spec)
    state = _State()
    reader = _Reader(request.content, request.get("body_idle_timeout"))
    source = _aws_chunked(reader, spec, state) if spec.chunked else reader.plain()
    held: bytes | None = None
    async with aclosing(source) as pieces:
        async for piece in pieces:
            for s in sums.values():
                s.update(piece)
            state.total += len(piece)
            if held:
                yield held
            held = piece
    computed = {alg: checksums.b64(s.digest()) for alg, s in sums.items()}
    _verify(spec, state, computed)
    spec.computed_checksums.update(computed)
    if held:
        yield held


def chunk_signature(key: bytes, timestamp: str, scope: str, previous: str, data_sha256: str) -> str:
    """The signature of one aws-chunked chunk, chained from the previous one (or the seed)."""
    sts = "\n".join(
        ("AWS4-HMAC-SHA256-PAYLOAD", timestamp, scope, previous, EMPTY_SHA256, data_sha256)
    )
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def trailer_signature(
    key: bytes, timestamp: str, scope: str, previous: str, trailers: Mapping[str, str]
) -> str:
    """The signature of the trailing headers, chained from the final (empty) chunk's."""
    canonical = "".join(f"{name}:{value}\n" for name, value in sorted(trailers.items()))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    sts = f"AWS4-HMAC-SHA256-TRAILER\n{timestamp}\n{scope}\n{previous}\n{digest}"
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


@dataclass
class _State:
    total: int = 0
    trailers: dict[str, str] = field(default_factory=dict)


def _digests(spec: PayloadSpec) -> dict[str, checksums.Checksum]:
    wanted = set(spec.want) | set(spec.checksums)
    if spec.mode == "sha256":
        wanted.add("sha256")
    if spec.content_md5 is not None:
        wanted.add("md5")
    if spec.sdk_algorithm:
        wanted.add(spec.sdk_algorithm)
    if spec.mode in ("streaming-unsigned-trailer", "streaming-signed-trailer"):
        wanted.update(t[len(checksums.HEADER_PREFIX) :] for t in spec.trailers)
    return {alg: checksums.new(alg) for alg in sorted(wanted)}


class _Reader:
    """A small buffer over the request's StreamReader: bounded lines and bounded reads."""

    def __init__(self, content: StreamReader, idle: float | None = None) -> None:
        """``idle``: seconds a read may wait for the client's next bytes (server.
        body_idle_timeout); aiohttp's server bounds only the request head, not the body."""
        self._content = content
        self._buf = bytearray()
        self._idle = idle

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle):
                return await self._content.readany()
        except TimeoutError:
            raise errors.RequestTimeout() from None
        except (HttpProcessingError, ConnectionError) as exc:
            raise errors.IncompleteBody() from exc

    async def some(self, n: int) -> bytes:
        """Between 1 and ``n`` bytes; IncompleteBody at the end of the body."""
        if self._buf:
            piece = bytes(self._buf[:n])
            del self._buf[:n]
            return piece
        data = await self._read()
        if not data:
            raise errors.IncompleteBody()
        if len(data) <= n:
            return data
        self._buf += memoryview(data)[n:]
        return data[:n]

    async def line(self, limit: int, *, eof_ok: bool = False) -> bytes | None:
        """One CRLF-terminated line without its CRLF; None at a clean end when ``eof_ok``."""
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > limit:
                raise _malformed("a framing line is too long")
            data = await self._read()
            if not data:
                if eof_ok and not self._buf:
                    return None
                raise errors.IncompleteBody()
            self._buf += data

    async def at_end(self) -> bool:
        return not self._buf and not await self._read()

    async def plain(self) -> AsyncGenerator[bytes, None]:
        while data := await self._read():
            yield data


async def _aws_chunked(
    reader: _Reader, spec: PayloadSpec, state: _State
) -> AsyncGenerator[bytes, None]:
    expect_signatures = spec.mode in _SIGNED_MODES
    key = spec.signing_key if expect_signatures else None
    previous = spec.seed_signature or ""
    decoded = 0
    while True:
        header = await reader.line(MAX_CHUNK_LINE)
        assert header is not None
        size, signature = _chunk_header(header, expect_signatures)
        if spec.decoded_length is not None and decoded + size > spec.decoded_length:
            raise errors.IncompleteBody(
                "The chunks carry more data than x-amz-decoded-content-length says."
            )
        chunk_hash = hashlib.sha256() if key is not None else None
        remaining = size
        while remaining:
            piece = await reader.some(remaining)
            remaining -= len(piece)
            if chunk_hash is not None:
                chunk_hash.update(piece)
            yield piece
        decoded += size
        if key is not None and chunk_hash is not None and signature is not None:
            expected = chunk_signature(
                key, spec.timestamp, spec.scope, previous, chunk_hash.hexdigest()
            )
            if not hmac.compare_digest(expected, signature):
                raise errors.SignatureDoesNotMatch(
                    "The chunk signature does not match the chunk's data."
                )
        previous = signature or ""
        if size == 0:
            break
        if await reader.line(2) != b"":
            raise _malformed("chunk data is not followed by CRLF")
    await _trailers(reader, spec, state, key, previous)
    if not await reader.at_end():
        raise _malformed("data follows the final chunk")


async def _trailers(
    reader: _Reader, spec: PayloadSpec, state: _State, key: bytes | None, previous: str
) -> None:
    """The lines after the final chunk, up to an empty line (or the end of the body)."""
    trailer_mode = spec.mode in ("streaming-unsigned-trailer", "streaming-signed-trailer")
    signature: str | None = None
    for _ in range(MAX_TRAILERS + 2):
        line = await reader.line(MAX_TRAILER_LINE, eof_ok=True)
        if not line:  # the empty line that ends the body, or its end
            break
        if not trailer_mode:
            raise _malformed("the final chunk is not followed by CRLF")
        name, sep, value = line.partition(b":")
        if not sep or not line.isascii():
            raise _malformed("a trailer line is not 'name:value'")
        lname, text = name.decode().strip().lower(), value.decode().strip()
        if lname == _TRAILER_SIGNATURE:
            signature = text
        elif lname not in spec.trailers:
            raise errors.InvalidRequest(f"The trailer {lname!r} was not declared in x-amz-trailer.")
        else:
            state.trailers[lname] = text
    else:
        raise _malformed("too many trailer lines")
    if spec.mode == "streaming-signed-trailer" and key is not None:
        if signature is None:
            raise errors.SignatureDoesNotMatch("The trailer signature is missing.")
        expected = trailer_signature(key, spec.timestamp, spec.scope, previous, state.trailers)
        if not hmac.compare_digest(expected, signature.lower()):
            raise errors.SignatureDoesNotMatch("The trailer signature does not match.")


def _chunk_header(line: bytes, signed: bool) -> tuple[int, str | None]:
    size_text, _, extension = line.partition(b";")
    if not _SIZE.fullmatch(size_text):
        raise _malformed("a chunk size is not hexadecimal")
    if not signed:
        return int(size_text, 16), None
    m = _SIG.fullmatch(extension)
    if m is None:
        raise _malformed("a chunk has no chunk-signature")
    return int(size_text, 16), m.group(1).decode()


def _verify(spec: PayloadSpec, state: _State, computed: Mapping[str, str]) -> None:
    expected_length = spec.decoded_length if spec.chunked else spec.content_length
    if expected_length is not None and state.total != expected_length:
        raise errors.IncompleteBody(
            f"The body carried {state.total} bytes, not the {expected_length} declared."
        )
    if spec.mode == "sha256" and spec.sha256 is not None:
        digest = checksums.decode("sha256", computed["sha256"])
        actual = digest.hex() if digest is not None else ""
        if not hmac.compare_digest(actual, spec.sha256):
            raise errors.XAmzContentSHA256Mismatch(
                ClientComputedContentSHA256=spec.sha256, S3ComputedContentSHA256=actual
            )
    if spec.content_md5 is not None:
        want = checksums.decode("md5", spec.content_md5)
        got = checksums.decode("md5", computed["md5"])
        if want is None:
            raise errors.InvalidDigest()
        if want != got:
            raise errors.BadDigest(
                "The Content-MD5 you specified did not match what we received.",
                ExpectedDigest=want.hex(),
                CalculatedDigest=(got or b"").hex(),
            )
    claims = dict(spec.checksums)
    if spec.mode in ("streaming-unsigned-trailer", "streaming-signed-trailer"):
        for name in spec.trailers:
            if name not in state.trailers:
                raise errors.InvalidRequest(f"The trailer {name} declared was not sent.")
            claims[name[len(checksums.HEADER_PREFIX) :]] = state.trailers[name]
    for alg, value in claims.items():
        claimed = checksums.decode(alg, value)
        if claimed is None:
            raise errors.InvalidRequest(f"Value for x-amz-checksum-{alg} is invalid.")
        if claimed != checksums.decode(alg, computed[alg]):
            raise errors.BadDigest(
                f"The {alg.upper()} you specified did not match the calculated checksum."
            )


def _malformed(why: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"Malformed aws-chunked body: {why}.")
