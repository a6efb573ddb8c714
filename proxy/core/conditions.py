"""HTTP preconditions on an object's ETag and Last-Modified (If-Match, If-None-Match, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from proxy import errors


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def _etag_matches(header: str, etag: str) -> bool:
    bare = etag.strip('"')
    return any(t == "*" or t == bare for t in _etags(header))


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def check_conditions(headers: Mapping[str, str], etag: str, last_modified: float) -> None:
    """Raise PreconditionFailed (412) or NotModified (304) as S3 would; return if none hold.

    https://www.rfc-editor.org/rfc/rfc9110#section-13.2.2 and
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html (conditional headers)
    """
    lm = int(last_modified)
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            raise errors.PreconditionFailed(condition="If-Match")
    else:
        since = _http_date(headers.get("If-Unmodified-Since"))
        if since is not None and lm > since:
            raise errors.PreconditionFailed(condition="If-Unmodified-Since")
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            raise errors.NotModified()
    else:
        since = _http_date(headers.get("If-Modified-Since"))
        if since is not None and lm <= since:
            raise errors.NotModified()
