"""The fs store's directory: each subdirectory of ``root`` is a bucket, keys are paths below
it. A key that could name anything outside its bucket (``..``, ``.``, empty segments, NUL,
backslash, a symlink out) simply does not exist. The helpers here block (stat, realpath)."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from proxy import errors
from proxy.backends.kit.calls import StoreCalls
from proxy.backends.kit.keys import identity_etag, safe_segments
from proxy.config import BackendConfig
from proxy.model import ObjectMeta

T = TypeVar("T")


def fs_etag(st: os.stat_result) -> str:
    return identity_etag(st.st_ino, st.st_size, st.st_mtime_ns)


def file_meta(path: Path, st: os.stat_result) -> ObjectMeta:
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return ObjectMeta(
        size=st.st_size, etag=fs_etag(st), last_modified=st.st_mtime, content_type=ctype
    )


class FsRoot:
    def __init__(self, cfg: BackendConfig) -> None:
        assert cfg.root is not None
        self.root = cfg.root.resolve()
        self.calls = StoreCalls(cfg.name)

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def run(self, operation: str, fn: Callable[[], T]) -> T:
        """Count one store operation (the fs store neither times nor maps them) and run the
        blocking ``fn`` in the default executor."""
        self.calls.count(operation)
        return await asyncio.to_thread(fn)

    def bucket_dir(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", "..") or "\x00" in bucket:
            raise errors.NoSuchBucket(resource=bucket)
        path = self.root / bucket
        if not path.is_dir():
            raise errors.NoSuchBucket(resource=bucket)
        return path

    def path(self, bucket: str, key: str) -> Path:
        """Blocking: stats the bucket directory and resolves symlinks."""
        base = self.bucket_dir(bucket)
        parts = safe_segments(key)
        if parts is None:
            raise errors.NoSuchKey(key=key)
        path = base.joinpath(*parts)
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(Path(os.path.realpath(base))):
            raise errors.NoSuchKey(key=key)
        return real

    def stat_file(self, bucket: str, key: str) -> tuple[Path, os.stat_result]:
        path = self.path(bucket, key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise errors.NoSuchKey(key=key) from None
        except OSError as exc:
            raise errors.BackendUnavailable(f"Cannot stat the file: {exc.strerror}.") from exc
        if not stat.S_ISREG(st.st_mode):
            raise errors.NoSuchKey(key=key)
        return path, st

    def target(self, bucket: str, key: str) -> Path:
        """Blocking. The file a key names; refuses keys that cannot be a file in the bucket."""
        base = self.bucket_dir(bucket)
        parts = safe_segments(key)
        if parts is None:
            raise errors.InvalidArgument(
                "This key cannot be stored in a directory-backed bucket "
                "(empty, '.' or '..' segments, NUL or backslash).",
                key=key,
            )
        path = base.joinpath(*parts)
        real_parent = os.path.realpath(path.parent)
        if not (real_parent + os.sep).startswith(os.path.realpath(base) + os.sep) and (
            real_parent != os.path.realpath(base)
        ):
            raise errors.InvalidArgument("The key leaves the bucket.", key=key)
        return path
