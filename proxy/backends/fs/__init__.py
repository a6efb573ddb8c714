"""The fs store: root.py (buckets and keys as paths), reads.py, listing.py, writes.py."""

from proxy.backends.fs.backend import FsBackend

__all__ = ["FsBackend"]
