"""Bounded memos: plain dicts that forget everything at once when they are full.

For tables of what a hot path computes again and again from a few inputs (parsed index
records, signing keys, header names, headers built from one ObjectMeta): the working set is
small, so clearing the whole table when it reaches its bound is cheaper per hit than any
eviction order, and keeps the memory bounded whatever the clients send. The table stays a
plain dict, read with ``get``/``in``: a dict subclass would miss CPython's fast path for
``dict.get`` on every hit; only a miss calls ``remember``.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, bound: int) -> V:
    """Keep ``value`` under ``key`` in ``memo``, clearing it first when it holds ``bound``
    entries; returns ``value``."""
    if len(memo) >= bound:
        memo.clear()
    memo[key] = value
    return value
