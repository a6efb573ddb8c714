"""Pure parsers for the parts of an S3 request: target, query, Range, max-keys.

The conditional headers (If-Match, ...) are checked in proxy/core/conditions.py.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

from proxy import errors
from proxy.model import ByteRange

MAX_KEY_BYTES = 1024


class Target(NamedTuple):  # a tuple: built per request, for a fraction of a dataclass's cost
    bucket: str | None
    key: str | None  # None: a bucket-level request


def parse_query(query_string: str) -> dict[str, str]:
    """Decode a raw query string; '+' stays a plus (S3 clients send spaces as %20)."""
    out: dict[str, str] = {}
    for part in query_string.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        out[unquote(name)] = unquote(value)
    return out


def parse_target(raw_path: str, host: str, domains: tuple[str, ...]) -> Target:
    """Path-style (/bucket/key) or virtual-hosted-style (bucket.domain/key).

    https://docs.aws.amazon.com/AmazonS3/latest/userguide/VirtualHosting.html
    """
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        raise errors.InvalidRequest("The request target must be an absolute path.")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise errors.InvalidArgument("The request path is not valid UTF-8.") from None
    if "\x00" in decoded:
        raise errors.InvalidArgument("The key must not contain NUL.")
    hostname = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
    for domain in domains:
        suffix = "." + domain
        if hostname.endswith(suffix) and len(hostname) > len(suffix):
            bucket = hostname[: -len(suffix)]
            return _with_key(bucket, decoded[1:])
    rest = decoded[1:]
    if not rest:
        return Target(None, None)
    bucket, sep, key = rest.partition("/")
    return _with_key(bucket, key if sep else None)


def _with_key(bucket: str, key: str | None) -> Target:
    if key == "":
        key = None
    if key is not None and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise errors.KeyTooLong()
    return Target(bucket, key)


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII)


def parse_range(header: str | None) -> ByteRange | None:
    """None for no header or one S3 ignores (malformed, several ranges): the whole object."""
    if not header:
        return None
    m = _RANGE.fullmatch(header)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:
        return ByteRange(None, int(last))
    if last and int(last) < int(first):
        return None
    return ByteRange(int(first), int(last) if last else None)


_COPY_RANGE = re.compile(r"bytes=(\d+)-(\d+)", re.ASCII)


def parse_copy_range(header: str | None) -> tuple[int, int] | None:
    """x-amz-copy-source-range: exactly ``bytes=first-last`` (first <= last), else
    InvalidArgument; None when absent. Whether it fits the source is the caller's check.

    https://docs.aws.amazon.com/AmazonS3/latest/API/API_UploadPartCopy.html
    """
    if header is None:
        return None
    m = _COPY_RANGE.fullmatch(header.strip())
    if not m or int(m.group(2)) < int(m.group(1)):
        raise errors.InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
            argumentName="x-amz-copy-source-range",
        )
    return int(m.group(1)), int(m.group(2))


def parse_part_number(raw: str) -> int:
    """A partNumber query value: an integer 1..10000, else InvalidArgument."""
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive",
            argumentName="partNumber",
        )
    return int(raw)


RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


def parse_max_keys(value: str | None, default: int = 1000) -> int:
    if value is None or value == "":
        return default
    if not (value.strip().isascii() and value.strip().isdigit()):  # not '²' or '٣'
        raise errors.InvalidArgument(
            "max-keys must be a non-negative integer.", argument="max-keys"
        )
    return min(int(value), 1000)
