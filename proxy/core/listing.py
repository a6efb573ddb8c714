"""Listings as the client sees them: a mount's prefix stripped from keys, ListBuckets merged
from the configured buckets and the wildcard store's own."""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.model import BucketInfo, ListPage
from proxy.routing import Mount, Router

OnList = Callable[[str, str, list[str]], None]  # bucket, prefix, the page's keys


class Listing:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.on_list: OnList | None = None  # pages of ``prefetch: listing`` buckets go here

    async def list_objects(
        self,
        mount: Mount,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        """One page of keys under ``prefix``; ``max_keys`` 0: an empty page, once the store has
        answered (a missing bucket is still NoSuchBucket)."""
        page = await self._page(mount, prefix, delimiter, max_keys, token, start_after)
        if mount.prefetch_listed and self.on_list is not None and page.entries:
            self.on_list(mount.name, prefix, [e.key for e in page.entries])
        return page

    async def _page(
        self,
        mount: Mount,
        prefix: str,
        delimiter: str,
        max_keys: int,
        token: str | None,
        start_after: str | None,
    ) -> ListPage:
        p = mount.prefix
        page = await mount.backend.list_page(
            mount.bucket,
            p + prefix,
            delimiter,
            max(max_keys, 1),
            token,
            p + start_after if start_after else None,
        )
        if max_keys == 0:
            return ListPage(entries=[], prefixes=[], truncated=False, next_token=None)
        if not p:
            return page
        return ListPage(
            entries=[
                type(e)(
                    key=e.key[len(p) :],
                    size=e.size,
                    etag=e.etag,
                    last_modified=e.last_modified,
                    storage_class=e.storage_class,
                )
                for e in page.entries
                if e.key.startswith(p)
            ],
            prefixes=[c[len(p) :] for c in page.prefixes if c.startswith(p)],
            truncated=page.truncated,
            next_token=page.next_token,
        )

    async def bucket_exists(self, mount: Mount) -> bool:
        return await mount.backend.bucket_exists(mount.bucket)

    async def list_buckets(self) -> list[BucketInfo]:
        out = {m.name: BucketInfo(m.name, time.time()) for m in self.router.explicit}
        backend = self.router.wildcard_backend
        if backend is not None:
            for b in await backend.list_buckets():
                out.setdefault(b.name, b)
        return sorted(out.values(), key=lambda b: b.name)
