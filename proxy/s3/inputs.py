"""What a write request carries: its object bytes (de-framed, verified, 100-continue sent when
first read), small XML documents (DeleteObjects, CompleteMultipartUpload), the user metadata
and the headers kept with an object."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeXML
from aiohttp import HttpVersion11, web

from proxy import errors
from proxy.model import STORED_HEADERS
from proxy.s3.payload import payload as decoded_payload

MAX_XML_BODY = 1024 * 1024
_META_PREFIX = "x-amz-meta-"


def user_metadata(request: web.BaseRequest) -> dict[str, str]:
    """The x-amz-meta-* headers, names lower-cased. A value that is not US-ASCII is stored
    RFC 2047 encoded (``=?UTF-8?B?...?=``), the form S3 answers with, so every store keeps it
    and every client reads back what S3 would send.
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html#UserMetadata
    """
    out: dict[str, str] = {}
    for k, v in request.headers.items():
        if k.lower().startswith(_META_PREFIX):
            if not k.isascii():
                raise errors.InvalidArgument("User metadata names must be US-ASCII.")
            out[k[len(_META_PREFIX) :].lower()] = v if v.isascii() else _rfc2047(v)
    return out


def _rfc2047(value: str) -> str:
    """``value`` (aiohttp decodes header bytes as UTF-8, surrogate-escaping the rest) as one
    RFC 2047 encoded-word; bytes that are not UTF-8 cannot be named in any charset: a 400."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidArgument("User metadata values must be UTF-8.") from None
    return f"=?UTF-8?B?{base64.b64encode(raw).decode()}?="


def stored_headers(request: web.BaseRequest) -> dict[str, str]:
    out = {h: request.headers[h] for h in STORED_HEADERS if h in request.headers}
    encoding = out.get("Content-Encoding")
    if encoding is not None:  # aws-chunked is transport framing, never the object's encoding
        kept = [e.strip() for e in encoding.split(",") if e.strip() and e.strip() != "aws-chunked"]
        if kept:
            out["Content-Encoding"] = ", ".join(kept)
        else:
            del out["Content-Encoding"]
    return out


def content_type(request: web.BaseRequest) -> str:
    return request.headers.get("Content-Type") or "binary/octet-stream"


def payload_size(request: web.BaseRequest) -> int:
    decoded = request.headers.get("x-amz-decoded-content-length")
    raw = decoded if decoded is not None else request.headers.get("Content-Length")
    if raw is None or not raw.isascii() or not raw.isdigit():
        raise errors.MissingContentLength()
    return int(raw)


def payload(request: web.BaseRequest) -> AsyncIterator[bytes]:
    """The object bytes of a request body, de-framed (aws-chunked) and verified as the
    authentication layer's PayloadSpec describes (dispatch sets ``request["auth"]`` first)."""
    return _continued(request, decoded_payload(request, request["auth"].payload))


async def _continued(request: web.BaseRequest, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``, after telling a client that waits (Expect: 100-continue) to send it: only
    when the body is first read, so a refusal before that never asks for the body. Without
    it boto3 and the aws cli stall a second on every upload. aiohttp's low-level server
    leaves this to the application.
    https://www.rfc-editor.org/rfc/rfc9110#section-10.1.1
    """
    if (
        request.version >= HttpVersion11
        and request.headers.get("Expect", "").lower() == "100-continue"
        and not request.get("continue_sent")
    ):
        request["continue_sent"] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own expect handler: no body sent yet
    try:
        async for piece in body:
            yield piece
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


async def read_xml(request: web.BaseRequest) -> Element:
    if (request.content_length or 0) > MAX_XML_BODY:
        raise errors.MalformedXML("The XML body is too large.")
    payload_size(request)  # MissingContentLength, as before the body is read
    body = b""
    async for piece in payload(request):
        body += piece
        if len(body) > MAX_XML_BODY:
            raise errors.MalformedXML("The XML body is too large.")
    try:
        root: Element = SafeXML.fromstring(body)
    except Exception:  # defusedxml raises several kinds; all mean the same to the client
        raise errors.MalformedXML() from None
    return root


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def children(node: Element, name: str) -> list[Element]:
    return [c for c in node if local(c.tag) == name]


def text(node: Element, name: str) -> str | None:
    for c in node:
        if local(c.tag) == name:
            return c.text or ""
    return None
