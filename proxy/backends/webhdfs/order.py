"""One HDFS directory's children in S3 key order, read page by page (LISTSTATUS_BATCH), with
a small state that a continuation token can carry.

https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Iteratively_List_a_Directory

HDFS keeps children sorted by their UTF-8 name bytes compared as *signed* Java bytes
(DFSUtil.compareBytes: SignedBytes.lexicographicalComparator); S3 compares unsigned bytes. The
two orders disagree only where one name has an ASCII letter and the other a non-ASCII one at
the first place they differ: HDFS lists ``P + "é..."`` before ``P + "a..."``, S3 after. So the
names are read in HDFS's order until one has a non-ASCII letter after its prefix ``P``; that
block (``P`` + non-ASCII) is deferred, the read jumps past it (``startAfter = P + MAXHIGH``) to
take ``P`` + ASCII first, and comes back to it (``startAfter = P``) once the names no longer
start with ``P``. Blocks nest; the deferred prefixes of a frame form one chain, so the state is
a few names, whatever the directory's size.

A directory ``d`` then sorts as its keys ``d/...`` do: it waits in a heap until the names pass
``d/`` (only directories whose name is a prefix of the current name wait).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy import errors
from proxy.backends.webhdfs.http import WebHdfsHttp

_FLIP = bytes(b ^ 0x80 for b in range(256))  # signed-byte order as unsigned-byte order
# Above every name that starts with non-ASCII letters, in HDFS's order, and below every ASCII
# letter: U+10FFFF is F4 8F BF BF, the largest valid UTF-8; 64 of them outrun a 255-byte name
# (dfs.namenode.fs-limits.max-component-length).
MAXHIGH = "\U0010ffff" * 64


def signed_key(name: str) -> bytes:
    """Sort key reproducing HDFS's order of names."""
    return name.encode().translate(_FLIP)


def _first_non_ascii(name: str, start: int) -> int | None:
    for i in range(start, len(name)):
        if name[i] >= "\x80":
            return i
    return None


def _skip_to(name_prefix: str) -> str:
    """A ``startAfter`` below every name that starts with ``name_prefix`` in HDFS's order but
    past most names that do not ("" when none is safe)."""
    if not name_prefix:
        return ""
    code = ord(name_prefix[-1])
    if not 0x20 < code < 0x80:
        return ""
    lower = chr(code - 1) if code - 1 != 0x2F else "."  # "/" is never in a name
    return name_prefix[:-1] + lower + "\x7f"  # 0x7f is the largest signed byte


@dataclass(slots=True)
class Child:
    name: str
    is_dir: bool
    size: int = 0
    mtime_ms: int = 0
    children: int | None = None  # a directory's childrenNum, where HDFS gives it

    @property
    def sibling_key(self) -> str:
        return self.name + "/" if self.is_dir else self.name


def child_of(status: dict[str, Any]) -> Child:
    kind = status["type"]
    children = status.get("childrenNum")
    return Child(
        name=str(status.get("pathSuffix", "")),
        is_dir=kind == "DIRECTORY",
        size=int(status["length"]),
        mtime_ms=int(status["modificationTime"]),
        children=int(children) if kind == "DIRECTORY" and children is not None else None,
    )


@dataclass(slots=True)
class _Frame:
    head: str | None  # None: the whole directory; else the block ``head`` + non-ASCII letter
    scan_from: int  # letters before this are fixed by the frames below
    cursor: str  # startAfter of the next read ("" = from the start)
    deferred: list[str] = field(default_factory=list)  # a chain of prefixes

    def dump(self) -> list[Any]:
        return [self.head, self.scan_from, self.cursor, list(self.deferred)]

    @classmethod
    def load(cls, doc: Any) -> _Frame:
        head, scan_from, cursor, deferred = doc
        if not (head is None or isinstance(head, str)) or not isinstance(cursor, str):
            raise ValueError
        if not isinstance(scan_from, int) or not isinstance(deferred, list):
            raise ValueError
        if not all(isinstance(p, str) for p in deferred):
            raise ValueError
        return cls(head, scan_from, cursor, deferred)


