"""The S3 checksum algorithms, computed incrementally: x-amz-checksum-* and Content-MD5.

Values travel as base64 of the big-endian digest, as S3 sends them.
https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol

from awscrt import checksums as crt

ALGORITHMS = (
    "crc32",
    "crc32c",
    "crc64nvme",
    "sha1",
    "sha256",
    "sha512",
    "xxhash64",
    "xxhash3",
    "xxhash128",
)
DIGEST_SIZES = {
    "crc32": 4,
    "crc32c": 4,
    "crc64nvme": 8,
    "sha1": 20,
    "sha256": 32,
    "sha512": 64,
    "xxhash64": 8,
    "xxhash3": 8,
    "xxhash128": 16,
    "md5": 16,
}
HEADER_PREFIX = "x-amz-checksum-"


class Checksum(Protocol):
    def update(self, data: bytes) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    __slots__ = ("_fn", "_size", "_value")

    def __init__(self, fn: Callable[[bytes, int], int], size: int) -> None:
        self._fn, self._size, self._value = fn, size, 0

    def update(self, data: bytes) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


class _XXHash:
    __slots__ = ("_h",)

    def __init__(self, h: crt.XXHash) -> None:
        self._h = h

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return bytes(self._h.finalize())


_XXHASH = {
    "xxhash64": crt.XXHash.new_xxhash64,
    "xxhash3": crt.XXHash.new_xxhash3_64,
    "xxhash128": crt.XXHash.new_xxhash3_128,
}


def new(algorithm: str) -> Checksum:
    """A fresh checksum: one of ALGORITHMS, or "md5"."""
    if algorithm == "crc32":
        return _Crc(zlib.crc32, 4)
    if algorithm == "crc32c":
        return _Crc(crt.crc32c, 4)
    if algorithm == "crc64nvme":
        return _Crc(crt.crc64nvme, 8)
    if algorithm in ("sha1", "sha256", "sha512", "md5"):
        return hashlib.new(algorithm)
    if algorithm in _XXHASH:
        return _XXHash(_XXHASH[algorithm]())
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def decode(algorithm: str, value: str) -> bytes | None:
    """The digest a base64 header value carries, or None when it is not one of that size."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == DIGEST_SIZES[algorithm] else None


def of(algorithm: str, data: bytes) -> str:
    """The base64 checksum of ``data`` in one go (tests, small bodies)."""
    c = new(algorithm)
    c.update(data)
    return b64(c.digest())
