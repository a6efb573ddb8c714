"""Between S3's shapes as the store answers them and ours: errors (botocore's, and the plain
HTTP answers of http.py), object headers, and the parameters of writes. Pure functions."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Mapping
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError

from proxy import errors
from proxy.memo import remember
from proxy.model import STORED_HEADERS, ObjectMeta

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_PLAIN_MD5 = re.compile(r'"?[0-9a-fA-F]{32}"?')
_META = "x-amz-meta-"
_PASSTHROUGH = (*STORED_HEADERS, "x-amz-version-id")
_KEPT = {h.lower(): h for h in _PASSTHROUGH}
_MONTHS = {
    m: n
    for n, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
PASS_HEADERS = {
    "Cache-Control": "CacheControl",
    "Content-Disposition": "ContentDisposition",
    "Content-Encoding": "ContentEncoding",
    "Content-Language": "ContentLanguage",
    "x-amz-storage-class": "StorageClass",
}


def map_client_error(exc: Exception, bucket: str, key: str | None) -> errors.S3Error:
    """The S3 error for one of botocore's (``key=None``: a bucket operation)."""
    if isinstance(exc, ParamValidationError):  # refused before sending: the request's fault
        return errors.InvalidArgument("A parameter of the request is not valid for the store.")
    if not isinstance(exc, ClientError):  # botocore's own: endpoint, credentials, retries
        return errors.BackendUnavailable(f"The store could not be reached: {type(exc).__name__}.")
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "NoSuchBucket":
        return errors.NoSuchBucket(resource=bucket)
    if code == "NoSuchUpload":  # a 404 that is not about the key
        return errors.NoSuchUpload()
    if code in _NOT_FOUND_CODES or status == 404:
        return errors.NoSuchKey(key=key or "") if key is not None else errors.NoSuchBucket()
    if code == "InvalidRange" or status == 416:
        return errors.InvalidRange()
    if code == "PreconditionFailed" or status == 412:
        return errors.PreconditionFailed()
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return errors.AccessDenied(f"The store refused the proxy's credentials ({code}).")
    if code == "SlowDown" or status == 503:
        return errors.SlowDown("The store asked us to slow down.")
    known = errors.by_code(code)
    if known is not None and 400 <= known.status < 500:
        return known(str(err.get("Message") or known.message))
    if status >= 500 or not status:
        return errors.BackendUnavailable(f"The store answered {status or code}.")
    return errors.InvalidRequest(f"The store refused the request: {code}.")


def map_answer(status: int, code: str, bucket: str, key: str) -> errors.S3Error:
    """The S3 error for an object request's error answer (its status and the <Code> of its
    body, "" for a HEAD)."""
    if code == "NoSuchBucket":
        return errors.NoSuchBucket(resource=bucket)
    if status == 404:
        return errors.NoSuchKey(key=key)
    if status == 416 or code == "InvalidRange":
        return errors.InvalidRange()
    if status == 412:
        return errors.PreconditionFailed()
    if status == 403:
        return errors.AccessDenied(f"The store refused the proxy's credentials ({code}).")
    if status == 503 or code == "SlowDown":
        return errors.SlowDown("The store asked us to slow down.")
    if status >= 500:
        return errors.BackendUnavailable(f"The store answered {status}.")
    known = errors.by_code(code)
    if known is not None and 400 <= known.status < 500:
        return known()
    return errors.InvalidRequest(f"The store refused the request: {code or status}.")


def get_headers(start: int | None, end: int | None, if_match: str | None) -> dict[str, str]:
    """The Range and If-Match of a ranged GET (``start=None``: the whole object)."""
    headers: dict[str, str] = {}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    if if_match:
        headers["If-Match"] = if_match
    return headers


