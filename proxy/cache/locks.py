"""Cross-process fill locks: one byte-range lock per (object, chunk) in one shared file.

POSIX record locks are per process and vanish when the process dies, so a crashed filler never
leaves a chunk locked. Within one process the service's in-flight table already ensures one
filler per chunk; these locks stop the other worker processes from fetching it too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

_SPACE = 1 << 40


class FillLocks:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @staticmethod
    def _offset(oid: bytes, chunk: int) -> int:
        h = hashlib.blake2b(oid + chunk.to_bytes(8, "big"), digest_size=8).digest()
        return int.from_bytes(h, "big") % _SPACE

    def try_acquire(self, oid: bytes, chunk: int) -> bool:
        """Non-blocking; True when this process now holds the lock."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset(oid, chunk))
        except OSError:
            return False
        return True

    def release(self, oid: bytes, chunk: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset(oid, chunk))

    def close(self) -> None:
        os.close(self._fd)
