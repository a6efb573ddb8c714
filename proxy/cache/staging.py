"""Upload staging on the cache's disk, swept: multipart parts staged for stores without native
multipart (``staging/<backend>/<upload>``, kit/multipart.py) and parts copied for the cache
(``uploads/<hash>``, parts.py). An upload abandoned by its client would otherwise stay forever.

Every pass removes each upload's directory untouched for ``cache.upload_staging_ttl`` (as S3's
AbortIncompleteMultipartUpload lifecycle rule would), and reports what is left by kind in
``slipstream_upload_staging_bytes``. The parts copied for the cache count against
``cache.max_size``: beyond it the least recently touched copies go (only their caching is lost),
checked again a second after each new copy. Parts staged for a store are the only copy of an
upload in progress, so they are bounded by age only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from proxy import log, metrics
from proxy.cache.parts import StagedDir, staged_dirs, sweep_staging
from proxy.config import CacheConfig

MAX_INTERVAL = 60.0
POKE_GAP = 1.0  # seconds from a poke to its sweep (and at least between poked sweeps)


class StagingSweeper:
    def __init__(self, root: Path, cfg: CacheConfig) -> None:
        """``root``: the cache directory (its ``uploads/`` and ``staging/``)."""
        self.copies = root / "uploads"
        self.stores = root / "staging"
        self.ttl = cfg.upload_staging_ttl
        self.max_copies = cfg.max_size
        self.interval = min(self.ttl / 4, MAX_INTERVAL)
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """A part copy was added: sweep soon (within POKE_GAP), not at the next interval, so
        the copies stay within ``max_size`` while uploads run."""
        self._poked.set()

    def sweep_once(self) -> int:
        """Blocking: one pass; returns the upload directories removed."""
        now = time.time()
        removed, left = sweep_staging(staged_dirs(self.copies), now, self.ttl, self.max_copies)
        metrics.UPLOAD_STAGING_BYTES.labels("cache").set(left)
        store_dirs: list[StagedDir] = []
        try:
            backends = [Path(e.path) for e in os.scandir(self.stores) if e.is_dir()]
        except FileNotFoundError:
            backends = []
        for d in backends:
            store_dirs += staged_dirs(d)
        gone, left = sweep_staging(store_dirs, now, self.ttl, None)
        metrics.UPLOAD_STAGING_BYTES.labels("store").set(left)
        removed += gone
        if removed:
            metrics.UPLOAD_STAGING_SWEPT.inc(removed)
            log.cache.info("removed the staging of %d abandoned upload(s)", removed)
        return removed

    async def run(self) -> None:
        """Sweep every ``interval``, and POKE_GAP after a poke, until cancelled; a failed pass
        is logged, not fatal."""
        while True:
            try:
                await asyncio.to_thread(self.sweep_once)
            except OSError as exc:
                log.cache.warning("upload staging sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.interval)
                await asyncio.sleep(POKE_GAP)  # the copies of one burst of parts, one sweep
            self._poked.clear()
