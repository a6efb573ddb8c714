"""The S3 backend's reading of a GET's or HEAD's headers (proxy/backends/s3/codec.py): the
Last-Modified date read by position agrees with email.utils (the reference for HTTP dates) on
every form, refuses what is no date, and the object's metadata and stored headers come out as
the store sent them."""

from __future__ import annotations

import calendar
import time
from email.utils import parsedate_to_datetime

import pytest
from multidict import CIMultiDict

from proxy.backends.s3.codec import http_time, meta_from_headers


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate, read by position
        "Sat, 29 Feb 2020 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Mon, 30 Nov 2026 00:00:01 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850 and asctime: email.utils reads them
        "Sun Nov  6 08:49:37 1994",
        "Sun, 06 Nov 1994 08:49:37 +0000",
    ],
)
def test_http_time_matches_email_utils(value: str) -> None:
    assert http_time(value) == parsedate_to_datetime(value).timestamp()


def test_http_time_reads_the_fixdate_fields() -> None:
    assert http_time("Mon, 30 Nov 2026 13:14:15 GMT") == calendar.timegm((2026, 11, 30, 13, 14, 15))


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 30 Feb 2020 12:34:56 GMT",  # no such day
        "Sun, 06 Nov 1994 24:49:37 GMT",  # no such hour
        "Sun, 06 Xyz 1994 08:49:37 GMT",  # no such month: email.utils refuses it too
        "Sun, 06 Nov 1994 08:4x:37 GMT",
        "garbage",
        "",
    ],
)
def test_http_time_refuses_what_is_no_date(value: str) -> None:
    with pytest.raises((ValueError, TypeError, IndexError)):
        http_time(value)


def test_meta_from_headers_reads_metadata_and_stored_headers() -> None:
    headers = CIMultiDict(
        [
            ("ETag", '"0123456789abcdef0123456789abcdef"'),
            ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("Content-Type", "text/plain"),
            ("X-Amz-Meta-Owner", "first"),
            ("x-amz-meta-owner", "second"),  # a repeated name: the last one counts
            ("x-amz-meta-Color", "blue"),
            ("cache-control", "max-age=60"),
            ("Cache-Control", "no-store"),  # a repeated stored header: the first one counts
            ("x-amz-version-id", "v7"),
            ("Content-Disposition", "inline"),
            ("Server", "store"),
        ]
    )
    meta = meta_from_headers(headers, 42)
    assert meta.size == 42
    assert meta.last_modified == 784111777.0
    assert meta.content_type == "text/plain"
    assert meta.metadata == {"owner": "second", "color": "blue"}
    assert list(meta.headers.items()) == [
        ("Cache-Control", "max-age=60"),
        ("Content-Disposition", "inline"),
        ("x-amz-version-id", "v7"),
    ]
    assert meta.etag_is_md5


def test_meta_from_headers_without_a_date_is_now() -> None:
    before = time.time()
    meta = meta_from_headers(CIMultiDict([("Last-Modified", "Sun, 30 Feb 2020 12:34:56 GMT")]), 0)
    assert before <= meta.last_modified <= time.time()
    assert meta.etag == '""' and not meta.etag_is_md5


def test_meta_from_headers_reads_names_in_any_case_first_one_first() -> None:
    """The names it takes (ETag, Last-Modified, Content-Type, the encryption) are read in
    any case, the first of a repeated one counting; a KMS-encrypted object's ETag is no MD5;
    more user metadata names than its table of names holds are all read."""
    many = [(f"X-Amz-Meta-K{i}", str(i)) for i in range(3000)]
    headers = CIMultiDict(
        [
            ("etag", '"0123456789abcdef0123456789abcdef"'),
            ("ETAG", '"ffffffffffffffffffffffffffffffff"'),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("CONTENT-TYPE", "image/png"),
            ("content-type", "text/plain"),
            ("X-Amz-Server-Side-Encryption", "aws:kms"),
            *many,
        ]
    )
    meta = meta_from_headers(headers, 1)
    assert meta.etag == '"0123456789abcdef0123456789abcdef"'
    assert meta.last_modified == 784111777.0 and meta.content_type == "image/png"
    assert not meta.etag_is_md5 and dict(meta.headers) == {}
    assert meta.metadata == {f"k{i}": str(i) for i in range(3000)}
    assert meta_from_headers(headers, 1) == meta  # read again through the table: the same
