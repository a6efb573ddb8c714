"""Who is asking: SigV4 verification (Authorization header and presigned query) and access rules.

The canonical request and the string to sign come from botocore's own signer
(``S3SigV4Auth``), fed with exactly what the client sent and signed: the raw path and query as
received, the headers named in SignedHeaders, the declared payload hash. Pure CPU, no awaits.

https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html
https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html

SigV4 has no nonce: a request replayed inside its validity window (15 minutes of clock skew
for header auth, X-Amz-Expires for presigned URLs) is accepted again, as by S3 itself. TLS in
front of the listener is what keeps signed requests from being captured.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders

from proxy import errors
from proxy.config import AccessLevel, AuthConfig
from proxy.s3 import checksums

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = (
    15 * 60
)  # seconds; https://docs.aws.amazon.com/AmazonS3/latest/API/RESTAuthentication.html
MAX_EXPIRES = 7 * 24 * 3600  # X-Amz-Expires upper bound (604800 s)

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
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
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_READ_METHODS = frozenset(("GET", "HEAD"))


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


ANONYMOUS = Principal("anonymous", {"*": "read-write"})


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


@dataclass(frozen=True)
class AuthResult:
    principal: Principal | None
    payload: PayloadSpec
    presigned: bool = False  # authenticated by X-Amz-* query parameters

    def operation_query(self, query: dict[str, str]) -> dict[str, str]:
        """``query`` without a presigned URL's own parameters (they select no operation)."""
        if not self.presigned:
            return query
        return {k: v for k, v in query.items() if k not in PRESIGN_PARAMS}

    def require(self, bucket: str, write: bool) -> None:
        """AccessDenied unless the principal may read (or write) ``bucket``."""
        if self.principal is None or not self.principal.may(bucket, write):
            raise errors.AccessDenied(resource=bucket)


def is_write(method: str) -> bool:
    return method not in _READ_METHODS


class _Canonicaliser(S3SigV4Auth):  # type: ignore[misc]
    """botocore's S3 signer, fed what the client signed instead of what botocore would send."""

    def __init__(self, region: str, headers: HTTPHeaders, payload_hash: str) -> None:
        super().__init__(None, "s3", region)
        self._headers = headers
        self._payload_hash = payload_hash
        self.path = "/"
        self.query = ""

    def headers_to_sign(self, request: Any) -> HTTPHeaders:
        return self._headers

    def canonical_query_string(self, request: Any) -> str:
        return self.query

    def _normalize_url_path(self, path: str) -> str:
        return self.path  # the raw path as received, never re-split from a URL

    def payload(self, request: Any) -> str:
        return self._payload_hash