class _Pages:
    """LISTSTATUS_BATCH pages of one directory. The last page stays at hand: a cursor that
    falls inside it (a jump over a short block, a return to a frame) costs no request."""

    def __init__(self, http: WebHdfsHttp, path: str, missing: Callable[[], errors.S3Error]):
        self.http, self.path, self.missing = http, path, missing
        self.after: bytes | None = None  # signed_key of the page's startAfter
        self.items: list[Child] = []
        self.keys: list[bytes] = []
        self.remaining = 0

    async def next_after(self, cursor: str) -> Child | None:
        """The first child whose name sorts after ``cursor`` in HDFS's order, or None."""
        key = signed_key(cursor)
        covered = self.after is not None and self.after <= key
        if covered and self.keys and key >= self.keys[-1]:
            covered = self.remaining <= 0
        if not covered:
            await self._fetch(cursor)
        i = bisect.bisect_right(self.keys, key)
        if i < len(self.items):
            return self.items[i]
        if self.remaining <= 0 or not self.items:
            return None
        await self._fetch(self.items[-1].name)
        return self.items[0] if self.items else None

    async def _fetch(self, after: str) -> None:
        doc = await self.http.json(
            "GET",
            self.path,
            "LISTSTATUS_BATCH",
            missing=self.missing,
            params={"startAfter": after} if after else None,
        )
        try:
            listing = doc["DirectoryListing"]
            statuses = listing["partialListing"]["FileStatuses"]["FileStatus"]
            self.remaining = int(listing["remainingEntries"])
            items = [child_of(st) for st in statuses]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise errors.BackendUnavailable("HDFS sent a malformed directory listing.") from exc
        if items and after and items[-1].name == after:
            raise errors.BackendUnavailable("HDFS ignored startAfter in a listing.")
        self.after = signed_key(after)
        self.items = [c for c in items if c.name]  # a file lists as itself, without a name
        self.keys = [signed_key(c.name) for c in self.items]


class DirStream:
    """The children of the directory ``path`` whose names start with ``name_prefix``, in S3
    order of their keys (``name``, or ``name/`` for a directory); resumable from ``state``."""

    def __init__(
        self,
        http: WebHdfsHttp,
        path: str,
        name_prefix: str,
        missing: Callable[[], errors.S3Error],
        state: Any = None,
    ) -> None:
        self.pages = _Pages(http, path, missing)
        self.name_prefix = name_prefix
        self.stop_at = signed_key(name_prefix) if name_prefix else None
        if state is None:
            self.frames = [_Frame(None, len(name_prefix), _skip_to(name_prefix))]
            self.waiting: list[str] = []
        else:
            self.frames, self.waiting = self._load(state)

    @staticmethod
    def _load(state: Any) -> tuple[list[_Frame], list[str]]:
        frames_doc, waiting = state
        frames = [_Frame.load(f) for f in frames_doc]
        if not isinstance(waiting, list) or not all(isinstance(w, str) for w in waiting):
            raise ValueError
        heapq.heapify(waiting)
        return frames, waiting

    def snapshot(self) -> list[Any]:
        return [[f.dump() for f in self.frames], sorted(self.waiting)]

    async def children(self) -> AsyncIterator[Child]:
        """Files come as read; a directory waits (by name) until the names pass ``name/``.
        Nothing is consumed before the consumer asks for the next child, so a snapshot taken
        while it holds one resumes at that very child."""
        async for child in self._names():
            while self.waiting and self.waiting[0] < child.name:
                yield Child(self.waiting[0][:-1], True)
                heapq.heappop(self.waiting)
            if child.is_dir:
                if child.children != 0:  # an empty directory holds no keys
                    heapq.heappush(self.waiting, child.name + "/")
            else:
                yield child
        while self.waiting:
            yield Child(self.waiting[0][:-1], True)
            heapq.heappop(self.waiting)

    async def _names(self) -> AsyncIterator[Child]:
        """Every child, in S3 order of the names themselves (see the module docstring)."""
        frames = self.frames
        while frames:
            frame = frames[-1]
            child = await self.pages.next_after(frame.cursor)
            if child is not None and frame.head is None and self.stop_at is not None:
                if not child.name.startswith(self.name_prefix):
                    if signed_key(child.name) < self.stop_at:
                        frame.cursor = child.name  # before the names we want
                        continue
                    child = None  # past them
            if child is not None and frame.head is not None:
                cut = len(frame.head)
                if not (child.name.startswith(frame.head) and child.name[cut : cut + 1] >= "\x80"):
                    child = None  # the end of the block
            if frame.deferred and (child is None or not child.name.startswith(frame.deferred[-1])):
                head = frame.deferred.pop()
                frames.append(_Frame(head, len(head) + 1, head))
                continue
            if child is None:
                frames.pop()
                continue
            j = _first_non_ascii(child.name, frame.scan_from)
            if j is not None:
                frame.deferred.append(child.name[:j])
                frame.cursor = child.name[:j] + MAXHIGH
                continue
            yield child
            frame.cursor = child.name
