"""Who is asking and what they may do: SigV4 checks (sigv4.py), access rules, the body's framing.

``Authenticator.authenticate`` verifies the Authorization header or a presigned URL (pure CPU,
no awaits; a cached signing key per user and day) and describes how the body is framed and
what it must match (``PayloadSpec``, consumed by ``payload.payload``). A header-signed read's
claim (the Authorization header before its signature) that verified is kept with its checks
and its signing key's HMAC state; a later read with that claim still has its own signature,
date, clock skew and headers checked (no verdict is kept for a header-signed request).

SigV4 has no nonce: a request replayed inside its validity window (15 minutes of clock skew
for header auth, X-Amz-Expires for presigned URLs) is accepted again, as by S3 itself. TLS in
front of the listener is what keeps signed requests from being captured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from aiohttp import web
from multidict import CIMultiDictProxy

from proxy import errors
from proxy.config_access import OPEN_ACCESS, AccessLevel, AuthConfig
from proxy.memo import remember
from proxy.s3 import checksums, sigv2, sigv4
from proxy.s3.sigv4 import UNSIGNED_PAYLOAD, Signed

MAX_SKEW = 15 * 60  # seconds of clock skew allowed for header auth (S3's 900000 ms)

STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

PayloadMode = Literal[
    "unsigned",  # UNSIGNED-PAYLOAD, or no x-amz-content-sha256 (anonymous, presigned)
    "sha256",  # a hex SHA-256 of the body, checked when the body ends
    "streaming-signed",  # aws-chunked, each chunk signed (chain from the seed signature)
    "streaming-unsigned-trailer",  # aws-chunked, checksum in a trailer
    "streaming-signed-trailer",  # aws-chunked, signed chunks and a signed trailer
]
_MODES: dict[str, PayloadMode] = {
    UNSIGNED_PAYLOAD: "unsigned",
    STREAMING_SIGNED: "streaming-signed",
    STREAMING_UNSIGNED_TRAILER: "streaming-unsigned-trailer",
    STREAMING_SIGNED_TRAILER: "streaming-signed-trailer",
}
_READ_METHODS = frozenset(("GET", "HEAD"))
VERIFIED_URLS_MAX = 100_000  # (a few hundred bytes each; cleared when full)
CLAIMS_MAX = 1024  # header claims kept per Authenticator (cleared when full)
_CLAIM_CHARS = 1024  # the longest Authorization header part kept (botocore's are ~200)
_NAME_SETS_MAX = 64  # header name lists known clean per claim (cleared when full)
_NAMES_MAX = 32  # header names in a list kept clean for presigned URLs
_NAME_CHARS = 1024  # their characters


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and what it may touch: bucket (or "*") -> level."""

    access_key: str
    allow: Mapping[str, AccessLevel]

    def may(self, bucket: str, write: bool) -> bool:
        """An exact bucket entry wins over "*"; writing needs read-write."""
        level = self.allow.get(bucket)
        if level is None:
            level = self.allow.get("*")
        return level == "read-write" or (level == "read" and not write)


ANONYMOUS = Principal("anonymous", OPEN_ACCESS)  # no users configured: open (loopback only)


@dataclass(frozen=True, kw_only=True)
class PayloadSpec:
    """How the request body is framed and what it must match; consumed by ``payload.payload``.

    ``checksums`` and ``content_md5`` are base64 values from the headers; ``trailers`` the
    lower-case names declared in x-amz-trailer. For signed streaming modes ``signing_key``,
    ``seed_signature``, ``timestamp`` and ``scope`` drive the chunk-signature chain; without a
    signing key (anonymous mode, no users) the framing is removed and signatures are not checked.
    ``computed_checksums`` (algorithm -> base64, "md5" included when computed) is filled by
    ``payload`` only after the whole body has passed every check.
    """

    mode: PayloadMode = "unsigned"
    sha256: str | None = None
    content_length: int | None = None
    decoded_length: int | None = None
    trailers: tuple[str, ...] = ()
    checksums: Mapping[str, str] = field(default_factory=dict)
    content_md5: str | None = None
    sdk_algorithm: str | None = None
    want: frozenset[str] = frozenset()
    seed_signature: str | None = None
    signing_key: bytes | None = field(default=None, repr=False)
    timestamp: str = ""
    scope: str = ""
    computed_checksums: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def chunked(self) -> bool:
        """The body carries aws-chunked framing that ``payload`` removes."""
        return self.mode.startswith("streaming-")

    def with_checksums(self, *algorithms: str) -> PayloadSpec:
        """A copy that also computes ``algorithms`` (checksums.ALGORITHMS or "md5")."""
        for a in algorithms:
            if a != "md5" and a not in checksums.ALGORITHMS:
                raise ValueError(f"unknown checksum algorithm {a!r}")
        return replace(self, want=self.want | frozenset(algorithms), computed_checksums={})


