"""The cluster's pure pieces: rendezvous ownership, the cluster config section, peer signatures,
and static membership's health-check bookkeeping (in-process, against a check we drive)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cluster import peers, ring
from proxy.cluster.members import StaticMembers
from proxy.config import from_mapping
from proxy.errors import ConfigError
from tests.proxyproc import REPO_ROOT

KEYS = [hashlib.sha256(str(i).encode()).digest() for i in range(20_000)]


def nodes(n: int) -> list[str]:
    return [f"127.0.0.{i + 1}:9900" for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(
    oid=st.binary(min_size=1, max_size=64),
    n=st.integers(min_value=1, max_value=8),
    r=st.integers(min_value=1, max_value=10),
)
def test_each_object_has_min_r_n_distinct_owners_in_a_stable_order(
    oid: bytes, n: int, r: int
) -> None:
    members = nodes(n)
    got = ring.owners(oid, members, r)
    assert len(got) == len(set(got)) == min(r, n)
    assert set(got) <= set(members)
    assert ring.owners(oid, list(reversed(members)), r) == got  # the order given does not matter
    assert ring.owners(oid, members, n)[: len(got)] == got  # owners of r are a prefix of r+1


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("r", [1, 2])
def test_spread_per_member_is_within_20_percent_of_r_over_n(n: int, r: int) -> None:
    counts = Counter(m for k in KEYS for m in ring.owners(k, nodes(n), r))
    share = len(KEYS) * r / n
    for member in nodes(n):
        assert abs(counts[member] - share) <= 0.2 * share, (member, counts[member], share)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_adding_or_removing_one_member_moves_about_one_nth(n: int) -> None:
    before = {k: ring.owners(k, nodes(n), 1)[0] for k in KEYS}
    grown = {k: ring.owners(k, nodes(n + 1), 1)[0] for k in KEYS}
    moved = [k for k in KEYS if before[k] != grown[k]]
    assert all(grown[k] == nodes(n + 1)[-1] for k in moved)  # only to the newcomer
    assert abs(len(moved) - len(KEYS) / (n + 1)) <= 0.2 * len(KEYS) / (n + 1)
    gone = nodes(n)[0]
    shrunk = {k: ring.owners(k, nodes(n)[1:], 1)[0] for k in KEYS}
    moved = [k for k in KEYS if before[k] != shrunk[k]]
    assert all(before[k] == gone for k in moved)  # only what the leaver owned
    assert abs(len(moved) - len(KEYS) / n) <= 0.2 * len(KEYS) / n


# -- config ------------------------------------------------------------------------------------


def load(cluster: Any, env: dict[str, str] | None = None) -> Any:
    raw = {"listen": "127.0.0.1:9900", "cluster": cluster}
    return from_mapping(raw, "t.yaml", env if env is not None else {"CS": "s3cret"})


def test_no_cluster_section_is_one_node() -> None:
    assert from_mapping({}, "t.yaml", {}).cluster is None


def test_cluster_forms_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS", "s3cret")
    c = load({"secret_env": "CS", "members": ["127.0.0.1:9900", "127.0.0.2:9900"]}).cluster
    assert c.replicas == 1 and c.self_addr == "127.0.0.1:9900" and c.membership == "members"
    assert c.secret() == b"s3cret"
    c = load({"secret_env": "CS", "replicas": 2, "dns": "svc.ns.svc:9900"}).cluster
    assert c.membership == "dns" and c.replicas == 2
    c = load(
        {"secret_env": "CS", "etcd": {"endpoints": ["http://127.0.0.1:2379"], "ttl": "5s"}}
    ).cluster
    assert c.membership == "etcd" and c.etcd.ttl == 5.0 and c.etcd.prefix == "/slipstream/"


@pytest.mark.parametrize(
    ("cluster", "field"),
    [
        ({"members": ["127.0.0.1:9900"]}, "cluster.secret_env"),
        ({"secret_env": "CS"}, "cluster.members"),
        ({"secret_env": "CS", "members": ["127.0.0.1:9900"], "dns": "a:1"}, "cluster.members"),
        ({"secret_env": "CS", "members": ["127.0.0.1:9900"], "replicas": 0}, "cluster.replicas"),
        ({"secret_env": "CS", "members": ["nope"]}, "cluster.members[0]"),
        ({"secret_env": "CS", "members": ["127.0.0.2:9900"]}, "cluster.self"),
        ({"secret_env": "CS", "dns": "no-port"}, "cluster.dns"),
        ({"secret_env": "CS", "etcd": {"endpoints": ["127.0.0.1:2379"]}}, "cluster.etcd.endpoints"),
        (
            {"secret_env": "CS", "etcd": {"endpoints": ["http://e:2379"], "x": 1}},
            "cluster.etcd: unknown field(s): x",
        ),
        ({"secret": "x", "members": ["127.0.0.1:9900"]}, "cluster.secret"),
        (
            {"secret_env": "CS", "members": ["127.0.0.1:9900"], "bogus": 1},
            "cluster: unknown field(s): bogus",
        ),
    ],
)
def test_bad_cluster_config_names_the_field(cluster: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"t\.yaml: {re.escape(field)}"):
        load(cluster)


def test_missing_secret_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CS", raising=False)
    c = load({"secret_env": "CS", "members": ["127.0.0.1:9900"]}, env={}).cluster
    with pytest.raises(ConfigError, match="cluster.secret_env"):
        c.secret()


# -- signatures -------------------------------------------------------------------------------

SECRET = b"k" * 32
PATH = peers.object_path("bkt", "a/b c.bin")


def test_a_signed_request_passes_once() -> None:
    v = peers.Verifier(SECRET)
    headers = peers.sign(SECRET, "GET", PATH)
    assert v.refusal("GET", PATH, headers) is None
    assert v.refusal("GET", PATH, headers) == "peer request replayed"
    assert v.refusal("GET", PATH, peers.sign(SECRET, "GET", PATH)) is None  # a fresh nonce


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda h: {}, "without a cluster signature"),
        (lambda h: {**h, peers.SIGNATURE_HEADER: "0" * 64}, "bad signature"),
        (lambda h: peers.sign(b"other", "GET", PATH), "bad signature"),
        (lambda h: peers.sign(SECRET, "GET", PATH, now=1000.0), "replay window"),
        (lambda h: peers.sign(SECRET, "GET", PATH + "x"), "bad signature"),
        (lambda h: peers.sign(SECRET, "HEAD", PATH), "bad signature"),
        (lambda h: {**h, peers.TIME_HEADER: "12ab"}, "malformed"),
    ],
)
def test_bad_signatures_are_refused(change: Any, why: str) -> None:
    headers = change(peers.sign(SECRET, "GET", PATH))
    refusal = peers.Verifier(SECRET).refusal("GET", PATH, headers)
    assert refusal is not None and why in refusal


def test_remembered_signatures_are_forgotten_after_the_window() -> None:
    v = peers.Verifier(SECRET)
    for i in range(50):
        assert (
            v.refusal("GET", PATH, peers.sign(SECRET, "GET", PATH, now=1000.0), now=1000.0 + i)
            is None
        )
    v.refusal("GET", PATH, peers.sign(SECRET, "GET", PATH, now=2000.0), now=2000.0)
    assert len(v._seen) == 1


# -- static membership ------------------------------------------------------------------------


async def test_a_member_leaves_after_two_failed_checks_and_rejoins_when_it_answers() -> None:
    up = {"a:1": True, "b:1": True, "c:1": True}

    async def check(member: str) -> bool:
        if not up[member]:
            raise ConnectionRefusedError()
        return True

    members = StaticMembers(up, "a:1", check, interval=0.02)
    await members.start()
    try:
        assert members.live() == ("a:1", "b:1", "c:1")
        up["b:1"] = up["a:1"] = False  # self stays live whatever its own check says

        async def until(want: tuple[str, ...]) -> None:
            for _ in range(500):
                if members.live() == want:
                    return
                await asyncio.sleep(0.01)
            assert members.live() == want

        await asyncio.wait_for(until(("a:1", "c:1")), 5)
        up["b:1"] = True
        await asyncio.wait_for(until(("a:1", "b:1", "c:1")), 5)
    finally:
        await members.close()


# -- the command line -------------------------------------------------------------------------


def test_check_config_accepts_dns_and_etcd(tmp_path: Path) -> None:
    """Both membership forms validate and print; their providers run in tests/test_cluster.py
    (dns) and tests/test_cluster_members.py (etcd)."""
    for form in ({"dns": "svc.ns:9900"}, {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}):
        kind = next(iter(form))
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump({"cluster": {"secret_env": "CS", **form}}))
        env = {**os.environ, "CS": "s3cret", "PYTHONPATH": str(REPO_ROOT)}
        check = subprocess.run(
            [sys.executable, "-m", "proxy", "check-config", "-c", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert check.returncode == 0 and f"{kind}:" in check.stdout, check.stderr


async def test_static_members_leave_after_two_failures_and_rejoin_after_two_answers() -> None:
    """Hysteresis: a member answering every other check under load neither leaves on one
    failure nor comes back on one lucky answer."""
    answers: list[bool] = []

    async def check(member: str) -> bool:
        return answers.pop(0)

    members = StaticMembers(["a:1", "b:1"], "a:1", check)
    seen = []
    for ok in (False, True, False, False, True, False, True, True):
        answers.append(ok)
        await members._round()  # one round of checks, as the background loop runs them
        seen.append("b:1" in members.live())
    assert seen == [True, True, True, False, False, False, False, True]
