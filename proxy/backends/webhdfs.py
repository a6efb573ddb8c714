"""HDFS as a store, through the WebHDFS REST API of its NameNode or an HttpFS gateway.

https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html

A mount's bucket is an absolute HDFS directory and keys are paths below it
(webhdfs_paths.py). HDFS has no ETag: a file's identity is its path, length and modification
time. A GET asks the NameNode for the file's status (GETFILESTATUS), then reads the range
(OPEN with offset and length; the NameNode redirects to a DataNode, which streams the bytes).
WebHDFS has no conditional read, so a file replaced between those two calls is caught by the
cache's revalidation (its ETag moves), not here. Authentication: ``user`` (simple auth,
``user.name``) or a delegation token (``delegation_token_env``/``_file``); Kerberos/SPNEGO is
not implemented. Writes are in webhdfs_writes.py, listings in webhdfs_list.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from proxy import errors, metrics
from proxy.backends.webhdfs_http import WebHdfsHttp
from proxy.backends.webhdfs_list import list_page
from proxy.backends.webhdfs_paths import bucket_base, object_path, status_meta
from proxy.backends.webhdfs_writes import WebHdfsWrites
from proxy.config import BackendConfig
from proxy.errors import ConfigError
from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta, valid_bucket_name

_READ_SIZE = 256 * 1024
_MAX_BUCKETS = 10_000
Buckets = list[BucketInfo]  # an alias: inside the class, ``list`` is the ListObjects method


class WebHdfsBackend(WebHdfsWrites):
    kind = "webhdfs"

    def __init__(self, cfg: BackendConfig) -> None:
        where = f"backends.{cfg.name}"
        if cfg.kerberos:
            raise ConfigError(
                f"{where}.kerberos: Kerberos/SPNEGO is not supported by the webhdfs backend; "
                "use a delegation token (delegation_token_env or delegation_token_file) or "
                "simple authentication (user)"
            )
        if not cfg.url:
            raise ConfigError(f"{where}.url: required for a webhdfs backend")
        self.name = cfg.name
        self.http = WebHdfsHttp(cfg)

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    # -- paths and statuses -----------------------------------------------------------------
    def _base(self, bucket: str) -> str:
        base = bucket_base(bucket)
        if base is None:
            raise errors.NoSuchBucket(resource=bucket)
        return base

    def _file(self, bucket: str, key: str) -> str:
        path = object_path(self._base(bucket), key)
        if path is None:
            raise errors.NoSuchKey(key=key)
        return path

    async def _status(self, path: str, key: str) -> dict[str, Any] | None:
        """The FileStatus of ``path``, or None if nothing has that path."""
        try:
            doc = await self.http.json(
                "GET", path or "/", "GETFILESTATUS", missing=lambda: errors.NoSuchKey(key=key)
            )
        except errors.NoSuchKey:
            return None
        status = doc.get("FileStatus") if isinstance(doc, dict) else None
        if not isinstance(status, dict) or "type" not in status:
            raise errors.BackendUnavailable("HDFS sent a malformed file status.")
        return status

    async def _file_status(self, bucket: str, path: str, key: str) -> dict[str, Any]:
        status = await self._status(path, key)
        if status is None:
            # HDFS answers a missing base directory as it answers a missing file; S3 does not
            base = await self._status(self._base(bucket), "")
            if base is None or base["type"] != "DIRECTORY":
                raise errors.NoSuchBucket(resource=bucket)
        if status is None or status["type"] != "FILE":
            raise errors.NoSuchKey(key=key)  # a directory (or symlink) is not an object
        return status

    # -- reads ------------------------------------------------------------------------------
    async def head(self, bucket: str, key: str) -> ObjectMeta:
        path = self._file(bucket, key)
        return status_meta(path, await self._file_status(bucket, path, key))

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        path = self._file(bucket, key)
        meta = status_meta(path, await self._file_status(bucket, path, key))
        if if_match and if_match != meta.etag:
            raise errors.PreconditionFailed()
        if start is None:
            first, last = 0, meta.size - 1
        else:
            if start >= meta.size and meta.size > 0:
                raise errors.InvalidRange()
            first = start
            last = meta.size - 1 if end is None else min(end, meta.size - 1)
        length = last - first + 1
        if length <= 0:
            return GetResult(meta=meta, start=first, end=last, body=_nothing())
        # https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Open_and_Read_a_File
        resp = await self.http.call(
            "GET",
            path,
            "OPEN",
            missing=lambda: errors.NoSuchKey(key=key),
            params={"offset": first, "length": length},
        )

        async def release() -> None:
            resp.release()

        return GetResult(
            meta=meta, start=first, end=last, body=self._stream(resp, length), release=release
        )

    async def _stream(self, resp: aiohttp.ClientResponse, length: int) -> AsyncIterator[bytes]:
        left = length
        try:
            while left > 0:
                piece = await resp.content.read(min(_READ_SIZE, left))
                if not piece:
                    break
                left -= len(piece)
                metrics.BACKEND_BYTES.labels(self.name).inc(len(piece))
                yield piece
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            metrics.BACKEND_ERRORS.labels(self.name, "OPEN", "BodyRead").inc()
            raise errors.BackendUnavailable("The DataNode connection broke mid-body.") from exc
        if left > 0:
            metrics.BACKEND_ERRORS.labels(self.name, "OPEN", "ShortBody").inc()
            raise errors.BackendUnavailable("HDFS sent fewer bytes than the file holds.")

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        base = self._base(bucket)
        return await list_page(
            self.http, base, bucket, prefix, delimiter, max_keys, token, start_after
        )

    async def bucket_exists(self, bucket: str) -> bool:
        base = bucket_base(bucket)
        if base is None:
            return False
        status = await self._status(base, "")
        return status is not None and status["type"] == "DIRECTORY"

    async def list_buckets(self) -> Buckets:
        """For a wildcard mount (client bucket ``logs`` -> ``/logs``): the directories in
        ``/`` whose names are valid bucket names."""
        return await _root_buckets(self.http)


async def _root_buckets(http: WebHdfsHttp) -> list[BucketInfo]:
    out: list[BucketInfo] = []
    after = ""
    while len(out) < _MAX_BUCKETS:
        doc = await http.json(
            "GET",
            "/",
            "LISTSTATUS_BATCH",
            missing=errors.NoSuchBucket,
            params={"startAfter": after} if after else None,
        )
        try:
            listing = doc["DirectoryListing"]
            statuses = listing["partialListing"]["FileStatuses"]["FileStatus"]
            remaining = int(listing["remainingEntries"])
            for st in statuses:
                name = str(st.get("pathSuffix", ""))
                if st.get("type") == "DIRECTORY" and valid_bucket_name(name):
                    out.append(BucketInfo(name=name, created=int(st["modificationTime"]) / 1e3))
                after = name or after
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise errors.BackendUnavailable("HDFS sent a malformed listing.") from exc
        if remaining <= 0 or not statuses:
            break
    return sorted(out[:_MAX_BUCKETS], key=lambda b: b.name)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
