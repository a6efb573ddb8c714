"""In CI a skip fails unless the test is marked may_skip with a reason (tests/conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxyproc import REPO_ROOT

SAMPLE = """
import pytest

def test_tool_missing():
    pytest.skip("s3cmd is not installed")

@pytest.fixture
def emulator():
    pytest.skip("node and npm are needed for Azurite")

def test_fixture_skips(emulator):
    pass

@pytest.mark.may_skip("FUSE needs /dev/fuse, which containers often lack")
def test_allowed():
    pytest.skip("/dev/fuse is missing")

@pytest.mark.may_skip("")
def test_allowance_without_reason():
    pytest.skip("no reason to allow it")

@pytest.mark.xfail(strict=True, reason="a known store bug")
def test_strict_xfail():
    assert False

def test_passes():
    pass
"""


def run_sample(tmp_path: Path, *args: str, **env: str) -> dict[str, str]:
    """Outcome by test name of the sample run under this conftest with ``env`` (and pytest
    ``args``)."""
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "SLIPSTREAM_NO_SKIP")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull, "-v"]
        + ["-p", "no:cacheprovider", *args, "test_sample.py"],
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    # "path::name OUTCOME", or under pytest-xdist "[gw0] [ 16%] OUTCOME path::name"
    found = re.findall(r"::(\w+) (PASSED|FAILED|SKIPPED|XFAIL|ERROR)", done.stdout) + [
        (name, outcome)
        for outcome, name in re.findall(
            r"\] (PASSED|FAILED|SKIPPED|XFAIL|ERROR) \S+::(\w+)", done.stdout
        )
    ]
    outcomes = dict(found)
    assert outcomes, done.stdout + done.stderr
    return outcomes


@pytest.mark.parametrize("env", [{"CI": "true"}, {"SLIPSTREAM_NO_SKIP": "1"}])
@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_in_ci_a_skip_fails_unless_allowed(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...]
) -> None:
    """Also in pytest-xdist workers (scripts/test runs the suite with -n), which do not see
    SLIPSTREAM_NO_SKIP: tests/conftest.py takes it out of the environment."""
    assert run_sample(tmp_path, *args, **env) == {
        "test_tool_missing": "FAILED",
        "test_fixture_skips": "ERROR",
        "test_allowed": "SKIPPED",
        "test_allowance_without_reason": "FAILED",
        "test_strict_xfail": "XFAIL",
        "test_passes": "PASSED",
    }


def test_outside_ci_skips_stay_skips(tmp_path: Path) -> None:
    outcomes = run_sample(tmp_path)
    assert outcomes["test_tool_missing"] == outcomes["test_fixture_skips"] == "SKIPPED"
    assert outcomes["test_allowance_without_reason"] == "SKIPPED"
