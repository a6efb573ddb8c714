"""sigv4's memos (the claims a client repeats, the canonical query of a presigned URL without
its signature) change no answer: each memoised parse and verification is compared with the
same work done from scratch, on botocore's requests and on generated ones."""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.config_access import AuthConfig
from proxy.s3 import sigv4
from proxy.s3.auth import Authenticator
from tests.sigv4kit import Wire, capture, mocked
from tests.test_auth import KEYS, client, clocked_auth, presigned, set_secrets, users


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch) -> Authenticator:
    set_secrets(monkeypatch)
    return Authenticator(AuthConfig(users=users("TEST_AUTH_SECRET")))


def _forget() -> None:
    sigv4._CLAIMS.clear()
    sigv4._NAMES.clear()
    sigv4._first_query.cache_clear()


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call answers: its value, or its S3 error's class, message and fields."""
    try:
        return ("ok", fn())
    except errors.S3Error as e:
        return (type(e), e.message, e.fields)


def _flip(text: str, at: int) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def _wires() -> Iterator[Wire]:
    c = client()
    for key in KEYS:
        yield capture(c, "get_object", Bucket="data", Key=key, Range="bytes=0-9")
        yield capture(c, "list_objects_v2", Bucket="data", Prefix=key, MaxKeys=7)
        yield presigned(c, "GET", key)


def _tampered(wire: Wire) -> Wire:
    authz = wire.headers.get("Authorization")
    if authz is not None:
        return wire.with_headers(Authorization=_flip(authz, authz.rindex("=") + 1))
    return Wire(wire.method, _flip(wire.target, wire.target.rindex("=") + 1), wire.headers)


def test_memoised_answers_equal_fresh_ones(auth: Authenticator) -> None:
    wires = list(_wires())
    fresh = []
    for wire in wires:  # each from scratch
        _forget()
        fresh.append(
            [outcome(lambda w=w: auth.authenticate(mocked(w))) for w in (wire, _tampered(wire))]
        )
    _forget()
    for _ in range(2):  # then with the memos filled by the requests before
        for wire, want in zip(wires, fresh, strict=True):
            got = [
                outcome(lambda w=w: auth.authenticate(mocked(w))) for w in (wire, _tampered(wire))
            ]
            assert got[0][0] == "ok" and got[0][1].principal is not None
            assert got[1] == want[1]  # the same refusal, the same canonical request in it
            assert want[1][0] is errors.SignatureDoesNotMatch
    assert sigv4._CLAIMS and sigv4._first_query.cache_info().hits


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_HEX = st.from_regex(r"\A[0-9a-fA-F]{64}\Z")
_CREDENTIAL = st.one_of(
    _TEXT, st.sampled_from(["AK/20240101/us-east-1/s3/aws4_request", "AK/20240101/eu/s3/x"])
)
_SIGNED_HEADERS = st.one_of(_TEXT, st.sampled_from(["host", "host;x-amz-date", "Host;x"]))
_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(
    head=st.one_of(
        _TEXT,
        st.builds(
            "AWS4-HMAC-SHA256 Credential={}, SignedHeaders={}".format, _CREDENTIAL, _SIGNED_HEADERS
        ),
        st.builds("{}, {}".format, _TEXT, _TEXT),
    ),
    signatures=st.lists(_HEX, min_size=2, max_size=3),
    timestamp=st.one_of(st.none(), st.just("20240101T000000Z")),
)
def test_header_claims_parse_as_unmemoised(
    head: str, signatures: list[str], timestamp: str | None
) -> None:
    _forget()
    for signature in [*signatures, "zz"]:
        value = f"{head}, Signature={signature}"
        want = outcome(lambda v=value: sigv4._parse_header(v, timestamp))
        assert outcome(lambda v=value: sigv4.parse_header(v, timestamp)) == want


