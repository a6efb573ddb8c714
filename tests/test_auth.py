"""SigV4 verification, payload decoding and access rules.

Unit tests feed requests that boto3 (CRT signer, and botocore's Python signer) would send to
the Authenticator and to ``payload``; the AWS streaming example is a fixed vector. Differential
tests send the same signed bytes to SeaweedFS (which verifies SigV4) and to a Slipstream in
front of it. End-to-end tests run the proxy with ``auth.users`` and real clients.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from time import time as real_time
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import botocore.exceptions
import pytest
from botocore.auth import S3SigV4Auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.config import from_mapping as config_from_mapping
from proxy.config_access import AuthConfig, UserConfig
from proxy.errors import ConfigError
from proxy.s3 import checksums, sigv4
from proxy.s3.auth import ANONYMOUS, Authenticator, AuthResult, Principal
from proxy.s3.payload import chunk_signature, payload, trailer_signature
from tests.conformance import Raw, aws_env, raw_request
from tests.proxyproc import REPO_ROOT, ProxyProcess
from tests.servers import S3Endpoint, make_s3_client
from tests.sigv4kit import (
    Wire,
    capture,
    from_url,
    mocked,
    python_signer,
    send,
    shifted_clock,
    sign_header,
    signed_chunks,
    signing_key,
    unsigned_trailer_chunks,
)

ACCESS_KEY = "trainer"
SECRET = "tr41ner/s3cret+key=="
HOST = "127.0.0.1:9900"
URL = f"http://{HOST}"

KEYS = [
    "plain.txt",
    "with space/and+plus~tilde.bin",
    "unicodé/日本語/ключ.dat",
    "odd!$'()*,;:@=&[]chars",
    "percent%20literal%2Fslash",
    "a/../b/./c//d",
]
DIFF_KEYS = KEYS[:-1]  # SeaweedFS refuses to store keys with dot segments (InvalidRequest)


def set_secrets(mp: pytest.MonkeyPatch) -> str:
    """users()' secrets in the environment; the variable ACCESS_KEY's secret is read from."""
    mp.setenv("TEST_AUTH_SECRET", SECRET)
    mp.setenv("TEST_AUTH_OTHER", "other-secret")
    return "TEST_AUTH_SECRET"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    return set_secrets(monkeypatch)


def users(secret_env: str) -> tuple[UserConfig, ...]:
    return (
        UserConfig(
            access_key=ACCESS_KEY,
            secret_key_env=secret_env,
            allow={"data": "read-write", "imagenet": "read"},
        ),
        UserConfig(access_key="admin", secret_key_env="TEST_AUTH_OTHER", allow={"*": "read-write"}),
    )


def clocked_auth(clock: list[float]) -> Authenticator:
    """An Authenticator of users() (their secrets set by set_secrets) whose time is clock[0]."""
    return Authenticator(AuthConfig(users=users("TEST_AUTH_SECRET")), now=lambda: clock[0])


@pytest.fixture
def auth(secret_env: str) -> Authenticator:
    return Authenticator(AuthConfig(users=users(secret_env)))


def client(secret: str = SECRET, access_key: str = ACCESS_KEY, **config: Any) -> Any:
    # boto3 presigns with SigV2 unless told otherwise; SigV4 is what Slipstream verifies
    config.setdefault("signature_version", "s3v4")
    return make_s3_client(URL, access_key, secret, **config)


SIGNERS = ["crt", "python"]


@pytest.fixture(params=SIGNERS)
def signer(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "python":
        with python_signer():
            yield request.param
    else:
        yield request.param


def code_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(errors.S3Error) as info:
        fn()
    return info.value.code


# -- header auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_boto3_requests_verify(auth: Authenticator, signer: str, key: str) -> None:
    c = client()
    wires = [
        capture(c, "get_object", Bucket="data", Key=key, Range="bytes=0-9"),
        capture(c, "head_object", Bucket="data", Key=key),
        capture(c, "list_objects_v2", Bucket="data", Prefix=key, Delimiter="/", MaxKeys=7),
        capture(c, "put_object", Bucket="data", Key=key, Body=b"hello", Metadata={"k": "v  x"}),
        capture(c, "delete_objects", Bucket="data", Delete={"Objects": [{"Key": key}]}),
    ]
    for wire in wires:
        result = auth.authenticate(mocked(wire))
        assert result.principal is not None and result.principal.access_key == ACCESS_KEY


def test_wrong_secret_and_unknown_key(auth: Authenticator) -> None:
    wire = capture(client(secret="not-the-secret"), "get_object", Bucket="data", Key="k")
    assert code_of(lambda: auth.authenticate(mocked(wire))) == "SignatureDoesNotMatch"
    wire = capture(client(access_key="nobody"), "get_object", Bucket="data", Key="k")
    assert code_of(lambda: auth.authenticate(mocked(wire))) == "InvalidAccessKeyId"


def test_any_change_to_what_was_signed_is_refused(auth: Authenticator) -> None:
    wire = capture(client(), "get_object", Bucket="data", Key="k e+y", Range="bytes=0-9")
    assert auth.authenticate(mocked(wire)).principal is not None
    sig_at = wire.headers["Authorization"].rindex("Signature=") + len("Signature=")
    authz = wire.headers["Authorization"]
    flipped = authz[:sig_at] + ("0" if authz[sig_at] != "0" else "1") + authz[sig_at + 1 :]
    tampered = [
        Wire("PUT", wire.target, wire.headers),
        Wire(wire.method, wire.target.replace("k%20e", "k%20f"), wire.headers),
        Wire(wire.method, wire.target + "&extra=1", wire.headers),
        Wire(wire.method, wire.target.replace("/data/", "/imagenet/"), wire.headers),
        wire.with_headers(Range="bytes=0-99"),
        wire.with_headers(Authorization=flipped),
    ]
    for bad in tampered:
        assert code_of(lambda b=bad: auth.authenticate(mocked(b))) == "SignatureDoesNotMatch"
    # headers the client did not sign may be added or changed
    assert auth.authenticate(mocked(wire.with_headers(X_Forwarded_For="10.0.0.1"))).principal


def test_clock_skew(secret_env: str) -> None:
    wire = capture(client(), "get_object", Bucket="data", Key="k")
    for offset, ok in ((-14 * 60, True), (14 * 60, True), (20 * 60, False), (-20 * 60, False)):
        a = Authenticator(AuthConfig(users=users(secret_env)), now=lambda o=offset: time.time() + o)
        if ok:
            assert a.authenticate(mocked(wire)).principal is not None
        else:
            assert code_of(lambda a=a: a.authenticate(mocked(wire))) == "RequestTimeTooSkewed"


def test_scope_and_malformed_headers(auth: Authenticator) -> None:
    wire = capture(client(region_name=None), "get_object", Bucket="data", Key="k")
    authz = wire.headers["Authorization"]
    eu = authz.replace("/us-east-1/", "/eu-west-1/")
    assert code_of(lambda: auth.authenticate(mocked(wire.with_headers(Authorization=eu)))) == (
        "AuthorizationHeaderMalformed"
    )
    for bad, code in (
        (
            "AWS4-HMAC-SHA256 Credential=trainer/20250101/us-east-1/s3/aws4_request",
            "AuthorizationHeaderMalformed",
        ),
        (authz.replace("Signature=", "Signature=zz"), "AuthorizationHeaderMalformed"),
        (authz.replace("SignedHeaders=host;", "SignedHeaders="), "AuthorizationHeaderMalformed"),
        ("AWS trainer:c2lnbmF0dXJl", "SignatureDoesNotMatch"),  # SigV2, checked as such
        ("Bearer c2lnbmF0dXJl", "InvalidRequest"),
        (authz.replace("/s3/", "/ec2/"), "AuthorizationHeaderMalformed"),
    ):
        w = wire.with_headers(Authorization=bad)
        assert code_of(lambda w=w: auth.authenticate(mocked(w))) == code, bad
    headers = {k: v for k, v in wire.headers.items() if k.lower() != "x-amz-content-sha256"}
    w = Wire(wire.method, wire.target, headers)
    assert code_of(lambda: auth.authenticate(mocked(w))) == "InvalidRequest"
    headers = {k: v for k, v in wire.headers.items() if k.lower() != "x-amz-date"}
    w = Wire(wire.method, wire.target, headers)
    assert code_of(lambda: auth.authenticate(mocked(w))) == "AccessDenied"


def test_errors_never_echo_the_secret(auth: Authenticator) -> None:
    for wire in (
        capture(client(secret=SECRET + "x"), "get_object", Bucket="data", Key="k"),
        capture(client(), "get_object", Bucket="data", Key="k").with_headers(X_Amz_Date="x"),
    ):
        with pytest.raises(errors.S3Error) as info:
            auth.authenticate(mocked(wire))
        text = repr(info.value) + info.value.message + repr(info.value.fields)
        assert SECRET not in text and "other-secret" not in text
    assert "signing_key" not in repr(auth.authenticate(mocked(capture(client(), "list_buckets"))))


# -- presigned URLs -------------------------------------------------------------------------------


def presigned(c: Any, method: str, key: str, expires: int = 3600, bucket: str = "data") -> Wire:
    op = {"GET": "get_object", "PUT": "put_object"}[method]
    url = c.generate_presigned_url(op, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
    return Wire(method, url[len(URL) :], {"Host": HOST})


@pytest.mark.parametrize("key", KEYS)
def test_presigned_get_and_put(auth: Authenticator, signer: str, key: str) -> None:
    for method in ("GET", "PUT"):
        wire = presigned(client(), method, key)
        result = auth.authenticate(mocked(wire))
        assert result.principal is not None and result.principal.access_key == ACCESS_KEY
        assert result.payload.mode == "unsigned"


def test_presigned_refusals(secret_env: str, auth: Authenticator) -> None:
    wire = presigned(client(), "GET", "k", expires=60)
    late = Authenticator(AuthConfig(users=users(secret_env)), now=lambda: time.time() + 61)
    assert code_of(lambda: late.authenticate(mocked(wire))) == "AccessDenied"
    with shifted_clock(30 * 60):  # a URL dated in the future
        early = presigned(client(), "GET", "k")
    assert code_of(lambda: auth.authenticate(mocked(early))) == "AccessDenied"
    # no skew rule for presigned URLs: a day-old URL valid for a week still works
    with shifted_clock(-86400):
        old = presigned(client(), "GET", "k", expires=604800)
    assert auth.authenticate(mocked(old)).principal is not None

    def with_params(**changes: str) -> Wire:
        path, _, query = wire.target.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update({k.replace("_", "-"): v for k, v in changes.items()})
        return Wire("GET", f"{path}?{urlencode(params)}", wire.headers)

    cases = {
        "AuthorizationQueryParametersError": [
            with_params(X_Amz_Expires="604801"),
            with_params(X_Amz_Expires="0"),
            with_params(X_Amz_Expires="-5"),
            with_params(X_Amz_Algorithm="AWS4-HMAC-SHA1"),
            with_params(X_Amz_Date="2024-01-01"),
            with_params(X_Amz_Signature=""),
        ],
        "SignatureDoesNotMatch": [
            with_params(X_Amz_Signature="0" * 64),
            with_params(X_Amz_Expires="3600"),
            Wire("PUT", wire.target, wire.headers),
            Wire("GET", wire.target.replace("/data/k", "/data/K"), wire.headers),
        ],
    }
    for code, wires in cases.items():
        for w in wires:
            assert code_of(lambda w=w: auth.authenticate(mocked(w))) == code, w.target
    both = wire.with_headers(Authorization="AWS4-HMAC-SHA256 Credential=x")
    assert code_of(lambda: auth.authenticate(mocked(both))) == "InvalidArgument"


# -- SigV2: boto3's default for presigned URLs, and old tools' Authorization header ---------------


def v2_presigned(method: str, key: str, expires: int = 3600, secret: str = SECRET) -> Wire:
    c = make_s3_client(URL, ACCESS_KEY, secret)  # no signature_version: boto3 presigns with V2
    op = {"GET": "get_object", "PUT": "put_object"}[method]
    url = c.generate_presigned_url(op, Params={"Bucket": "data", "Key": key}, ExpiresIn=expires)
    assert "AWSAccessKeyId=" in url and "X-Amz-" not in url
    return Wire(method, url[len(URL) :], {"Host": HOST})


@pytest.mark.parametrize("key", KEYS)
def test_sigv2_presigned_and_header(auth: Authenticator, key: str) -> None:
    for method in ("GET", "PUT"):
        result = auth.authenticate(mocked(v2_presigned(method, key)))
        assert result.principal is not None and result.principal.access_key == ACCESS_KEY
        assert result.presigned
    v2 = client(signature_version="s3")
    for wire in (
        capture(v2, "get_object", Bucket="data", Key=key, Range="bytes=1-2"),
        capture(v2, "put_object", Bucket="data", Key=key, Body=b"x", ContentType="text/plain"),
        capture(v2, "list_objects", Bucket="data", Prefix=key),
    ):
        assert wire.headers["Authorization"].startswith("AWS ")
        assert auth.authenticate(mocked(wire)).principal is not None


def test_sigv2_refusals(secret_env: str, auth: Authenticator) -> None:
    wire = v2_presigned("GET", "k", expires=60)
    late = Authenticator(AuthConfig(users=users(secret_env)), now=lambda: time.time() + 61)
    assert code_of(lambda: late.authenticate(mocked(wire))) == "AccessDenied"
    wrong = v2_presigned("GET", "k", secret="nope")
    assert code_of(lambda: auth.authenticate(mocked(wrong))) == "SignatureDoesNotMatch"
    for bad in (
        Wire("PUT", wire.target, wire.headers),
        Wire("GET", wire.target.replace("/data/k", "/data/K"), wire.headers),
        Wire("GET", wire.target.replace("Expires=", "Expires=1"), wire.headers),
        Wire("GET", wire.target + "&versionId=abc", wire.headers),
    ):
        assert code_of(lambda b=bad: auth.authenticate(mocked(b))) == "SignatureDoesNotMatch"
    ghost = Wire("GET", wire.target.replace("AWSAccessKeyId=trainer", "AWSAccessKeyId=x"), {})
    assert code_of(lambda: auth.authenticate(mocked(ghost))) == "InvalidAccessKeyId"
    v2 = client(signature_version="s3")
    header = capture(v2, "get_object", Bucket="data", Key="k")
    skewed = Authenticator(AuthConfig(users=users(secret_env)), now=lambda: time.time() + 1200)
    assert code_of(lambda: skewed.authenticate(mocked(header))) == "RequestTimeTooSkewed"
    tampered = header.with_headers(Content_Type="text/evil")
    assert code_of(lambda: auth.authenticate(mocked(tampered))) == "SignatureDoesNotMatch"
    assert auth.authenticate(mocked(header.with_headers(Range="bytes=0-1"))).principal
    result = auth.authenticate(mocked(wire))
    assert result.operation_query({"AWSAccessKeyId": "a", "Signature": "s", "Expires": "1"}) == {}


# -- anonymous mode and access rules --------------------------------------------------------------


def test_anonymous_modes(secret_env: str) -> None:
    unsigned = Wire("GET", "/data/k", {"Host": HOST})
    signed = capture(client(), "get_object", Bucket="data", Key="k")
    wrong = capture(client(secret="wrong"), "get_object", Bucket="data", Key="k")

    loopback_default = Authenticator(AuthConfig())
    assert loopback_default.authenticate(mocked(unsigned)).principal is ANONYMOUS
    assert loopback_default.authenticate(mocked(wrong)).principal is ANONYMOUS  # nothing to check

    closed = Authenticator(AuthConfig(users=users(secret_env)))
    assert code_of(lambda: closed.authenticate(mocked(unsigned))) == "AccessDenied"
    assert closed.authenticate(mocked(signed)).principal is not ANONYMOUS

    mixed = Authenticator(AuthConfig(anonymous=True, users=users(secret_env)))
    anonymous = mixed.authenticate(mocked(unsigned)).principal  # read on every bucket only
    assert anonymous is not None and anonymous.may("data", False)
    assert not anonymous.may("data", True)
    assert mixed.authenticate(mocked(signed)).principal is not ANONYMOUS
    assert code_of(lambda: mixed.authenticate(mocked(wrong))) == "SignatureDoesNotMatch"


def test_principal_may() -> None:
    p = Principal("u", {"data": "read-write", "imagenet": "read", "*": "read"})
    assert p.may("data", True) and p.may("data", False)
    assert p.may("imagenet", False) and not p.may("imagenet", True)
    assert p.may("other", False) and not p.may("other", True)
    q = Principal("u", {"data": "read"})
    assert not q.may("other", False) and not q.may("data", True)
    assert ANONYMOUS.may("anything", True)
    result = AuthResult(q, ANONYMOUS_SPEC)
    result.require("data", False)
    assert code_of(lambda: result.require("data", True)) == "AccessDenied"
    assert code_of(lambda: AuthResult(None, ANONYMOUS_SPEC).require("data", False)) == (
        "AccessDenied"
    )


ANONYMOUS_SPEC = (
    Authenticator(AuthConfig()).authenticate(mocked(Wire("GET", "/b/k", {"Host": HOST}))).payload
)


# -- payloads -------------------------------------------------------------------------------------


async def read_all(wire: Wire, result: AuthResult, piece: int = 4096) -> bytes:
    request = mocked(wire, piece=piece, with_body=True)
    return b"".join([p async for p in payload(request, result.payload)])


async def decode(auth: Authenticator, wire: Wire, piece: int = 4096) -> tuple[bytes, AuthResult]:
    result = auth.authenticate(mocked(wire))
    return await read_all(wire, result, piece), result


async def payload_code(auth: Authenticator, wire: Wire, piece: int = 4096) -> str:
    with pytest.raises(errors.S3Error) as info:
        await decode(auth, wire, piece)
    return info.value.code


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
AWS_CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)


def aws_example(
    monkeypatch: pytest.MonkeyPatch, body: bytes | None = None
) -> tuple[Authenticator, Wire]:
    """The documented streaming PUT (sigv4-streaming.html), as a request and a verifier."""
    monkeypatch.setenv("TEST_AWS_SECRET", AWS_SECRET)
    cfg = AuthConfig(
        users=(
            UserConfig(
                access_key="AKIAIOSFODNN7EXAMPLE",
                secret_key_env="TEST_AWS_SECRET",
                allow={"*": "read-write"},
            ),
        )
    )
    then = calendar.timegm(time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))
    auth = Authenticator(cfg, now=lambda: then + 30)
    if body is None:
        body = b"".join(
            f"{size:x};chunk-signature={sig}\r\n".encode() + b"a" * size + b"\r\n"
            for size, sig in zip((65536, 1024, 0), AWS_CHUNK_SIGNATURES, strict=True)
        )
    headers = {
        "Host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
        "aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;"
        f"x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature={AWS_SEED}",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "Content-Length": "66824",
    }
    return auth, Wire("PUT", "/examplebucket/chunkObject.txt", headers, body)


@pytest.mark.parametrize("piece", [1, 7, 4096, 70000])
async def test_aws_streaming_example(monkeypatch: pytest.MonkeyPatch, piece: int) -> None:
    auth, wire = aws_example(monkeypatch)
    assert len(wire.body) == 66824
    data, result = await decode(auth, wire, piece)
    assert data == b"a" * 66560
    assert result.payload.mode == "streaming-signed"
    assert result.payload.seed_signature == AWS_SEED


async def test_aws_streaming_example_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    auth, wire = aws_example(monkeypatch)
    corrupt = bytearray(wire.body)
    corrupt[-200] = ord("b")  # inside the 1 KiB chunk
    bad_sig = wire.body.replace(AWS_CHUNK_SIGNATURES[1].encode(), b"1" * 64)
    no_sig = wire.body.replace(b";chunk-signature=" + AWS_CHUNK_SIGNATURES[2].encode(), b"")
    for body, code in (
        (bytes(corrupt), "SignatureDoesNotMatch"),
        (bad_sig, "SignatureDoesNotMatch"),
        (no_sig, "InvalidRequest"),
        (wire.body[:-100], "IncompleteBody"),
        (wire.body + b"extra", "InvalidRequest"),
    ):
        w = Wire(wire.method, wire.target, wire.headers, body)
        assert await payload_code(auth, w) == code
    short = wire.with_headers(x_amz_decoded_content_length="66000")
    short = Wire(short.method, short.target, short.headers, wire.body)
    assert code_of(lambda: auth.authenticate(mocked(short))) == "SignatureDoesNotMatch"


def test_chunk_and_trailer_signature_vectors() -> None:
    key = signing_key(AWS_SECRET, "20130524")
    scope = "20130524/us-east-1/s3/aws4_request"
    previous = AWS_SEED
    for size, expected in zip((65536, 1024, 0), AWS_CHUNK_SIGNATURES, strict=True):
        sha = hashlib.sha256(b"a" * size).hexdigest()
        previous = chunk_signature(key, "20130524T000000Z", scope, previous, sha)
        assert previous == expected
    # aws-c-auth's trailing-headers test vector (first/second/third after the final chunk)
    trailers = {"first": "1st", "second": "2nd", "third": "3rd"}
    assert trailer_signature(key, "20130524T000000Z", scope, previous, trailers) == (
        "df5735bd9f3295cd9386572292562fefc93ba94e80a0a1ddcbd652c4e0a75e6c"
    )


def streaming_put(
    data: bytes,
    *,
    trailer_alg: str | None = None,
    secret: str = SECRET,
    chunk_size: int = 8192,
    tamper_trailer: bool = False,
    trailer_data: bytes | None = None,
    host: str = HOST,
    target: str = "/data/streamed",
    access_key: str = ACCESS_KEY,
) -> Wire:
    """A signed streaming PUT (with a signed checksum trailer when ``trailer_alg``)."""
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer_alg else "")
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
    }
    if trailer_alg:
        headers["x-amz-trailer"] = f"x-amz-checksum-{trailer_alg}"
    seed = sign_header("PUT", host, target, headers, access_key, secret, content_sha256=mode)
    timestamp = seed.headers["X-Amz-Date"]
    signature = seed.headers["Authorization"].rsplit("Signature=", 1)[1]
    trailer = None
    if trailer_alg:
        value = checksums.of(trailer_alg, data if trailer_data is None else trailer_data)
        trailer = (f"x-amz-checksum-{trailer_alg}", value)
    body = signed_chunks(
        data, chunk_size, signing_key(secret, timestamp[:8]), timestamp, signature, trailer=trailer
    )
    if tamper_trailer:
        at = body.index(b"x-amz-trailer-signature:") + len(b"x-amz-trailer-signature:")
        body = body[:at] + (b"0" if body[at : at + 1] != b"0" else b"1") + body[at + 1 :]
    headers = dict(seed.headers)
    return Wire("PUT", seed.target, headers, body)


async def test_signed_streaming_put(auth: Authenticator) -> None:
    data = bytes(range(256)) * 100 + b"tail"
    wire = streaming_put(data)
    got, result = await decode(auth, wire, 1000)
    assert got == data and result.payload.mode == "streaming-signed"
    forged = streaming_put(data, secret="someone-else")  # same framing, other key: seed fails
    assert code_of(lambda: auth.authenticate(mocked(forged))) == "SignatureDoesNotMatch"


@pytest.mark.parametrize("alg", ["crc32", "crc32c", "crc64nvme", "sha256"])
async def test_signed_streaming_trailer(auth: Authenticator, alg: str) -> None:
    data = b"0123456789" * 3000
    got, result = await decode(auth, streaming_put(data, trailer_alg=alg))
    assert got == data
    assert result.payload.computed_checksums[alg] == checksums.of(alg, data)
    wrong_sum = streaming_put(data, trailer_alg=alg, trailer_data=b"other")
    assert await payload_code(auth, wrong_sum) == "BadDigest"
    bad_sig = streaming_put(data, trailer_alg=alg, tamper_trailer=True)
    assert await payload_code(auth, bad_sig) == "SignatureDoesNotMatch"


def unsigned_trailer_put(
    data: bytes,
    alg: str,
    body: bytes | None = None,
    *,
    host: str = HOST,
    target: str = "/data/trailer",
    access_key: str = ACCESS_KEY,
    secret: str = SECRET,
) -> Wire:
    """What botocore sends over TLS by default: STREAMING-UNSIGNED-PAYLOAD-TRAILER."""
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": f"x-amz-checksum-{alg}",
        "x-amz-sdk-checksum-algorithm": alg.upper(),
    }
    seed = sign_header(
        "PUT",
        host,
        target,
        headers,
        access_key,
        secret,
        content_sha256="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    framed = unsigned_trailer_chunks(data, 4000, alg) if body is None else body
    return Wire("PUT", seed.target, dict(seed.headers), framed)


@pytest.mark.parametrize("alg", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256", "xxhash64"])
async def test_unsigned_trailer_from_botocore(auth: Authenticator, alg: str) -> None:
    data = b"x" * 10_000 + b"end"
    got, result = await decode(auth, unsigned_trailer_put(data, alg), 333)
    assert got == data
    assert result.payload.mode == "streaming-unsigned-trailer"
    assert result.payload.computed_checksums[alg] == checksums.of(alg, data)
    framed = unsigned_trailer_chunks(data, 4000, alg)
    corrupt = framed.replace(b"xxxx", b"xxxy", 1)
    assert await payload_code(auth, unsigned_trailer_put(data, alg, corrupt)) == "BadDigest"
    no_trailer = framed[: framed.rindex(b"0\r\n") + 3] + b"\r\n"
    assert await payload_code(auth, unsigned_trailer_put(data, alg, no_trailer)) == (
        "InvalidRequest"
    )


@pytest.mark.parametrize("alg", [None, "CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
async def test_boto3_put_checksums(auth: Authenticator, signer: str, alg: str | None) -> None:
    data = b"payload bytes " * 500
    params: dict[str, Any] = {"Bucket": "data", "Key": "k", "Body": data}
    if alg:
        params["ChecksumAlgorithm"] = alg
    wire = capture(client(), "put_object", **params)
    got, result = await decode(auth, wire)
    assert got == data and result.payload.mode == "sha256"
    name = (alg or "CRC32").lower()
    assert result.payload.computed_checksums[name] == checksums.of(name, data)
    tampered = Wire(wire.method, wire.target, wire.headers, data[:-1] + b"!")
    assert await payload_code(auth, tampered) == "XAmzContentSHA256Mismatch"


async def test_checksum_header_and_content_md5(auth: Authenticator) -> None:
    data = b"some object"
    md5 = checksums.of("md5", data)
    for extra, code in (
        ({"Content-MD5": md5}, None),
        ({"Content-MD5": checksums.of("md5", b"other")}, "BadDigest"),
        ({"x-amz-checksum-crc32c": checksums.of("crc32c", data)}, None),
        ({"x-amz-checksum-crc32c": checksums.of("crc32c", b"other")}, "BadDigest"),
        ({"x-amz-checksum-crc64nvme": checksums.of("crc64nvme", b"x")}, "BadDigest"),
    ):
        wire = sign_header(
            "PUT",
            HOST,
            "/data/k",
            extra,
            ACCESS_KEY,
            SECRET,
            content_sha256="UNSIGNED-PAYLOAD",
            body=data,
        )
        wire = wire.with_headers(Content_Length=str(len(data)))
        if code is None:
            got, result = await decode(auth, wire)
            assert got == data
        else:
            assert await payload_code(auth, wire) == code
    for extra, code in (
        ({"Content-MD5": "not-base64!"}, "InvalidDigest"),
        ({"x-amz-checksum-crc32": "AAAA"}, "InvalidRequest"),
        (
            {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-checksum-sha1": checksums.of("sha1", b"")},
            "InvalidRequest",
        ),
        ({"x-amz-content-sha256": "nonsense"}, "InvalidArgument"),
    ):
        wire = Wire("PUT", "/data/k", {"Host": HOST, "Content-Length": "11", **extra}, data)
        a = Authenticator(AuthConfig())
        assert code_of(lambda w=wire, a=a: a.authenticate(mocked(w))) == code


async def test_final_piece_held_until_verified(auth: Authenticator) -> None:
    """A consumer never sees the end of the body (nor its last piece) when a check fails."""
    data = bytes(1000)
    wire = Wire(
        "PUT",
        "/data/k",
        {"Host": HOST, "Content-Length": "1000", "Content-MD5": checksums.of("md5", b"no")},
        data,
    )
    result = Authenticator(AuthConfig()).authenticate(mocked(wire))
    seen: list[bytes] = []
    with pytest.raises(errors.BadDigest):
        async for piece in payload(mocked(wire, piece=100, with_body=True), result.payload):
            seen.append(piece)
    assert 0 < len(b"".join(seen)) < 1000
    assert result.payload.computed_checksums == {}


async def test_plain_body_shorter_than_declared() -> None:
    wire = Wire("PUT", "/data/k", {"Host": HOST, "Content-Length": "100"}, b"x" * 60)
    result = Authenticator(AuthConfig()).authenticate(mocked(wire))
    with pytest.raises(errors.IncompleteBody):
        await read_all(wire, result)


async def test_with_checksums_adds_algorithms() -> None:
    data = b"abc" * 1000
    wire = Wire("PUT", "/data/k", {"Host": HOST, "Content-Length": str(len(data))}, data)
    result = Authenticator(AuthConfig()).authenticate(mocked(wire))
    spec = result.payload.with_checksums("md5", "crc64nvme")
    request = mocked(wire, with_body=True)
    assert b"".join([p async for p in payload(request, spec)]) == data
    assert spec.computed_checksums == {
        "md5": checksums.of("md5", data),
        "crc64nvme": checksums.of("crc64nvme", data),
    }
    with pytest.raises(ValueError):
        result.payload.with_checksums("adler32")


def test_raw_target_is_never_cut_at_a_hash(auth: Authenticator) -> None:
    """A raw '#' is part of the path the handler sees, so it must be part of what is verified."""
    wire = capture(client(), "get_object", Bucket="data", Key="k")
    path, _, query = wire.target.partition("?")
    for target in (f"{path}#/../secret?{query}", f"{path}?{query}#x"):
        w = Wire(wire.method, target, wire.headers)
        assert code_of(lambda w=w: auth.authenticate(mocked(w))) == "SignatureDoesNotMatch"


# -- differential: the same signed bytes to SeaweedFS and to Slipstream in front of it ------------

DIFF_BUCKET = "authdiff"


@pytest.fixture(scope="module")
def weed_pair(
    seaweedfs: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[S3Endpoint, ProxyProcess]]:
    """SeaweedFS, and a Slipstream over it that knows the same access key and secret."""
    store = make_s3_client(seaweedfs)
    try:
        store.create_bucket(Bucket=DIFF_BUCKET)
    except store.exceptions.BucketAlreadyOwnedByYou:
        pass
    for key in DIFF_KEYS:
        store.put_object(Bucket=DIFF_BUCKET, Key=key, Body=b"seaweed " + key.encode())
    config = {
        "cache": {"dir": "cache", "max_size": "64MiB", "chunk_size": "64KiB", "inline_max": "4KiB"},
        "backends": {
            "weed": {
                "type": "s3",
                "endpoint": seaweedfs.url,
                "access_key_env": "DIFF_STORE_KEY",
                "secret_key_env": "DIFF_STORE_SECRET",
            }
        },
        "buckets": {"*": {"backend": "weed"}},
        "auth": {
            "users": [
                {
                    "access_key": seaweedfs.access_key,
                    "secret_key_env": "DIFF_CLIENT_SECRET",
                    "allow": {"*": "read-write"},
                }
            ]
        },
    }
    env = {
        "DIFF_STORE_KEY": seaweedfs.access_key,
        "DIFF_STORE_SECRET": seaweedfs.secret_key,
        "DIFF_CLIENT_SECRET": seaweedfs.secret_key,
    }
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("authdiff"), env).start()
    yield seaweedfs, proxy
    proxy.stop()


def both(pair: tuple[S3Endpoint, ProxyProcess], wire: Wire) -> tuple[Raw, Raw]:
    weed, proxy = pair
    return send(weed.url, wire), send(proxy.url, wire)


def weed_client(weed: S3Endpoint, secret: str | None = None, access: str | None = None) -> Any:
    return make_s3_client(weed, access, secret, signature_version="s3v4")


def assert_same(pair: tuple[S3Endpoint, ProxyProcess], wire: Wire, code: str | None) -> Raw:
    """Both accept (code None) or both refuse, Slipstream with ``code``."""
    weed, mine = both(pair, wire)
    detail = (
        f"{wire.method} {wire.target}: seaweedfs {weed.status} {weed.error_code()}, "
        f"slipstream {mine.status} {mine.error_code()} {mine.body[:300]!r}"
    )
    assert (weed.status < 300) == (mine.status < 300), detail
    if code is None:
        assert mine.status < 300, detail
    else:
        assert mine.error_code() == code, detail
    return mine


@pytest.mark.parametrize("key", DIFF_KEYS)
def test_diff_signed_get(weed_pair: tuple[S3Endpoint, ProxyProcess], signer: str, key: str) -> None:
    weed = weed_pair[0]
    wire = capture(weed_client(weed), "get_object", Bucket=DIFF_BUCKET, Key=key)
    assert assert_same(weed_pair, wire, None).body == b"seaweed " + key.encode()
    url = weed_client(weed).generate_presigned_url(
        "get_object", Params={"Bucket": DIFF_BUCKET, "Key": key}, ExpiresIn=600
    )
    assert_same(weed_pair, from_url("GET", url, {}), None)
    v2_url = make_s3_client(weed).generate_presigned_url(  # boto3's default: SigV2
        "get_object", Params={"Bucket": DIFF_BUCKET, "Key": key}, ExpiresIn=600
    )
    assert "AWSAccessKeyId=" in v2_url
    assert assert_same(weed_pair, from_url("GET", v2_url, {}), None).body.startswith(b"seaweed ")


def test_diff_refusals(weed_pair: tuple[S3Endpoint, ProxyProcess]) -> None:
    weed = weed_pair[0]
    key = KEYS[1]
    good = capture(weed_client(weed), "get_object", Bucket=DIFF_BUCKET, Key=key)
    authz = good.headers["Authorization"]
    flipped = authz[:-1] + ("0" if authz[-1] != "0" else "1")
    assert_same(weed_pair, good.with_headers(X_Unsigned_Extra="fine"), None)
    assert_same(weed_pair, good.with_headers(Authorization=flipped), "SignatureDoesNotMatch")
    moved = Wire(good.method, good.target.replace("and%2Bplus", "and%2Bminus"), good.headers)
    assert_same(weed_pair, moved, "SignatureDoesNotMatch")
    wrong = capture(
        weed_client(weed, secret="wrong-secret"), "get_object", Bucket=DIFF_BUCKET, Key=key
    )
    assert_same(weed_pair, wrong, "SignatureDoesNotMatch")
    unknown = capture(
        weed_client(weed, access="AKIDNOBODY", secret="x"),
        "get_object",
        Bucket=DIFF_BUCKET,
        Key=key,
    )
    assert_same(weed_pair, unknown, "InvalidAccessKeyId")
    for skew in (20 * 60, -20 * 60):
        with shifted_clock(skew):
            skewed = capture(weed_client(weed), "get_object", Bucket=DIFF_BUCKET, Key=key)
        assert_same(weed_pair, skewed, "RequestTimeTooSkewed")
    with shifted_clock(-7200):
        url = weed_client(weed).generate_presigned_url(
            "get_object", Params={"Bucket": DIFF_BUCKET, "Key": key}, ExpiresIn=3600
        )
    assert_same(weed_pair, from_url("GET", url, {}), "AccessDenied")
    url = weed_client(weed).generate_presigned_url(
        "get_object", Params={"Bucket": DIFF_BUCKET, "Key": key}, ExpiresIn=600
    )
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")[:-1]
    assert_same(weed_pair, from_url("GET", tampered, {}), "SignatureDoesNotMatch")
    v2 = make_s3_client(weed)
    v2_url = v2.generate_presigned_url(
        "get_object", Params={"Bucket": DIFF_BUCKET, "Key": key}, ExpiresIn=600
    )
    assert_same(
        weed_pair,
        from_url("GET", v2_url.replace("Signature=", "Signature=A"), {}),
        "SignatureDoesNotMatch",
    )
    with shifted_clock(-7200), mock.patch("time.time", lambda: real_time() - 7200):
        v2_old = v2.generate_presigned_url(
            "get_object", Params={"Bucket": DIFF_BUCKET, "Key": key}, ExpiresIn=600
        )
    assert_same(weed_pair, from_url("GET", v2_old, {}), "AccessDenied")


def test_diff_streaming_puts(weed_pair: tuple[S3Endpoint, ProxyProcess]) -> None:
    """Chunked uploads: accepted alike and stored without framing; refused alike, nothing kept."""
    weed, proxy = weed_pair
    store = make_s3_client(weed)
    host = urlsplit(weed.url).netloc
    data = bytes(range(256)) * 300  # 76800 bytes: several 16 KiB chunks
    creds = {"host": host, "access_key": weed.access_key, "secret": weed.secret_key}

    def stored(key: str) -> bytes | None:
        try:
            return bytes(store.get_object(Bucket=DIFF_BUCKET, Key=key)["Body"].read())
        except store.exceptions.NoSuchKey:
            return None

    good = {
        "signed": streaming_put(data, chunk_size=16384, target=f"/{DIFF_BUCKET}/signed", **creds),
        "signed-trailer": streaming_put(
            data, trailer_alg="crc32c", target=f"/{DIFF_BUCKET}/signed-trailer", **creds
        ),
        "unsigned-trailer": unsigned_trailer_put(
            data, "crc32", target=f"/{DIFF_BUCKET}/unsigned-trailer", **creds
        ),
    }
    for name, wire in good.items():
        for base in (weed.url, proxy.url):
            store.delete_object(Bucket=DIFF_BUCKET, Key=name)
            answer = send(base, wire)
            assert answer.status == 200, (name, base, answer.status, answer.body[:300])
            assert stored(name) == data, (name, base)
    signed = good["signed"]
    corrupt = bytearray(signed.body)
    corrupt[len(corrupt) // 2] ^= 1
    bad_trailer = streaming_put(
        data,
        trailer_alg="crc32c",
        trailer_data=b"not the data",
        target=f"/{DIFF_BUCKET}/bad-trailer",
        **creds,
    )
    wrong_secret = streaming_put(
        data, target=f"/{DIFF_BUCKET}/wrong-secret", **{**creds, "secret": "wrong"}
    )
    refused = {
        "signed": (
            Wire("PUT", signed.target, signed.headers, bytes(corrupt)),
            "SignatureDoesNotMatch",
        ),
        "bad-trailer": (bad_trailer, "BadDigest"),
        "wrong-secret": (wrong_secret, "SignatureDoesNotMatch"),
    }
    codes: dict[str, str | None] = {}
    for name, (wire, _) in refused.items():
        store.delete_object(Bucket=DIFF_BUCKET, Key=name)
        mine = send(proxy.url, wire)
        assert mine.status >= 400, (name, mine.status)
        assert stored(name) is None, name
        codes[name] = mine.error_code()
        theirs = send(weed.url, wire)
        assert theirs.status >= 400, (name, theirs.status)
        assert stored(name) is None, name
    assert codes == {name: code for name, (_, code) in refused.items()}


# -- end to end: the proxy with auth.users, real clients ------------------------------------------


@pytest.fixture
def secured(proxy_factory: Any, tmp_path: Path) -> ProxyProcess:
    """A proxy over an fs store with buckets data (read-write), imagenet (read), private (none)."""
    root = tmp_path / "store"
    for bucket in ("data", "imagenet", "private"):
        (root / bucket).mkdir(parents=True)
        (root / bucket / "hello.txt").write_bytes(f"hello from {bucket}".encode())
    secret_file = tmp_path / "admin.secret"
    secret_file.write_text("admin-secret\n")
    config = {
        "cache": {"dir": "cache", "max_size": "64MiB", "chunk_size": "64KiB", "inline_max": "4KiB"},
        "backends": {"local": {"type": "fs", "root": str(root)}},
        "buckets": {"*": {"backend": "local"}},
        "auth": {
            "users": [
                {
                    "access_key": ACCESS_KEY,
                    "secret_key_env": "E2E_TRAINER_SECRET",
                    "allow": {"data": "read-write", "imagenet": "read"},
                },
                {
                    "access_key": "admin",
                    "secret_key_file": str(secret_file),
                    "allow": {"*": "read"},
                },
            ]
        },
    }
    proxy: ProxyProcess = proxy_factory(config, env={"E2E_TRAINER_SECRET": SECRET})
    return proxy


def proxy_client(proxy: ProxyProcess, secret: str = SECRET, access_key: str = ACCESS_KEY) -> Any:
    return make_s3_client(proxy.url, access_key, secret, signature_version="s3v4")


def s3_code(fn: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        fn()
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_e2e_boto3(secured: ProxyProcess) -> None:
    c = proxy_client(secured)
    assert c.get_object(Bucket="data", Key="hello.txt")["Body"].read() == b"hello from data"
    assert c.get_object(Bucket="imagenet", Key="hello.txt")["Body"].read() == b"hello from imagenet"
    assert [o["Key"] for o in c.list_objects_v2(Bucket="imagenet")["Contents"]] == ["hello.txt"]
    c.put_object(Bucket="data", Key="new.bin", Body=b"written")
    assert c.get_object(Bucket="data", Key="new.bin")["Body"].read() == b"written"
    wrong = proxy_client(secured, secret="not-it")
    assert s3_code(lambda: wrong.get_object(Bucket="data", Key="hello.txt")) == (
        403,
        "SignatureDoesNotMatch",
    )
    assert s3_code(lambda: proxy_client(secured, access_key="ghost").list_buckets()) == (
        403,
        "InvalidAccessKeyId",
    )
    assert s3_code(lambda: c.get_object(Bucket="private", Key="hello.txt")) == (403, "AccessDenied")
    assert s3_code(lambda: c.list_objects_v2(Bucket="private")) == (403, "AccessDenied")
    assert s3_code(lambda: c.put_object(Bucket="imagenet", Key="x", Body=b"no")) == (
        403,
        "AccessDenied",
    )
    assert s3_code(lambda: c.delete_object(Bucket="imagenet", Key="hello.txt")) == (
        403,
        "AccessDenied",
    )
    assert s3_code(lambda: c.get_object(Bucket="imagenet", Key="x")) == (404, "NoSuchKey")
    admin = proxy_client(secured, "admin-secret", "admin")  # secret from a file
    assert admin.get_object(Bucket="private", Key="hello.txt")["Body"].read() == (
        b"hello from private"
    )
    assert s3_code(lambda: admin.put_object(Bucket="data", Key="y", Body=b"no")) == (
        403,
        "AccessDenied",
    )
    unsigned = raw_request(secured.url, "GET", "/data/hello.txt")
    assert (unsigned.status, unsigned.error_code()) == (403, "AccessDenied")


def test_e2e_presigned_and_chunked(secured: ProxyProcess, tmp_path: Path) -> None:
    c = proxy_client(secured)
    url = c.generate_presigned_url(
        "get_object", Params={"Bucket": "data", "Key": "hello.txt"}, ExpiresIn=300
    )
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"hello from data"
    with shifted_clock(-3600):
        expired = c.generate_presigned_url(
            "get_object", Params={"Bucket": "data", "Key": "hello.txt"}, ExpiresIn=600
        )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(expired, timeout=10)
    assert info.value.code == 403 and b"<Code>AccessDenied</Code>" in info.value.read()
    default = make_s3_client(secured.url, ACCESS_KEY, SECRET)  # presigns with SigV2
    v2_url = default.generate_presigned_url(
        "get_object", Params={"Bucket": "data", "Key": "hello.txt"}, ExpiresIn=300
    )
    with urllib.request.urlopen(v2_url, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"hello from data"
    for client_, key in ((c, "v4 put.txt"), (default, "v2 put+.txt")):
        curl_url = client_.generate_presigned_url(
            "put_object", Params={"Bucket": "data", "Key": key}, ExpiresIn=300
        )
        body = tmp_path / "upload.txt"
        body.write_bytes(b"uploaded with curl " + key.encode())
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(body), curl_url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == "200", (out.stdout, out.stderr)
        assert c.get_object(Bucket="data", Key=key)["Body"].read() == body.read_bytes()
    put_url = c.generate_presigned_url(
        "put_object", Params={"Bucket": "data", "Key": "presigned put.txt"}, ExpiresIn=300
    )
    req = urllib.request.Request(put_url, data=b"via presigned PUT", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    got = c.get_object(Bucket="data", Key="presigned put.txt")["Body"].read()
    assert got == b"via presigned PUT"
    host = urlsplit(secured.url).netloc
    data = b"chunked " * 5000
    wire = streaming_put(data, trailer_alg="crc64nvme", host=host, target="/data/chunked.bin")
    assert send(secured.url, wire).status == 200
    assert c.get_object(Bucket="data", Key="chunked.bin")["Body"].read() == data
    denied = streaming_put(data, host=host, target="/imagenet/chunked.bin")
    answer = send(secured.url, denied)
    assert (answer.status, answer.error_code()) == (403, "AccessDenied")
    assert s3_code(lambda: c.head_object(Bucket="imagenet", Key="chunked.bin"))[0] == 404


def test_non_loopback_listen_needs_users_or_anonymous(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text(
        "listen: 0.0.0.0:0\n"
        "backends: {local: {type: fs, root: ./data}}\n"
        "buckets: {'*': {backend: local}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert run.returncode == 2
    assert "auth.users" in run.stderr and "auth.anonymous" in run.stderr


# -- configuration ---------------------------------------------------------------------------------


def load_cfg(auth_section: Any, listen: str = "127.0.0.1:9900") -> Any:
    raw = {
        "listen": listen,
        "backends": {"local": {"type": "fs", "root": "./data"}},
        "buckets": {"*": {"backend": "local"}},
    }
    if auth_section is not None:
        raw["auth"] = auth_section
    return config_from_mapping(raw, "test.yaml", environ={})


def user(**fields: Any) -> dict[str, Any]:
    return {"access_key": "trainer", "secret_key_env": "X", "allow": {"data": "read"}, **fields}


@pytest.mark.parametrize(
    ("auth_section", "field"),
    [
        ({"users": [user(secret_key="inline")]}, "auth.users[0].secret_key"),
        ({"users": [user(secret_key_env=None)]}, "auth.users[0].secret_key_env"),
        ({"users": [user(secret_key_file="/f")]}, "auth.users[0].secret_key_env"),
        ({"users": [user(access_key="has space")]}, "auth.users[0].access_key"),
        ({"users": [user(access_key="a/b")]}, "auth.users[0].access_key"),
        ({"users": [user(allow={"data": "write"})]}, "auth.users[0].allow.data"),
        ({"users": [user(allow={"Bad_Bucket!": "read"})]}, "auth.users[0].allow.Bad_Bucket!"),
        ({"users": [user(allow=["data"])]}, "auth.users[0].allow"),
        ({"users": [user(), user()]}, "auth.users[1].access_key"),
        ({"users": [user(colour="blue")]}, "auth.users[0]"),
        ({"users": {"trainer": {}}}, "auth.users"),
        ({"anonymous": False}, "auth.anonymous"),
        ({"anonymous": "maybe"}, "auth.anonymous"),
        ({"region": "Not A Region"}, "auth.region"),
        ({"unknown": 1}, "auth"),
    ],
)
def test_config_errors_name_the_field(auth_section: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cfg(auth_section)
    assert f"test.yaml: {field}" in str(info.value)
    assert "inline" not in str(info.value)


def test_config_listen_rule_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = load_cfg(None)
    assert cfg.auth == AuthConfig() and cfg.auth.region == "us-east-1"
    with pytest.raises(ConfigError, match="auth.users: listen 0.0.0.0:9900"):
        load_cfg(None, listen="0.0.0.0:9900")
    assert load_cfg({"anonymous": True}, listen="0.0.0.0:9900").auth.anonymous is True
    secret_file = tmp_path / "s"
    secret_file.write_text("from-a-file\n")
    cfg = load_cfg(
        {
            "region": "eu-west-1",
            "users": [
                user(allow={"*": "read", "scratch": "read-write"}),
                {"access_key": "b", "secret_key_file": str(secret_file)},
            ],
        },
        listen="0.0.0.0:9900",
    )
    first, second = cfg.auth.users
    assert first.allow == {"*": "read", "scratch": "read-write"} and second.allow == {}
    assert second.secret() == "from-a-file"
    assert cfg.auth.region == "eu-west-1"
    with pytest.raises(ConfigError, match="environment variable X is not set"):
        first.secret()
    monkeypatch.setenv("X", "from-env")
    assert first.secret() == "from-env"
    assert "from-env" not in repr(cfg) and "from-a-file" not in repr(cfg)
    env = {"SLIPSTREAM_AUTH__ANONYMOUS": "true"}
    raw = {
        "listen": "0.0.0.0:1",
        "backends": {"l": {"type": "fs", "root": "."}},
        "buckets": {"*": {"backend": "l"}},
    }
    assert config_from_mapping(raw, "t", environ=env).auth.anonymous is True


# -- fuzzing: hostile headers and framing give S3 errors, never a crash or wrong bytes -----------

_PAYLOAD_MODES = {
    "UNSIGNED-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "0" * 64,
}
_FUZZ_AUTHS: list[Authenticator] = []


def fuzz_auths() -> list[Authenticator]:
    """An anonymous-default and a users-configured Authenticator, made once."""
    if not _FUZZ_AUTHS:
        env = {"TEST_AUTH_SECRET": SECRET, "TEST_AUTH_OTHER": "other-secret"}
        with mock.patch.dict(os.environ, env):
            _FUZZ_AUTHS.append(Authenticator(AuthConfig()))
            _FUZZ_AUTHS.append(Authenticator(AuthConfig(users=users("TEST_AUTH_SECRET"))))
    return _FUZZ_AUTHS


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_HEADER_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)


@_FUZZ
@given(
    authorization=st.one_of(
        st.none(),
        _HEADER_TEXT,
        st.builds(
            "AWS4-HMAC-SHA256 Credential={}, SignedHeaders={}, Signature={}".format,
            _HEADER_TEXT,
            _HEADER_TEXT,
            st.sampled_from(["0" * 64, "zz", ""]),
        ),
        st.builds("AWS {}:{}".format, _HEADER_TEXT, _HEADER_TEXT),
    ),
    amz_date=st.one_of(st.none(), _HEADER_TEXT, st.from_regex(r"\A[0-9]{8}T[0-9]{6}Z\Z")),
    content_sha=st.one_of(st.none(), _HEADER_TEXT, st.sampled_from(sorted(_PAYLOAD_MODES))),
    query=st.text(
        st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="#"), max_size=200
    ),
    extra=st.dictionaries(
        st.sampled_from(
            [
                "Content-MD5",
                "x-amz-checksum-crc32",
                "x-amz-trailer",
                "Date",
                "x-amz-decoded-content-length",
                "x-amz-sdk-checksum-algorithm",
            ]
        ),
        _HEADER_TEXT,
        max_size=3,
    ),
)
def test_fuzz_authenticate(
    authorization: str | None,
    amz_date: str | None,
    content_sha: str | None,
    query: str,
    extra: dict[str, str],
) -> None:
    headers = {"Host": HOST, "Content-Length": "0", **extra}
    for name, value in (
        ("Authorization", authorization),
        ("x-amz-date", amz_date),
        ("x-amz-content-sha256", content_sha),
    ):
        if value is not None:
            headers[name] = value
    wire = Wire("PUT", f"/data/k?{query}", headers)
    for auth in fuzz_auths():
        try:
            result = auth.authenticate(mocked(wire))
        except errors.S3Error:
            continue
        assert isinstance(result, AuthResult)


@_FUZZ
@given(
    data=st.binary(max_size=3000),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert"]),
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=4),
        ),
        max_size=3,
    ),
    trailer=st.booleans(),
    piece=st.integers(1, 700),
)
def test_fuzz_signed_chunked_body(
    data: bytes, edits: list[tuple[str, int, bytes]], trailer: bool, piece: int
) -> None:
    """Whatever is done to a signed aws-chunked body, it decodes to the original or raises."""
    wire = streaming_put(data, chunk_size=1000, trailer_alg="crc32" if trailer else None)
    body = bytearray(wire.body)
    for op, at, blob in edits:
        at %= len(body) + 1
        if op == "flip" and at < len(body):
            body[at] ^= blob[0] or 1
        elif op == "cut":
            del body[at : at + len(blob)]
        else:
            body[at:at] = blob
    mutated = Wire(wire.method, wire.target, wire.headers, bytes(body))

    async def run() -> bytes:
        result = fuzz_auths()[1].authenticate(mocked(mutated))
        return await read_all(mutated, result, piece)

    try:
        got = asyncio.run(run())
    except errors.S3Error:
        return
    assert got == data


def test_e2e_aws_cli(secured: ProxyProcess, tmp_path: Path) -> None:
    """The aws cli at its defaults, with Slipstream's credentials: cp up (multipart too), down."""
    cli = Path(sys.executable).parent / "aws"

    def aws(*args: str, secret: str = SECRET) -> subprocess.CompletedProcess[bytes]:
        env = aws_env(tmp_path)
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=secret)
        return subprocess.run(
            [str(cli), "--endpoint-url", secured.url, *args],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )

    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(b"small file " * 100)
    large.write_bytes(bytes(range(256)) * (20 * 1024 * 1024 // 256 + 7))  # > 8 MiB: multipart
    for path in (small, large):
        up = aws("s3", "cp", str(path), f"s3://data/cli/{path.name}")
        assert up.returncode == 0, up.stderr
        down = aws("s3", "cp", f"s3://data/cli/{path.name}", "-")
        assert down.returncode == 0, down.stderr
        assert hashlib.sha256(down.stdout).digest() == hashlib.sha256(path.read_bytes()).digest()
    url = aws("s3", "presign", "s3://data/cli/small.bin", "--expires-in", "300")
    assert url.returncode == 0, url.stderr
    with urllib.request.urlopen(url.stdout.decode().strip(), timeout=10) as resp:
        assert resp.read() == small.read_bytes()
    denied = aws("s3", "cp", str(small), "s3://imagenet/cli/small.bin")
    assert denied.returncode != 0 and b"AccessDenied" in denied.stderr
    wrong = aws("s3", "ls", "s3://data/", secret="wrong")
    assert wrong.returncode != 0 and b"SignatureDoesNotMatch" in wrong.stderr


@pytest.mark.parametrize(
    "query",
    [
        "a=1&b=2",
        "b=2&a=1&a=0",
        "list-type=2&prefix=d%C3%A9j%C3%A0%2Fvu&delimiter=%2F",
        "x=a+b&y=a%20b&z=%7e~%2A*&w=&v",
        "k=%E2%9C%93&k=%e2%9c%93&empty=&=odd",
        "bad=%ZZ&raw=é&semi=a;b&eq=a=b",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ak%2F20260101%2Fus-east-1%2Fs3%2F"
        "aws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host",
    ],
)
def test_canonical_query_matches_botocore(query: str) -> None:
    """The canonical query verify builds (each pair decoded, encoded again, sorted; memoised
    per pair) is botocore's, for queries as clients send them and as they should not."""
    pairs = [
        (unquote(n), unquote(v)) for n, _, v in (p.partition("=") for p in query.split("&") if p)
    ]
    want = S3SigV4Auth(None, "s3", "us-east-1")._canonical_query_string_params(pairs)
    for _ in range(2):  # the second time from the memo
        assert next(iter(sigv4.query_forms(query, False))) == want
