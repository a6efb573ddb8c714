"""A token bucket shared by a job's workers: bytes per second, one second of burst."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._stamp = time.monotonic()

    async def take(self, n: int) -> None:
        """Spend ``n`` bytes; sleep while the bucket is in debt. A rate of 0 never waits."""
        if self.rate <= 0 or n <= 0:
            return
        now = time.monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)
