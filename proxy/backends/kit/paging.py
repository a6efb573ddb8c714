"""Exact S3 list pages over a store whose own pages differ (Azure, GCS).

A store page may hold more or fewer items than asked, may list a common prefix again on the
next page (GCS) and may order prefixes apart from blobs (Azurite). This module cuts S3 pages of
exactly ``max_keys`` items from that: each item is taken once, in key order, skipping whatever
sorts at or before the last one handed out. The continuation token carries the store's own
marker for the page being read plus that last item, so resuming re-reads at most one store page.

https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy import errors
from proxy.model import ListEntry, ListPage

MAX_STORE_PAGES = 16  # per S3 page; past it the page ends early (truncated, maybe short)
_TOKEN_PREFIX = "sl1."


@dataclass(frozen=True, slots=True)
class StorePage:
    entries: list[ListEntry]
    prefixes: list[str]
    next_marker: str | None  # the store's marker for its next page; None: the listing ended


# fetch(marker, limit, after) -> one store page; ``after`` is a hint (names <= it are skipped
# anyway), for stores that can start a listing at a name.
FetchPage = Callable[[str | None, int, str], Awaitable[StorePage]]


def encode_token(marker: str | None, after: str) -> str:
    raw = json.dumps([marker, after], separators=(",", ":")).encode()
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str) -> tuple[str | None, str]:
    try:
        if not token.startswith(_TOKEN_PREFIX):
            raise ValueError(token)
        marker, after = json.loads(base64.urlsafe_b64decode(token[len(_TOKEN_PREFIX) :]))
        if not isinstance(after, str) or not (marker is None or isinstance(marker, str)):
            raise ValueError(token)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise errors.InvalidArgument("The continuation token provided is incorrect.") from None
    return marker, after


async def cut_page(
    fetch: FetchPage, max_keys: int, token: str | None, start_after: str | None, limit: int
) -> ListPage:
    """One S3 page of at most ``max_keys`` items; ``limit``: the most a store page may hold."""
    if max_keys <= 0:
        return ListPage(entries=[], prefixes=[], truncated=False, next_token=None)
    marker, last = decode_token(token) if token else (None, start_after or "")
    entries: list[ListEntry] = []
    prefixes: list[str] = []
    for _ in range(MAX_STORE_PAGES):
        page = await fetch(marker, min(max_keys, limit), last)
        items: list[tuple[str, ListEntry | None]] = [(e.key, e) for e in page.entries]
        items += [(p, None) for p in page.prefixes]
        items.sort(key=lambda item: item[0])
        for name, entry in items:
            if name <= last:
                continue  # handed out already, or at/before start-after
            if len(entries) + len(prefixes) >= max_keys:
                return ListPage(entries, prefixes, True, encode_token(marker, last))
            if entry is None:
                prefixes.append(name)
            else:
                entries.append(entry)
            last = name
        if page.next_marker is None:
            return ListPage(entries, prefixes, False, None)
        marker = page.next_marker
    return ListPage(entries, prefixes, True, encode_token(marker, last))
