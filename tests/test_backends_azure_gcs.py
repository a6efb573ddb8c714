"""Azure Blob (on Azurite) and GCS (on fake-gcs-server) backends, read and written through the
proxy with boto3, plus their write half called directly on the backend classes.

One proxy serves three stores at once (azure, gcs, fs) whose remote buckets share one name and
hold the same keys with different bytes: each mount must serve its own store's bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ContentSettings,
    ResourceTypes,
    generate_account_sas,
)
from boto3.s3.transfer import TransferConfig

from proxy import backends, errors
from proxy.backends.kit.multipart import MIN_PART_SIZE
from proxy.config import BackendConfig
from tests.emulators import AzureEndpoint, GcsEndpoint
from tests.proxyproc import ProxyProcess
from tests.servers import make_s3_client

STORES = ("az", "gcs", "fs")
CHUNK = 64 * 1024
BIG = 200_000  # four cache chunks
TREE = [
    "tree/a/1.txt",
    "tree/a/2.txt",
    "tree/a/b/3.txt",
    "tree/b/4.txt",
    "tree/c d/5 + 6.txt",
    "tree/top.txt",
    "tree/ü/7 日本.txt",
    *[f"tree/many/{i:03d}.bin" for i in range(12)],
]


def body_of(size: int, seed: str) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- seeding each store directly (never through the code under test) -------------------------
def seed_azure(
    ep: AzureEndpoint,
    container: str,
    objects: dict[str, bytes],
    content_type: dict[str, str],
    metadata: dict[str, dict[str, str]],
) -> None:
    service = BlobServiceClient.from_connection_string(ep.connection_string)
    with service:
        service.create_container(container)
        for key, data in objects.items():
            service.get_blob_client(container, key).upload_blob(
                data,
                overwrite=True,
                content_settings=ContentSettings(
                    content_type=content_type.get(key, "application/octet-stream")
                ),
                metadata=metadata.get(key),
            )


def _gcs(ep: GcsEndpoint, method: str, path: str, body: bytes, ctype: str) -> dict[str, Any]:
    req = urllib.request.Request(
        ep.url + path, data=body, method=method, headers={"Content-Type": ctype}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        doc: dict[str, Any] = json.loads(resp.read() or b"{}")
        return doc


def seed_gcs(
    ep: GcsEndpoint,
    bucket: str,
    objects: dict[str, bytes],
    content_type: dict[str, str],
    metadata: dict[str, dict[str, str]],
) -> None:
    _gcs(
        ep,
        "POST",
        "/storage/v1/b?project=test",
        json.dumps({"name": bucket}).encode(),
        "application/json",
    )
    for key, data in objects.items():
        resource = {
            "name": key,
            "contentType": content_type.get(key, "application/octet-stream"),
            "metadata": metadata.get(key, {}),
        }
        boundary = "seedboundary" + uuid.uuid4().hex
        body = (
            (
                f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{json.dumps(resource)}\r\n"
                f"--{boundary}\r\nContent-Type: {resource['contentType']}\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        path = f"/upload/storage/v1/b/{bucket}/o?uploadType=multipart"
        _gcs(ep, "POST", path, body, f"multipart/related; boundary={boundary}")


def seed_fs(root: Path, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        path = root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# -- one proxy over three stores -------------------------------------------------------------
@dataclass
class World:
    proxy: ProxyProcess
    client: Any
    remote: str  # the remote bucket name, the same in every store
    objects: dict[str, dict[str, bytes]]  # store -> key -> bytes

    def backend_requests(self, store: str) -> float:
        return metric(self.proxy.admin_url, "slipstream_backend_requests_total", backend=store)

    def settle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while metric(self.proxy.admin_url, "slipstream_inflight_fills") > 0:
            assert time.monotonic() < deadline, "fills still in flight"
            time.sleep(0.01)


def metric(admin_url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def store_objects(store: str) -> dict[str, bytes]:
    objects = {
        "same/key.bin": body_of(BIG, f"{store}-big"),
        "small.txt": f"hello from {store}\n".encode(),
        "meta/doc.json": json.dumps({"store": store}).encode(),
    }
    objects.update({key: body_of(100 + i, f"{store}-{key}") for i, key in enumerate(TREE)})
    return objects


@pytest.fixture(scope="module")
def world(
    azurite: AzureEndpoint, fake_gcs: GcsEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("azure-gcs")
    remote = f"data-{uuid.uuid4().hex[:8]}"  # the same remote bucket name in all three stores
    objects = {store: store_objects(store) for store in STORES}
    ctype = {"meta/doc.json": "application/json", "small.txt": "text/plain"}
    seed_azure(
        azurite, remote, objects["az"], ctype, {"meta/doc.json": {"color": "blue", "my_key": "x"}}
    )
    seed_gcs(
        fake_gcs, remote, objects["gcs"], ctype, {"meta/doc.json": {"color": "blue", "my-key": "x"}}
    )
    seed_fs(tmp / "fsroot", remote, objects["fs"])
    config = {
        "workers": 1,
        "cache": {"dir": str(tmp / "cache"), "chunk_size": CHUNK, "inline_max": 4096},
        "backends": {
            "az": {
                "type": "azure",
                "account_url": azurite.url,
                "account_name": azurite.account_name,
                "account_key_env": "TEST_AZURITE_KEY",
            },
            "gcs": {"type": "gcs", "endpoint": fake_gcs.url, "project": "test"},
            "fs": {"type": "fs", "root": str(tmp / "fsroot")},
        },
        "buckets": {
            **{f"{store}-data": {"backend": store, "bucket": remote} for store in STORES},
            "az-missing": {"backend": "az", "bucket": f"missing-{remote}"},
            "gcs-missing": {"backend": "gcs", "bucket": f"missing-{remote}"},
        },
    }
    proxy = ProxyProcess(config, tmp / "proxy", {"TEST_AZURITE_KEY": azurite.account_key})
    proxy.start()
    try:
        yield World(proxy, make_s3_client(proxy.url), remote, objects)
    finally:
        proxy.stop()


def _error(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str]:
    resp = exc.value.response
    return int(resp["ResponseMetadata"]["HTTPStatusCode"]), str(resp["Error"]["Code"])


def test_list_buckets_shows_every_mount(world: World) -> None:
    names = {b["Name"] for b in world.client.list_buckets()["Buckets"]}
    assert {"az-data", "gcs-data", "fs-data"} <= names


@pytest.mark.parametrize("store", ["az", "gcs"])
def test_get_ranged_and_whole_cold_then_warm(world: World, store: str) -> None:
    bucket, key = f"{store}-data", "same/key.bin"
    want = world.objects[store][key]
    before = world.backend_requests(store)
    ranged = world.client.get_object(Bucket=bucket, Key=key, Range="bytes=70000-140000")
    assert ranged["ContentRange"] == f"bytes 70000-140000/{BIG}"
    assert ranged["Body"].read() == want[70000:140001]
    whole = world.client.get_object(Bucket=bucket, Key=key)
    assert whole["ContentLength"] == BIG
    assert sha(whole["Body"].read()) == sha(want)
    assert world.backend_requests(store) > before, "the cold reads never reached the store"
    world.settle()
    warm_before = world.backend_requests(store)
    for _ in range(2):
        assert sha(world.client.get_object(Bucket=bucket, Key=key)["Body"].read()) == sha(want)
        tail = world.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={BIG - 10}-")
        assert tail["Body"].read() == want[-10:]
    assert world.backend_requests(store) == warm_before, "a warm read reached the store"


@pytest.mark.parametrize("store", ["az", "gcs"])
def test_head_headers(world: World, store: str) -> None:
    bucket = f"{store}-data"
    head = world.client.head_object(Bucket=bucket, Key="meta/doc.json")
    assert head["ContentType"] == "application/json"
    assert head["ContentLength"] == len(world.objects[store]["meta/doc.json"])
    assert head["Metadata"] == {"color": "blue", "my-key": "x"}
    assert head["ETag"].startswith('"') and head["ETag"].endswith('"')
    if store == "gcs":  # GCS has the MD5, so the ETag is S3's
        assert head["ETag"] == f'"{hashlib.md5(world.objects[store]["meta/doc.json"]).hexdigest()}"'
    got = world.client.get_object(Bucket=bucket, Key="meta/doc.json")
    assert got["ETag"] == head["ETag"] and got["Metadata"] == head["Metadata"]
    assert got["Body"].read() == world.objects[store]["meta/doc.json"]
    small = world.client.get_object(Bucket=bucket, Key="small.txt")
    assert small["ContentType"] == "text/plain"
    assert small["Body"].read() == f"hello from {store}\n".encode()


def model(
    keys: list[str], prefix: str, delimiter: str, start_after: str = ""
) -> tuple[list[str], list[str]]:
    """S3's answer: matching keys after ``start_after``, and common prefixes rolled up at the
    delimiter (a prefix at or before ``start_after`` is not repeated)."""
    out_keys: list[str] = []
    prefixes: list[str] = []
    for key in sorted(keys):
        if not key.startswith(prefix) or key <= start_after:
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            common = key[: cut + len(delimiter)]
            if common not in prefixes and common > start_after:
                prefixes.append(common)
        elif key not in out_keys:
            out_keys.append(key)
    return out_keys, prefixes


def list_all(client: Any, bucket: str, **params: Any) -> tuple[list[str], list[str], int]:
    keys: list[str] = []
    prefixes: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        resp = client.list_objects_v2(Bucket=bucket, **params, **extra)
        pages += 1
        page_keys = [c["Key"] for c in resp.get("Contents", [])]
        page_prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
        assert resp["KeyCount"] == len(page_keys) + len(page_prefixes)
        if resp["IsTruncated"]:
            assert resp["KeyCount"] == params.get("MaxKeys", 1000), "a short truncated page"
        keys += page_keys
        prefixes += page_prefixes
        if not resp["IsTruncated"]:
            return keys, prefixes, pages
        token = resp["NextContinuationToken"]
        assert pages < 50


@pytest.mark.parametrize("store", ["az", "gcs"])
@pytest.mark.parametrize(
    ("prefix", "delimiter", "max_keys", "start_after"),
    [
        ("tree/", "/", 1000, ""),
        ("tree/", "/", 2, ""),
        ("tree/", "/", 1, ""),
        ("", "/", 1, ""),
        ("tree/", "", 5, ""),
        ("tree/a/", "/", 1, ""),
        ("tree/m", "", 4, ""),
        ("tree/", "/", 2, "tree/a/1.txt"),
        ("tree/", "/", 3, "tree/b/"),
        ("tree/", "", 4, "tree/many/003.bin"),
    ],
)
def test_list_objects_v2(
    world: World, store: str, prefix: str, delimiter: str, max_keys: int, start_after: str
) -> None:
    keys, prefixes, pages = list_all(
        world.client,
        f"{store}-data",
        Prefix=prefix,
        Delimiter=delimiter,
        MaxKeys=max_keys,
        StartAfter=start_after,
    )
    all_keys = [*TREE, "same/key.bin", "small.txt", "meta/doc.json"]
    want_keys, want_prefixes = model(all_keys, prefix, delimiter, start_after)
    assert keys == want_keys
    assert prefixes == want_prefixes
    assert pages == max(1, -(-(len(want_keys) + len(want_prefixes)) // max_keys))


@pytest.mark.parametrize("store", ["az", "gcs"])
def test_list_start_after_and_entries(world: World, store: str) -> None:
    resp = world.client.list_objects_v2(
        Bucket=f"{store}-data", Prefix="tree/", StartAfter="tree/many/005.bin"
    )
    assert [c["Key"] for c in resp["Contents"]] == [
        k for k in sorted(TREE) if k > "tree/many/005.bin"
    ]
    entry = next(c for c in resp["Contents"] if c["Key"] == "tree/top.txt")
    assert entry["Size"] == len(world.objects[store]["tree/top.txt"])
    head = world.client.head_object(Bucket=f"{store}-data", Key="tree/top.txt")
    assert entry["ETag"] == head["ETag"]


@pytest.mark.parametrize("store", ["az", "gcs"])
def test_missing_key_and_bucket(world: World, store: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        world.client.get_object(Bucket=f"{store}-data", Key="no/such/key")
    assert _error(exc) == (404, "NoSuchKey")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        world.client.head_object(Bucket=f"{store}-data", Key="no/such/key")
    assert _error(exc)[0] == 404
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        world.client.get_object(Bucket=f"{store}-missing", Key="small.txt")
    assert _error(exc) == (404, "NoSuchBucket")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        world.client.list_objects_v2(Bucket=f"{store}-missing")
    assert _error(exc) == (404, "NoSuchBucket")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        world.client.get_object(Bucket=f"{store}-data", Key="small.txt", Range="bytes=999-")
    assert _error(exc) == (416, "InvalidRange")


def test_same_key_in_three_stores_is_served_by_each(world: World) -> None:
    """Same remote bucket and key in azure, gcs and fs: never one store's cached bytes for
    another's, cold or warm, whole, ranged or inline."""
    for _ in range(2):  # cold, then warm
        for store in STORES:
            bucket = f"{store}-data"
            for key in ("same/key.bin", "small.txt"):
                got = world.client.get_object(Bucket=bucket, Key=key)["Body"].read()
                assert sha(got) == sha(world.objects[store][key]), (store, key)
            part = world.client.get_object(Bucket=bucket, Key="same/key.bin", Range="bytes=1-99")
            assert part["Body"].read() == world.objects[store]["same/key.bin"][1:100]
        world.settle()
    etags = {
        world.client.head_object(Bucket=f"{s}-data", Key="same/key.bin")["ETag"] for s in STORES
    }
    assert len(etags) == 3


