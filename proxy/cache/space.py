"""The volume under the cache: the room it has beyond the reserve kept free (cache.min_free),
and warnings about a full disk, at most one a minute per process."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from proxy import log
from proxy.config_values import SizeOrShare

WARN_INTERVAL = 60.0


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


# "No space left on device" and its kin, wherever the cache meets it (chunk files, the index)
disk_full = Throttled(log.cache)
