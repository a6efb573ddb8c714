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


class Signer:
    def __init__(self, region: str, service: str = "s3") -> None:
        self._region = region
        self._service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, signing key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        k = hmac.digest(("AWS4" + secret).encode(), day.encode(), "sha256")
        for part in (self._region, self._service, "aws4_request"):
            k = hmac.digest(k, part.encode(), "sha256")
        self._key = (secret, day, k)
        return k

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
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        signed_headers = {
            "host": host,
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": stamp,
        }
        if token:
            signed_headers["x-amz-security-token"] = token
        names = ";".join(signed_headers)  # already in sorted order
        canonical_query = "&".join(sorted(query.split("&"))) if query else ""
        canonical = "\n".join(
            (
                method,
                path or "/",
                canonical_query,
                "".join(f"{k}:{v}\n" for k, v in signed_headers.items()),
                names,
                EMPTY_SHA256,
            )
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = "\n".join(
            (_ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.new(
            self._signing_key(secret, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        out = dict(headers)
        out.update(signed_headers)
        out["Host"] = out.pop("host")  # sent as signed (aiohttp would drop a default port)
        out["Authorization"] = (
            f"{_ALGORITHM} Credential={access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        return out
