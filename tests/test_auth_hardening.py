"""Least privilege (issue 8, finding 5) and metric labels from fixed sets (finding 2).

Anonymous access is a per-bucket grant; every x-amz-* header a client sends must be signed;
ListBuckets lists what the caller may read; a copy checks the source bucket before resolving
it; presigned URLs (SigV2 too) live at most 7 days and a tampered one is SignatureDoesNotMatch;
the admin listener guards what changes state with a token. Requests are checked in-process
with the Authenticator and end to end against a proxy subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from proxy.admin import AdminAuth, build_admin_app, state_changing
from proxy.config import from_mapping
from proxy.config_access import AuthConfig
from proxy.errors import ConfigError
from proxy.s3.auth import ANONYMOUS, Authenticator
from tests.conformance import metric, raw_request, scrape
from tests.proxyproc import REPO_ROOT, ProxyProcess
from tests.sigv4kit import Wire, capture, mocked, send, shifted_clock
from tests.test_auth import (
    ACCESS_KEY,
    HOST,
    SECRET,
    client,
    code_of,
    load_cfg,
    presigned,
    proxy_client,
    s3_code,
    set_secrets,
    user,
    users,
    v2_presigned,
)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    return set_secrets(monkeypatch)


@pytest.fixture
def auth(secret_env: str) -> Authenticator:
    return Authenticator(AuthConfig(users=users(secret_env)))


def store_with(tmp_path: Path, *buckets: str) -> Path:
    root = tmp_path / "store"
    for bucket in buckets:
        (root / bucket).mkdir(parents=True)
        (root / bucket / "hello.txt").write_bytes(f"hello from {bucket}".encode())
    return root


TRAINER = {"access_key": ACCESS_KEY, "secret_key_env": "E2E_TRAINER_SECRET"}


def proxy_config(root: Path, **auth: Any) -> dict[str, Any]:
    """An fs store behind "*"; the trainer reads and writes data, reads imagenet."""
    trainer = {**TRAINER, "allow": {"data": "read-write", "imagenet": "read"}}
    return {
        "backends": {"local": {"type": "fs", "root": str(root)}},
        "buckets": {"*": {"backend": "local"}},
        "cache": {"dir": "cache", "max_size": "64MiB"},
        "auth": {"users": [trainer], **auth},
    }


def start(proxy_factory: Any, tmp_path: Path, **auth: Any) -> ProxyProcess:
    root = store_with(tmp_path, "data", "imagenet", "private", "public", "scratch")
    proxy: ProxyProcess = proxy_factory(
        proxy_config(root, **auth), env={"E2E_TRAINER_SECRET": SECRET}
    )
    return proxy


# -- anonymous access is a per-bucket grant --------------------------------------------------------


def test_anonymous_true_with_users_reads_only(secret_env: str) -> None:
    mixed = Authenticator(AuthConfig(anonymous=True, users=users(secret_env)))
    for method in ("GET", "DELETE", "PUT"):
        result = mixed.authenticate(mocked(Wire(method, "/data", {"Host": HOST})))
        assert result.principal is not None and result.principal.access_key == "anonymous"
        result.require("data", write=False)
        assert code_of(lambda r=result: r.require("data", write=True)) == "AccessDenied"


def test_anonymous_grants_end_to_end(proxy_factory: Any, tmp_path: Path) -> None:
    proxy = start(proxy_factory, tmp_path, anonymous={"public": "read", "scratch": "read-write"})
    ok = raw_request(proxy.url, "GET", "/public/hello.txt")
    assert (ok.status, ok.body) == (200, b"hello from public")
    for method, path in (
        ("GET", "/private/hello.txt"),
        ("GET", "/data/hello.txt"),
        ("DELETE", "/public/hello.txt"),
        ("DELETE", "/public"),
        ("PUT", "/public/new.txt"),
    ):
        answer = raw_request(proxy.url, method, path, {"Content-Length": "0"})
        assert (answer.status, answer.error_code()) == (403, "AccessDenied"), (method, path)
    put = raw_request(proxy.url, "PUT", "/scratch/new.txt", {"Content-Length": "0"})
    assert put.status == 200
    assert (tmp_path / "store" / "public" / "hello.txt").exists()
    # the signed user keeps what users grant
    c = proxy_client(proxy)
    assert c.get_object(Bucket="data", Key="hello.txt")["Body"].read() == b"hello from data"


def test_anonymous_true_end_to_end_cannot_delete(proxy_factory: Any, tmp_path: Path) -> None:
    proxy = start(proxy_factory, tmp_path, anonymous=True)
    assert raw_request(proxy.url, "GET", "/private/hello.txt").status == 200
    for method, path in (("DELETE", "/private/hello.txt"), ("DELETE", "/scratch")):
        answer = raw_request(proxy.url, method, path)
        assert (answer.status, answer.error_code()) == (403, "AccessDenied")
    assert (tmp_path / "store" / "scratch").is_dir()


def test_loopback_default_still_reads_and_writes() -> None:
    open_ = Authenticator(AuthConfig())
    result = open_.authenticate(mocked(Wire("DELETE", "/any/k", {"Host": HOST})))
    assert result.principal is ANONYMOUS
    result.require("any", write=True)


@pytest.mark.parametrize(
    ("anonymous", "field"),
    [
        ({"Bad_Bucket!": "read"}, "auth.anonymous.Bad_Bucket!"),
        ({"public": "write"}, "auth.anonymous.public"),
        (["public"], "auth.anonymous"),
        ("maybe", "auth.anonymous"),
    ],
)
def test_anonymous_config_errors_name_the_field(anonymous: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cfg({"anonymous": anonymous, "users": [user()]})
    assert f"test.yaml: {field}" in str(info.value)


def test_anonymous_config_forms() -> None:
    grants = load_cfg({"anonymous": {"public": "read", "*": "read"}}).auth
    assert dict(grants.anonymous_grants() or {}) == {"public": "read", "*": "read"}
    assert load_cfg({"anonymous": True}).auth.anonymous_grants() == {"*": "read"}
    assert load_cfg(None).auth.anonymous_grants() == {"*": "read-write"}
    assert load_cfg({"users": [user()]}).auth.anonymous_grants() is None
    cfg = load_cfg({"anonymous": {"public": "read"}}, listen="0.0.0.0:9900")
    assert cfg.auth.anonymous_grants() == {"public": "read"}


# -- every x-amz-* header a client sends is signed ------------------------------------------------


def test_unsigned_amz_headers_are_refused(auth: Authenticator) -> None:
    signed = capture(client(), "get_object", Bucket="data", Key="k")
    assert auth.authenticate(mocked(signed)).principal is not None
    put_url = presigned(client(), "PUT", "k")
    assert auth.authenticate(mocked(put_url)).principal is not None
    for wire in (signed, put_url):
        for extra in ({"x-amz-copy-source": "private/secret"}, {"X-Amz-Meta-Evil": "1"}):
            bad = Wire(wire.method, wire.target, {**wire.headers, **extra})
            with pytest.raises(Exception) as info:
                auth.authenticate(mocked(bad))
            exc: Any = info.value
            assert (exc.code, exc.status) == ("AccessDenied", 403)
            assert "not signed" in exc.message
            assert exc.fields["HeadersNotSigned"] == next(iter(extra)).lower()
    # what S3 lets a presigned URL's user send unsigned
    for name, value in (
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ("x-amz-date", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())),
        ("x-amz-security-token", "tok"),
    ):
        ok = Wire("PUT", put_url.target, {**put_url.headers, name: value})
        assert auth.authenticate(mocked(ok)).principal is not None, name


def test_presigned_put_cannot_become_a_copy(proxy_factory: Any, tmp_path: Path) -> None:
    proxy = start(proxy_factory, tmp_path)
    c = proxy_client(proxy)
    url = c.generate_presigned_url(
        "put_object", Params={"Bucket": "data", "Key": "copied.txt"}, ExpiresIn=300
    )
    req = urllib.request.Request(url, data=b"", method="PUT")
    req.add_header("x-amz-copy-source", "imagenet/hello.txt")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 403
    body = info.value.read()
    assert b"<Code>AccessDenied</Code>" in body and b"x-amz-copy-source" in body
    assert s3_code(lambda: c.head_object(Bucket="data", Key="copied.txt"))[0] == 404


# -- ListBuckets and copies --------------------------------------------------------------------


def test_list_buckets_lists_what_the_caller_may_read(proxy_factory: Any, tmp_path: Path) -> None:
    proxy = start(proxy_factory, tmp_path, anonymous={"public": "read"})
    names = [b["Name"] for b in proxy_client(proxy).list_buckets()["Buckets"]]
    assert names == ["data", "imagenet"]
    anonymous = raw_request(proxy.url, "GET", "/")
    assert anonymous.status == 200
    assert b"<Name>public</Name>" in anonymous.body and b"<Name>data</Name>" not in anonymous.body


def test_copy_checks_the_source_before_resolving_it(proxy_factory: Any, tmp_path: Path) -> None:
    proxy = start(proxy_factory, tmp_path)
    c = proxy_client(proxy)
    for source in ("private", "nonexistent-bucket", "Not_A_Bucket"):
        got = s3_code(
            lambda s=source: c.copy_object(
                Bucket="data", Key="copy.txt", CopySource={"Bucket": s, "Key": "hello.txt"}
            )
        )
        assert got == (403, "AccessDenied"), source
    upload = c.create_multipart_upload(Bucket="data", Key="mp.bin")["UploadId"]
    got = s3_code(
        lambda: c.upload_part_copy(
            Bucket="data",
            Key="mp.bin",
            UploadId=upload,
            PartNumber=1,
            CopySource={"Bucket": "Not_A_Bucket", "Key": "hello.txt"},
        )
    )
    assert got == (403, "AccessDenied")
    c.abort_multipart_upload(Bucket="data", Key="mp.bin", UploadId=upload)


# -- presigned URLs: lifetime and tampering --------------------------------------------------


def test_sigv2_presigned_lives_at_most_seven_days(auth: Authenticator) -> None:
    assert auth.authenticate(mocked(v2_presigned("GET", "k", expires=7 * 86400 - 60))).principal
    too_long = v2_presigned("GET", "k", expires=8 * 86400)
    with pytest.raises(Exception) as info:
        auth.authenticate(mocked(too_long))
    assert getattr(info.value, "code", None) == "AccessDenied"


def test_tampered_presigned_signature_is_signature_does_not_match(auth: Authenticator) -> None:
    wire = presigned(client(), "GET", "k")
    sig = wire.target.split("X-Amz-Signature=")[1].split("&")[0]
    for target in (
        wire.target.replace(f"X-Amz-Signature={sig}", f"X-Amz-Signature=0{sig}"),
        wire.target.replace(f"X-Amz-Signature={sig}", "X-Amz-Signature=0&X-Amz-Signature=" + sig),
        wire.target + "&X-Amz-Signature=0",
        wire.target.replace(f"X-Amz-Signature={sig}", "X-Amz-Signature=zz"),
    ):
        with pytest.raises(Exception) as info:
            auth.authenticate(mocked(Wire("GET", target, wire.headers)))
        exc: Any = info.value
        assert (exc.code, exc.status) == ("SignatureDoesNotMatch", 403), target


def test_tampered_and_expired_presigned_end_to_end(proxy_factory: Any, tmp_path: Path) -> None:
    proxy = start(proxy_factory, tmp_path)
    c = proxy_client(proxy)
    url = c.generate_presigned_url(
        "get_object", Params={"Bucket": "data", "Key": "hello.txt"}, ExpiresIn=300
    )
    target = url[len(proxy.url) :]
    tampered = target.replace("X-Amz-Signature=", "X-Amz-Signature=0&X-Amz-Signature=")
    answer = raw_request(proxy.url, "GET", tampered)
    assert (answer.status, answer.error_code()) == (403, "SignatureDoesNotMatch")
    with shifted_clock(-3600):
        expired = c.generate_presigned_url(
            "put_object", Params={"Bucket": "data", "Key": "late.txt"}, ExpiresIn=600
        )
    host = expired.split("/")[2]
    wire = Wire("PUT", expired[len(proxy.url) :], {"Host": host}, b"too late")
    answer = send(proxy.url, wire)
    assert (answer.status, answer.error_code()) == (403, "AccessDenied")


# -- the admin listener ---------------------------------------------------------------------------


def test_public_admin_listener_needs_a_token(tmp_path: Path) -> None:
    proxy = ProxyProcess(
        {
            "admin_listen": "0.0.0.0:0",
            "backends": {"local": {"type": "fs", "root": "./data"}},
            "buckets": {"*": {"backend": "local"}},
        },
        tmp_path / "proxy",
    )
    proxy.launch()  # `serve` refuses to start, naming the field
    assert proxy.wait_exit(60) == 2
    assert "admin.token_env" in proxy.log()
    raw = {
        "admin_listen": "0.0.0.0:9901",
        "backends": {"l": {"type": "fs", "root": "."}},
        "buckets": {"*": {"backend": "l"}},
        "admin": {"token_env": "ADMIN_TOKEN"},
    }
    assert from_mapping(raw, "t", environ={}).admin.token_env == "ADMIN_TOKEN"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    raw["admin"] = {"token_file": str(token_file)}
    assert from_mapping(raw, "t", environ={}).admin.token() == "from-file"
    for bad, field in (
        ({"token_env": "A", "token_file": "/f"}, "admin.token_env"),
        ({"colour": 1}, "admin"),
    ):
        raw["admin"] = bad
        with pytest.raises(ConfigError, match=field):
            from_mapping(raw, "t", environ={})


async def test_state_changing_admin_routes_need_the_token() -> None:
    calls: list[str] = []

    @state_changing
    async def drop(_: web.Request) -> web.Response:
        calls.append("drop")
        return web.json_response({"dropped": True})

    async def serve(guard: AdminAuth, check: Any) -> None:
        app = build_admin_app_for_test(guard)
        app.router.add_post("/admin/v1/drop", drop)
        server = TestServer(app)
        await server.start_server()
        try:
            async with ClientSession() as session:
                await check(session, str(server.make_url("")))
        finally:
            await server.close()

    async def guarded(session: ClientSession, base: str) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cr3t"}):
            async with session.post(f"{base}/admin/v1/drop", headers=headers) as resp:
                assert resp.status in (401, 403), headers
        async with session.post(
            f"{base}/admin/v1/drop", headers={"Authorization": "Bearer s3cr3t"}
        ) as resp:
            assert resp.status == 200
        async with session.get(f"{base}/metrics") as resp:  # reads stay open
            assert resp.status == 200
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200

    await serve(AdminAuth("s3cr3t"), guarded)
    assert calls == ["drop"]

    async def loopback(session: ClientSession, base: str) -> None:
        async with session.post(f"{base}/admin/v1/drop") as resp:
            assert resp.status == 200

    await serve(AdminAuth(None), loopback)  # loopback without a token: allowed
    assert calls == ["drop", "drop"]


def build_admin_app_for_test(guard: AdminAuth) -> web.Application:
    from prometheus_client import CollectorRegistry

    from proxy.admin import Health

    return build_admin_app(Health(started=True), CollectorRegistry(), lambda: {}, guard)


# -- metric labels come from fixed sets ------------------------------------------------------------


def test_metric_labels_come_from_fixed_sets(proxy_factory: Any, tmp_path: Path) -> None:
    root = store_with(tmp_path, "data")
    proxy: ProxyProcess = proxy_factory(
        {
            "cache": {"dir": "cache", "max_size": "64MiB"},
            "backends": {"local": {"type": "fs", "root": str(root)}},
            "buckets": {"*": {"backend": "local"}},
        }
    )
    for n in range(1, 4):
        raw_request(proxy.url, "DELETE", f"/data/hello.txt?zz{n}")
        raw_request(proxy.url, "GET", f"/data?zz{n}-subresource")
        raw_request(proxy.url, "PATCH", f"/data/k?op{n}")
        raw_request(proxy.url, "BREW", f"/data?x{n}")
    assert raw_request(proxy.url, "GET", "/data/hello.txt").status == 200
    ops = {lab for name, lab, _ in scrape(proxy.admin_url) if name == "slipstream_requests_total"}
    assert not any("zz" in lab.lower() or "op1" in lab.lower() for lab in ops), ops
    assert metric(proxy.admin_url, "slipstream_requests_total", operation="GetObject") == 1
    assert metric(proxy.admin_url, "slipstream_requests_total", operation="Unknown") == 3
    from proxy.metrics import OPERATIONS, STATUSES

    for name, lab, _ in scrape(proxy.admin_url):
        if name.startswith("slipstream_request"):
            fields = dict(part.split("=", 1) for part in lab.strip("{}").split(",") if part)
            if "operation" in fields:
                assert fields["operation"].strip('"') in OPERATIONS, lab
            if "status" in fields:
                assert fields["status"].strip('"') in STATUSES, lab


def test_every_operation_name_in_the_code_is_a_label() -> None:
    """A handler that names an operation not in metrics.OPERATIONS would be counted as
    Unknown: keep the set and the handlers together."""
    import re

    from proxy.metrics import OPERATIONS

    names: set[str] = set()
    for path in (REPO_ROOT / "proxy").rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r'request\["op"\] = "([A-Za-z]+)"', text))
        names.update(re.findall(r'^\s+"[a-zA-Z-]+": "(Get[A-Za-z]+|List[A-Za-z]+)",$', text, re.M))
    assert len(names) > 20
    assert names <= OPERATIONS, names - OPERATIONS


def dockerfile_env_and_entrypoint() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's ENV (one ENV instruction with continuation lines) and ENTRYPOINT."""
    import json
    import shlex

    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))  # type: ignore[misc]
        if line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT ") :])
    return env, entrypoint


