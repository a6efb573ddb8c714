"""Backing stores behind one small async interface (see base.py)."""

from __future__ import annotations

from proxy.backends.base import Backend
from proxy.config import BackendConfig


def create(cfg: BackendConfig) -> Backend:
    if cfg.type == "s3":
        from proxy.backends.s3 import S3Backend

        return S3Backend(cfg)
    if cfg.type == "fs":
        from proxy.backends.fs import FsBackend

        return FsBackend(cfg)
    raise ValueError(f"unknown backend type {cfg.type!r}")
