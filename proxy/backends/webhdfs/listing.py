"""ListObjectsV2 over an HDFS directory tree: S3 key order, delimiters and an opaque
continuation token, paging through LISTSTATUS_BATCH so that no listing is ever held whole.

Each directory is read in S3 order by order.DirStream. Without a delimiter the walk
descends into directories as their keys come; with "/" a directory comes out as itself
(``dir/``) and becomes a CommonPrefix; other delimiters roll keys up as S3 does (as the fs
backend does). The token carries the last key returned and, for each directory being walked,
its DirStream's state (a few names), so a page resumes exactly where the last one stopped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from typing import Any

from proxy import errors
from proxy.backends.kit.keys import TMP_PREFIX, safe_segments
from proxy.backends.kit.rollup import PageRoll
from proxy.backends.webhdfs.http import WebHdfsHttp
from proxy.backends.webhdfs.order import Child, DirStream
from proxy.backends.webhdfs.paths import hdfs_etag
from proxy.model import ListEntry, ListPage


class _Gone(errors.NoSuchKey):
    pass


def decode_token(token: str) -> tuple[str, dict[str, Any]]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, states = doc["a"], doc["s"]
        if not isinstance(after, str) or not isinstance(states, dict):
            raise ValueError
        for state in states.values():
            DirStream._load(state)  # validates
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise errors.InvalidArgument("The continuation token is not valid.") from None
    return after, states


def encode_token(after: str, states: dict[str, Any]) -> str:
    doc = json.dumps({"a": after, "s": states}, ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode()


class TreeWalk:
    """Keys below ``base`` that start with ``prefix`` and sort after ``after``, in S3 order."""

    def __init__(
        self,
        http: WebHdfsHttp,
        base: str,
        bucket: str,
        prefix: str,
        delimiter: str,
        after: str,
        states: dict[str, Any],
    ) -> None:
        self.http = http
        self.base = base
        self.bucket = bucket
        self.prefix = prefix
        self.delimiter = delimiter
        self.after = after
        self.states = states
        self.streams: dict[str, DirStream] = {}

    def snapshot(self) -> dict[str, Any]:
        """Where each directory being walked resumes."""
        return {rel: stream.snapshot() for rel, stream in self.streams.items()}

    async def items(self) -> AsyncGenerator[tuple[str, Child], None]:
        dir_part, sep, _ = self.prefix.rpartition("/")
        if sep and safe_segments(dir_part) is None:
            return
        async for item in self._dir(dir_part + sep, top=True):
            yield item

    async def _dir(self, rel: str, top: bool) -> AsyncGenerator[tuple[str, Child], None]:
        path = self.base + ("/" + rel[:-1] if rel else "")
        name_prefix = self.prefix[len(rel) :] if top else ""
        stream = DirStream(self.http, path or "/", name_prefix, _Gone, self.states.get(rel))
        self.streams[rel] = stream
        try:
            async for child in stream.children():
                if not self._wanted(rel, child):
                    continue
                key = rel + child.sibling_key
                if not child.is_dir or self.delimiter == "/":
                    yield key, child
                else:
                    async for item in self._dir(key, top=False):
                        yield item
        except _Gone:
            if not rel:
                raise errors.NoSuchBucket(resource=self.bucket) from None
            if top:
                await self._check_bucket()
            # else: a prefix naming no directory, or one removed while we walked
        finally:
            del self.streams[rel]

    def _wanted(self, rel: str, child: Child) -> bool:
        if child.name.startswith(TMP_PREFIX):
            return False  # an upload in progress
        key = rel + child.sibling_key
        if not child.is_dir:
            return key.startswith(self.prefix) and key > self.after
        if not (key.startswith(self.prefix) or self.prefix.startswith(key)):
            return False
        if self.delimiter == "/":
            return key > self.after
        return key > self.after or self.after.startswith(key)

    async def _check_bucket(self) -> None:
        try:
            await self.http.json("GET", self.base or "/", "GETFILESTATUS", missing=_Gone)
        except _Gone:
            raise errors.NoSuchBucket(resource=self.bucket) from None


async def list_page(
    http: WebHdfsHttp,
    base: str,
    bucket: str,
    prefix: str,
    delimiter: str,
    max_keys: int,
    token: str | None,
    start_after: str | None,
) -> ListPage:
    after, states = decode_token(token) if token else (start_after or "", {})
    walk = TreeWalk(http, base, bucket, prefix, delimiter, after, states)
    page = PageRoll(prefix, delimiter, max_keys, after, last_item=after)
    items = walk.items()
    try:
        async for key, child in items:
            common = page.common_prefix(key)
            if common is not None:
                if not page.add_prefix(common):
                    break
                continue
            if child.is_dir:
                continue  # delimiter "/" hands out directories; an empty one holds no keys
            if not page.room():
                break
            path = f"{base}/{key}"
            page.add(
                ListEntry(
                    key=key,
                    size=child.size,
                    etag=hdfs_etag(path, child.size, child.mtime_ms),
                    last_modified=child.mtime_ms / 1000.0,
                )
            )
        # the walk stands at the first item left out: a continuation resumes there
        next_token = encode_token(page.last_item, walk.snapshot()) if page.truncated else None
    finally:
        await items.aclose()
    return page.page(next_token)
