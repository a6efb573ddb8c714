"""Google Cloud Storage through gcloud-aio-storage (aiohttp), over the JSON API.

A bucket is a GCS bucket. Metadata, listings, deletes and copies (``rewriteTo``) go through
the library's Storage; the calls it cannot stream or lacks (ranged media reads pinned to a
generation, streaming uploads, bucket create/delete/list with times) use its aiohttp session
and token directly. ``endpoint`` in the config (or STORAGE_EMULATOR_HOST) points at an emulator,
without auth. Multipart uploads are staged locally (kit.multipart.StagedUploads) and then
uploaded in one streamed request.
"""

from __future__ import annotations

from proxy.backends.gcs.link import GcsLink
from proxy.backends.gcs.reads import GcsReads
from proxy.backends.gcs.writes import GcsWrites
from proxy.backends.kit.front import StoreFront
from proxy.backends.kit.multipart import StagedUploads
from proxy.config import BackendConfig


class GcsBackend(StoreFront):
    kind = "gcs"

    def __init__(self, cfg: BackendConfig) -> None:
        link = GcsLink(cfg)
        reads = GcsReads(link)
        super().__init__(cfg.name, link, reads, GcsWrites(link, reads), StagedUploads(self))
