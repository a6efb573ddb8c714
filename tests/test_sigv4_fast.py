"""The short ways of a warm read answer as the long ways: a presigned URL's canonical tail
built straight for its usual claim (only Host signed), the HMAC from a signing key's kept pad
state, a known URL's answer from its time window and the header names found clean, the hot
table's query check and its Range parts from their memos.

Requests are signed by botocore (its Python signer and boto3's presigner): odd keys (spaces,
'+', '~', '%', unicode), odd query parameters (empty values, repeated ones, encoded names);
each verifies, and each tampered form gets the answer (error class, message, fields) that a
fresh Authenticator gives with the generic tail and hmac.digest: the refusals as before.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import quote, unquote

import pytest
from aiohttp.test_utils import make_mocked_request
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy import errors
from proxy.s3 import hot, parse, sigv4
from tests.sigv4kit import Wire, mocked, sign_header
from tests.test_auth import (
    ACCESS_KEY,
    HOST,
    KEYS,
    SECRET,
    URL,
    client,
    clocked_auth,
    presigned,
    set_secrets,
)

_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# already-encoded queries a client adds before the X-Amz-* pairs (botocore re-encodes them)
QUERIES = [
    "",
    "response-content-type=text%2Fplain%3B%20x%3Dy&x-id=GetObject",
    "empty=&plus=a%2Bb&space=a%20b&tilde=~t&pct=100%25&uni=%E2%9C%93%20%E6%97%A5",
    "response-content-disposition=attachment%3B%20filename%3D%22a%20b%2Bc~%25.txt%22",
]
# header-signed targets' queries: repeated names, empty values, the raw forms clients send
HEADER_QUERIES = ["", "a=1&a=2&b=", "list-type=2&prefix=x%2By&delimiter=%2F", "z=~&y=%7E&x"]


def _old_attempt(
    canonical_request: str, signed: sigv4.Signed, key: bytes, scope: str
) -> str | None:
    """sigv4._attempt as it was: hmac.digest under the key itself."""
    sts = sigv4._string_to_sign(canonical_request, signed.timestamp, scope, signed.access_key)
    expected = hmac.digest(key, sts.encode(), "sha256").hex()
    return None if hmac.compare_digest(expected, signed.signature) else sts


def _forget() -> None:
    sigv4._CLAIMS.clear()
    sigv4._NAMES.clear()
    sigv4._PADS.clear()
    sigv4._first_query.cache_clear()


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        result = fn()
    except errors.S3Error as e:
        return (type(e), e.message, e.fields)
    return ("ok", result.principal, result.presigned, result.payload)


def _flip(text: str, at: int) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def presign_query(key: str, query: str, expires: int = 3600, method: str = "GET") -> Wire:
    """``key`` with ``query`` presigned by botocore's Python query signer."""
    request = AWSRequest(
        method=method, url=f"{URL}/data/{quote(key, safe='/~')}" + (f"?{query}" if query else "")
    )
    request.context["timestamp"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET), "s3", "us-east-1", expires).add_auth(request)
    target = request.url[len(URL) :]
    return Wire(method, target, {"Host": HOST})


def _signed() -> Iterator[Wire]:
    c = client()
    for key in KEYS:
        yield presigned(c, "GET", key)
        for query in QUERIES:
            yield presign_query(key, query)
        yield presign_query(key, "", method="HEAD")
        for query in HEADER_QUERIES:
            path = f"/data/{quote(key, safe='/~')}"
            target = path + (f"?{query}" if query else "")
            yield sign_header(
                "GET", HOST, target, {}, ACCESS_KEY, SECRET, content_sha256=sigv4.UNSIGNED_PAYLOAD
            )


def _variants(wire: Wire) -> list[Wire]:
    """``wire`` and what a client or an attacker could change in it."""
    path, _, query = wire.target.partition("?")
    out = [
        wire,
        Wire("HEAD" if wire.method == "GET" else "GET", wire.target, wire.headers),
        Wire(wire.method, _flip(path, len(path) - 1) + wire.target[len(path) :], wire.headers),
        wire.with_headers(Host="elsewhere:9900"),
        wire.with_headers(Host=f" {HOST} "),  # the same Host, as its canonical form trims it
        wire.with_headers(x_amz_meta_extra="1"),  # an x-amz-* header nobody signed
        wire.with_headers(X_Amz_Date="20200101T000000Z"),
        wire.with_headers(Accept="*/*"),
        wire.with_headers(Content_Length="0"),
        Wire(wire.method, wire.target + "&extra=1", wire.headers),
    ]
    if "X-Amz-Signature=" in query:
        at = wire.target.rindex("X-Amz-Signature=") + len("X-Amz-Signature=")
        out.append(Wire(wire.method, _flip(wire.target, at), wire.headers))
        out.append(
            Wire(
                wire.method,
                wire.target.replace("X-Amz-Expires=3600", "X-Amz-Expires=60"),
                wire.headers,
            )
        )
    else:
        authz = wire.headers["Authorization"]
        out.append(wire.with_headers(Authorization=_flip(authz, authz.rindex("=") + 1)))
    if query:
        first = query.split("&")[0]
        out.append(Wire(wire.method, wire.target.replace(first, first + "x", 1), wire.headers))
    return out


