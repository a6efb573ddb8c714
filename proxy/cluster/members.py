"""Who is in the cluster: the one interface every membership provider implements."""

from __future__ import annotations

from typing import Protocol


class Members(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def live(self) -> tuple[str, ...]: ...  # "host:port" of live members, self included, sorted
