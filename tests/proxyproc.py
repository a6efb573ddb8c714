"""Run the Slipstream proxy as a real subprocess (``python -m proxy serve``)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.servers import die_with_parent, free_port, log_tail

REPO_ROOT = Path(__file__).resolve().parent.parent


class ProxyProcess:
    """The proxy in a subprocess, configured from ``config`` (the YAML file's contents).

    ``listen``/``admin_listen`` get free loopback ports when missing. The config is written
    to ``tmpdir/slipstream.yaml``; the process runs with ``cwd=tmpdir`` and its stdout and
    stderr go to ``tmpdir/proxy.log``. ``env`` is added to (and overrides) this process's
    environment; ``source`` is the checkout whose proxy runs (this one by default; a
    benchmark's other arm names another). The process gets its own process group, which
    :meth:`stop` and :meth:`kill9` take down entirely (worker processes included).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        tmpdir: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        *,
        ready_timeout: float = 30.0,
        source: Path | None = None,
    ) -> None:
        self.config: dict[str, Any] = copy.deepcopy(dict(config))
        self.config.setdefault("listen", f"127.0.0.1:{free_port()}")
        self.config.setdefault("admin_listen", f"127.0.0.1:{free_port()}")
        self.tmpdir = Path(tmpdir)
        self.config_path = self.tmpdir / "slipstream.yaml"
        self.log_path = self.tmpdir / "proxy.log"
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.source = source or REPO_ROOT
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config['listen']}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config['admin_listen']}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("proxy is not running")
        return self.proc.pid

    def log(self, limit: int = 8000) -> str:
        """The tail of the proxy's combined stdout/stderr."""
        return log_tail(self.log_path, limit)

    def start(self) -> ProxyProcess:
        """Start the proxy and wait for ``/readyz``; may be called again after a stop."""
        return self.launch().wait_ready()

    def wait_ready(self) -> ProxyProcess:
        """Wait for ``/readyz`` of a launched proxy (killed if it never gets there)."""
        try:
            self._wait_ready()
        except BaseException:
            self.kill9()
            raise
        return self

    def launch(self) -> ProxyProcess:
        """Start the proxy without waiting for it to be ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("proxy already running")
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {**os.environ, **self.env}
        # Import the proxy from its checkout even if it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return self

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the proxy exits by itself, or None if it still runs after
        ``timeout`` seconds (it is left running)."""
        if self.proc is None:
            raise RuntimeError("proxy was not started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _wait_ready(self) -> None:
        assert self.proc is not None
        url = f"{self.admin_url}/readyz"
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"proxy exited with {code} before ready{self._tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"proxy not ready at {url} after {self.ready_timeout}s ({last}){self._tail()}"
                )
            time.sleep(0.1)

    def _tail(self) -> str:
        return f"\n--- {self.log_path} (tail) ---\n{self.log()}"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self._reap()

    def kill9(self) -> int | None:
        """SIGKILL the whole process group at once (a crash, no cleanup)."""
        if self.proc is None:
            return None
        return self._reap()

    def _reap(self) -> int:
        assert self.proc is not None
        try:  # no orphans: whatever is left of the group goes too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
