"""The WebHDFS REST protocol as the webhdfs backend speaks it: URLs, authentication, the
NameNode -> DataNode redirect, and the one place where HDFS's errors become S3 errors; calls
are counted, timed and (reads) retried by kit.calls.

https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html
HttpFS serves the same API; its data requests redirect to itself (``data=true``) instead of to
a DataNode, which the same redirect-following handles.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from proxy import errors
from proxy.backends.kit.calls import Retry, StoreCalls, StoreRefused, server_error
from proxy.config import BackendConfig

# https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#FileSystem_URIs_vs_HTTP_URLs
PREFIX = "/webhdfs/v1"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_HOPS = 3
_ERROR_BODY_MAX = 64 * 1024

# Exception names (RemoteException.exception) grouped by what they mean to an S3 client.
# https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Error_Responses
_DENIED = frozenset(
    {
        "AccessControlException",
        "SecurityException",
        "InvalidToken",
        "AuthorizationException",
        "AuthenticationException",
    }
)
_TRY_LATER = frozenset(
    {
        "StandbyException",
        "RetriableException",
        "SafeModeException",
        "ObserverRetryOnActiveException",
        "DSQuotaExceededException",
        "NSQuotaExceededException",
        "MaxDirectoryItemsExceededException",
    }
)
_BAD_NAME = frozenset(
    {
        "FileAlreadyExistsException",
        "ParentNotDirectoryException",
        "InvalidPathException",
        "PathComponentTooLongException",
        "HadoopIllegalArgumentException",
        "IllegalArgumentException",
        "UnsupportedOperationException",
    }
)
NOT_EMPTY = "PathIsNotEmptyDirectoryException"


class RemoteError(StoreRefused):
    """A WebHDFS error answer; its body is ``{"RemoteException": {"exception",
    "javaClassName", "message"}}`` (``name`` is its exception)."""

    @classmethod
    def parse(cls, status: int, body: bytes) -> RemoteError:
        try:
            doc = json.loads(body)
            remote = doc["RemoteException"]
            return cls(status, str(remote.get("message", "")), str(remote.get("exception", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(status, body[:200].decode("utf-8", "replace"))

    def __str__(self) -> str:
        return f"{self.status} {self.name}: {self.message}"


def map_error(err: RemoteError, missing: Callable[[], errors.S3Error]) -> errors.S3Error:
    """HDFS's error as an S3 error; by exception name first (HttpFS and gateways differ in
    statuses), then by the documented status table (400, 401, 403, 404, 500)."""
    name, status = err.name, err.status
    if name == "FileNotFoundException" or (status == 404 and not name):
        return missing()
    if name in _DENIED or status == 401 or (status == 403 and not name):
        return errors.AccessDenied(f"HDFS refused the proxy's credentials ({name or status}).")
    if name == NOT_EMPTY:  # only a non-recursive DELETE of a directory says this
        return errors.BucketNotEmpty("The directory is not empty.")
    if name in _TRY_LATER or status in (429, 503, 507):
        return errors.BackendUnavailable(f"HDFS cannot serve this now ({name or status}).")
    if name in _BAD_NAME or status == 400:
        return errors.InvalidArgument(f"HDFS refused the name or a parameter ({name or status}).")
    return errors.BackendUnavailable(f"HDFS answered {status} {name}".rstrip() + ".")


def encode_path(path: str) -> str:
    """``/a b/ü`` -> ``/webhdfs/v1/a%20b/%C3%BC``: every segment percent-encoded (UTF-8)."""
    return PREFIX + "/".join(quote(seg, safe="") for seg in path.split("/"))


Params = Mapping[str, "str | int | bool"]


class WebHdfsHttp:
    """An aiohttp session against one NameNode (or HttpFS gateway) with its credentials."""

    def __init__(self, cfg: BackendConfig) -> None:
        assert cfg.url is not None
        self._cfg = cfg
        self.calls = StoreCalls(cfg.name, (RemoteError,), who="HDFS")
        self._retry = Retry(
            attempts=cfg.retries + 1,
            when=server_error,
            base=0.05,
            jitter=(1.0, 2.0),
            warn_every=True,
        )
        self._base = cfg.url.rstrip("/")
        self._auth: list[tuple[str, str]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Authentication
        token = self._cfg.secret("delegation_token")
        if token:
            self._auth = [("delegation", token)]
        elif self._cfg.user:
            self._auth = [("user.name", self._cfg.user)]
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._cfg.max_connections),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._cfg.connect_timeout, sock_read=self._cfg.read_timeout
            ),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, op: str, params: Params | None = None) -> URL:
        query = [("op", op)]
        for k, v in (params or {}).items():
            query.append((k, ("true" if v else "false") if isinstance(v, bool) else str(v)))
        query.extend(self._auth)
        qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
        return URL(f"{self._base}{encode_path(path)}?{qs}", encoded=True)

    async def call(
        self,
        method: str,
        path: str,
        op: str,
        *,
        missing: Callable[[], errors.S3Error],
        params: Params | None = None,
        body: AsyncIterator[bytes] | None = None,
        size: int | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> aiohttp.ClientResponse:
        """One WebHDFS operation; the caller releases the returned response.

        A redirect (307 from the NameNode to a DataNode, or HttpFS's to itself) is followed
        with the same method; ``body`` is sent only on such a second hop, as the two-step
        CREATE prescribes. GETs are retried on connection errors and 5xx, up to ``retries``.
        """
        url = self.url(path, op, params)
        return await self.calls.call(
            op,
            lambda: self._exchange(method, url, body, size, expect),
            lambda exc: _mapped(exc, missing),
            retry=self._retry if method == "GET" and body is None else None,
            target=path,
        )

    async def json(
        self,
        method: str,
        path: str,
        op: str,
        *,
        missing: Callable[[], errors.S3Error],
        params: Params | None = None,
    ) -> Any:
        """An operation whose answer is a JSON document (GETFILESTATUS, LISTSTATUS_BATCH,
        MKDIRS, RENAME, DELETE)."""
        resp = await self.call(method, path, op, missing=missing, params=params)
        try:
            return await resp.json(content_type=None)
        except (ValueError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.calls.fault(op, "BadResponse")
            raise errors.BackendUnavailable(f"HDFS sent an unreadable {op} answer.") from exc
        finally:
            resp.release()

    async def _exchange(
        self,
        method: str,
        url: URL,
        body: AsyncIterator[bytes] | None,
        size: int | None,
        expect: tuple[int, ...],
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "start() first"
        send: AsyncIterator[bytes] | None = None
        for _ in range(_MAX_HOPS):
            headers: dict[str, str] = {}
            if send is not None:
                # HttpFS refuses uploads of any other type (CheckUploadContentTypeFilter)
                headers["Content-Type"] = "application/octet-stream"
                if size is not None:
                    headers["Content-Length"] = str(size)  # not chunked: the size is known
            resp = await self._session.request(
                method, url, data=send, headers=headers, allow_redirects=False
            )
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                location = resp.headers["Location"]
                resp.release()
                target = url.join(URL(location, encoded=True))
                if target.scheme not in ("http", "https") or send is not None:
                    raise RemoteError(502, f"unexpected redirect to {location}")
                url, send = target, body
                continue
            if resp.status in expect and (body is None or send is not None):
                return resp
            data = await resp.content.read(_ERROR_BODY_MAX)
            resp.release()
            if resp.status in expect:  # a body to send, but the server never asked for it
                raise RemoteError(502, "no redirect before the upload")
            raise RemoteError.parse(resp.status, data)
        raise RemoteError(502, "too many redirects")


def _mapped(exc: Exception, missing: Callable[[], errors.S3Error]) -> errors.S3Error:
    assert isinstance(exc, RemoteError)
    return map_error(exc, missing)


def remote_exception(exc: BaseException) -> str:
    """The HDFS exception name behind a mapped error ("" if it was not an HDFS answer), for
    the few callers that tell cases apart (e.g. a non-empty directory)."""
    cause = exc.__cause__
    return cause.name if isinstance(cause, RemoteError) else ""
