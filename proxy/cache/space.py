"""The volume under the cache: the room it has beyond the reserve kept free (cache.min_free),
the room the index file keeps allocated past its end (IndexTail), and warnings about a full
disk, at most one a minute per process."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from pathlib import Path

from proxy import log
from proxy.config_values import SizeOrShare

WARN_INTERVAL = 60.0
TAIL_MAX = 16 * 1024 * 1024  # what IndexTail keeps at most


class Volume:
    """The file system holding ``root``; the reserve is resolved against its size once."""

    def __init__(self, root: Path, min_free: SizeOrShare) -> None:
        """Blocking (statvfs)."""
        st = os.statvfs(root)
        self.root = root
        self.size = st.f_blocks * st.f_frsize
        self.reserve = min_free.of(self.size)

    def spare(self) -> int:
        """Blocking (statvfs, microseconds on a local disk): the bytes free beyond the reserve;
        negative when the reserve is eaten into."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize - self.reserve


class IndexTail:
    """Room kept allocated in and past the end of the index file (LMDB's data.mdb), so that
    an eviction commits while the disk is full. LMDB writes a transaction's new pages past the
    file's last page, reuses the pages a transaction frees only two commits later, and leaves
    a hole where a new page was freed before it was written: with no room on the volume, the
    eviction that would free pages cannot commit, nor any write after it. So every page up to
    the end is backed by blocks, and ``keep`` bytes past it: as much as the reserve, up to
    TAIL_MAX, taken from the cache's room (not from the reserve, which stays free for the
    volume's other users). Blocking: the index's writer thread, and start-up."""

    def __init__(self, path: Path, volume: Volume, page: int) -> None:
        self.volume = volume
        self.keep = min(volume.reserve, TAIL_MAX) // page * page
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._end = 0  # up to here the file is backed (new pages are all past the end)
        self.off = False  # no fallocate on this file system

    def beyond(self, span: int) -> int:
        """The bytes backed past ``span`` (the file's pages up to the last one): the tail, and
        whatever a commit that failed for room wrote there."""
        st = os.fstat(self._fd)
        backed = 0 if self.off else self._end
        return max(0, backed - span, min(st.st_size, st.st_blocks * 512) - span)

    def room(self, span: int, spare: int) -> int:
        """What the file may grow by past ``span`` without eating into the reserve or the tail
        (``spare``: the volume's, less what the tail is short)."""
        return max(0, spare) + max(0, self.beyond(span) - self.keep)

    def short(self, span: int) -> int:
        """What the tail past ``span`` lacks: room the cache has to give up for it."""
        return max(0, self.keep - self.beyond(span))

    def top_up(self, span: int) -> None:
        """Back the pages new since the last call (up to ``span``), then the tail past them as
        far as the volume has room beyond its reserve."""
        if self.off:
            return
        if span > self._end:
            self._back(span)
        short = span + self.keep - self._end
        if short > 0 and self._end >= span:
            self._back(self._end + min(short, self.volume.spare()))

    def _back(self, end: int) -> None:
        if end <= self._end:
            return
        try:
            _fallocate(self._fd, self._end, end - self._end)
            self._end = end
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                log.cache.warning(
                    "no fallocate under the cache index: it keeps no room past "
                    "its end, and a full disk may stop its evictions"
                )
                self.keep, self.off = 0, True
            else:  # no room for the holes, or a race for it
                tail_short.warning("could not back the cache index's file with blocks: %s", exc)

    def close(self) -> None:
        os.close(self._fd)


class Throttled:
    """One warning per ``interval`` seconds at most; the next says how many were held back.
    Safe from any thread (the event loop and the index's writer thread both warn)."""

    def __init__(self, logger: logging.Logger, interval: float = WARN_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._held_back = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held_back += 1
                return
            held_back, self._held_back = self._held_back, 0
            self._next = now + self.interval
        if held_back:
            msg += " (%d similar warnings held back)"
            args = (*args, held_back)
        self.logger.warning(msg, *args)


_libc_fallocate = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)  # Linux only
if _libc_fallocate is not None:
    _libc_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def _fallocate(fd: int, offset: int, length: int) -> None:
    """Linux fallocate(2), mode 0: blocks for the range, no byte written. Not
    os.posix_fallocate: where the file system lacks fallocate, glibc writes a zero into each
    block it reads as zero, which could race a page that LMDB writes there meanwhile."""
    if _libc_fallocate is None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    if _libc_fallocate(fd, 0, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# "No space left on device" and its kin, wherever the cache meets it (chunk files, the index)
disk_full = Throttled(log.cache)
tail_short = Throttled(log.cache)
