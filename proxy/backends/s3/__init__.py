"""The S3 store: link.py (clients), http.py (GET/HEAD), reads.py, writes.py, uploads.py."""

from proxy.backends.s3.backend import S3Backend

__all__ = ["S3Backend"]
