"""HDFS as a store, through the WebHDFS REST API of its NameNode or an HttpFS gateway.

https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html

A mount's bucket is an absolute HDFS directory and keys are paths below it (paths.py). HDFS
has no ETag: a file's identity is its path, length and modification time. Authentication:
``user`` (simple auth, ``user.name``) or a delegation token (``delegation_token_env``/``_file``);
Kerberos/SPNEGO is not implemented. Reads are in reads.py (listings in listing.py), writes in
writes.py, the protocol in http.py; multipart uploads are staged locally (kit.multipart).
"""

from __future__ import annotations

from proxy.backends.kit.front import StoreFront
from proxy.backends.kit.multipart import StagedUploads
from proxy.backends.webhdfs.http import WebHdfsHttp
from proxy.backends.webhdfs.reads import WebHdfsReads
from proxy.backends.webhdfs.writes import WebHdfsWrites
from proxy.config import BackendConfig
from proxy.errors import ConfigError


class WebHdfsBackend(StoreFront):
    kind = "webhdfs"

    def __init__(self, cfg: BackendConfig) -> None:
        where = f"backends.{cfg.name}"
        if cfg.kerberos:
            raise ConfigError(
                f"{where}.kerberos: Kerberos/SPNEGO is not supported by the webhdfs backend; "
                "use a delegation token (delegation_token_env or delegation_token_file) or "
                "simple authentication (user)"
            )
        if not cfg.url:
            raise ConfigError(f"{where}.url: required for a webhdfs backend")
        http = WebHdfsHttp(cfg)
        reads = WebHdfsReads(http)
        super().__init__(cfg.name, http, reads, WebHdfsWrites(http, reads), StagedUploads(self))
