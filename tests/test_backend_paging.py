"""Pure parts of the Azure/GCS backends: S3 page cutting over odd store pages, and the codecs."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.backends.azure.codec import (
    account_name_of,
    block_id,
    exact_blocks,
    from_azure_metadata,
    parse_block_id,
    to_azure_metadata,
)
from proxy.backends.gcs.codec import etag_of, meta_of, timestamp
from proxy.backends.kit import paging
from proxy.model import ListEntry


def _entry(key: str) -> ListEntry:
    return ListEntry(key=key, size=1, etag='"e"', last_modified=0.0)


def _roll_up(keys: list[str], delimiter: str) -> list[tuple[str, bool]]:
    items: list[tuple[str, bool]] = []
    for key in sorted(keys):
        cut = key.find(delimiter) if delimiter else -1
        item = (key[: cut + 1], True) if cut >= 0 else (key, False)
        if item not in items:
            items.append(item)
    return items


class OddStore:
    """A store whose pages hold ``size`` items (or more), list prefixes apart from objects
    and repeat the last page's prefix on the next one, as real stores and emulators do."""

    def __init__(self, keys: list[str], delimiter: str, size: int, extra: int) -> None:
        self.items = _roll_up(keys, delimiter)
        self.size = size
        self.extra = extra
        self.calls = 0

    async def fetch(self, marker: str | None, limit: int, after: str) -> paging.StorePage:
        self.calls += 1
        start = int(marker or 0)
        end = start + min(limit, self.size) + self.extra
        chunk = self.items[max(0, start - 1) : end]  # repeats the previous page's last item
        entries = [_entry(n) for n, p in chunk if not p]
        prefixes = [n for n, p in chunk if p]
        return paging.StorePage(entries, prefixes, str(end) if end < len(self.items) else None)


async def _all_pages(
    store: OddStore, max_keys: int, start_after: str = ""
) -> list[tuple[list[str], bool]]:
    pages = []
    token = None
    while True:
        page = await paging.cut_page(store.fetch, max_keys, token, start_after or None, 1000)
        names = sorted([e.key for e in page.entries] + page.prefixes)
        pages.append((names, page.truncated))
        if not page.truncated:
            return pages
        assert page.next_token is not None
        token = page.next_token
        assert len(pages) < 500


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.text("ab/c", min_size=1, max_size=5), unique=True, max_size=30),
    delimiter=st.sampled_from(["", "/"]),
    size=st.integers(1, 7),
    extra=st.integers(0, 3),
    max_keys=st.integers(1, 9),
)
async def test_cut_page_gives_exact_s3_pages(
    keys: list[str], delimiter: str, size: int, extra: int, max_keys: int
) -> None:
    store = OddStore(keys, delimiter, size, extra)
    pages = await _all_pages(store, max_keys)
    want = [n for n, _ in _roll_up(keys, delimiter)]
    got = [n for names, _ in pages for n in names]
    assert got == want
    for names, truncated in pages[:-1]:
        assert truncated and len(names) == max_keys
    assert not pages[-1][1] and len(pages[-1][0]) <= max_keys


async def test_cut_page_start_after_and_zero_keys() -> None:
    store = OddStore(["a", "b/1", "b/2", "c", "d"], "/", 2, 0)
    pages = await _all_pages(store, 10, start_after="b/")
    assert pages == [(["c", "d"], False)]
    empty = await paging.cut_page(store.fetch, 0, None, None, 1000)
    assert (empty.entries, empty.prefixes, empty.truncated) == ([], [], False)


async def test_cut_page_rejects_foreign_tokens() -> None:
    store = OddStore(["a"], "", 1, 0)
    for bad in ("nope", "sl1.!!!", "sl1." + base64.urlsafe_b64encode(b"[1, 2]").decode()):
        with pytest.raises(errors.InvalidArgument):
            await paging.cut_page(store.fetch, 5, bad, None, 1000)


def test_azure_metadata_names_round_trip() -> None:
    s3 = {"my-key": "1", "plain": "2", "under_score": "3", "Mixed-Case": "4"}
    azure = to_azure_metadata(s3)
    assert azure == {"my_key": "1", "plain": "2", "under__score": "3", "mixed_case": "4"}
    assert from_azure_metadata(azure) == {k.lower(): v for k, v in s3.items()}


def test_block_ids_are_fixed_length_and_parse() -> None:
    a = block_id("0123456789abcdef0123", 7, "0a1b2", 12, "f" * 32)
    b = block_id("0123456789abcdef", 10_000, "00000", 0, None)
    assert len(a) == len(b) == 62
    assert parse_block_id(a) == ("0123456789abcdef", 7, "0a1b2", 12, "f" * 32)
    assert parse_block_id(b) == ("0123456789abcdef", 10_000, "00000", 0, None)
    assert parse_block_id("AAAA") is None


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("piece", [1, 3, 4, 5, 100])
async def test_exact_blocks(piece: int) -> None:
    data = bytes(range(23))
    blocks = [b async for b in exact_blocks(_chunks(data, piece), len(data), 4)]
    assert b"".join(blocks) == data
    assert all(len(b) == 4 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 4
    with pytest.raises(errors.IncompleteBody):
        _ = [b async for b in exact_blocks(_chunks(data, piece), len(data) + 1, 4)]
    with pytest.raises(errors.IncompleteBody):
        _ = [b async for b in exact_blocks(_chunks(data, piece), len(data) - 1, 4)]


def test_account_name_of() -> None:
    assert account_name_of("https://acct.blob.core.windows.net") == "acct"
    assert account_name_of("http://127.0.0.1:10000/devstoreaccount1") == "devstoreaccount1"
    assert account_name_of("http://localhost:10000/other/") == "other"


def test_gcs_etags_and_times() -> None:
    md5 = base64.b64encode(bytes.fromhex("5eb63bbbe01eeed093cb22bb8f5acdc3")).decode()
    assert etag_of({"md5Hash": md5, "generation": "7"}) == (
        '"5eb63bbbe01eeed093cb22bb8f5acdc3"',
        True,
    )
    assert etag_of({"generation": "7"}) == ('"7"', False)  # composite: no MD5
    assert timestamp("2026-01-02T03:04:05.500Z") == 1767323045.5
    meta = meta_of({"size": "3", "generation": "7", "metadata": {"Color": "x"}})
    assert (meta.size, meta.metadata, meta.content_type) == (
        3,
        {"color": "x"},
        "application/octet-stream",
    )