_PARAM = st.one_of(
    st.sampled_from(
        [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AK%2F20240101%2Fus-east-1%2Fs3%2Faws4_request",
            "X-Amz-Date=20240101T000000Z",
            "X-Amz-Date=2024",
            "X-Amz-Expires=3600",
            "X-Amz-Expires=0",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=" + "a" * 64,
            "X-Amz-Signature",
            "partNumber=1",
        ]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
)


@_FUZZ
@given(params=st.lists(_PARAM, max_size=8), signatures=st.lists(_HEX, min_size=2, max_size=3))
def test_query_claims_parse_as_unmemoised(params: list[str], signatures: list[str]) -> None:
    _forget()
    head = "&".join(params)
    for signature in [*signatures, "zz", f"{signatures[0]}&x=1"]:
        query = f"{head}&X-Amz-Signature={signature}"
        want = outcome(lambda q=query: sigv4._parse_query(q))
        assert outcome(lambda q=query: sigv4.parse_query(q)) == want
        pairs = "&".join(sorted(query.split("&")))  # no signature last: the memo is not used
        assert outcome(lambda q=pairs: sigv4.parse_query(q)) == outcome(
            lambda q=pairs: sigv4._parse_query(q)
        )
        raw = sigv4._without_signature(query)
        assert sigv4._first_query(raw, True) == next(sigv4.query_forms(query, True))


def test_a_verified_presigned_url_answers_as_a_fresh_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A presigned URL that verified once skips the HMACs when it is read again (a dataset's
    URL list, each epoch), but every answer stays what a fresh Authenticator gives: the time
    window, the method, the Host, unsigned x-amz-* headers and the signature still decide."""
    set_secrets(monkeypatch)
    clock = [time.time()]
    memo = clocked_auth(clock)

    def fresh(wire: Wire) -> tuple[Any, ...]:
        auth = clocked_auth(clock)
        return outcome(lambda: auth.authenticate(mocked(wire)))

    wire = presigned(client(), "GET", "shard/0001.tar", expires=60)
    first = outcome(lambda: memo.authenticate(mocked(wire)))
    assert first[0] == "ok" and memo._verified_urls  # remembered
    variants = [
        wire,
        Wire("HEAD", wire.target, wire.headers),  # signed for GET
        wire.with_headers(Host="elsewhere:9000"),
        wire.with_headers(x_amz_meta_extra="1"),  # an x-amz-* header nobody signed
        _tampered(wire),
    ]
    answers = [outcome(lambda w=w: memo.authenticate(mocked(w))) for w in variants]
    assert answers == [fresh(w) for w in variants]
    assert [a[0] for a in answers] == [
        "ok",
        errors.SignatureDoesNotMatch,
        errors.SignatureDoesNotMatch,
        errors.AccessDenied,
        errors.SignatureDoesNotMatch,
    ]
    clock[0] += 120  # the URL expired
    answers = [outcome(lambda w=w: memo.authenticate(mocked(w))) for w in variants]
    assert answers == [fresh(w) for w in variants]
    assert answers[0][:2] == (errors.AccessDenied, "Request has expired")


def _header_variants(wire: Wire, other: Wire) -> list[Wire]:
    """A header-signed GET and what could change in it; ``other`` is the same claim signed for
    another key (a fresh signature, as every real request)."""
    authz = wire.headers["Authorization"]
    amz = wire.headers["X-Amz-Date"]
    later = f"{amz[:13]}{(int(amz[13:15]) + 1) % 60:02d}Z"  # another second of the same day
    without_sha = {k: v for k, v in wire.headers.items() if k.lower() != "x-amz-content-sha256"}
    return [
        wire,
        other,
        wire.with_headers(Authorization=authz[:-64] + authz[-64:].upper()),  # the same hex
        _tampered(wire),
        Wire("HEAD", wire.target, wire.headers),  # signed for GET
        Wire(wire.method, other.target, wire.headers),  # another key's path
        Wire(wire.method, wire.target + "?x=1", wire.headers),  # a query nobody signed
        wire.with_headers(Range="bytes=0-10"),  # a signed header's other value
        wire.with_headers(Host="elsewhere:9900"),
        wire.with_headers(x_amz_meta_extra="1"),  # an x-amz-* header nobody signed
        wire.with_headers(X_Amz_Request_Payer="requester"),
        wire.with_headers(Accept="*/*"),  # an unsigned header that may be sent unsigned
        wire.with_headers(X_Amz_Date=later),
        wire.with_headers(X_Amz_Date="20200101T000000Z"),  # another day than the scope's
        wire.with_headers(X_Amz_Date="not a date"),
        wire.with_headers(Content_Length="0"),
        Wire(wire.method, wire.target, without_sha),
        wire.with_headers(Authorization=authz + " "),
        wire.with_headers(Authorization=authz.replace("Signature=", "Signature= ")),
    ]


def test_a_verified_header_claim_answers_as_a_fresh_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header-signed read whose claim (the Authorization header before its signature)
    verified before is checked without the claim's parse and checks, but every request's own
    signature, date, clock skew, headers, path and method still decide: each answer is the
    one a fresh Authenticator (and fresh sigv4 memos) gives, and a request signed anew for
    the same claim takes the short way."""
    set_secrets(monkeypatch)
    clock = [time.time()]
    memo = clocked_auth(clock)

    def fresh(wire: Wire) -> tuple[Any, ...]:
        _forget()
        auth = clocked_auth(clock)
        return outcome(lambda: auth.authenticate(mocked(wire)))

    c = client()
    for key in KEYS:
        wire = capture(c, "get_object", Bucket="data", Key=key, Range="bytes=0-9")
        other = capture(c, "get_object", Bucket="data", Key=key + "x", Range="bytes=0-9")
        assert outcome(lambda w=wire: memo.authenticate(mocked(w)))[0] == "ok"
        variants = _header_variants(wire, other)
        for _ in range(2):  # the second time with the claims' header name lists known
            answers = [outcome(lambda w=w: memo.authenticate(mocked(w))) for w in variants]
            assert answers == [fresh(w) for w in variants]
        assert [a[0] for a in answers[:4]] == ["ok", "ok", "ok", errors.SignatureDoesNotMatch]
        assert errors.AccessDenied in [a[0] for a in answers]
        if key == "plain.txt":  # signed as sent: the short way answers
            request = mocked(other)
            short = memo._header_read(request, request.headers, other.headers["Authorization"])
            assert short is not None and short.principal is not None
    assert memo._claims
    clock[0] += 20 * 60  # past the allowed skew: refused as fresh
    answers = [outcome(lambda w=w: memo.authenticate(mocked(w))) for w in variants]
    assert answers == [fresh(w) for w in variants]
    assert answers[0][0] is errors.RequestTimeTooSkewed


@_FUZZ
@given(
    extra=st.dictionaries(
        st.sampled_from(
            [
                "x-amz-date",
                "X-Amz-Content-SHA256",
                "x-amz-meta-a",
                "X-AMZ-CHECKSUM-MODE",
                "Range",
                "Date",
                "Content-Length",
                "Accept",
                "x-amz-security-token",
            ]
        ),
        _TEXT,
        max_size=3,
    ),
    method=st.sampled_from(["GET", "HEAD", "PUT"]),
    cut=st.integers(0, 3),
)
def test_header_claims_answer_as_fresh_under_changes(
    extra: dict[str, str], method: str, cut: int
) -> None:
    """Generated changes to a header-signed read whose claim is known: the same answers as a
    fresh Authenticator's."""
    with pytest.MonkeyPatch.context() as mp:
        set_secrets(mp)
        memo = Authenticator(AuthConfig(users=users("TEST_AUTH_SECRET")))
        fresh = Authenticator(AuthConfig(users=users("TEST_AUTH_SECRET")))
    wire = _signed_get()
    assert outcome(lambda: memo.authenticate(mocked(wire)))[0] == "ok"
    headers = {k: v for k, v in wire.headers.items() if k.lower() not in {e.lower() for e in extra}}
    headers.update({k: v.replace("\r", "").replace("\n", "") for k, v in extra.items()})
    authz = headers["Authorization"]
    headers["Authorization"] = authz[: len(authz) - cut]
    changed = Wire(method, wire.target, headers)
    got = _any_outcome(lambda: memo.authenticate(mocked(changed)))
    _forget()
    assert got == _any_outcome(lambda: fresh.authenticate(mocked(changed)))


def _any_outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """outcome, and any other exception's class and text (a Content-Length that aiohttp's
    parser would refuse reaches auth only in a mocked request)."""
    try:
        return outcome(fn)
    except Exception as e:  # noqa: BLE001
        return (type(e), str(e))


@functools.cache
def _signed_get() -> Wire:
    return capture(client(), "get_object", Bucket="data", Key="plain.txt")


@_FUZZ
@given(key=st.binary(max_size=100), messages=st.lists(st.binary(max_size=300), max_size=3))
def test_hmac_pads_give_hmac(key: bytes, messages: list[bytes]) -> None:
    """The kept inner and outer hashes sign as hmac.digest, message after message."""
    pads = sigv4.hmac_pads(key)
    for message in messages:
        assert sigv4.hmac_hex(pads, message) == hmac.digest(key, message, "sha256").hex()
