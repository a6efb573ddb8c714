"""The webhdfs backend's write half, called directly (the S3 PUT handlers come separately).

The store is tests/fake_webhdfs.py: a FAKE of the documented WebHDFS REST API (two-step
CREATE through a 307 to a DataNode, or HttpFS's redirect to itself with data=true), not a
real HDFS. Every write is verified by reading back, through the backend and on the fake's disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy import errors
from proxy.backends.kit.multipart import MIN_PART_SIZE
from proxy.backends.webhdfs import WebHdfsBackend
from proxy.config import BackendConfig
from proxy.model import GetResult, ObjectMeta
from tests.fake_webhdfs import FakeWebHdfs

BUCKET = "/data/logs"


async def stream(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def read_all(result: GetResult) -> bytes:
    try:
        return b"".join([piece async for piece in result.body])
    finally:
        await result.aclose()


def leftovers(hdfs: FakeWebHdfs) -> list[str]:
    return [p.name for p in hdfs.root.rglob(".slipstream-tmp-*")]


@pytest.fixture(params=["webhdfs", "httpfs"])
async def hdfs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FakeWebHdfs]:
    fake = await FakeWebHdfs(tmp_path / "hdfs", httpfs=request.param == "httpfs").start()
    fake.mkdir(BUCKET)
    yield fake
    await fake.stop()


@pytest.fixture
async def backend(hdfs: FakeWebHdfs, tmp_path: Path) -> AsyncIterator[WebHdfsBackend]:
    cfg = BackendConfig(name="hd", type="webhdfs", url=hdfs.url, user="alice", retries=0)
    b = WebHdfsBackend(cfg)
    b.staging = tmp_path / "staging"
    await b.start()
    yield b
    await b.close()


async def put(b: WebHdfsBackend, key: str, data: bytes, bucket: str = BUCKET) -> ObjectMeta:
    return await b.put(bucket, key, stream(data), len(data), "text/plain", {"x": "y"}, {})


async def test_put_streams_two_step_create_then_reads_back(
    hdfs: FakeWebHdfs, backend: WebHdfsBackend
) -> None:
    data = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB in 64 KiB pieces
    meta = await put(backend, "new/dir/blob.bin", data)
    assert meta == await backend.head(BUCKET, "new/dir/blob.bin")
    assert meta.size == len(data) and not meta.etag_is_md5
    assert hdfs.read(f"{BUCKET}/new/dir/blob.bin") == data
    assert await read_all(await backend.get(BUCKET, "new/dir/blob.bin", None, None)) == data
    assert leftovers(hdfs) == []

    creates = [e for e in hdfs.log if e.op == "CREATE"]
    assert len(creates) == 2  # the NameNode step without a body, then the data
    first, second = creates
    assert first.node == "namenode" and first.headers.get("content-length", "0") == "0"
    assert second.node == ("namenode" if hdfs.httpfs else "datanode")
    assert second.headers["content-length"] == str(len(data))  # streamed, not chunked
    assert "transfer-encoding" not in second.headers
    assert second.query["overwrite"] == "true" and second.query["user.name"] == "alice"
    assert [e.op for e in hdfs.log if e.op in ("RENAME", "DELETE")] == ["RENAME"]

    empty = await put(backend, "new/empty.txt", b"")
    assert empty.size == 0 and hdfs.read(f"{BUCKET}/new/empty.txt") == b""
    assert await read_all(await backend.get(BUCKET, "new/empty.txt", None, None)) == b""

    again = b"replaced"
    meta2 = await put(backend, "new/dir/blob.bin", again)
    assert hdfs.read(f"{BUCKET}/new/dir/blob.bin") == again
    assert meta2.etag != meta.etag
    assert await read_all(await backend.get(BUCKET, "new/dir/blob.bin", 2, 4)) == b"pla"
    assert leftovers(hdfs) == []


async def test_put_failures_keep_the_old_object(hdfs: FakeWebHdfs, backend: WebHdfsBackend) -> None:
    await put(backend, "keep.txt", b"old")

    async def short() -> AsyncIterator[bytes]:
        yield b"only this"

    with pytest.raises(errors.IncompleteBody):
        await backend.put(BUCKET, "keep.txt", short(), 100, "text/plain", {}, {})
    assert hdfs.read(f"{BUCKET}/keep.txt") == b"old"
    assert leftovers(hdfs) == []

    node = "namenode" if hdfs.httpfs else "datanode"
    hdfs.fail("RuntimeException", op="CREATE", node=node, times=1)
    with pytest.raises(errors.ServiceUnavailable):
        await put(backend, "keep.txt", b"new")
    assert hdfs.read(f"{BUCKET}/keep.txt") == b"old"
    assert leftovers(hdfs) == []

    with pytest.raises(errors.NoSuchBucket):
        await put(backend, "x.txt", b"x", bucket="/data/absent")
    assert not hdfs.exists("/data/absent")

    hdfs.mkdir(f"{BUCKET}/adir/inner")
    for bad in ("adir", "keep.txt/under", "a:b.txt", "a/../b", "a//b"):
        with pytest.raises(errors.InvalidArgument):
            await put(backend, bad, b"x")
    assert hdfs.read(f"{BUCKET}/keep.txt") == b"old"
    assert leftovers(hdfs) == []


async def test_folder_markers_and_deletes(hdfs: FakeWebHdfs, backend: WebHdfsBackend) -> None:
    marker = await backend.put(BUCKET, "folder/", stream(b""), 0, "", {}, {})
    assert marker.size == 0 and (hdfs.root / "data/logs/folder").is_dir()

    await put(backend, "folder/a.txt", b"a")
    await backend.delete(BUCKET, "folder/")  # S3 deletes the marker only: "a.txt" stays
    assert hdfs.read(f"{BUCKET}/folder/a.txt") == b"a"
    await backend.delete(BUCKET, "folder")  # names no file: nothing happens
    assert hdfs.exists(f"{BUCKET}/folder/a.txt")
    await backend.delete(BUCKET, "folder/a.txt")
    assert not hdfs.exists(f"{BUCKET}/folder/a.txt")
    await backend.delete(BUCKET, "folder/a.txt")  # already gone: not an error
    await backend.delete(BUCKET, "../escape")  # cannot name a file: nothing happens
    await backend.delete(BUCKET, "folder/")  # now empty: the directory goes
    assert not hdfs.exists(f"{BUCKET}/folder")
    with pytest.raises(errors.NoSuchKey):
        await backend.head(BUCKET, "folder/a.txt")
    with pytest.raises(errors.NoSuchBucket):
        await backend.delete("/data/absent", "k")


async def test_copy_streams_open_into_create(hdfs: FakeWebHdfs, backend: WebHdfsBackend) -> None:
    data = bytes(range(256)) * 1000
    await put(backend, "src/one.bin", data)
    meta = await backend.copy(BUCKET, "src/one.bin", BUCKET, "dst/two.bin", None, None)
    assert meta.size == len(data)
    assert hdfs.read(f"{BUCKET}/dst/two.bin") == data
    same = await backend.copy(BUCKET, "src/one.bin", BUCKET, "src/one.bin", None, {})
    assert same.size == len(data) and hdfs.read(f"{BUCKET}/src/one.bin") == data
    with pytest.raises(errors.NoSuchKey):
        await backend.copy(BUCKET, "src/absent", BUCKET, "dst/x", None, None)
    assert leftovers(hdfs) == []


async def test_buckets_are_directories(hdfs: FakeWebHdfs, backend: WebHdfsBackend) -> None:
    assert await backend.bucket_exists(BUCKET)
    assert not await backend.bucket_exists("/data/new")
    await backend.create_bucket("/data/new")
    assert await backend.bucket_exists("/data/new")
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        await backend.create_bucket("/data/new")

    await put(backend, "k.txt", b"k", bucket="/data/new")
    with pytest.raises(errors.BucketNotEmpty):
        await backend.delete_bucket("/data/new")
    await backend.delete("/data/new", "k.txt")
    await backend.delete_bucket("/data/new")
    assert not hdfs.exists("/data/new")
    with pytest.raises(errors.NoSuchBucket):
        await backend.delete_bucket("/data/new")

    await backend.create_bucket("wild")  # a wildcard mount's bucket is a directory in /
    assert hdfs.local("/wild").is_dir()
    hdfs.mkdir("/Not_A_Bucket")
    assert [b.name for b in await backend.list_buckets()] == ["data", "wild"]


async def test_multipart_is_staged_then_one_create(
    hdfs: FakeWebHdfs, backend: WebHdfsBackend
) -> None:
    part1 = b"1" * MIN_PART_SIZE
    part2 = b"the tail"
    upload = await backend.create_multipart(BUCKET, "mp/obj.bin", "application/x", {}, {})
    etag1 = await backend.upload_part(BUCKET, "mp/obj.bin", upload, 1, stream(part1), len(part1))
    etag2 = await backend.upload_part(BUCKET, "mp/obj.bin", upload, 2, stream(part2), len(part2))
    assert [p.number for p in await backend.list_parts(BUCKET, "mp/obj.bin", upload)] == [1, 2]
    assert [u.upload_id for u in await backend.list_uploads(BUCKET, "mp/")] == [upload]
    assert hdfs.count("CREATE") == 0  # nothing reaches HDFS before completion
    meta = await backend.complete_multipart(BUCKET, "mp/obj.bin", upload, [(1, etag1), (2, etag2)])
    assert meta.size == len(part1) + len(part2)
    got = await read_all(await backend.get(BUCKET, "mp/obj.bin", None, None))
    assert hashlib.sha256(got).digest() == hashlib.sha256(part1 + part2).digest()
    assert await backend.list_uploads(BUCKET, "mp/") == []

    aborted = await backend.create_multipart(BUCKET, "mp/other.bin", "", {}, {})
    await backend.abort_multipart(BUCKET, "mp/other.bin", aborted)
    with pytest.raises(errors.NoSuchUpload):
        await backend.list_parts(BUCKET, "mp/other.bin", aborted)
    assert not hdfs.exists(f"{BUCKET}/mp/other.bin")