def meta_from_headers(headers: Any, size: int) -> ObjectMeta:
    """An object's metadata from its GET or HEAD answer's headers (case-insensitive: the
    first of a repeated header counts), in one pass over them."""
    found: dict[str, str] = {}  # _WANTED's lower-case names -> the first value
    metadata: dict[str, str] = {}
    kept: dict[str, str] = {}
    sorts = _SORTS
    for k, v in headers.items():  # one pass (a miss's headers are read once, whole)
        sort = sorts.get(k)
        if sort is None:
            sort = _sort_of(k)
        kind, name = sort
        if kind is _WANT:
            found.setdefault(name, v)
        elif kind is _USER:
            metadata[name] = v
        elif kind is _KEEP:
            kept.setdefault(name, v)
    etag = found.get("etag", '""')
    try:
        last_modified = http_time(found["last-modified"])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        last_modified = time.time()
    return ObjectMeta(
        size=size,
        etag=etag,
        last_modified=last_modified,
        content_type=found.get("content-type", "application/octet-stream"),
        metadata=metadata,
        headers={h: kept[h] for h in _PASSTHROUGH if h in kept} if kept else {},
        etag_is_md5=bool(_PLAIN_MD5.fullmatch(etag))
        and found.get("x-amz-server-side-encryption") != "aws:kms",
    )


_WANT, _USER, _KEEP, _SKIP = "want", "user", "keep", "skip"
_WANTED = ("etag", "last-modified", "content-type", "x-amz-server-side-encryption")
_SORTS: dict[str, tuple[str, str]] = {}  # a header name as sent -> (kind, the name we use)
_SORTS_MAX = 1024


def _sort_of(name: str) -> tuple[str, str]:
    """What meta_from_headers does with a header: take it (_WANT, its lower-case name),
    user metadata (_USER, the name after x-amz-meta-), a stored header (_KEEP, its name as
    STORED_HEADERS spells it) or nothing (_SKIP); remembered by the name as sent."""
    low = name.lower()
    if low in _WANTED:
        sort = (_WANT, low)
    elif low.startswith(_META):
        sort = (_USER, low[len(_META) :])
    elif (kept := _KEPT.get(low)) is not None:
        sort = (_KEEP, kept)
    else:
        sort = (_SKIP, "")
    return remember(_SORTS, name, sort, _SORTS_MAX)  # user metadata names are many: bounded


@lru_cache(maxsize=1024)
def http_time(value: str) -> float:
    """The POSIX time of an HTTP date. The IMF-fixdate every store sends ("Sun, 06 Nov 1994
    08:49:37 GMT") is read by position (email.utils takes ~10 us); any other form goes to
    email.utils. Raises ValueError (or TypeError, IndexError) when it is no date."""
    if len(value) == 29 and value[3:5] == ", " and value[25:] == " GMT":
        month = _MONTHS.get(value[8:11])
        fields = (value[12:16], value[5:7], value[17:19], value[20:22], value[23:25])
        if month is not None and all(f.isdigit() for f in fields):
            year, day, hour, minute, second = map(int, fields)
            return datetime.datetime(
                year, month, day, hour, minute, second, tzinfo=datetime.UTC
            ).timestamp()
    return parsedate_to_datetime(value).timestamp()


def write_params(
    content_type: str | None, metadata: Mapping[str, str] | None, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    """botocore parameters for a write's content type, metadata and stored headers."""
    params: dict[str, Any] = {}
    if content_type:
        params["ContentType"] = content_type
    if metadata is not None:
        params["Metadata"] = dict(metadata)
    for header, param in PASS_HEADERS.items():
        if headers and headers.get(header):
            params[param] = headers[header]
    expires = _expires(headers.get("Expires")) if headers else None
    if expires is not None:
        params["Expires"] = expires
    return params


def _expires(value: str | None) -> datetime.datetime | None:
    """An Expires header as the aware datetime botocore sends; None when it is no HTTP date
    (then it is not stored)."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def kept_headers(headers: Mapping[str, str], resp: Mapping[str, Any]) -> dict[str, str]:
    """The stored headers a GET of the new object answers with (as meta_from_headers)."""
    kept = {h: v for h, v in headers.items() if h in PASS_HEADERS and v}
    if kept.get("x-amz-storage-class", "").upper() == "STANDARD":
        del kept["x-amz-storage-class"]  # S3 sends no storage class for STANDARD
    expires = _expires(headers.get("Expires"))
    if expires is not None:  # as the store answers it: the IMF-fixdate of the stored instant
        kept["Expires"] = format_datetime(expires.astimezone(datetime.UTC), usegmt=True)
    if resp.get("VersionId"):
        kept["x-amz-version-id"] = str(resp["VersionId"])
    return kept


def is_md5(etag: str) -> bool:
    bare = etag.strip('"')
    return len(bare) == 32 and all(c in "0123456789abcdefABCDEF" for c in bare)
