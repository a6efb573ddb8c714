"""Backing stores behind one small async interface (base.py), built from one kit (kit/: the
call helper, paging, staged multipart, key safety) and one folder per store."""

from __future__ import annotations

from proxy.backends.base import Backend, create

__all__ = ["Backend", "create"]
