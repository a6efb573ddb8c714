"""The Azure Blob store: link.py (clients, calls), codec.py, reads.py, writes.py, uploads.py."""

from proxy.backends.azure.backend import AzureBackend

__all__ = ["AzureBackend"]
