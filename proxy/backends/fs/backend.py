"""A local or mounted directory as a store: each subdirectory of ``root`` is a bucket (root.py),
keys are paths below it. Reads in reads.py (listings in listing.py), atomic writes in
writes.py, multipart parts staged locally (kit.multipart)."""

from __future__ import annotations

from proxy.backends.fs.reads import FsReads
from proxy.backends.fs.root import FsRoot
from proxy.backends.fs.writes import FsWrites
from proxy.backends.kit.front import StoreFront
from proxy.backends.kit.multipart import StagedUploads
from proxy.config import BackendConfig


class FsBackend(StoreFront):
    kind = "fs"

    def __init__(self, cfg: BackendConfig) -> None:
        root = FsRoot(cfg)
        reads = FsReads(root)
        super().__init__(cfg.name, root, reads, FsWrites(root, reads), StagedUploads(self))
