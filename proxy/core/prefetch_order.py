"""A prefetch order held compactly: keys' UTF-8 back to back and an offset per key, in parts
as they were posted. ``encode_keys`` takes a JSON list, ``encode_lines`` a run of NDJSON lines
(one key a line: a JSON string, or ``{"key": ...}``); both are a thread's work for long input.
"""

from __future__ import annotations

import bisect
import json
from array import array

MAX_KEY_BYTES = 1024


class PrefetchError(ValueError):
    """Bad input for a prefetch request; the message is for the client."""


Part = tuple[bytes, "array[int]"]  # keys' UTF-8 back to back, and where each one ends


class _Builder:
    def __init__(self) -> None:
        self.blob, self.ends = bytearray(), array("Q")

    def add(self, key: object, where: str) -> None:
        if not isinstance(key, str) or not key:
            raise PrefetchError(f"{where}: each key must be a non-empty string")
        raw = key.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_KEY_BYTES:
            raise PrefetchError(f"{where}: a key is longer than {MAX_KEY_BYTES} bytes")
        self.blob += raw
        self.ends.append(len(self.blob))

    def part(self) -> Part:
        return bytes(self.blob), self.ends


def encode_keys(keys: object) -> Part:
    """One part of an order from a JSON list of keys."""
    if not isinstance(keys, list):
        raise PrefetchError("keys: expected a list of keys")
    out = _Builder()
    for key in keys:
        out.add(key, "keys")
    return out.part()


def encode_lines(raw: bytes, first_line: int) -> Part:
    """One part of an order from whole NDJSON lines (``first_line``: the number of the first,
    for errors). Blank lines are skipped."""
    out = _Builder()
    for n, line in enumerate(raw.split(b"\n"), first_line):
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise PrefetchError(f"line {n}: not valid JSON") from None
        if isinstance(item, dict):
            item = item.get("key")
        out.add(item, f"line {n}")
    return out.part()


class KeyList:
    """An ordered list of keys, in parts (see ``encode_keys``)."""

    def __init__(self) -> None:
        self._parts: list[Part] = []
        self._starts: list[int] = []  # the position of each part's first key
        self._len = 0
        self.size = 0  # bytes of the keys' UTF-8

    def add(self, part: Part) -> None:
        if not len(part[1]):
            return
        self._parts.append(part)
        self._starts.append(self._len)
        self._len += len(part[1])
        self.size += len(part[0])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> str:
        n = bisect.bisect_right(self._starts, i) - 1
        blob, ends = self._parts[n]
        j = i - self._starts[n]
        start = ends[j - 1] if j else 0
        return blob[start : ends[j]].decode("utf-8", "surrogatepass")
