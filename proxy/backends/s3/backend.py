"""S3-compatible stores (AWS, Ceph RGW, SeaweedFS, MinIO) through aiobotocore, with the hot
GET and HEAD over the kit's lean HTTP/1.1 client (http.py)."""

from __future__ import annotations

from proxy.backends.kit.front import StoreFront
from proxy.backends.s3.link import S3Link
from proxy.backends.s3.reads import S3Reads
from proxy.backends.s3.uploads import S3Uploads
from proxy.backends.s3.writes import S3Writes
from proxy.config import BackendConfig


class S3Backend(StoreFront):
    kind = "s3"

    def __init__(self, cfg: BackendConfig) -> None:
        link = S3Link(cfg)
        reads = S3Reads(link)
        uploads = S3Uploads(link, reads)
        super().__init__(cfg.name, link, reads, S3Writes(link, reads), uploads, parts=reads)
