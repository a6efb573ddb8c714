"""Azure Blob Storage through ``azure.storage.blob.aio`` (aiohttp transport).

A bucket is a container and a key a blob name. Writes upload blocks of at most ``BLOCK_SIZE``
bytes (one buffer held at a time); multipart uploads stage their parts as blocks of the target
blob itself (uploads.py), so parts never touch local disk.

Azure's ETag is not an MD5 (etag_is_md5 stays False). Blob metadata names must be C#
identifiers, so S3 metadata names are mapped as MinIO's Azure gateway did: ``_`` -> ``__`` and
``-`` -> ``_`` (read back the other way).

https://learn.microsoft.com/rest/api/storageservices/blob-service-rest-api
"""

from __future__ import annotations

from proxy.backends.azure.link import AzureLink
from proxy.backends.azure.reads import AzureReads
from proxy.backends.azure.uploads import AzureUploads
from proxy.backends.azure.writes import AzureWrites
from proxy.backends.kit.front import StoreFront
from proxy.backends.kit.multipart import StagedUploads
from proxy.config import BackendConfig


class AzureBackend(StoreFront):
    kind = "azure"

    def __init__(self, cfg: BackendConfig) -> None:
        link = AzureLink(cfg)
        reads = AzureReads(link)
        uploads = AzureUploads(link, reads, StagedUploads(self))
        super().__init__(cfg.name, link, reads, AzureWrites(link, reads), uploads)
