"""Signature Version 2 (HMAC-SHA1): what boto3 still uses for presigned URLs by default.

``boto3.client("s3").generate_presigned_url(...)`` without ``signature_version="s3v4"`` gives
``?AWSAccessKeyId=...&Signature=...&Expires=...``; old tools send ``Authorization: AWS
AKID:signature``. The string to sign comes from botocore's own ``HmacV1Auth``, fed the method,
the raw path and query as received and the client's headers. Path-style requests only: a
virtual-hosted request signs a path (``/bucket/key``) that is not the one it sends.

https://docs.aws.amazon.com/AmazonS3/latest/userguide/RESTAuthentication.html
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from botocore.auth import HmacV1Auth
from botocore.compat import HTTPHeaders

from proxy import errors

QUERY_PARAMS = frozenset(("AWSAccessKeyId", "Signature", "Expires"))


@dataclass(frozen=True)
class SignedV2:
    access_key: str
    signature: str  # base64 of the HMAC-SHA1
    expires: int | None  # presigned: the epoch second it stops working; None: header auth


def signs_header(lname: str) -> bool:
    """SigV2 signs this header (a lower-case name): Content-MD5, Content-Type, x-amz-*."""
    return lname.startswith("x-amz-") or lname in ("content-md5", "content-type")


def signs_any(names: Iterable[str]) -> bool:
    """Any of these header names is one SigV2 signs."""
    return any(signs_header(name.lower()) for name in names)


def is_presigned(query: str) -> bool:
    return "AWSAccessKeyId=" in query and "Signature=" in query


def parse_header(value: str) -> SignedV2:
    access_key, sep, signature = value.strip()[4:].strip().rpartition(":")
    if not sep or not access_key or not signature:
        raise errors.InvalidArgument("Authorization header is invalid -- one and only one ' '")
    return SignedV2(access_key, signature, None)


def parse_query(query: str) -> SignedV2:
    params: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name in QUERY_PARAMS:
            params[name] = unquote(value)
    expires = params.get("Expires", "")
    if not params.get("AWSAccessKeyId") or not params.get("Signature") or not expires:
        raise errors.AccessDenied(
            "Query-string authentication requires the Signature, Expires and AWSAccessKeyId "
            "parameters"
        )
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
        raise errors.AccessDenied("Invalid date (should be seconds since epoch)")
    return SignedV2(params["AWSAccessKeyId"], params["Signature"], int(expires))


def verify(request: web.BaseRequest, signed: SignedV2, secret: bytes) -> None:
    """SignatureDoesNotMatch unless ``signed.signature`` signs this request under ``secret``."""
    path, _, query = request.raw_path.partition("?")
    headers = HTTPHeaders()
    for name, value in request.headers.items():
        lname = name.lower()
        if signs_header(lname):
            headers[lname] = value
    dates = [request.headers.get("Date", "")]
    if signed.expires is not None:
        dates = [str(signed.expires)]
        for part in query.split("&"):  # botocore moves x-amz-* headers into a presigned query
            name, _, value = part.partition("=")
            lname = unquote(name).lower()
            if signs_header(lname):
                headers[lname] = unquote(value)
    elif "x-amz-date" in headers:
        dates.insert(0, "")  # x-amz-date is signed among the x-amz-* headers; Date stays empty
    paths = [path]
    if path.count("/") == 1 and len(path) > 1:
        paths.append(path + "/")  # botocore signs a bucket request as /bucket/
    first = ""
    for date in dates:
        for resource in paths:
            string_to_sign = _Canonicaliser(date).canonical_string(
                request.method, _Split(resource, query), headers
            )
            try:
                data = string_to_sign.encode()
            except UnicodeEncodeError:  # a header carried bytes that are not UTF-8
                raise errors.SignatureDoesNotMatch(AWSAccessKeyId=signed.access_key) from None
            digest = hmac.new(secret, data, hashlib.sha1).digest()
            if hmac.compare_digest(base64.b64encode(digest).decode(), signed.signature):
                return
            first = first or string_to_sign
    raise errors.SignatureDoesNotMatch(
        AWSAccessKeyId=signed.access_key,
        StringToSign=first,
        SignatureProvided=signed.signature,
    )


class _Canonicaliser(HmacV1Auth):  # type: ignore[misc]
    """botocore's SigV2 signer, with the date (or Expires) the client signed."""

    def __init__(self, date: str) -> None:
        super().__init__(None)
        self._date = date

    def _get_date(self) -> str:
        return self._date


@dataclass(frozen=True)
class _Split:
    """The two attributes of urlsplit's result that botocore's canonical resource reads."""

    path: str
    query: str
