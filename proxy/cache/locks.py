"""Cross-process fill locks: one byte-range lock per (object, chunk) in one shared file.

POSIX record locks are per process and vanish when the process dies, so a crashed filler never
leaves a chunk locked. Within one process the service's in-flight table already ensures one
filler per chunk; these locks stop the other worker processes from fetching it too.

A process that waits for another's fill of a chunk says so with a shared lock on the chunk's
waiter byte (``_WAITERS`` past its lock byte), held while it waits: the filler asks
(``waited_on``) before it queues its commit, and commits without lingering for company
(index.LINGER) when somebody waits behind the lock. A wait that begins after the commit was
queued also moves a stamp in shared memory (``stamp``: eight bytes of a file beside the locks'),
which a lingering writer looks at every few milliseconds (Index.stirred): any process's new
waiter ends every lingering batch's wait, as nobody asks whose fills that batch holds.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from pathlib import Path

_SPACE = 1 << 40
_WAITERS = _SPACE  # a chunk's waiter byte: its lock byte's offset plus this
_SPREAD = 0x9E3779B97F4A7C15  # odd: distinct chunks, distinct bytes (mod 2**40)
_STAMP = 8  # bytes of the waiters' stamp


class FillLocks:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fd = os.open(path.with_name(path.name + ".waits"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _STAMP:
                os.ftruncate(fd, _STAMP)  # (another process may do the same: same size)
            self._stamp = mmap.mmap(fd, _STAMP)
        finally:
            os.close(fd)

    @staticmethod
    def _offset(oid: bytes, chunk: int) -> int:
        """The lock's byte: ``oid`` is already a hash (record.object_id), so its first bytes
        place the object; the chunk's number, times an odd constant, spreads its chunks (all
        of one object's chunks get distinct bytes)."""
        return (int.from_bytes(oid[:8], "big") + chunk * _SPREAD) % _SPACE

    def try_acquire(self, oid: bytes, chunk: int) -> bool:
        """Non-blocking; True when this process now holds the lock."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset(oid, chunk))
        except OSError:
            return False
        return True

    def release(self, oid: bytes, chunk: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset(oid, chunk))

    def wait_begin(self, oid: bytes, chunk: int) -> bool:
        """Say that this process waits for another's fill of the chunk; False if that could not
        be said now (the filler was asking that moment): try again at the next look."""
        try:
            fcntl.lockf(
                self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, _WAITERS + self._offset(oid, chunk)
            )
        except OSError:
            return False
        # any change will do: a lingering writer only compares it with what it saw before
        self._stamp[:_STAMP] = time.monotonic_ns().to_bytes(_STAMP, "little")
        return True

    def stamp(self) -> bytes:
        """What moves whenever any process begins to wait for another's fill (wait_begin)."""
        return self._stamp[:_STAMP]

    def wait_end(self, oid: bytes, chunk: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _WAITERS + self._offset(oid, chunk))

    def waited_on(self, oid: bytes, chunk: int) -> bool:
        """Whether another process waits for this process's fill of the chunk (wait_begin)."""
        at = _WAITERS + self._offset(oid, chunk)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, at)
        except OSError:
            return True
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, at)
        return False

    def close(self) -> None:
        os.close(self._fd)
        self._stamp.close()
