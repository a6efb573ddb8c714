"""A local or mounted directory as a store: each subdirectory of ``root`` is a bucket.

Keys map to paths below the bucket's directory; a key that could name anything outside it
(``..``, ``.``, empty segments, NUL, backslash) simply does not exist. Blocking file work runs in
the default executor.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from proxy import errors, metrics
from proxy.backends.base import identity_etag
from proxy.backends.fs_writes import TMP_PREFIX, FsWrites
from proxy.config import BackendConfig
from proxy.model import BucketInfo, GetResult, ListEntry, ListPage, ObjectMeta

T = TypeVar("T")
_READ_SIZE = 256 * 1024


def _fs_etag(st: os.stat_result) -> str:
    return identity_etag(st.st_ino, st.st_size, st.st_mtime_ns)


def _meta(path: Path, st: os.stat_result) -> ObjectMeta:
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return ObjectMeta(
        size=st.st_size, etag=_fs_etag(st), last_modified=st.st_mtime, content_type=ctype
    )


def safe_segments(key: str) -> list[str] | None:
    """The key's path segments, or None if the key cannot name a file inside the bucket."""
    if not key or "\x00" in key or "\\" in key or key.endswith("/"):
        return None
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


class FsBackend(FsWrites):
    kind = "fs"

    def __init__(self, cfg: BackendConfig) -> None:
        assert cfg.root is not None
        self.name = cfg.name
        self.root = cfg.root.resolve()

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def _run(self, operation: str, fn: Callable[[], T]) -> T:
        metrics.BACKEND_REQUESTS.labels(self.name, operation).inc()
        return await asyncio.to_thread(fn)

    def _bucket_dir(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", "..") or "\x00" in bucket:
            raise errors.NoSuchBucket(resource=bucket)
        path = self.root / bucket
        if not path.is_dir():
            raise errors.NoSuchBucket(resource=bucket)
        return path

    def _path(self, bucket: str, key: str) -> Path:
        """Blocking: stats the bucket directory and resolves symlinks."""
        base = self._bucket_dir(bucket)
        parts = safe_segments(key)
        if parts is None:
            raise errors.NoSuchKey(key=key)
        path = base.joinpath(*parts)
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(Path(os.path.realpath(base))):
            raise errors.NoSuchKey(key=key)
        return real

    def _stat_file(self, bucket: str, key: str) -> tuple[Path, os.stat_result]:
        path = self._path(bucket, key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise errors.NoSuchKey(key=key) from None
        except OSError as exc:
            raise errors.BackendUnavailable(f"Cannot stat the file: {exc.strerror}.") from exc
        if not stat.S_ISREG(st.st_mode):
            raise errors.NoSuchKey(key=key)
        return path, st

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        path, st = await self._run("HeadObject", lambda: self._stat_file(bucket, key))
        return _meta(path, st)

    async def get(
        self, bucket: str, key: str, start: int | None, end: int | None, if_match: str | None = None
    ) -> GetResult:
        def open_file() -> tuple[Any, ObjectMeta]:
            path, _ = self._stat_file(bucket, key)
            f = open(path, "rb")  # noqa: SIM115 - closed by GetResult.release
            return f, _meta(path, os.fstat(f.fileno()))

        f, meta = await self._run("GetObject", open_file)
        if if_match and if_match != meta.etag:
            f.close()
            raise errors.PreconditionFailed()
        if start is None:
            first, last = 0, meta.size - 1
        else:
            if start >= meta.size and meta.size > 0:
                f.close()
                raise errors.InvalidRange()
            first = start
            last = meta.size - 1 if end is None else min(end, meta.size - 1)

        async def body() -> AsyncIterator[bytes]:
            pos = first
            while pos <= last:
                n = min(_READ_SIZE, last - pos + 1)
                piece = await asyncio.to_thread(os.pread, f.fileno(), n, pos)
                if not piece:
                    raise errors.BackendUnavailable("The file shrank while being read.")
                metrics.BACKEND_BYTES.labels(self.name).inc(len(piece))
                pos += len(piece)
                yield piece

        async def release() -> None:
            f.close()

        return GetResult(meta=meta, start=first, end=last, body=body(), release=release)

    async def list_page(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        if token:
            try:
                start_after = base64.urlsafe_b64decode(token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise errors.InvalidArgument("The continuation token is not valid.") from None
        return await self._run(
            "ListObjectsV2",
            lambda: self._list_page(bucket, prefix, delimiter, max_keys, start_after or ""),
        )

    def _list_page(
        self, bucket: str, prefix: str, delimiter: str, max_keys: int, after: str
    ) -> ListPage:
        """Blocking: walks the directory tree in key order, stopping after one page."""
        base = self._bucket_dir(bucket)
        entries: list[ListEntry] = []
        prefixes: list[str] = []
        last_prefix: str | None = None
        last_item = ""
        truncated = False
        for key, st in _walk(base, prefix, after):
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common == last_prefix or common <= after:
                        continue
                    if len(entries) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    last_prefix = last_item = common
                    continue
            if len(entries) + len(prefixes) >= max_keys:
                truncated = True
                break
            entries.append(
                ListEntry(key=key, size=st.st_size, etag=_fs_etag(st), last_modified=st.st_mtime)
            )
            last_item = key
        token = base64.urlsafe_b64encode(last_item.encode()).decode() if truncated else None
        return ListPage(entries=entries, prefixes=prefixes, truncated=truncated, next_token=token)

    async def bucket_exists(self, bucket: str) -> bool:
        def check() -> bool:
            try:
                self._bucket_dir(bucket)
            except errors.NoSuchBucket:
                return False
            return True

        return await self._run("HeadBucket", check)

    async def list_buckets(self) -> list[BucketInfo]:
        def scan() -> list[BucketInfo]:
            out = []
            with os.scandir(self.root) as it:
                for e in it:
                    if e.is_dir() and not e.name.startswith("."):
                        out.append(BucketInfo(name=e.name, created=e.stat().st_mtime))
            return sorted(out, key=lambda b: b.name)

        return await self._run("ListBuckets", scan)


def _walk(base: Path, prefix: str, after: str) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files below ``base`` whose key starts with ``prefix`` and sorts after ``after``,
    in S3 key order (siblings sorted as ``name`` for files and ``name/`` for directories)."""
    dir_part, _, _ = prefix.rpartition("/")
    start = base
    rel = ""
    if dir_part:
        parts = safe_segments(dir_part)
        if parts is None:
            return
        start = base.joinpath(*parts)
        if os.path.realpath(start) != os.path.join(os.path.realpath(base), *parts):
            return  # a symlink on the way: never followed, as in _walk_dir
        rel = dir_part + "/"
    yield from _walk_dir(start, rel, prefix, after)


def _walk_dir(
    directory: Path, rel: str, prefix: str, after: str
) -> Iterator[tuple[str, os.stat_result]]:
    try:
        with os.scandir(directory) as it:
            items = []
            for e in it:
                if e.name.startswith(TMP_PREFIX):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)  # never follow links out of the bucket
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    items.append((rel + e.name + "/", True, st))
                elif stat.S_ISREG(st.st_mode):
                    items.append((rel + e.name, False, st))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    items.sort(key=lambda i: i[0])
    for key, is_dir, st in items:
        if is_dir:
            # keys below share the prefix ``key``: skip the subtree if none can match
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if key < after and not after.startswith(key):
                continue
            yield from _walk_dir(directory / key[len(rel) : -1], key, prefix, after)
        elif key.startswith(prefix) and key > after:
            yield key, st
