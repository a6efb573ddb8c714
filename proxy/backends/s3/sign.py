"""SigV4 for the hot GET and HEAD of http.py: bodiless requests to a URL we built ourselves.

botocore's S3SigV4Auth costs ~150 us a request (an AWSRequest, header canonicalisation of
every header, four HMACs to derive the signing key); for a 16 KiB fill that is a large share
of the proxy's CPU. The signing key depends only on (secret, day, region, service), so it is
derived once a day; the canonical request signs ``host``, ``x-amz-content-sha256``,
``x-amz-date`` (and ``x-amz-security-token`` with temporary credentials), which SigV4 allows:
other headers may go unsigned. https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
The path and query come already percent-encoded (S3 does not encode them twice).
"""

from __future__ import annotations

import hashlib
import hmac
import time

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ALGORITHM = "AWS4-HMAC-SHA256"
_NAMES = "host;x-amz-content-sha256;x-amz-date"  # the signed headers, in sorted order
_NAMES_WITH_TOKEN = _NAMES + ";x-amz-security-token"
_SHA_LINE = f"x-amz-content-sha256:{EMPTY_SHA256}\n"


class Signer:
    def __init__(self, region: str, service: str = "s3") -> None:
        self._region = region
        self._service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, signing key)
        self._second: tuple[int, str, str] = (-1, "", "")  # (second, x-amz-date, scope)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        k = hmac.digest(("AWS4" + secret).encode(), day.encode(), "sha256")
        for part in (self._region, self._service, "aws4_request"):
            k = hmac.digest(k, part.encode(), "sha256")
        self._key = (secret, day, k)
        return k

    def _stamp(self, now: float | None) -> tuple[str, str]:
        """(x-amz-date, credential scope) of ``now``: formatted once a second."""
        second = int(time.time() if now is None else now)
        cached = self._second
        if cached[0] == second:
            return cached[1], cached[2]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        scope = f"{stamp[:8]}/{self._region}/{self._service}/aws4_request"
        self._second = (second, stamp, scope)
        return stamp, scope

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: dict[str, str],
        access_key: str,
        secret: str,
        token: str | None = None,
        now: float | None = None,
    ) -> dict[str, str]:
        """``headers`` plus the SigV4 ones, for a bodiless request. ``query``: one or more
        ``name=value`` pairs, already encoded (empty for none)."""
        stamp, scope = self._stamp(now)
        canonical_query = "&".join(sorted(query.split("&"))) if query else ""
        if token:
            names = _NAMES_WITH_TOKEN
            signed = f"host:{host}\n{_SHA_LINE}x-amz-date:{stamp}\nx-amz-security-token:{token}\n"
        else:
            names = _NAMES
            signed = f"host:{host}\n{_SHA_LINE}x-amz-date:{stamp}\n"
        canonical = f"{method}\n{path or '/'}\n{canonical_query}\n{signed}\n{names}\n{EMPTY_SHA256}"
        to_sign = (
            f"{_ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.digest(
            self._signing_key(secret, stamp[:8]), to_sign.encode(), "sha256"
        ).hex()
        out = dict(headers)
        out["x-amz-content-sha256"] = EMPTY_SHA256
        out["x-amz-date"] = stamp
        if token:
            out["x-amz-security-token"] = token
        out["Host"] = host  # sent as signed (aiohttp would drop a default port)
        out["Authorization"] = (
            f"{_ALGORITHM} Credential={access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        return out
