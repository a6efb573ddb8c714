"""The S3 backend's SigV4 for GET and HEAD (proxy/backends/s3/sign.py) against botocore's
S3SigV4Auth, the reference every AWS SDK matches: same canonical request, same signature, for
odd keys, a query, virtual-hosted style, temporary credentials, and across a day boundary (the
cached signing key is derived again). The stores' own checks are in the conformance tests."""

from __future__ import annotations

import calendar
import re
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.backends.s3.sign import EMPTY_SHA256, Signer

NOON = calendar.timegm((2026, 11, 29, 12, 0, 0))
MIDNIGHT = calendar.timegm((2026, 11, 30, 0, 0, 1))


def botocore_signature(
    method: str, url: str, stamp: str, region: str, creds: Credentials
) -> tuple[str, str]:
    """(signed headers, signature) botocore computes for the same signed headers."""
    headers = {"X-Amz-Date": stamp, "X-Amz-Content-SHA256": EMPTY_SHA256}
    if creds.token:
        headers["X-Amz-Security-Token"] = creds.token
    request = AWSRequest(method=method, url=url, headers=headers)
    request.context["timestamp"] = stamp
    auth = S3SigV4Auth(creds, "s3", region)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    return auth.signed_headers(auth.headers_to_sign(request)), signature


@pytest.mark.parametrize(
    ("method", "host", "key", "query", "token", "now"),
    [
        ("GET", "127.0.0.1:8333", "plain/key.bin", "", None, NOON),
        ("HEAD", "127.0.0.1:8333", "a key/with spaces+plus&amp=~tilde", "", None, NOON),
        ("GET", "s3.eu-west-1.amazonaws.com", "ünïcode/ключ/%41", "", "tok/en+=", NOON),
        ("HEAD", "bkt.s3.amazonaws.com", "part", "partNumber=3", None, MIDNIGHT),
    ],
)
def test_signature_matches_botocore(
    method: str, host: str, key: str, query: str, token: str | None, now: int
) -> None:
    region = "eu-west-1"
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    path = "/bkt/" + quote(key, safe="/~")
    signer = Signer(region)
    signer.sign(method, host, path, query, {}, creds.access_key, creds.secret_key, token, NOON)
    out = signer.sign(
        method,
        host,
        path,
        query,
        {"Range": "bytes=0-9"},
        creds.access_key,
        creds.secret_key,
        token,
        now,
    )  # the second call uses (or, a day later, replaces) the cached signing key
    assert out["Range"] == "bytes=0-9" and out["Host"] == host
    assert out["x-amz-content-sha256"] == EMPTY_SHA256
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    names, expected = botocore_signature(method, url, out["x-amz-date"], region, creds)
    m = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/(\d{8})/eu-west-1/s3/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        out["Authorization"],
    )
    assert m is not None, out["Authorization"]
    assert m.group(1) == out["x-amz-date"][:8]
    assert (m.group(2), m.group(3)) == (names, expected)
    assert out.get("x-amz-security-token") == token
