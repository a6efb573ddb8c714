"""One S3 list page from keys that come one by one in S3 order (the tree walks of the fs and
webhdfs stores): keys with the delimiter after the prefix roll up into CommonPrefixes, and the
page ends at ``max_keys`` items.

https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html
"""

from __future__ import annotations

from proxy.model import ListEntry, ListPage


class PageRoll:
    """``after``: the start-after or resume point; common prefixes at or before it were given
    out already. ``last_item``: the key (or prefix) a continuation resumes after."""

    def __init__(self, prefix: str, delimiter: str, max_keys: int, after: str, last_item: str):
        self.prefix = prefix
        self.delimiter = delimiter
        self.max_keys = max_keys
        self.after = after
        self.last_item = last_item
        self.entries: list[ListEntry] = []
        self.prefixes: list[str] = []
        self.truncated = False
        self._last_prefix: str | None = None

    def common_prefix(self, key: str) -> str | None:
        """The CommonPrefix ``key`` rolls up into; None: it stands for itself."""
        if not self.delimiter:
            return None
        cut = key.find(self.delimiter, len(self.prefix))
        return key[: cut + len(self.delimiter)] if cut >= 0 else None

    def room(self) -> bool:
        """Whether the page takes one more item; once it does not, it is truncated."""
        if len(self.entries) + len(self.prefixes) >= self.max_keys:
            self.truncated = True
        return not self.truncated

    def add_prefix(self, common: str) -> bool:
        """Take a key's CommonPrefix (once); False: the page is full."""
        if common == self._last_prefix or common <= self.after:
            return True
        if not self.room():
            return False
        self.prefixes.append(common)
        self._last_prefix = self.last_item = common
        return True

    def add(self, entry: ListEntry) -> None:
        """Take a key that stands for itself (after ``room()`` said there is room)."""
        self.entries.append(entry)
        self.last_item = entry.key

    def page(self, next_token: str | None) -> ListPage:
        return ListPage(
            entries=self.entries,
            prefixes=self.prefixes,
            truncated=self.truncated,
            next_token=next_token if self.truncated else None,
        )