# -- the write half, at the backend level -------------------------------------------------------
async def chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture(params=["az", "gcs"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """A started AzureBackend or GcsBackend on its emulator, staging under ``tmp_path``."""
    if request.param == "az":
        ep: AzureEndpoint = request.getfixturevalue("azurite")
        monkeypatch.setenv("TEST_AZURITE_KEY", ep.account_key)
        cfg = BackendConfig(
            name="az",
            type="azure",
            account_url=ep.url,
            account_name=ep.account_name,
            account_key_env="TEST_AZURITE_KEY",
        )
    else:
        gcs: GcsEndpoint = request.getfixturevalue("fake_gcs")
        cfg = BackendConfig(name="gcs", type="gcs", endpoint=gcs.url, project="test")
    backend = backends.create(cfg, tmp_path / "staging")
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def read_all(backend: Any, bucket: str, key: str, start: int | None = None,
                   end: int | None = None) -> bytes:  # fmt: skip
    result = await backend.get(bucket, key, start, end)
    try:
        return b"".join([piece async for piece in result.body])
    finally:
        await result.aclose()


async def test_put_get_copy_delete_buckets(store: Any) -> None:
    bucket = f"w-{uuid.uuid4().hex[:10]}"
    await store.create_bucket(bucket)
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        await store.create_bucket(bucket)
    assert await store.bucket_exists(bucket)
    assert bucket in {b.name for b in await store.list_buckets()}

    small = b"small object\n" * 50
    meta = await store.put(
        bucket, "dir/small.txt", chunks(small, 7), len(small), "text/x-small",
        {"color": "red", "my-key": "v"}, {"Cache-Control": "max-age=60"},
    )  # fmt: skip
    head = await store.head(bucket, "dir/small.txt")
    assert meta == head
    assert head.size == len(small) and head.content_type == "text/x-small"
    assert head.metadata == {"color": "red", "my-key": "v"}
    assert head.headers.get("Cache-Control") == "max-age=60"
    assert await read_all(store, bucket, "dir/small.txt") == small
    if store.kind == "gcs":
        assert head.etag_is_md5 and head.etag == f'"{hashlib.md5(small).hexdigest()}"'
    else:
        assert not head.etag_is_md5

    big = body_of(9 * 1024 * 1024 + 7, "big")  # more than one Azure block
    meta = await store.put(bucket, "big.bin", chunks(big), len(big), "application/x-big", {}, {})
    assert meta.size == len(big)
    assert sha(await read_all(store, bucket, "big.bin")) == sha(big)
    edge = 8 * 1024 * 1024
    assert await read_all(store, bucket, "big.bin", edge - 5, edge + 5) == big[edge - 5 : edge + 6]
    ranged = await store.get(bucket, "big.bin", len(big) - 3, len(big) + 100)
    assert (ranged.start, ranged.end, ranged.meta.size) == (len(big) - 3, len(big) - 1, len(big))
    await ranged.aclose()
    with pytest.raises(errors.InvalidRange):
        await store.get(bucket, "big.bin", len(big) + 1, None)
    with pytest.raises(errors.PreconditionFailed):
        await store.get(bucket, "big.bin", 0, 9, '"not-the-etag"')
    matched = await store.get(bucket, "big.bin", 0, 9, meta.etag)
    await matched.aclose()

    kept = await store.copy(bucket, "dir/small.txt", bucket, "copy/kept.txt", None, None)
    assert kept.content_type == "text/x-small" and kept.metadata == head.metadata
    assert await read_all(store, bucket, "copy/kept.txt") == small
    replaced = await store.copy(
        bucket, "dir/small.txt", bucket, "copy/new.txt", "text/new", {"n": "1"}
    )
    assert replaced.content_type == "text/new" and replaced.metadata == {"n": "1"}
    assert (await store.head(bucket, "copy/new.txt")).metadata == {"n": "1"}
    with pytest.raises(errors.NoSuchKey):
        await store.copy(bucket, "no-such", bucket, "copy/x", None, None)

    page = await store.list_page(bucket, "", "/", 1000, None, None)
    assert [e.key for e in page.entries] == ["big.bin"]
    assert page.prefixes == ["copy/", "dir/"]

    with pytest.raises(errors.IncompleteBody):
        await store.put(bucket, "short", chunks(b"abc"), 10, "text/plain", {}, {})
    with pytest.raises(errors.NoSuchBucket):
        await store.put(f"no-{bucket}", "k", chunks(b"abc"), 3, "text/plain", {}, {})

    await store.delete(bucket, "copy/kept.txt")
    with pytest.raises(errors.NoSuchKey):
        await store.head(bucket, "copy/kept.txt")
    await store.delete(bucket, "copy/kept.txt")  # a missing key is fine
    with pytest.raises(errors.BucketNotEmpty):
        await store.delete_bucket(bucket)
    for key in ("dir/small.txt", "big.bin", "copy/new.txt"):
        await store.delete(bucket, key)
    await store.delete_bucket(bucket)
    assert not await store.bucket_exists(bucket)
    with pytest.raises(errors.NoSuchBucket):
        await store.delete_bucket(bucket)
    with pytest.raises(errors.NoSuchBucket):
        await store.head(bucket, "dir/small.txt")


async def test_multipart_upload(store: Any) -> None:
    bucket = f"mp-{uuid.uuid4().hex[:10]}"
    await store.create_bucket(bucket)
    key = "mp/object.bin"
    upload = await store.create_multipart(bucket, key, "application/x-mp", {"k": "v"}, {})
    assert [u.upload_id for u in await store.list_uploads(bucket, "mp/")] == [upload]

    first = body_of(MIN_PART_SIZE + 3, "part1-old")
    again = body_of(MIN_PART_SIZE + 1024 * 1024, "part1-new")  # spans two Azure blocks
    last = b"the end"
    e2 = await store.upload_part(bucket, key, upload, 2, chunks(last), len(last))
    e1_old = await store.upload_part(bucket, key, upload, 1, chunks(first), len(first))
    e1 = await store.upload_part(bucket, key, upload, 1, chunks(again), len(again))
    assert e1 == f'"{hashlib.md5(again).hexdigest()}"' and e1 != e1_old
    assert e2 == f'"{hashlib.md5(last).hexdigest()}"'
    parts = await store.list_parts(bucket, key, upload)
    assert [p.number for p in parts] == [1, 2]
    assert (parts[1].etag, parts[1].size) == (e2, len(last))

    with pytest.raises(errors.InvalidPart):
        await store.complete_multipart(bucket, key, upload, [(1, '"0123"'), (2, e2)])
    with pytest.raises(errors.InvalidPartOrder):
        await store.complete_multipart(bucket, key, upload, [(2, e2), (1, e1)])
    with pytest.raises(errors.IncompleteBody):
        await store.upload_part(bucket, key, upload, 3, chunks(b"abc"), 4)

    meta = await store.complete_multipart(bucket, key, upload, [(1, e1), (2, e2)])
    assert meta.size == len(again) + len(last)
    assert meta.content_type == "application/x-mp" and meta.metadata == {"k": "v"}
    assert sha(await read_all(store, bucket, key)) == sha(again + last)
    assert await store.list_uploads(bucket, "") == []
    with pytest.raises(errors.NoSuchUpload):
        await store.upload_part(bucket, key, upload, 3, chunks(b"abc"), 3)

    small = await store.create_multipart(bucket, "mp/small", "text/plain", {}, {})
    s1 = await store.upload_part(bucket, "mp/small", small, 1, chunks(b"tiny"), 4)
    s2 = await store.upload_part(bucket, "mp/small", small, 2, chunks(b"tail"), 4)
    with pytest.raises(errors.EntityTooSmall):
        await store.complete_multipart(bucket, "mp/small", small, [(1, s1), (2, s2)])
    await store.abort_multipart(bucket, "mp/small", small)
    with pytest.raises(errors.NoSuchUpload):
        await store.list_parts(bucket, "mp/small", small)

    single = await store.create_multipart(bucket, "mp/one", "text/plain", {}, {})
    one = await store.upload_part(bucket, "mp/one", single, 1, chunks(b"one part"), 8)
    await store.complete_multipart(bucket, "mp/one", single, [(1, one)])
    assert await read_all(store, bucket, "mp/one") == b"one part"


async def test_azure_sas_and_connection_string(world: World, azurite: AzureEndpoint,
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:  # fmt: skip
    sas = generate_account_sas(
        azurite.account_name,
        azurite.account_key,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, list=True, write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    monkeypatch.setenv("TEST_AZURE_SAS", sas)
    monkeypatch.setenv("TEST_AZURE_CONN", azurite.connection_string)
    configs = [
        BackendConfig(
            name="sas", type="azure", account_url=azurite.url, sas_token_env="TEST_AZURE_SAS"
        ),
        BackendConfig(name="conn", type="azure", connection_string_env="TEST_AZURE_CONN"),
    ]
    for cfg in configs:
        backend = backends.create(cfg, tmp_path / "staging")
        await backend.start()
        try:
            assert (
                await read_all(backend, world.remote, "small.txt")
                == world.objects["az"]["small.txt"]
            )
            page = await backend.list_page(world.remote, "tree/a/", "/", 1000, None, None)
            assert [e.key for e in page.entries] == ["tree/a/1.txt", "tree/a/2.txt"]
            assert page.prefixes == ["tree/a/b/"]
            copy = await backend.copy(
                world.remote, "small.txt", world.remote, f"copies/{cfg.name}", None, None
            )
            assert copy.size == len(world.objects["az"]["small.txt"])
        finally:
            await backend.close()


@pytest.mark.parametrize("store", ["az", "gcs"])
def test_writes_through_the_proxy(world: World, store: str) -> None:
    """PutObject, multipart, CopyObject and DeleteObject via boto3, then reads (cache too)."""
    bucket, client = f"{store}-data", world.client
    small = b"written through the proxy\n"
    client.put_object(
        Bucket=bucket, Key="w/small.txt", Body=small, ContentType="text/x-w", Metadata={"a-b": "1"}
    )
    head = client.head_object(Bucket=bucket, Key="w/small.txt")
    assert (head["ContentType"], head["Metadata"]) == ("text/x-w", {"a-b": "1"})
    assert client.get_object(Bucket=bucket, Key="w/small.txt")["Body"].read() == small

    big = body_of(11 * 1024 * 1024 + 5, f"{store}-multipart")
    mb = 1024 * 1024
    config = TransferConfig(multipart_threshold=5 * mb, multipart_chunksize=5 * mb)
    client.upload_fileobj(io.BytesIO(big), bucket, "w/big.bin", Config=config)
    got = client.get_object(Bucket=bucket, Key="w/big.bin")
    assert got["ContentLength"] == len(big) and sha(got["Body"].read()) == sha(big)
    ranged = client.get_object(Bucket=bucket, Key="w/big.bin", Range="bytes=5242870-5242890")
    assert ranged["Body"].read() == big[5242870:5242891]

    client.copy_object(
        Bucket=bucket, Key="w/copy.txt", CopySource={"Bucket": bucket, "Key": "w/small.txt"}
    )
    assert client.get_object(Bucket=bucket, Key="w/copy.txt")["Body"].read() == small
    client.put_object(Bucket=bucket, Key="w/small.txt", Body=b"replaced")
    assert client.get_object(Bucket=bucket, Key="w/small.txt")["Body"].read() == b"replaced"
    for key in ("w/small.txt", "w/copy.txt", "w/big.bin"):
        client.delete_object(Bucket=bucket, Key=key)
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            client.get_object(Bucket=bucket, Key=key)
        assert _error(exc) == (404, "NoSuchKey")
