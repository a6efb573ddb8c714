"""The read half of the GCS store, over the JSON API.

A read is two requests: the object's resource (size, MD5, metadata), then the bytes of exactly
that generation, so a concurrent overwrite can never mix versions in one response.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import aiohttp

from proxy import errors
from proxy.backends.gcs.codec import entry_of, meta_of, timestamp
from proxy.backends.gcs.link import GcsLink, check
from proxy.backends.kit import paging
from proxy.backends.kit.body import empty, metered, read_window, response_pieces
from proxy.model import BucketInfo, GetResult, ListPage, ObjectMeta

_LIST_LIMIT = 999  # one under the JSON API's maxResults ceiling (fetch asks for one more)
_LIST_FIELDS = "items(name,size,md5Hash,etag,generation,updated,timeCreated),prefixes,nextPageToken"


def _successor(name: str) -> str:
    """The least string above every string that starts with ``name``."""
    return name[:-1] + chr(ord(name[-1]) + 1)


class GcsReads:
    def __init__(self, link: GcsLink) -> None:
        self._link = link

    async def missing(self, bucket: str, exc: errors.NoSuchKey) -> errors.S3Error:
        """Tell a missing object from a missing bucket (emulators answer both alike)."""
        return exc if await self.bucket_exists(bucket) else errors.NoSuchBucket(resource=bucket)

    async def _resource(self, bucket: str, key: str, operation: str) -> dict[str, Any]:
        storage = self._link.storage
        try:
            return await self._link.call(
                operation, bucket, key, lambda: storage.download_metadata(bucket, key)
            )
        except errors.NoSuchKey as exc:
            raise await self.missing(bucket, exc) from None

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        return meta_of(await self._resource(bucket, key, "HeadObject"))

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        for attempt in range(2):  # once more if the object was replaced between the two calls
            obj = await self._resource(bucket, key, "GetObject")
            meta = meta_of(obj)
            first, last = read_window(meta, start, end, if_match)
            if last < first:
                return GetResult(meta=meta, start=first, end=first - 1, body=empty())
            generation = str(obj.get("generation") or "")
            media = functools.partial(self._media, bucket, key, generation, first, last)
            try:
                resp = await self._link.call("GetObject", bucket, key, media)
            except errors.NoSuchKey:
                if if_match:
                    raise errors.PreconditionFailed() from None
                if attempt:
                    raise
                continue
            begin = first
            content_range = resp.headers.get("Content-Range", "")
            if resp.status == 200 or not content_range.startswith("bytes "):
                begin = 0  # the store sent the whole object
            body = metered(self._link.calls, response_pieces(resp))
            return GetResult(
                meta=meta,
                start=begin,
                end=begin + int(resp.content_length or 0) - 1,
                body=body,
                release=_releaser(resp, body),
            )
        raise AssertionError("unreachable")

    async def _media(
        self, bucket: str, key: str, generation: str, first: int, last: int
    ) -> aiohttp.ClientResponse:
        params = {"alt": "media"}
        if generation:
            params["generation"] = generation
        headers = {
            **await self._link.auth(),
            "Range": f"bytes={first}-{last}",
            "Accept-Encoding": "gzip",  # the stored bytes, not a transcoded copy
        }
        url = self._link.url(bucket, key)
        return await check(await self._link.http.get(url, params=params, headers=headers))

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        storage = self._link.storage

        async def fetch(marker: str | None, limit: int, after: str) -> paging.StorePage:
            """One store page from ``after`` on (startOffset), or from ``marker`` (a pageToken,
            kept only across empty pages)."""
            # one more than needed: startOffset is inclusive, so ``after`` itself comes back
            params = {"maxResults": str(limit + 1), "fields": _LIST_FIELDS}
            if prefix:
                params["prefix"] = prefix
            if delimiter:
                params["delimiter"] = delimiter
            if marker:
                params["pageToken"] = marker
            elif after:
                params["startOffset"] = (
                    _successor(after)
                    if delimiter and after.endswith(delimiter) and len(after) > len(prefix)
                    else after
                )  # past a common prefix's keys
            data = await self._link.call(
                "ListObjectsV2",
                bucket,
                None,
                lambda: storage.list_objects(bucket, params=params, timeout=self._link.timeout),
            )
            entries = [entry_of(o) for o in data.get("items", [])]
            prefixes = [str(p) for p in data.get("prefixes", [])]
            token = data.get("nextPageToken") or None
            if token is None:
                return paging.StorePage(entries, prefixes, None)
            # More follows. The next page starts from what this one handed out (startOffset),
            # and only prefixes up to this page's last new object are certain: an emulator
            # lists every prefix on every page. A page of nothing new follows GCS's own token.
            fresh = [e.key for e in entries if e.key > after]
            if fresh:
                horizon = max(fresh)
                return paging.StorePage(entries, [p for p in prefixes if p <= horizon], "")
            if any(p > after for p in prefixes):
                return paging.StorePage(entries, prefixes, "")
            return paging.StorePage([], [], str(token))

        return await paging.cut_page(fetch, max_keys, token, start_after, _LIST_LIMIT)

    async def bucket_exists(self, bucket: str) -> bool:
        storage = self._link.storage
        try:
            await self._link.call(
                "HeadBucket",
                bucket,
                None,
                lambda: storage.get_bucket_metadata(bucket, timeout=self._link.timeout),
            )
        except (errors.NoSuchBucket, errors.InvalidBucketName):
            return False
        return True

    async def list_buckets(self) -> builtins.list[BucketInfo]:
        out: list[BucketInfo] = []
        params = {
            "project": await self._link.project_id(),
            "fields": "items(name,timeCreated),nextPageToken",
        }

        async def page() -> dict[str, Any]:
            url, headers = self._link.url(""), await self._link.auth()
            resp = await check(await self._link.http.get(url, params=params, headers=headers))
            async with resp:
                doc: dict[str, Any] = await resp.json(content_type=None)
            return doc

        while True:
            doc = await self._link.call("ListBuckets", "", None, page)
            out += [
                BucketInfo(name=str(b["name"]), created=timestamp(b.get("timeCreated")))
                for b in doc.get("items", [])
            ]
            if not doc.get("nextPageToken"):
                return sorted(out, key=lambda b: b.name)
            params["pageToken"] = str(doc["nextPageToken"])


def _releaser(
    resp: aiohttp.ClientResponse, body: AsyncGenerator[bytes, None]
) -> Callable[[], Awaitable[None]]:
    async def release() -> None:
        await body.aclose()
        resp.release()  # closes the connection instead if the body was not read to the end

    return release
