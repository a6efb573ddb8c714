"""Rendezvous (highest-random-weight) hashing: an object's owners are the ``r`` members with the
highest weight blake2b(member, oid). Pure; adding or removing one member of n moves about 1/n of
the ownerships, and only those the member gains or loses. Each chunk of a large object is placed
on its own (chunk_owners): chunk 0 where the object is, the others by the oid and the index."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence


def weight(oid: bytes, member: str) -> int:
    digest = hashlib.blake2b(member.encode() + b"\x00" + oid, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(oid: bytes, members: Sequence[str], r: int) -> list[str]:
    """The min(r, len(members)) distinct owners of ``oid``, best first."""
    ranked = sorted(set(members), key=lambda m: (weight(oid, m), m), reverse=True)
    return ranked[: max(0, r)]


def chunk_oid(oid: bytes, index: int) -> bytes:
    """What chunk ``index`` of a large object is placed by: the object's own id for chunk 0 (so
    an object of one chunk, and the first chunk of any, keeps the object's owners)."""
    return oid if index == 0 else oid + b"\x00chunk" + index.to_bytes(8, "big")


def chunk_owners(oid: bytes, index: int, members: Sequence[str], r: int) -> list[str]:
    """The owners of chunk ``index`` of ``oid``, best first."""
    return owners(chunk_oid(oid, index), members, r)


@functools.lru_cache(maxsize=16)
def shares(members: tuple[str, ...], r: int, samples: int = 4096) -> dict[str, float]:
    """Each member's share of the objects it owns (one of their ``r`` owners), estimated over
    ``samples`` synthetic object ids: R/N each when the hashing spreads evenly."""
    counts = dict.fromkeys(members, 0)
    for i in range(samples):
        for member in owners(i.to_bytes(8, "big"), members, r):
            counts[member] += 1
    return {m: counts[m] / samples for m in members}
