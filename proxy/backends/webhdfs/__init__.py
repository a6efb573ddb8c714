"""The webhdfs store: http.py (the protocol), paths.py, reads.py, listing.py and order.py
(S3-ordered listings), writes.py."""

from proxy.backends.webhdfs.backend import WebHdfsBackend

__all__ = ["WebHdfsBackend"]