_NO_BODY = PayloadSpec()

PRESIGN_PARAMS = frozenset(
    (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    )
)


@dataclass(slots=True)
class _HeaderRead:
    """A claim (an Authorization header before its signature) that verified for a body-less
    read without a query, and the lists of header names seen with it that carry no unsigned
    x-amz-* header (a function of the names and the claim's SignedHeaders alone)."""

    claim: sigv4.HeaderClaim
    read: AuthResult
    clean: set[tuple[str, ...]] = field(default_factory=set)


@dataclass(frozen=True)
class AuthResult:
    principal: Principal | None
    payload: PayloadSpec
    presigned: bool = False  # authenticated by query parameters (SigV4 X-Amz-* or SigV2)

    def operation_query(self, query: dict[str, str]) -> dict[str, str]:
        """``query`` without a presigned URL's own parameters (they select no operation)."""
        if not self.presigned:
            return query
        return {
            k: v
            for k, v in query.items()
            if k not in PRESIGN_PARAMS and k not in sigv2.QUERY_PARAMS
        }

    def allows(self, bucket: str, write: bool) -> bool:
        """The principal may read (or write) ``bucket``."""
        return self.principal is not None and self.principal.may(bucket, write)

    def require(self, bucket: str, write: bool) -> None:
        """AccessDenied unless the principal may read (or write) ``bucket``."""
        if not self.allows(bucket, write):
            raise errors.AccessDenied(resource=bucket)


def is_write(method: str) -> bool:
    return method not in _READ_METHODS


