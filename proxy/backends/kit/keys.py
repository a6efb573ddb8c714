"""Keys as file paths, for the stores that are file trees (fs, webhdfs): which keys can name a
file inside a bucket, the names of uploads in progress, and ETags from a file's identity."""

from __future__ import annotations

import hashlib

TMP_PREFIX = ".slipstream-tmp-"  # uploads in progress (written, then renamed); never listed
EMPTY_MD5_ETAG = '"d41d8cd98f00b204e9800998ecf8427e"'  # a folder marker's: no bytes


def safe_segments(key: str) -> list[str] | None:
    """The key's path segments, or None if the key cannot name a file inside the bucket
    (``..``, ``.``, empty segments, NUL, backslash)."""
    if not key or "\x00" in key or "\\" in key or key.endswith("/"):
        return None
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def identity_etag(*identity: object) -> str:
    """An entity-tag from an object's identity (path, size, mtime...), not its bytes, for stores
    that have none. The "-1" keeps it from looking like an MD5: clients check 32-hex ETags
    against the bytes they sent (s3cmd retries every upload, rclone check reports differences)
    and skip ETags with a dash, as they do for multipart uploads."""
    ident = "\x00".join(map(str, identity)).encode("utf-8", "surrogatepass")
    return '"' + hashlib.blake2b(ident, digest_size=16).hexdigest() + '-1"'
