"""The S3 side of hot inline objects (core/hot.py): which requests may be answered from the
table, and answering them as the usual path would.

Only a request whose answer depends on nothing but the object qualifies: GET or HEAD, no
query but a presigned URL's own parameters, and only request headers from a short allow-list
(none of the conditionals, a body's framing: a header not listed sends the request the usual
way; Range and x-amz-checksum-mode are read as the usual path reads them). The table is keyed
by (HEAD?, raw path, Host when virtual host style is configured). A request the table does not
hold resolves its bucket and key as the usual path does, and if the index holds that object
inline and fresh, an entry rendered from its record answers it (kept as core/hot.py decides);
anything else (a miss, a large object, an unknown bucket) goes the usual way. A hit still
authenticates (the same Authenticator, its decision and the bucket permission); a refused or
doubtful request goes the usual way and gets its usual answer. It runs inside the middleware:
request ids, the concurrency bound, requests and durations by operation and status, and the
access log are the middleware's, as for any request.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import NamedTuple
from urllib.parse import unquote

from aiohttp import web

from proxy import errors, metrics
from proxy.core.hot import HotEntry, HotObjects
from proxy.memo import remember
from proxy.model import ObjectMeta
from proxy.routing import Router
from proxy.s3 import parse, sigv2, whole
from proxy.s3.auth import PRESIGN_PARAMS, Authenticator
from proxy.s3.middleware import Handler
from proxy.s3.read_handlers import checksum_fields, object_fields

# request headers that cannot change a plain GET's or HEAD's answer (auth reads its own)
PLAIN_HEADERS = frozenset(
    (
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"connection",
        b"keep-alive",
        b"date",
        b"authorization",
        b"x-amz-date",
        b"x-amz-content-sha256",
        b"x-amz-security-token",
        b"x-amz-user-agent",
        b"amz-sdk-invocation-id",
        b"amz-sdk-request",
    )
)
_AUTH_PARAMS = PRESIGN_PARAMS | sigv2.QUERY_PARAMS
_AUTH_HEADS: dict[str, bool] = {}  # _auth_only of a query's pairs before its last
_AUTH_HEADS_MAX = 1024  # (cleared when full)
_AUTH_HEAD_CHARS = 1024  # the longest kept (botocore's are ~200)
RANGES_MAX = 1024  # (Range header, object size) pairs resolved (cleared when full)
RANGE_CHARS = 64  # the longest Range value kept (a client's header may be kilobytes long)


class _Part(NamedTuple):
    """A satisfiable range of an object: inclusive offsets and the Content-Range value."""

    first: int
    last: int
    content_range: str


_WHOLE = _Part(0, -1, "")  # no Range, or one S3 ignores: the whole object, 200
_UNSATISFIABLE = _Part(-1, -1, "")  # the usual path answers (InvalidRange)


def _auth_only(query: str) -> bool:
    """The raw query names only a presigned URL's parameters. All but its last pair (a
    signature, in botocore's order) repeat across a client's URLs: their answer is memoised."""
    head, _, last = query.rpartition("&")
    known = _AUTH_HEADS.get(head)
    if known is None:
        known = _names_auth_only(head)
        if len(head) <= _AUTH_HEAD_CHARS:
            remember(_AUTH_HEADS, head, known, _AUTH_HEADS_MAX)
    return known and _names_auth_only(last)


def _names_auth_only(query: str) -> bool:
    for part in query.split("&"):
        name = part.partition("=")[0]
        if "%" in name:
            name = unquote(name)
        if part and name not in _AUTH_PARAMS:
            return False
    return True


class HotPath:
    def __init__(
        self,
        table: HotObjects,
        auth: Authenticator,
        router: Router,
        domains: tuple[str, ...],
        usual: Handler,
    ) -> None:
        self.table = table
        self.auth = auth
        self.router = router
        self.domains = domains
        self.usual = usual
        self._ranges: dict[tuple[str | None, int], _Part] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        method = request.method
        if method != "GET" and method != "HEAD":
            return await self.usual(request)
        raw = request.raw_path
        path, _, query = raw.partition("?")
        if query and not _auth_only(query):
            return await self.usual(request)
        mode = ranged = False
        for name, _ in request.raw_headers:
            lower = name.lower()
            if lower not in PLAIN_HEADERS:
                if lower == b"range":
                    ranged = True
                elif lower == b"x-amz-checksum-mode":
                    mode = True
                else:
                    return await self.usual(request)
        head = method == "HEAD"
        key: Hashable = (head, path, request.host if self.domains else None)
        found = self.table.find(key) if len(self.table) else None
        if found is None:
            found = self._enter(request, key, path)
            if found is None:
                return await self.usual(request)
        entry, body = found
        # raises as the usual path; not kept in request["auth"]: nothing after a hit reads it
        # (aiohttp's __setitem__ costs a warning check), and the usual path authenticates anew
        auth = self.auth.authenticate(request)
        if (query and not auth.presigned) or not auth.allows(entry.bucket, False):
            return await self.usual(request)  # refused (or odd): the usual answer
        size = entry.rec.size
        part = _WHOLE
        if ranged:
            value = request.headers.get("Range")
            part = self._ranges.get((value, size)) or self._part(value, size)
            if part is _UNSATISFIABLE:
                return await self.usual(request)  # InvalidRange, as the usual path says it
        rid = request["request_id"]
        fields = {**entry.fields, "x-amz-request-id": rid, "x-amz-id-2": rid}
        # as read_handlers._object_headers: checksums of a whole answer, when asked
        if (
            mode
            and part is _WHOLE
            and request.headers.get("x-amz-checksum-mode", "").upper() == ("ENABLED")
        ):
            fields.update(entry.checksums)
        status = 200
        if part is not _WHOLE:
            status = 206
            fields["Content-Range"] = part.content_range
            size = part.last - part.first + 1
            if size != len(body):
                body = body[part.first : part.last + 1]
        metrics.HOT_HIT.inc()
        if head:
            request["op"] = "HeadObject"
            return whole.respond(request, status, fields, b"", size)
        request["op"] = "GetObject"
        request["source"] = "cache"
        self.table.count_get(entry, len(body), started)
        return whole.respond(request, status, fields, body, len(body))

    def _part(self, value: str | None, size: int) -> _Part:
        """What a Range header asks of an object of ``size`` bytes, as the usual path reads
        it: the part, _WHOLE for one S3 ignores (malformed, several ranges), _UNSATISFIABLE
        for one it refuses. Memoised by (value, size): clients ask the same few ranges."""
        rng = parse.parse_range(value)
        if rng is None:
            part = _WHOLE
        else:
            try:
                first, last = rng.resolve(size)
            except errors.S3Error:
                part = _UNSATISFIABLE
            else:
                part = _Part(first, last, f"bytes {first}-{last}/{size}")
        if value is not None and len(value) > RANGE_CHARS:
            return part
        return remember(self._ranges, (value, size), part, RANGES_MAX)

    def _enter(
        self, request: web.BaseRequest, key: Hashable, path: str
    ) -> tuple[HotEntry, bytes] | None:
        """The object the request names, if it is cached inline and fresh: resolved as the
        usual path resolves it (a target or bucket it refuses: None, and it answers)."""
        try:
            target = parse.parse_target(path, request.host or "", self.domains)
            if target.bucket is None or target.key is None:
                return None
            mount = self.router.resolve(target.bucket)
        except errors.S3Error:
            return None
        return self.table.enter(key, mount, mount.remote_key(target.key), _render)


def _render(meta: ObjectMeta) -> tuple[dict[str, str], dict[str, str]]:
    return object_fields(meta), checksum_fields(meta)
