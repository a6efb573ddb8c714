"""The supervisor's scrape of its workers' metrics files (admin._WorkersCollector), against
files written by a real process through prometheus_client's multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from proxy.admin import _WorkersCollector

COUNT = """
from prometheus_client import Counter
Counter("slipstream_test_things", "Things a worker counted.").inc(3)
"""


def test_a_scrape_while_a_worker_creates_its_metrics_file_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker starting during a scrape has created its metrics file but not sized it yet:
    the scrape answers with what the other workers counted (it failed whole before: a 500 on
    /metrics, seen by a test that scraped right after start)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", COUNT], env=env, check=True, timeout=60)
    (tmp_path / "counter_999999.db").touch()  # the starting worker's, this moment
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = CollectorRegistry()
    registry.register(_WorkersCollector())
    assert "slipstream_test_things_total 3.0" in generate_latest(registry).decode()
