"""Backing stores behind one small async interface (see base.py)."""

from __future__ import annotations

from pathlib import Path

from proxy.backends.base import Backend
from proxy.config import BackendConfig


def create(cfg: BackendConfig, staging: Path) -> Backend:
    """``staging``: a private directory for stores that stage multipart parts locally."""
    backend: Backend
    if cfg.type == "s3":
        from proxy.backends.s3 import S3Backend

        backend = S3Backend(cfg)
    elif cfg.type == "fs":
        from proxy.backends.fs import FsBackend

        backend = FsBackend(cfg)
    elif cfg.type == "azure":
        from proxy.backends.azure import AzureBackend

        backend = AzureBackend(cfg)
    elif cfg.type == "gcs":
        from proxy.backends.gcs import GcsBackend

        backend = GcsBackend(cfg)
    elif cfg.type == "webhdfs":
        from proxy.backends.webhdfs import WebHdfsBackend

        backend = WebHdfsBackend(cfg)
    else:
        raise ValueError(f"unknown backend type {cfg.type!r}")
    backend.staging = staging / cfg.name  # type: ignore[union-attr]
    return backend
