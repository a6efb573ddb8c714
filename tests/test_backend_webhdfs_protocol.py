"""The WebHDFS protocol details behind the webhdfs backend: the fake's wire format against the
documented API, authentication (user.name, delegation tokens, no Kerberos), and listings in S3
order over HDFS's own order, compared with a model on random trees.

The server is tests/fake_webhdfs.py: a FAKE of the documented WebHDFS REST API
(https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html), not a
real HDFS; no HDFS server can be installed here.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import errors
from proxy.backends.webhdfs import WebHdfsBackend
from proxy.backends.webhdfs.order import signed_key
from proxy.config import BackendConfig, from_mapping
from proxy.errors import ConfigError
from tests.fake_webhdfs import FakeWebHdfs

BUCKET = "/data/logs"


@pytest.fixture
async def hdfs(tmp_path: Path) -> AsyncIterator[FakeWebHdfs]:
    fake = await FakeWebHdfs(tmp_path / "hdfs").start()
    fake.mkdir(BUCKET)
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def make_backend(url: str, tmp_path: Path, **fields: Any) -> WebHdfsBackend:
    b = WebHdfsBackend(BackendConfig(name="hd", type="webhdfs", url=url, retries=0, **fields))
    b.staging = tmp_path / "staging"
    await b.start()
    return b


# -- the fake's wire format -----------------------------------------------------------------


async def test_fake_open_redirects_namenode_to_datanode(
    hdfs: FakeWebHdfs, http: aiohttp.ClientSession
) -> None:
    hdfs.write(f"{BUCKET}/f.txt", b"0123456789")
    url = f"{hdfs.url}/webhdfs/v1{BUCKET}/f.txt?op=OPEN&offset=2&length=5&user.name=u"
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 307
        location = resp.headers["Location"]
    assert location.startswith(f"http://127.0.0.1:{hdfs.dn_port}/webhdfs/v1{BUCKET}/f.txt?")
    assert "op=OPEN" in location and "namenoderpcaddress=" in location
    async with http.get(location) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert await resp.read() == b"23456"
    async with http.get(url + "&noredirect=true") as resp:
        assert resp.status == 200
        assert (await resp.json())["Location"].startswith(f"http://127.0.0.1:{hdfs.dn_port}/")


async def test_fake_two_step_create(hdfs: FakeWebHdfs, http: aiohttp.ClientSession) -> None:
    url = f"{hdfs.url}/webhdfs/v1{BUCKET}/new.txt?op=CREATE&user.name=u"
    async with http.put(url, allow_redirects=False) as resp:
        assert resp.status == 307
        location = resp.headers["Location"]
    assert not hdfs.exists(f"{BUCKET}/new.txt")  # nothing is written before the data step
    async with http.put(location, data=b"hello") as resp:
        assert resp.status == 201
        assert resp.headers["Location"] == f"webhdfs://127.0.0.1:{hdfs.nn_port}{BUCKET}/new.txt"
    assert hdfs.read(f"{BUCKET}/new.txt") == b"hello"
    async with http.put(location, data=b"again") as resp:  # overwrite defaults to false
        assert resp.status == 403
        assert (await resp.json())["RemoteException"]["exception"] == "FileAlreadyExistsException"


async def test_fake_httpfs_create_redirects_to_itself(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    fake = await FakeWebHdfs(tmp_path / "httpfs", httpfs=True).start()
    try:
        url = f"{fake.url}/webhdfs/v1/x.txt?op=CREATE&user.name=u"
        async with http.put(url, allow_redirects=False) as resp:
            assert resp.status == 307
            location = resp.headers["Location"]
        assert location.startswith(f"{fake.url}/webhdfs/v1/x.txt?") and "data=true" in location
        async with http.put(location, data=b"x", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 400  # HttpFS wants application/octet-stream uploads
        headers = {"Content-Type": "application/octet-stream"}
        async with http.put(location, data=b"x", headers=headers) as resp:
            assert resp.status == 201
        async with http.get(f"{fake.url}/webhdfs/v1/x.txt?op=OPEN&user.name=u") as resp:
            assert resp.status == 200 and await resp.read() == b"x"  # no redirect
    finally:
        await fake.stop()


async def test_fake_errors_and_json_shapes(hdfs: FakeWebHdfs, http: aiohttp.ClientSession) -> None:
    base = f"{hdfs.url}/webhdfs/v1{BUCKET}"

    async def call(method: str, path: str, query: str) -> tuple[int, Any]:
        async with http.request(method, f"{base}{path}?{query}") as resp:
            return resp.status, await resp.json()

    status, doc = await call("GET", "/absent", "op=GETFILESTATUS&user.name=u")
    assert status == 404
    assert doc["RemoteException"]["exception"] == "FileNotFoundException"
    assert doc["RemoteException"]["javaClassName"] == "java.io.FileNotFoundException"
    assert doc["RemoteException"]["message"] == f"File does not exist: {BUCKET}/absent"
    status, doc = await call("GET", "", "op=GETFILESTATUS")
    assert (status, doc["RemoteException"]["exception"]) == (401, "SecurityException")
    status, doc = await call("GET", "", "op=NOSUCHOP&user.name=u")
    assert (status, doc["RemoteException"]["exception"]) == (400, "IllegalArgumentException")

    for name in ("b", "a", "é", "B", "a b"):
        hdfs.write(f"{BUCKET}/dir/{name}", name.encode())
    status, doc = await call("GET", "/dir", "op=LISTSTATUS_BATCH&user.name=u")
    listing = doc["DirectoryListing"]
    names = [s["pathSuffix"] for s in listing["partialListing"]["FileStatuses"]["FileStatus"]]
    assert names == ["é", "B", "a"]  # signed bytes: the 0xC3 of "é" is negative
    assert listing["remainingEntries"] == 2
    status, doc = await call("GET", "/dir", "op=LISTSTATUS_BATCH&startAfter=a&user.name=u")
    assert [
        s["pathSuffix"]
        for s in doc["DirectoryListing"]["partialListing"]["FileStatuses"]["FileStatus"]
    ] == ["a b", "b"]
    status, doc = await call("GET", "/dir/a", "op=LISTSTATUS&user.name=u")
    (only,) = doc["FileStatuses"]["FileStatus"]  # a file lists as itself
    assert (only["pathSuffix"], only["type"], only["length"]) == ("", "FILE", 1)

    status, doc = await call("DELETE", "/dir", "op=DELETE&user.name=u")
    assert (status, doc["RemoteException"]["exception"]) == (
        403,
        "PathIsNotEmptyDirectoryException",
    )
    status, doc = await call("PUT", "/dir/a", f"op=RENAME&destination={BUCKET}/dir/c&user.name=u")
    assert (status, doc) == (200, {"boolean": True})
    status, doc = await call("DELETE", "/dir", "op=DELETE&recursive=true&user.name=u")
    assert (status, doc) == (200, {"boolean": True})
    status, doc = await call("DELETE", "/dir", "op=DELETE&user.name=u")
    assert (status, doc) == (200, {"boolean": False})


# -- authentication -------------------------------------------------------------------------


async def test_simple_auth_sends_user_name(hdfs: FakeWebHdfs, tmp_path: Path) -> None:
    hdfs.write(f"{BUCKET}/k", b"v")
    b = await make_backend(hdfs.url, tmp_path, user="alice")
    try:
        assert (await b.head(BUCKET, "k")).size == 1
    finally:
        await b.close()
    assert {e.query.get("user.name") for e in hdfs.log} == {"alice"}
    anonymous = await make_backend(hdfs.url, tmp_path)
    try:
        with pytest.raises(errors.AccessDenied):  # 401 SecurityException
            await anonymous.head(BUCKET, "k")
    finally:
        await anonymous.close()


async def test_delegation_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await FakeWebHdfs(tmp_path / "secure", tokens={"tok-123": "alice"}).start()
    fake.write(f"{BUCKET}/k", b"value")
    monkeypatch.setenv("HD_TOKEN", "tok-123")
    monkeypatch.setenv("HD_BAD_TOKEN", "tok-999")
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    try:
        for fields in ({"delegation_token_env": "HD_TOKEN"}, {"delegation_token_file": token_file}):
            b = await make_backend(fake.url, tmp_path, user="ignored", **fields)
            try:
                got = await b.get(BUCKET, "k", None, None)
                assert b"".join([p async for p in got.body]) == b"value"
                await got.aclose()
            finally:
                await b.close()
        assert {e.query.get("delegation") for e in fake.log} == {"tok-123"}
        assert all("user.name" not in e.query for e in fake.log)
        for fields in ({"delegation_token_env": "HD_BAD_TOKEN"}, {"user": "alice"}):
            b = await make_backend(fake.url, tmp_path, **fields)
            try:
                with pytest.raises(errors.AccessDenied):  # 403 InvalidToken, 401 without one
                    await b.head(BUCKET, "k")
            finally:
                await b.close()
    finally:
        await fake.stop()


def test_kerberos_is_refused_naming_the_field() -> None:
    raw = {
        "backends": {"hd": {"type": "webhdfs", "url": "http://nn:9870", "kerberos": True}},
        "buckets": {"logs": {"backend": "hd", "bucket": "/data/logs"}},
    }
    with pytest.raises(ConfigError, match=r"backends\.hd\.kerberos"):
        from_mapping(raw, "test.yaml", {})
    cfg = BackendConfig(name="hd", type="webhdfs", url="http://nn:9870", kerberos=True)
    with pytest.raises(ConfigError, match=r"backends\.hd\.kerberos"):
        WebHdfsBackend(cfg)


# -- listings against a model ---------------------------------------------------------------

ALPHABET = ["a", "b", "a-", "a.", "b ", "é", "ü", "中", "+", "z", "A", "~", "0", "\U0001f642"]


def random_tree(rng: random.Random, size: int) -> list[str]:
    keys: set[str] = set()
    while len(keys) < size:
        depth = rng.choice([1, 1, 2, 2, 3])
        parts = [
            "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 2))) for _ in range(depth)
        ]
        key = "/".join(parts)
        if any(k.startswith(key + "/") or key.startswith(k + "/") or k == key for k in keys):
            continue  # a name is a file or a directory, not both
        keys.add(key)
    return sorted(keys)


def model(keys: list[str], prefix: str, delimiter: str, after: str) -> list[str]:
    """ListObjectsV2 as S3 defines it: keys and common prefixes in key order."""
    out: list[str] = []
    for key in sorted(keys):
        if not key.startswith(prefix) or key <= after:
            continue
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if common > after and (not out or out[-1] != common):
                    out.append(common)
                continue
        out.append(key)
    return out


async def list_all(
    b: WebHdfsBackend, prefix: str, delimiter: str, max_keys: int, after: str
) -> list[str]:
    items: list[str] = []
    token: str | None = None
    while True:
        page = await b.list_page(BUCKET, prefix, delimiter, max_keys, token, after or None)
        got = sorted([e.key for e in page.entries] + page.prefixes)
        assert len(got) <= max_keys
        if page.truncated:
            assert len(got) == max_keys and page.next_token
            assert len(page.next_token) < 2000  # a few names, whatever the directory's size
        items += got
        if not page.truncated:
            return items
        token = page.next_token


@pytest.mark.parametrize(("seed", "page_size"), [(1, 3), (2, 1), (3, 7)])
async def test_listing_matches_s3_model(
    hdfs: FakeWebHdfs, tmp_path: Path, seed: int, page_size: int
) -> None:
    hdfs.page_size = page_size
    rng = random.Random(seed)
    keys = random_tree(rng, 45)
    for key in keys:
        hdfs.write(f"{BUCKET}/{key}", b"")
    hdfs.mkdir(f"{BUCKET}/empty")  # an empty directory holds no keys
    b = await make_backend(hdfs.url, tmp_path, user="alice")
    try:
        prefixes = ["", "a", "a/", rng.choice(keys)[:2], rng.choice(keys)[:3], "中", "nothing"]
        for prefix in prefixes:
            for delimiter in ("", "/", "."):
                for max_keys in (1, 3, 1000):
                    want = model(keys, prefix, delimiter, "")
                    got = await list_all(b, prefix, delimiter, max_keys, "")
                    assert got == want, (prefix, delimiter, max_keys)
        for after in (rng.choice(keys), rng.choice(keys)[:2], "a/", "é"):
            for delimiter in ("", "/"):
                want = model(keys, "", delimiter, after)
                assert await list_all(b, "", delimiter, 4, after) == want, (after, delimiter)
    finally:
        await b.close()


async def test_pages_resume_without_rereading_the_directory(
    hdfs: FakeWebHdfs, tmp_path: Path
) -> None:
    # HDFS lists "é1", "é2", "ü" first and "f1é" before "f10", S3 the other way round
    names = [f"f{i:03d}" for i in range(60)] + ["é1", "é2", "ü", "f1é", "f02é"]
    for name in names:
        hdfs.write(f"{BUCKET}/big/{name}", b"x")
    b = await make_backend(hdfs.url, tmp_path, user="alice")
    try:
        hdfs.clear()
        got = await list_all(b, "big/", "", 5, "")
        assert got == sorted(f"big/{n}" for n in names)
        full_scan = -(-len(names) // hdfs.page_size)
        pages = -(-len(names) // 5)
        # each page resumes at its own cursor: about one extra batch per page, not a rescan
        assert hdfs.count("LISTSTATUS_BATCH") <= full_scan + 2 * pages
        assert sorted(names, key=signed_key)[:3] == ["é1", "é2", "ü"]

        with pytest.raises(errors.InvalidArgument):
            await b.list_page(BUCKET, "", "", 5, "not-a-token", None)
        with pytest.raises(errors.NoSuchBucket):
            await b.list_page("/data/absent", "", "", 5, None, None)
        assert (await b.list_page(BUCKET, "absent/dir/", "/", 5, None, None)).entries == []
    finally:
        await b.close()
