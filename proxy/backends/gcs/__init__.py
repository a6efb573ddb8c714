"""The GCS store: link.py (session, calls), codec.py, reads.py, writes.py."""

from proxy.backends.gcs.backend import GcsBackend

__all__ = ["GcsBackend"]
