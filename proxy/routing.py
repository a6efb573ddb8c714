"""Client-facing bucket -> (backend, remote bucket, prefix)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from proxy import errors
from proxy.backends.base import Backend
from proxy.config import CacheConfig, MountConfig
from proxy.memo import remember
from proxy.model import valid_bucket_name


@dataclass(frozen=True, slots=True)
class Mount:
    name: str  # the client-facing bucket
    backend: Backend
    bucket: str  # the bucket (or directory) in the store
    prefix: str
    metadata_ttl: float | None  # None: immutable, never revalidate
    wildcard: bool = False
    read_only: bool = False
    cacheable: bool = True
    prefetch_listed: bool = False  # a listing queues its objects for prefetch
    group: str = ""  # the cache group records made through it join (quota.LOCAL), "": none

    def remote_key(self, key: str) -> str:
        return self.prefix + key


class Router:
    def __init__(
        self, mounts: Mapping[str, MountConfig], backends: Mapping[str, Backend], cache: CacheConfig
    ) -> None:
        self._explicit: dict[str, Mount] = {}
        self._wildcard: MountConfig | None = None
        self._wildcard_mounts: dict[str, Mount] = {}
        self._backends = backends
        self._default_ttl = cache.metadata_ttl
        for name, m in mounts.items():
            if name == "*":
                self._wildcard = m
            else:
                self._explicit[name] = self._mount(name, m, wildcard=False)

    def _mount(self, name: str, m: MountConfig, *, wildcard: bool) -> Mount:
        ttl = self._default_ttl if m.metadata_ttl == "default" else m.metadata_ttl
        return Mount(
            name=name,
            backend=self._backends[m.backend],
            bucket=m.bucket or name,
            prefix=m.prefix,
            metadata_ttl=ttl,
            wildcard=wildcard,
            read_only=m.read_only,
            cacheable=m.cacheable,
            prefetch_listed=m.prefetch == "listing",
        )

    def resolve(self, bucket: str) -> Mount:
        mount = self._explicit.get(bucket)
        if mount is not None:
            return mount
        mount = self._wildcard_mounts.get(bucket)
        if mount is not None:
            return mount
        if self._wildcard is not None and valid_bucket_name(bucket):
            mount = self._mount(bucket, self._wildcard, wildcard=True)
            return remember(self._wildcard_mounts, bucket, mount, 10_000)
        raise errors.NoSuchBucket(resource=bucket)

    @property
    def explicit(self) -> list[Mount]:
        return list(self._explicit.values())

    @property
    def wildcard_backend(self) -> Backend | None:
        return self._backends[self._wildcard.backend] if self._wildcard else None


def remote_of(buckets: Mapping[str, MountConfig], bucket: str) -> tuple[str, str, str]:
    """(backend name, remote bucket, prefix) a client-facing bucket maps to, as Router.resolve
    would, without the backends (the admin API names cached objects with it)."""
    m = buckets.get(bucket)
    if m is not None and bucket != "*":
        return m.backend, m.bucket or bucket, m.prefix
    wildcard = buckets.get("*")
    if wildcard is not None and valid_bucket_name(bucket):
        return wildcard.backend, bucket, wildcard.prefix
    raise errors.NoSuchBucket(resource=bucket)
