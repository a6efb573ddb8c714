"""Environment variables beside the config file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.proxyproc import REPO_ROOT


def test_slipstream_config_names_the_file_not_a_field(tmp_path: Path) -> None:
    """SLIPSTREAM_CONFIG (the README's other way to give --config) is no config field."""
    cfg = tmp_path / "slipstream.yaml"
    cfg.write_text("cache:\n  min_free: 3%\n")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "SLIPSTREAM_CONFIG": str(cfg)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
