"""Buckets and keys as HDFS paths, and the identity HDFS gives a file (no ETag of its own).

A mount's bucket string is an absolute HDFS directory (``/data/logs``; a wildcard mount's
``logs`` means ``/logs``); keys are paths below it. A key that could name anything outside it
(``..``, ``.``, empty segments, NUL, backslash) does not exist, as in the fs backend.
"""

from __future__ import annotations

import mimetypes
from typing import Any

from proxy.backends.kit.keys import identity_etag, safe_segments
from proxy.model import ObjectMeta


def bucket_base(bucket: str) -> str | None:
    """The directory a bucket string names, without a trailing slash ("" is the root), or None
    if it is not a clean absolute path."""
    path = bucket if bucket.startswith("/") else "/" + bucket
    path = path.rstrip("/")
    if not path:
        return ""
    if safe_segments(path[1:]) is None or ":" in path:
        return None
    return path


def object_path(base: str, key: str) -> str | None:
    """The file a key names below ``base``, or None if the key cannot name one."""
    if safe_segments(key) is None:
        return None
    return f"{base}/{key}"


def hdfs_etag(path: str, length: int, mtime_ms: int) -> str:
    """HDFS has no ETag: identity is the path, the length and the modification time (ms)."""
    return identity_etag(path, length, mtime_ms)


def status_meta(path: str, status: dict[str, Any]) -> ObjectMeta:
    """ObjectMeta from a FileStatus JSON object (a FILE).

    https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#FileStatus_JSON_Schema
    """
    length = int(status["length"])
    mtime_ms = int(status["modificationTime"])
    name = path.rpartition("/")[2]
    return ObjectMeta(
        size=length,
        etag=hdfs_etag(path, length, mtime_ms),
        last_modified=mtime_ms / 1000.0,
        content_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
        etag_is_md5=False,
    )
