"""ListObjectsV2 over a bucket's directory tree, walked in S3 key order and stopped after
one page (a continuation token is the last key handed out)."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from proxy import errors
from proxy.backends.fs.root import FsRoot, fs_etag
from proxy.backends.kit.keys import TMP_PREFIX, safe_segments
from proxy.backends.kit.rollup import PageRoll
from proxy.model import ListEntry, ListPage


def after_token(token: str) -> str:
    """The key a continuation token resumes after."""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument("The continuation token is not valid.") from None


def list_page(
    root: FsRoot, bucket: str, prefix: str, delimiter: str, max_keys: int, after: str
) -> ListPage:
    """Blocking: walks the directory tree in key order, stopping after one page."""
    base = root.bucket_dir(bucket)
    page = PageRoll(prefix, delimiter, max_keys, after, last_item="")
    for key, st in _walk(base, prefix, after):
        common = page.common_prefix(key)
        if common is not None:
            if not page.add_prefix(common):
                break
            continue
        if not page.room():
            break
        page.add(ListEntry(key=key, size=st.st_size, etag=fs_etag(st), last_modified=st.st_mtime))
    return page.page(base64.urlsafe_b64encode(page.last_item.encode()).decode())


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