@dataclass(frozen=True)
class _Signed:
    """What the client claims: from the Authorization header or the X-Amz-* query."""

    access_key: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    service: str
    terminal: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # YYYYMMDDTHHMMSSZ
    presigned: bool
    expires: int = 0


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
        for user in cfg.users:  # secrets are read here, at start, and kept only in memory
            self._users[user.access_key] = (
                user.secret().encode(),
                Principal(user.access_key, dict(user.allow)),
            )
        self.anonymous = cfg.anonymous is True or (cfg.anonymous is None and not self._users)
        self._keys: dict[tuple[str, str], bytes] = {}

    def authenticate(self, request: web.BaseRequest) -> AuthResult:
        """Verify the request's signature (if any) and describe its payload, or raise."""
        headers = request.headers
        authorization = headers.get("Authorization")
        query = request.raw_path.partition("?")[2]
        presigned = "X-Amz-Signature=" in query or "X-Amz-Algorithm=" in query
        if authorization is None and not presigned:
            if not self.anonymous:
                raise errors.AccessDenied("Anonymous access is not allowed; sign your requests.")
            return AuthResult(ANONYMOUS, self._payload_spec(request, None, None, False))
        if authorization is not None and presigned:
            raise errors.InvalidArgument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
                "or the Authorization header should be specified"
            )
        if not self._users:  # nothing to verify against: signatures are ignored (anonymous)
            spec = self._payload_spec(request, None, None, presigned)
            return AuthResult(ANONYMOUS, spec, presigned)
        if authorization is not None:
            signed = _parse_header(authorization, request_timestamp(headers))
        else:
            signed = _parse_query(query)
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
        self._verify(request, signed, key)
        spec = self._payload_spec(request, signed, key, signed.presigned)
        return AuthResult(principal, spec, signed.presigned)

    # -- checks -----------------------------------------------------------------------------
    def _check_time(self, signed: _Signed) -> None:
        if not signed.timestamp:
            raise errors.AccessDenied(
                "AWS authentication requires a valid Date or x-amz-date header"
            )
        when = _epoch(signed.timestamp)
        now = self._now()
        if signed.presigned:
            if when - now > MAX_SKEW:
                raise errors.AccessDenied("Request is not valid yet")
            if now > when + signed.expires:
                raise errors.AccessDenied(
                    "Request has expired",
                    **{
                        "X-Amz-Expires": str(signed.expires),
                        "Expires": _iso(when + signed.expires),
                        "ServerTime": _iso(now),
                    },
                )
        elif abs(now - when) > MAX_SKEW:
            raise errors.RequestTimeTooSkewed(
                RequestTime=signed.timestamp,
                ServerTime=_iso(now),
                MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000),
            )

    def _check_scope(self, signed: _Signed) -> None:
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
            key = derive_signing_key(secret, date, self.region)
            if len(self._keys) >= 4096:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def _verify(self, request: web.BaseRequest, signed: _Signed, key: bytes) -> None:
        headers = HTTPHeaders()
        for name in signed.signed_headers:
            values = request.headers.getall(name, None)
            if values is None:
                raise errors.SignatureDoesNotMatch(
                    f"The request does not carry the signed header {name!r}.",
                    AWSAccessKeyId=signed.access_key,
                )
            for value in values:
                headers[name] = value
        sent_hash = request.headers.get("x-amz-content-sha256", "")
        payload_hash = UNSIGNED_PAYLOAD if signed.presigned else sent_hash
        canon = _Canonicaliser(self.region, headers, payload_hash)
        aws_request = AWSRequest(method=request.method, url="http://h/")
        aws_request.headers = headers
        aws_request.context["timestamp"] = signed.timestamp
        path, _, raw_query = request.raw_path.partition("?")
        first: tuple[str, str] | None = None
        for canon.path in _path_forms(path):
            for canon.query in _query_forms(raw_query, signed.presigned):
                canonical_request = canon.canonical_request(aws_request)
                string_to_sign = canon.string_to_sign(aws_request, canonical_request)
                expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
                if hmac.compare_digest(expected, signed.signature):
                    return
                first = first or (canonical_request, string_to_sign)
        assert first is not None
        raise errors.SignatureDoesNotMatch(
            AWSAccessKeyId=signed.access_key,
            StringToSign=first[1],
            SignatureProvided=signed.signature,
            CanonicalRequest=first[0],
        )

    # -- payload ----------------------------------------------------------------------------
    def _payload_spec(
        self,
        request: web.BaseRequest,
        signed: _Signed | None,
        key: bytes | None,
        presigned: bool,
    ) -> PayloadSpec:
        headers = request.headers
        if request.method in _READ_METHODS and not request.body_exists:
            return PayloadSpec(content_length=request.content_length)
        declared = headers.get("x-amz-content-sha256")
        sha256: str | None = None
        if declared is None:
            mode: PayloadMode = "unsigned"
        elif _HEX64.fullmatch(declared):
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
        if mode in ("streaming-signed", "streaming-signed-trailer") and presigned:
            raise errors.InvalidRequest("A presigned URL cannot carry a signed chunked payload.")
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


def derive_signing_key(secret: bytes, date: str, region: str, service: str = "s3") -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")."""
    key = hmac.new(b"AWS4" + secret, date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


# -- parsing what the client sent ---------------------------------------------------------------


def _parse_header(value: str, timestamp: str | None) -> _Signed:
    malformed = errors.AuthorizationHeaderMalformed
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS4-ECDSA-P256-SHA256":
            raise errors.NotImplementedS3("SigV4A (ECDSA) signatures are not supported.")
        raise errors.InvalidRequest(
            "The authorization mechanism you have provided is not supported. "
            "Please use AWS4-HMAC-SHA256."
        )
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, val = item.strip().partition("=")
        if sep:
            parts[name.strip()] = val.strip()
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if not parts.get(n)]
    if missing:
        raise malformed(f"The authorization header is malformed; missing {', '.join(missing)}.")
    return _signed(
        parts["Credential"],
        parts["SignedHeaders"],
        parts["Signature"],
        timestamp or "",
        None,
        malformed,
    )


