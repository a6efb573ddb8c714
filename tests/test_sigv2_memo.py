"""SigV2 presigned URLs (boto3's default for ``generate_presigned_url``) that verified once are
answered from a per-worker memo: each use of such a URL, and each change a client or an
attacker could make to it, gets from an Authenticator whose memo knows the URL the answer
(error class, message, fields) of a fresh one that verifies it the full way."""

from __future__ import annotations

import time
from typing import Any

import pytest

from proxy.config_access import AuthConfig
from proxy.s3.auth import Authenticator
from tests.sigv4kit import Wire, mocked
from tests.test_auth import HOST, KEYS, URL, client, clocked_auth, set_secrets, users
from tests.test_sigv4_fast import _flip, outcome

EXPIRES = 3600


def presigned_v2(key: str, method: str = "GET", **params: str) -> Wire:
    c = client(signature_version="s3")  # SigV2: ?AWSAccessKeyId=...&Signature=...&Expires=...
    op = {"GET": "get_object", "HEAD": "head_object"}[method]
    url = c.generate_presigned_url(
        op, Params={"Bucket": "data", "Key": key, **params}, ExpiresIn=EXPIRES
    )
    assert "AWSAccessKeyId=" in url and "X-Amz-" not in url, url
    return Wire(method, url[len(URL) :], {"Host": HOST})


def variants(wire: Wire) -> list[Wire]:
    path, _, query = wire.target.partition("?")
    at = wire.target.index("Signature=") + len("Signature=")
    expires = next(p for p in query.split("&") if p.startswith("Expires="))
    return [
        wire,
        Wire("HEAD" if wire.method == "GET" else "GET", wire.target, wire.headers),
        Wire(wire.method, _flip(path, len(path) - 1) + wire.target[len(path) :], wire.headers),
        Wire(wire.method, _flip(wire.target, at), wire.headers),
        Wire(wire.method, wire.target.replace(expires, expires + "0"), wire.headers),
        Wire(wire.method, wire.target + "&extra=1", wire.headers),
        wire.with_headers(Host="elsewhere:9900"),  # SigV2 signs no Host (path style)
        wire.with_headers(x_amz_meta_extra="1"),  # signed by SigV2: this one by nobody
        wire.with_headers(Content_Type="text/plain"),
        wire.with_headers(Content_MD5="1B2M2Y8AsgTpgAmY7PhCfg=="),
        wire.with_headers(Accept="*/*"),
        wire.with_headers(Content_Length="0"),
    ]


def test_known_sigv2_urls_answer_as_the_full_way(monkeypatch: pytest.MonkeyPatch) -> None:
    set_secrets(monkeypatch)
    clock = [time.time()]
    memo = clocked_auth(clock)

    def full_way(wire: Wire) -> tuple[Any, ...]:
        fresh = clocked_auth(clock)
        return outcome(lambda: fresh.authenticate(mocked(wire)))

    wires = [presigned_v2(key) for key in KEYS]
    wires.append(presigned_v2(KEYS[1], ResponseContentType="text/plain; x=y"))
    wires.append(presigned_v2(KEYS[2], "HEAD"))
    for wire in wires:
        assert outcome(lambda w=wire: memo.authenticate(mocked(w)))[0] == "ok", wire.target
    assert len(memo._verified_v2) == len(wires)
    refusals = set()
    for later in (0, EXPIRES - 1, 2, 8 * 24 * 3600):  # inside the window, its edge, past it
        clock[0] += later
        for wire in wires:
            got = [outcome(lambda w=w: memo.authenticate(mocked(w))) for w in variants(wire)]
            assert got == [full_way(w) for w in variants(wire)], (later, wire.target)
            refusals.update(g[0] for g in got)
    assert "ok" in refusals and len(refusals) >= 3, refusals


def test_a_memo_hit_costs_no_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo answers: with verification broken after the first use, the URL still reads,
    and a URL never verified is refused."""
    set_secrets(monkeypatch)
    memo = Authenticator(AuthConfig(users=users("TEST_AUTH_SECRET")))
    wire = presigned_v2(KEYS[0])
    assert outcome(lambda: memo.authenticate(mocked(wire)))[0] == "ok"

    def broken(*args: Any) -> None:
        raise AssertionError("verified again")

    monkeypatch.setattr("proxy.s3.sigv2.verify", broken)
    assert outcome(lambda: memo.authenticate(mocked(wire)))[0] == "ok"
    with pytest.raises(AssertionError, match="verified again"):
        memo.authenticate(mocked(presigned_v2(KEYS[3])))