class Authenticator:
    def __init__(
        self,
        cfg: AuthConfig,
        region: str = "us-east-1",
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self._now = now
        self._users: dict[str, tuple[bytes, Principal]] = {}
        # each user's answer to a signed body-less read, header-signed or presigned: shared
        # (frozen, as _anonymous_read), not built per request
        self._reads: dict[tuple[str, bool], AuthResult] = {}
        for user in cfg.users:  # secrets are read here, at start, and kept only in memory
            principal = Principal(user.access_key, dict(user.allow))
            self._users[user.access_key] = (user.secret().encode(), principal)
            for presigned in (False, True):
                self._reads[user.access_key, presigned] = AuthResult(principal, _NO_BODY, presigned)
        grants = cfg.anonymous_grants()
        self.anonymous = grants is not None
        self._anonymous = (
            ANONYMOUS if grants is OPEN_ACCESS else Principal("anonymous", dict(grants or {}))
        )
        self._open_reads = self.anonymous and not self._users
        self._anonymous_read = AuthResult(self._anonymous, _NO_BODY)
        self._keys: dict[tuple[str, str], bytes] = {}
        # presigned URLs (only Host signed) that verified, for a body-less read: a dataset's
        # URL list is read again each epoch
        # (the access key and the window of time _check_time accepts, open bounds)
        self._verified_urls: dict[tuple[str, str, str], tuple[str, float, float]] = {}
        # SigV2 presigned URLs that verified, for a body-less read without the headers SigV2
        # signs (Content-MD5, Content-Type, x-amz-*): their signature covers the method and
        # the raw path and query alone. (The access key and the window of Expires, open bounds)
        self._verified_v2: dict[tuple[str, str, str], tuple[str, float, float]] = {}
        # the lists of header names seen with a known presigned URL that carry no unsigned
        # x-amz-* header (a function of the names alone: such a URL signs only Host)
        self._clean_names: set[tuple[str, ...]] = set()
        # header claims that verified for a body-less read without a query (each request's
        # own signature, date and headers are still checked; only the claim's parse and the
        # checks of the claim alone are kept): see _header_read
        self._claims: dict[str, _HeaderRead] = {}

    def authenticate(self, request: web.BaseRequest) -> AuthResult:
        """Verify the request's signature (if any) and describe its payload, or raise."""
        if self._open_reads and request.method in _READ_METHODS and "?" not in request.raw_path:
            # No users: nothing to verify. A plain read (no query, so not presigned) needs no
            # payload description; requests with a body or a query take the full path below.
            if not request.body_exists and "Authorization" not in request.headers:
                return self._anonymous_read
        headers = request.headers
        authorization = headers.get("Authorization")
        if authorization is None:
            if (self._verified_urls or self._verified_v2) and "?" in request.raw_path:
                read = self._known_url(request, headers)
                if read is not None:
                    return read
        elif self._claims and "?" not in request.raw_path:
            read = self._header_read(request, headers, authorization)
            if read is not None:
                return read
        query = request.raw_path.partition("?")[2]
        presigned_v4 = "X-Amz-Signature=" in query or "X-Amz-Algorithm=" in query
        presigned = presigned_v4 or sigv2.is_presigned(query)
        if authorization is None and not presigned:
            if not self.anonymous:
                raise errors.AccessDenied("Anonymous access is not allowed; sign your requests.")
            return AuthResult(self._anonymous, self._payload_spec(request, None, None, False))
        if authorization is not None and presigned:
            raise errors.InvalidArgument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
                "or the Authorization header should be specified"
            )
        if not self._users:  # nothing to verify against: signatures are ignored (anonymous)
            spec = self._payload_spec(request, None, None, presigned)
            return AuthResult(self._anonymous, spec, presigned)
        if authorization is not None and authorization.startswith("AWS "):
            return self._authenticate_v2(request, sigv2.parse_header(authorization))
        if authorization is None and not presigned_v4:
            return self._authenticate_v2(request, sigv2.parse_query(query))
        url = None  # a presigned body-less read: (method, Host, raw path), for _verified_urls
        if authorization is not None:
            signed = sigv4.parse_header(authorization, sigv4.request_timestamp(headers))
        else:
            if request.method in _READ_METHODS and not request.body_exists:
                url = (request.method, headers.get("Host", ""), request.raw_path)
            signed = sigv4.parse_query(query)
        entry = self._users.get(signed.access_key)
        if entry is None:
            raise errors.InvalidAccessKeyId(AWSAccessKeyId=signed.access_key)
        secret, principal = entry
        if not signed.presigned and "x-amz-content-sha256" not in headers:
            raise errors.InvalidRequest(
                "Missing required header for this request: x-amz-content-sha256"
            )
        self._check_time(signed)
        self._check_scope(signed)
        key = self._signing_key(signed.access_key, secret, signed.date)
        sigv4.verify(request, signed, key, self.region)
        if url is not None and signed.signed_headers == sigv4.HOST_ONLY:
            self._require_signed_names(headers)
        else:
            sigv4.require_signed_amz_headers(headers, signed)
        spec = self._payload_spec(request, signed, key, signed.presigned)
        if spec is _NO_BODY:
            if url is not None and signed.signed_headers == sigv4.HOST_ONLY:
                # the same URL verifies the same (the canonical request is made of the
                # method, the Host and the raw path alone): later uses skip the HMACs. Kept
                # with the window _check_time accepts (open bounds: its edges go the full way)
                when = sigv4.epoch(signed.timestamp)
                window = (signed.access_key, when - MAX_SKEW, when + signed.expires)
                remember(self._verified_urls, url, window, VERIFIED_URLS_MAX)
            elif authorization is not None and "?" not in request.raw_path:
                self._remember_claim(authorization, signed, key)
            return self._reads[signed.access_key, signed.presigned]
        return AuthResult(principal, spec, signed.presigned)

    def _known_url(
        self, request: web.BaseRequest, headers: CIMultiDictProxy[str]
    ) -> AuthResult | None:
        """The answer to a presigned GET or HEAD without a body whose URL (method, Host, raw
        path) verified before, inside its time window (the same URL verifies the same: its
        signature covers nothing else); AccessDenied for an x-amz-* header nobody signed, as
        the full way; None sends it the full way, which answers or refuses."""
        url = (request.method, headers.get("Host", ""), request.raw_path)
        known = self._verified_urls.get(url)
        v2 = known is None
        if v2:
            known = self._verified_v2.get(url)
        if known is None or request.body_exists or request.content_length is not None:
            return None
        access_key, start, end = known
        if not start < self._now() < end:
            return None  # not yet, or no longer: the full way says which
        if not v2:
            self._require_signed_names(headers)
        elif sigv2.signs_any(headers):
            return None  # signed by SigV2 (or not, and refused): the full way checks them
        return self._reads[access_key, True]

    def _require_signed_names(self, headers: CIMultiDictProxy[str]) -> None:
        """sigv4.require_signed_amz_headers for a presigned URL that signs only Host: a
        function of the header names alone, so the lists found clean are kept."""
        names = tuple(headers)
        if names not in self._clean_names:
            sigv4.refuse_unsigned(sigv4.unsigned_amz_headers(names, sigv4.HOST_ONLY, True))
            if len(names) <= _NAMES_MAX and sum(map(len, names)) <= _NAME_CHARS:
                if len(self._clean_names) >= _NAME_SETS_MAX:
                    self._clean_names.clear()
                self._clean_names.add(names)

    def _header_read(
        self, request: web.BaseRequest, headers: CIMultiDictProxy[str], authorization: str
    ) -> AuthResult | None:
        """The answer to a header-signed GET or HEAD without a query or body whose claim
        verified before, when it verifies too (what the full path checks per request: the
        signature, X-Amz-Date against the claim's date and the clock, x-amz-content-sha256,
        unsigned x-amz-* headers); None sends it the full way, which answers or refuses."""
        head, sep, signature = authorization.rpartition(", Signature=")
        known = self._claims.get(head)
        if known is None or not sep or not signature.isascii():
            return None
        method = request.method
        if method not in _READ_METHODS or request.body_exists or "Content-Length" in headers:
            return None  # (the full path reads the length: a bad one is its error, in its turn)
        claim = known.claim
        timestamp = sigv4.request_timestamp(headers)
        if (
            not timestamp
            or timestamp[:8] != claim.date
            or "x-amz-content-sha256" not in headers
            or abs(self._now() - sigv4.epoch(timestamp)) > MAX_SKEW
        ):
            return None
        names = tuple(headers)
        if names not in known.clean:
            if sigv4.unsigned_amz_headers(names, claim.signed_headers, False):
                return None
            if len(known.clean) >= _NAME_SETS_MAX:
                known.clean.clear()
            known.clean.add(names)
        path = request.raw_path
        if not sigv4.verify_plain(headers, method, path, claim, signature.lower(), timestamp):
            return None
        return known.read

    def _remember_claim(self, authorization: str, signed: Signed, key: bytes) -> None:
        """Keep the claim of a header-signed body-less read without a query that verified,
        when its signature ends the header (well-formed: as sigv4.parse_header memoises)."""
        head, sep, signature = authorization.rpartition(", Signature=")
        if not sep or not sigv4.HEX64.fullmatch(signature) or len(head) > _CLAIM_CHARS:
            return
        if head in self._claims:
            return
        claim = sigv4.header_claim(signed, key, self.region)
        read = _HeaderRead(claim, self._reads[signed.access_key, False])
        remember(self._claims, head, read, CLAIMS_MAX)

    def _authenticate_v2(self, request: web.BaseRequest, signed: sigv2.SignedV2) -> AuthResult:
        entry = self._users.get(signed.access_key)
        if entry is None:
            raise errors.InvalidAccessKeyId(AWSAccessKeyId=signed.access_key)
        secret, principal = entry
        now = self._now()
        if signed.expires is not None:
            if now > signed.expires:
                raise errors.AccessDenied(
                    "Request has expired",
                    Expires=sigv4.iso(signed.expires),
                    ServerTime=sigv4.iso(now),
                )
        else:
            timestamp = sigv4.request_timestamp(request.headers)
            if timestamp is None:
                raise errors.AccessDenied(
                    "AWS authentication requires a valid Date or x-amz-date header"
                )
            if abs(now - sigv4.epoch(timestamp)) > MAX_SKEW:
                raise errors.RequestTimeTooSkewed(
                    RequestTime=timestamp,
                    ServerTime=sigv4.iso(now),
                    MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000),
                )
        sigv2.verify(request, signed, secret)
        if signed.expires is not None and signed.expires - now > sigv4.MAX_EXPIRES:
            # the week SigV4 allows, here too (checked once the URL is known to be genuine)
            raise errors.AccessDenied(
                "Expires must be less than a week (604800 seconds) in the future",
                Expires=sigv4.iso(signed.expires),
                ServerTime=sigv4.iso(now),
            )
        presigned = signed.expires is not None
        spec = self._payload_spec(request, None, None, True)
        if (
            signed.expires is not None
            and spec is _NO_BODY
            and request.method in _READ_METHODS
            and not sigv2.signs_any(request.headers)
        ):
            # the same URL verifies the same while the checks above pass: in the window
            # (Expires - a week, Expires), open bounds (its edges go the full way)
            url = (request.method, request.headers.get("Host", ""), request.raw_path)
            window = (signed.access_key, signed.expires - sigv4.MAX_EXPIRES, signed.expires)
            remember(self._verified_v2, url, window, VERIFIED_URLS_MAX)
            return self._reads[signed.access_key, True]
        return AuthResult(principal, spec, presigned)

    # -- checks -----------------------------------------------------------------------------
    def _check_time(self, signed: Signed) -> None:
        if not signed.timestamp:
            raise errors.AccessDenied(
                "AWS authentication requires a valid Date or x-amz-date header"
            )
        when = sigv4.epoch(signed.timestamp)
        now = self._now()
        if signed.presigned:
            if when - now > MAX_SKEW:
                raise errors.AccessDenied("Request is not valid yet")
            if now > when + signed.expires:
                raise errors.AccessDenied(
                    "Request has expired",
                    **{
                        "X-Amz-Expires": str(signed.expires),
                        "Expires": sigv4.iso(when + signed.expires),
                        "ServerTime": sigv4.iso(now),
                    },
                )
        elif abs(now - when) > MAX_SKEW:
            raise errors.RequestTimeTooSkewed(
                RequestTime=signed.timestamp,
                ServerTime=sigv4.iso(now),
                MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000),
            )

    def _check_scope(self, signed: Signed) -> None:
        error = (
            errors.AuthorizationQueryParametersError
            if signed.presigned
            else errors.AuthorizationHeaderMalformed
        )
        if signed.date != signed.timestamp[:8]:
            raise error(
                f"Invalid credential date. Date is not the same as X-Amz-Date: {signed.date}."
            )
        if signed.region != self.region:
            raise error(
                f"The authorization header is malformed; the region '{signed.region}' is wrong; "
                f"expecting '{self.region}'",
                Region=self.region,
            )
        if signed.service != "s3" or signed.terminal != "aws4_request":
            raise error(
                "The credential scope must be <date>/<region>/s3/aws4_request, "
                f"got service '{signed.service}' and terminal '{signed.terminal}'"
            )
        if "host" not in signed.signed_headers:
            raise error("SignedHeaders must include host")

    def _signing_key(self, access_key: str, secret: bytes, date: str) -> bytes:
        cache_key = (access_key, date)
        key = self._keys.get(cache_key)
        if key is None:
            key = sigv4.derive_signing_key(secret, date, self.region)
            remember(self._keys, cache_key, key, 4096)
        return key

    # -- payload ----------------------------------------------------------------------------
    def _payload_spec(
        self,
        request: web.BaseRequest,
        signed: Signed | None,
        key: bytes | None,
        no_chunk_signatures: bool,
    ) -> PayloadSpec:
        headers = request.headers
        if request.method in _READ_METHODS and not request.body_exists:
            if request.content_length is None:
                return _NO_BODY  # shared: nothing ever reads or fills a body-less spec
            return PayloadSpec(content_length=request.content_length)
        declared = headers.get("x-amz-content-sha256")
        sha256: str | None = None
        if declared is None:
            mode: PayloadMode = "unsigned"
        elif sigv4.HEX64.fullmatch(declared):
            mode, sha256 = "sha256", declared.lower()
        elif declared in _MODES:
            mode = _MODES[declared]
        elif declared.startswith("STREAMING-AWS4-ECDSA-P256-SHA256"):
            raise errors.NotImplementedS3("SigV4A (ECDSA) signed payloads are not supported.")
        else:
            raise errors.InvalidArgument(
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-"
                "PAYLOAD(-TRAILER), STREAMING-UNSIGNED-PAYLOAD-TRAILER or a SHA256 value.",
                ArgumentName="x-amz-content-sha256",
                ArgumentValue=declared[:128],
            )
        if mode in ("streaming-signed", "streaming-signed-trailer") and no_chunk_signatures:
            raise errors.InvalidRequest(
                "Signed chunks need a SigV4 Authorization header (not a presigned URL or SigV2)."
            )
        found: dict[str, str] = {}
        for name, value in headers.items():
            lname = name.lower()
            if lname.startswith(checksums.HEADER_PREFIX):
                alg = lname[len(checksums.HEADER_PREFIX) :]
                if alg in checksums.ALGORITHMS:
                    found[alg] = value
        if len(found) > 1:
            raise errors.InvalidRequest(
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not "
                "allowed."
            )
        for alg, value in found.items():
            if checksums.decode(alg, value) is None:
                raise errors.InvalidRequest(f"Value for x-amz-checksum-{alg} header is invalid.")
        md5 = headers.get("Content-MD5")
        if md5 is not None and checksums.decode("md5", md5) is None:
            raise errors.InvalidDigest()
        trailers = tuple(
            t.strip().lower() for t in headers.get("x-amz-trailer", "").split(",") if t.strip()
        )
        for t in trailers:
            if not t.startswith(checksums.HEADER_PREFIX) or (
                t[len(checksums.HEADER_PREFIX) :] not in checksums.ALGORITHMS
            ):
                raise errors.InvalidRequest(f"The trailer {t!r} is not supported.")
        sdk_algorithm = headers.get("x-amz-sdk-checksum-algorithm", "").strip().lower() or None
        if sdk_algorithm is not None and sdk_algorithm not in checksums.ALGORITHMS:
            raise errors.InvalidRequest(
                f"Checksum algorithm {sdk_algorithm!r} is not supported.",
            )
        return PayloadSpec(
            mode=mode,
            sha256=sha256,
            content_length=request.content_length,
            decoded_length=_decoded_length(headers.get("x-amz-decoded-content-length")),
            trailers=trailers,
            checksums=found,
            content_md5=md5,
            sdk_algorithm=sdk_algorithm,
            seed_signature=signed.signature if signed is not None else None,
            signing_key=key,
            timestamp=signed.timestamp if signed is not None else "",
            scope=(
                f"{signed.date}/{signed.region}/{signed.service}/{signed.terminal}"
                if signed is not None
                else ""
            ),
        )


def _decoded_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise errors.InvalidArgument(
            "x-amz-decoded-content-length must be a non-negative integer.",
            ArgumentName="x-amz-decoded-content-length",
            ArgumentValue=value[:64],
        )
    return int(value)