def test_dockerfile_default_starts_with_a_generated_admin_token(tmp_path: Path) -> None:
    env, entrypoint = dockerfile_env_and_entrypoint()
    assert env["SLIPSTREAM_ADMIN_LISTEN"].startswith("0.0.0.0:")
    token_file = tmp_path / "admin-token"
    env["SLIPSTREAM_ADMIN__TOKEN_FILE"] = str(token_file)
    env["SLIPSTREAM_CACHE__DIR"] = str(tmp_path / "cache")
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "slipstream").exists()
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HOME": str(tmp_path)}

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*entrypoint, "check-config"],
            env={**base, **env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    first = run({})
    assert first.returncode == 0, first.stderr
    token = token_file.read_text().strip()
    assert len(token) >= 32 and token_file.stat().st_mode & 0o077 == 0
    assert token not in first.stdout + first.stderr
    assert run({}).returncode == 0 and token_file.read_text().strip() == token  # kept
    by_env = run({"SLIPSTREAM_ADMIN__TOKEN_FILE": "", "SLIPSTREAM_ADMIN__TOKEN_ENV": "ADM"})
    assert by_env.returncode == 2 and "admin.token_env" in by_env.stderr  # ADM is not set
    assert (
        run(
            {"SLIPSTREAM_ADMIN__TOKEN_FILE": "", "SLIPSTREAM_ADMIN__TOKEN_ENV": "ADM", "ADM": "t"}
        ).returncode
        == 0
    )
    none = run({"SLIPSTREAM_ADMIN__TOKEN_FILE": ""})
    assert none.returncode == 2 and "admin.token_env" in none.stderr