def _parse_query(query: str) -> _Signed:
    params: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name.startswith("X-Amz-"):
            params[name] = unquote(value)
    error = errors.AuthorizationQueryParametersError
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise error('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    names = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders")
    missing = [n for n in (*names, "X-Amz-Signature") if not params.get(n)]
    if missing:
        raise error(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
            f"X-Amz-Expires parameters; missing {', '.join(missing)}."
        )
    if not _AMZ_DATE.fullmatch(params["X-Amz-Date"]):
        raise error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    expires = params["X-Amz-Expires"]
    if not expires.isascii() or not expires.isdigit() or not 0 < int(expires) <= MAX_EXPIRES:
        raise error(
            "X-Amz-Expires must be a number of seconds from 1 to 604800 (a week)",
        )
    return _signed(
        params["X-Amz-Credential"],
        params["X-Amz-SignedHeaders"],
        params["X-Amz-Signature"],
        params["X-Amz-Date"],
        int(expires),
        error,
    )


def _signed(
    credential: str,
    signed_headers: str,
    signature: str,
    timestamp: str,
    expires: int | None,
    error: type[errors.S3Error],
) -> _Signed:
    scope = credential.rsplit("/", 4)
    if len(scope) != 5 or not scope[0]:
        raise error(
            "The credential is malformed; expecting "
            '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
        )
    if not _HEX64.fullmatch(signature):
        raise error("The signature is malformed; expecting 64 hex digits.")
    names = tuple(signed_headers.split(";"))
    if any(not n or n != n.strip().lower() for n in names):
        raise error("SignedHeaders is malformed; expecting lower-case names separated by ';'.")
    presigned = expires is not None
    return _Signed(
        access_key=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        terminal=scope[4],
        signed_headers=names,
        signature=signature.lower(),
        timestamp=timestamp,
        presigned=presigned,
        expires=expires or 0,
    )


def request_timestamp(headers: Mapping[str, str]) -> str | None:
    """X-Amz-Date, or the Date header in the same form; None when neither is valid."""
    amz = headers.get("x-amz-date")
    if amz is not None:
        return amz if _AMZ_DATE.fullmatch(amz) else None
    date = headers.get("Date")
    if date is None:
        return None
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        return None
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(parsed.timestamp()))


def _epoch(timestamp: str) -> float:
    return float(calendar.timegm(time.strptime(timestamp, "%Y%m%dT%H%M%SZ")))


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


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


def _path_forms(path: str) -> list[str]:
    """The raw path as received; then the spec's encoding of what it decodes to, if that differs
    (clients that leave characters such as '!' or '@' unencoded sign the encoded form)."""
    forms = [path]
    try:
        encoded = quote(unquote(path, errors="strict"), safe="/~")
    except UnicodeDecodeError:
        return forms
    if encoded != path:
        forms.append(encoded)
    return forms


def _query_forms(raw: str, presigned: bool) -> list[str]:
    """botocore's canonical query of the decoded parameters; then the raw pairs as botocore
    sorts a URL's query, if different (a client that signed its query as it sent it)."""
    pairs: list[tuple[str, str]] = []
    raw_pairs: list[str] = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if presigned and name == "X-Amz-Signature":
            continue
        pairs.append((unquote(name), unquote(value)))
        raw_pairs.append(part)
    forms = [_QUERY_SIGNER._canonical_query_string_params(pairs)]
    as_sent = "&".join(raw_pairs)
    if as_sent:
        raw_form = _QUERY_SIGNER._canonical_query_string_url(_Split(as_sent))
        if raw_form != forms[0]:
            forms.append(raw_form)
    return forms


@dataclass(frozen=True)
class _Split:
    """The one attribute of urlsplit's result that botocore's query canonicaliser reads."""

    query: str


_QUERY_SIGNER = S3SigV4Auth(None, "s3", "us-east-1")  # only its query canonicalisers are used
