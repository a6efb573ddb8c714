"""The read half of the webhdfs store.

A GET asks the NameNode for the file's status (GETFILESTATUS), then reads the range (OPEN with
offset and length; the NameNode redirects to a DataNode, which streams the bytes). WebHDFS has
no conditional read, so a file replaced between those two calls is caught by the cache's
revalidation (its ETag moves), not here. Listings are in listing.py.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from proxy import errors
from proxy.backends.kit.body import empty, metered, read_window, response_pieces
from proxy.backends.webhdfs import listing
from proxy.backends.webhdfs.http import WebHdfsHttp
from proxy.backends.webhdfs.paths import bucket_base, object_path, status_meta
from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta, valid_bucket_name

_MAX_BUCKETS = 10_000


class WebHdfsReads:
    def __init__(self, http: WebHdfsHttp) -> None:
        self._http = http

    # -- paths and statuses -----------------------------------------------------------------
    def base(self, bucket: str) -> str:
        base = bucket_base(bucket)
        if base is None:
            raise errors.NoSuchBucket(resource=bucket)
        return base

    def _file(self, bucket: str, key: str) -> str:
        path = object_path(self.base(bucket), key)
        if path is None:
            raise errors.NoSuchKey(key=key)
        return path

    async def status(self, path: str, key: str) -> dict[str, Any] | None:
        """The FileStatus of ``path``, or None if nothing has that path."""
        try:
            doc = await self._http.json(
                "GET", path or "/", "GETFILESTATUS", missing=lambda: errors.NoSuchKey(key=key)
            )
        except errors.NoSuchKey:
            return None
        status = doc.get("FileStatus") if isinstance(doc, dict) else None
        if not isinstance(status, dict) or "type" not in status:
            raise errors.BackendUnavailable("HDFS sent a malformed file status.")
        return status

    async def _file_status(self, bucket: str, path: str, key: str) -> dict[str, Any]:
        status = await self.status(path, key)
        if status is None:
            # HDFS answers a missing base directory as it answers a missing file; S3 does not
            base = await self.status(self.base(bucket), "")
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
        first, last = read_window(meta, start, end, if_match)
        length = last - first + 1
        if length <= 0:
            return GetResult(meta=meta, start=first, end=last, body=empty())
        # https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Open_and_Read_a_File
        resp = await self._http.call(
            "GET",
            path,
            "OPEN",
            missing=lambda: errors.NoSuchKey(key=key),
            params={"offset": first, "length": length},
        )

        async def release() -> None:
            resp.release()

        body = metered(
            self._http.calls,
            response_pieces(resp, length),
            operation="OPEN",
            broke="The DataNode connection broke mid-body.",
        )
        return GetResult(
            meta=meta, start=first, end=last, body=self._whole(body, length), release=release
        )

    async def _whole(self, body: AsyncIterator[bytes], length: int) -> AsyncGenerator[bytes, None]:
        """``body``, which must hold ``length`` bytes."""
        left = length
        async for piece in body:
            left -= len(piece)
            yield piece
        if left > 0:
            self._http.calls.fault("OPEN", "ShortBody")
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
        base = self.base(bucket)
        return await listing.list_page(
            self._http, base, bucket, prefix, delimiter, max_keys, token, start_after
        )

    async def bucket_exists(self, bucket: str) -> bool:
        base = bucket_base(bucket)
        if base is None:
            return False
        status = await self.status(base, "")
        return status is not None and status["type"] == "DIRECTORY"

    async def list_buckets(self) -> list[BucketInfo]:
        """For a wildcard mount (client bucket ``logs`` -> ``/logs``): the directories in
        ``/`` whose names are valid bucket names."""
        out: list[BucketInfo] = []
        after = ""
        while len(out) < _MAX_BUCKETS:
            doc = await self._http.json(
                "GET",
                "/",
                "LISTSTATUS_BATCH",
                missing=errors.NoSuchBucket,
                params={"startAfter": after} if after else None,
            )
            try:
                dir_listing = doc["DirectoryListing"]
                statuses = dir_listing["partialListing"]["FileStatuses"]["FileStatus"]
                remaining = int(dir_listing["remainingEntries"])
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
