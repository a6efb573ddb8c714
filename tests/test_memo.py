"""proxy.memo.remember: a memo keeps what it is given until its bound, then starts afresh."""

from __future__ import annotations

from proxy.memo import remember


def test_remember_keeps_until_the_bound_then_clears() -> None:
    memo: dict[str, int] = {}
    assert remember(memo, "a", 1, 2) == 1
    assert remember(memo, "b", 2, 2) == 2
    assert memo == {"a": 1, "b": 2}
    assert remember(memo, "c", 3, 2) == 3  # full: everything goes, then c is kept
    assert memo == {"c": 3}


def test_remember_replaces_a_key_below_the_bound() -> None:
    memo = {"a": 1}
    remember(memo, "a", 5, 3)
    assert memo == {"a": 5}