def test_botocore_signed_reads_answer_as_the_long_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every botocore-signed read verifies; every variant of it gets, from an Authenticator
    whose memos know the URL or claim, the answer of a fresh one on the long way."""
    set_secrets(monkeypatch)
    clock = [time.time()]
    memo = clocked_auth(clock)

    def long_way(wire: Wire) -> tuple[Any, ...]:
        _forget()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sigv4, "_attempt", _old_attempt)
            # never a claim's: the generic tail and the generic header check
            mp.setattr(sigv4, "HOST_ONLY", ("-",))
            auth = clocked_auth(clock)
            answer = outcome(lambda: auth.authenticate(mocked(wire)))
        _forget()
        return answer

    wires = list(_signed())
    refusals = set()
    for wire in wires:
        assert outcome(lambda w=wire: memo.authenticate(mocked(w)))[0] == "ok", wire.target
    for later in (0, 2 * 3600):  # inside the URLs' window; then past it
        clock[0] += later
        for wire in wires:
            variants = _variants(wire)
            for _ in range(2):  # the second time with the clean header names known
                got = [outcome(lambda w=w: memo.authenticate(mocked(w))) for w in variants]
                assert got == [long_way(w) for w in variants], wire.target
            refusals.update(g[0] for g in got)
    assert memo._verified_urls and memo._clean_names and memo._claims
    assert {
        errors.SignatureDoesNotMatch,
        errors.AccessDenied,
        errors.RequestTimeTooSkewed,
    } <= refusals


_HOST_VALUE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)))


@_FUZZ
@given(hosts=st.lists(_HOST_VALUE, max_size=2))
def test_the_presigned_tail_is_the_generic_one(hosts: list[str]) -> None:
    signed = sigv4.Signed("AK", "20240101", "us-east-1", "s3", "aws4_request", ("host",),
                          "a" * 64, "20240101T000000Z", True, 60)  # fmt: skip
    request = make_mocked_request("GET", "/b/k", CIMultiDict([("Host", h) for h in hosts]))
    fast = outcome_text(lambda: sigv4._canonical_tail(request, signed))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sigv4, "HOST_ONLY", ("-",))
        assert outcome_text(lambda: sigv4._canonical_tail(request, signed)) == fast


def outcome_text(fn: Callable[[], str]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except errors.S3Error as e:
        return (type(e), e.message, e.fields)


_PAIR = st.one_of(
    st.sampled_from(
        [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AK%2F20240101%2Fus-east-1%2Fs3%2Faws4_request",
            "X-Amz-Date=20240101T000000Z",
            "X-Amz-Expires=3600",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=" + "a" * 64,
            "X-Amz-Security-Token=t",
            "X%2DAmz%2DDate=1",
            "AWSAccessKeyId=AK",
            "Signature=x",
            "Expires=1",
            "partNumber=1",
            "versionId=",
            "",
        ]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
)


@_FUZZ
@given(queries=st.lists(st.lists(_PAIR, max_size=7), min_size=1, max_size=4))
def test_the_hot_query_check_is_the_pairwise_one(queries: list[list[str]]) -> None:
    hot._AUTH_HEADS.clear()
    for _ in range(2):
        for pairs in queries:
            query = "&".join(pairs)
            assert hot._auth_only(query) == _old_auth_only(query), query


def _old_auth_only(query: str) -> bool:
    """hot._auth_only as it was: each pair's name checked."""
    for part in query.split("&"):
        name = part.partition("=")[0]
        if "%" in name:
            name = unquote(name)
        if part and name not in hot._AUTH_PARAMS:
            return False
    return True


_RANGE = st.one_of(
    st.builds("bytes={}-{}".format, st.integers(0, 40), st.integers(0, 40)),
    st.builds("bytes={}-".format, st.integers(0, 40)),
    st.builds("bytes=-{}".format, st.integers(0, 40)),
    st.sampled_from(["bytes=x", "bytes=0-1,3-4", " bytes = 2 - 5 ", "bytes=-", "items=0-1", ""]),
    st.text(max_size=12),
)


@_FUZZ
@given(asks=st.lists(st.tuples(_RANGE, st.integers(0, 30)), min_size=1, max_size=6))
def test_hot_range_parts_are_the_usual_reading(asks: list[tuple[str, int]]) -> None:
    path = hot.HotPath(*cast(Any, [None] * 5))
    for _ in range(2):  # then from the memo
        for value, size in asks:
            rng = parse.parse_range(value)
            part = path._ranges.get((value, size)) or path._part(value, size)
            if rng is None:
                assert part is hot._WHOLE
                continue
            try:
                first, last = rng.resolve(size)
            except errors.InvalidRange:
                assert part is hot._UNSATISFIABLE
                continue
            assert part == (first, last, f"bytes {first}-{last}/{size}")


def test_hot_range_memo_keeps_short_values_only() -> None:
    path = hot.HotPath(*cast(Any, [None] * 5))
    long = "bytes=" + "0" * 100 + "3-5"  # leading zeros: the same range, a long header
    assert path._part(long, 10) == (3, 5, "bytes 3-5/10")
    assert path._part("bytes=3-5", 10) == (3, 5, "bytes 3-5/10")
    assert list(path._ranges) == [("bytes=3-5", 10)]
