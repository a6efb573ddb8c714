"""One S3 conformance suite over every backend type: the same boto3 calls through the proxy give
the same S3 answers whatever the store behind it.

Kinds: ``s3-moto`` (moto server), ``s3-seaweedfs`` (a real SeaweedFS), ``azure`` (Azurite),
``gcs`` (fake-gcs-server), ``webhdfs`` (tests/fake_webhdfs.py: a FAKE of the documented WebHDFS
REST API with NameNode -> DataNode redirects, not a real HDFS) and ``fs`` (a directory).

Every object is written THROUGH THE PROXY (CreateBucket on the ``*`` mount, PutObject,
multipart, CopyObject) and every answer is checked against S3's semantics directly, never
against the store's own API. Where stores differ by design (fs and HDFS keep no content type
or user metadata; only some stores make MD5 ETags) the difference is stated in ``CAPS`` and
asserted as such: nothing is skipped.

Each kind runs behind one proxy per module with two backends over the same store: ``store``
(the ``*`` mount, through which everything is written, so its reads are write-through hits)
and ``cold`` (a second backend entry with the same settings, mounted as bucket ``cold`` over
the same remote bucket). Cache entries are keyed by backend name, so a first read through
``cold`` reaches the store (cold) and the next one is served from the cache (warm).

The last test runs all six kinds in one proxy process: the same remote bucket name and keys
in every store, different bytes, and no store's cached object served for another's
(tests/test_backends_azure_gcs.py does this for azure, gcs and fs with store-seeded data).
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig

from tests.conformance import body_of, metric, sha256
from tests.emulators import AzureEndpoint, GcsEndpoint
from tests.fake_webhdfs import FakeWebHdfs, ThreadedFakeWebHdfs
from tests.proxyproc import ProxyProcess
from tests.servers import S3Endpoint, make_s3_client
from tests.test_backends_azure_gcs import seed_azure, seed_gcs
from tests.test_s3_conformance import Page, model_pages

KINDS = ["s3-moto", "s3-seaweedfs", "azure", "gcs", "webhdfs", "fs"]
KiB, MiB = 1024, 1024 * 1024
CHUNK = 128 * KiB
INLINE_MAX = 4 * KiB
BIG = 3 * CHUNK + 12_345  # four cache chunks, the last one partial
SMALL = b"hello, conformance\n"  # an inline object
PART = 5 * MiB


@dataclass(frozen=True)
class Caps:
    """What a kind of store keeps; everything not listed here must behave identically."""

    metadata: bool  # keeps Content-Type and x-amz-meta-* as written; else no user metadata
    # and a Content-Type guessed from the key's name (fs: a directory; HDFS: no such fields)
    md5_etag: bool  # a PutObject's ETag is the quoted MD5 of the bytes (as S3 makes it)
    multipart_etag: bool  # a multipart object's ETag is S3's "MD5-of-part-MD5s-N"


CAPS = {
    "s3-moto": Caps(metadata=True, md5_etag=True, multipart_etag=True),
    "s3-seaweedfs": Caps(metadata=True, md5_etag=True, multipart_etag=True),
    "azure": Caps(metadata=True, md5_etag=False, multipart_etag=False),  # Azure's own ETags
    "gcs": Caps(metadata=True, md5_etag=True, multipart_etag=False),  # md5Hash of the object
    "webhdfs": Caps(metadata=False, md5_etag=False, multipart_etag=False),  # path+len+mtime
    "fs": Caps(metadata=False, md5_etag=False, multipart_etag=False),  # file identity
}

# Store bugs the proxy does not (yet) hide, each one an xfail(strict=True) on that kind alone:
# fixed in the store or hidden by the proxy, the test passes and strict fails it, so the
# entry goes. (kind, case) -> why.
_SEAWEED_ORDER = (
    "SeaweedFS lists a directory by its name without the '/' ('b' < 'b-c.txt'), so 'b/...' "
    "comes before 'b-c.txt' instead of after; the proxy relays the store's order"
)
DEVIATIONS: dict[tuple[str, str], str] = {
    **{
        ("s3-seaweedfs", f"v2-{case}"): _SEAWEED_ORDER
        for case in ("all", "paged", "paged-delimiter", "start-after")
    },
    **{
        ("s3-seaweedfs", f"v1-{case}"): _SEAWEED_ORDER
        for case in ("all", "paged", "paged-delimiter")
    },
    ("s3-seaweedfs", "v2-start-after-delimiter"): (
        "SeaweedFS, StartAfter='b-c.txt' with delimiter '/': it drops the 'b/' prefix (it has "
        "already passed directory 'b' in its own order)"
    ),
    ("s3-seaweedfs", "v2-start-after-prefix-name"): (
        "SeaweedFS, StartAfter='b/' with delimiter '/': 'b-c.txt' (< 'b/') is listed"
    ),
    ("s3-seaweedfs", "missing-key-obj/"): (
        "SeaweedFS answers GET 'dir/' for an implied directory with a 0-byte object "
        "(application/x-directory), where S3 has no such key"
    ),
    ("s3-seaweedfs", "put-missing-bucket"): (
        "SeaweedFS creates a missing bucket on PutObject instead of answering NoSuchBucket"
    ),
    ("s3-seaweedfs", "list-parts-resent"): (
        "SeaweedFS ListParts lists a re-uploaded part twice (old and new), in no fixed order"
    ),
    ("s3-moto", "upload-part-after-complete"): (
        "moto raises KeyError (HTTP 500, relayed as 503 ServiceUnavailable) for UploadPart on a "
        "completed upload instead of 404 NoSuchUpload"
    ),
}


def deviates(request: pytest.FixtureRequest, kind: str, case: str) -> None:
    """Marks this test xfail(strict) for ``kind`` when DEVIATIONS names ``case`` for it."""
    reason = DEVIATIONS.get((kind, case))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# The listing bucket: nine keys, seven entries at the top level with delimiter "/".
# "b-c.txt" sorts before "b/..." ("-" < "/"), "ü" after every ASCII name (UTF-8 bytes).
TREE = ["a.txt", "b-c.txt", "b/1.txt", "b/2.txt", "b/c/3.txt", "c d.txt", "d/4.txt", "e.txt",
        "ü.txt"]  # fmt: skip


# -- stores and the proxy over one of them -------------------------------------------------------
@dataclass
class StoreSetup:
    """How to reach one store: its backend config, the proxy's env, and a teardown."""

    backend: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    stop: Callable[[], None] = lambda: None
    make_bucket: Callable[[str], None] | None = None  # direct creation (multi-store test only)


def store_setup(kind: str, request: pytest.FixtureRequest, workdir: Path) -> StoreSetup:
    env_name = f"CONF_{kind.upper().replace('-', '_')}"
    if kind in ("s3-moto", "s3-seaweedfs"):
        ep: S3Endpoint = request.getfixturevalue(
            "moto_server" if kind == "s3-moto" else "seaweedfs"
        )
        direct = make_s3_client(ep)
        return StoreSetup(
            backend={
                "type": "s3",
                "endpoint": ep.url,
                "region": ep.region,
                "access_key_env": f"{env_name}_KEY",
                "secret_key_env": f"{env_name}_SECRET",
            },
            env={f"{env_name}_KEY": ep.access_key, f"{env_name}_SECRET": ep.secret_key},
            make_bucket=lambda b: direct.create_bucket(Bucket=b),
        )
    if kind == "azure":
        az: AzureEndpoint = request.getfixturevalue("azurite")
        return StoreSetup(
            backend={
                "type": "azure",
                "account_url": az.url,
                "account_name": az.account_name,
                "account_key_env": f"{env_name}_KEY",
            },
            env={f"{env_name}_KEY": az.account_key},
            make_bucket=lambda b: seed_azure(az, b, {}, {}, {}),
        )
    if kind == "gcs":
        gcs: GcsEndpoint = request.getfixturevalue("fake_gcs")
        return StoreSetup(
            backend={"type": "gcs", "endpoint": gcs.url, "project": "test"},
            make_bucket=lambda b: seed_gcs(gcs, b, {}, {}, {}),
        )
    if kind == "webhdfs":
        server = ThreadedFakeWebHdfs(workdir / "hdfs")
        fake: FakeWebHdfs = server.start()
        return StoreSetup(
            backend={"type": "webhdfs", "url": fake.url, "user": "alice", "retries": 1},
            stop=server.stop,
            make_bucket=lambda b: fake.mkdir(f"/{b}"),
        )
    assert kind == "fs"
    root = workdir / "fsroot"
    root.mkdir()
    return StoreSetup(
        backend={"type": "fs", "root": str(root)},
        make_bucket=lambda b: (root / b).mkdir(),
    )


@dataclass
class Conf:
    kind: str
    caps: Caps
    proxy: ProxyProcess
    client: Any  # boto3 through the proxy
    bucket: str  # on the "*" mount: the store's bucket of that name
    lst: str  # the listing bucket ("*" mount), holding only TREE
    cold: str = "cold"  # the second backend's mount over ``bucket``
    etags: dict[str, str] = field(default_factory=dict)  # what each seeding PUT answered
    _seq: list[int] = field(default_factory=lambda: [0])

    def key(self, stem: str) -> str:
        self._seq[0] += 1
        return f"{stem}-{self._seq[0]}"

    def cold_requests(self) -> float:
        """Requests that the ``cold`` backend sent to the store."""
        return metric(self.proxy.admin_url, "slipstream_backend_requests_total", backend="cold")

    def settle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while metric(self.proxy.admin_url, "slipstream_inflight_fills") > 0:
            assert time.monotonic() < deadline, "fills still in flight"
            time.sleep(0.01)

    def content_type(self, key: str, written: str | None) -> str:
        """The Content-Type a GET answers for an object PUT with ``written`` (None: no header)."""
        if self.caps.metadata:
            return written or "binary/octet-stream"
        return mimetypes.guess_type(key.rpartition("/")[2])[0] or "application/octet-stream"

    def metadata(self, written: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in written.items()} if self.caps.metadata else {}


BIG_BODY = body_of(BIG, 1)
SEED: dict[str, bytes] = {
    "obj/big.bin": BIG_BODY,
    "obj/small.txt": SMALL,
    "obj/empty": b"",
    **{f"cond/{i}.txt": f"conditional {i}\n".encode() * (i + 1) for i in range(12)},
}


@pytest.fixture(scope="module", params=KINDS)
def conf(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Conf]:
    kind: str = request.param
    workdir = tmp_path_factory.mktemp(f"backend-conf-{kind}")
    setup = store_setup(kind, request, workdir)
    tag = uuid.uuid4().hex[:8]
    bucket, lst = f"conf-{tag}", f"lst-{tag}"
    config = {
        "workers": 1,
        "cache": {
            "dir": "cache",
            "chunk_size": CHUNK,
            "inline_max": INLINE_MAX,
            "max_size": "256MiB",
            "metadata_ttl": "1h",
        },
        "backends": {"store": setup.backend, "cold": setup.backend},
        "buckets": {"*": {"backend": "store"}, "cold": {"backend": "cold", "bucket": bucket}},
        "log": {"level": "warning", "access_log": False},
    }
    proxy = ProxyProcess(config, workdir / "proxy", setup.env)
    try:
        proxy.start()
        client = make_s3_client(proxy.url, "any-key", "any-secret")
        c = Conf(kind, CAPS[kind], proxy, client, bucket, lst)
        for b in (bucket, lst):
            client.create_bucket(Bucket=b)
        for key, data in SEED.items():
            c.etags[key] = client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
        for i, key in enumerate(TREE):
            client.put_object(Bucket=lst, Key=key, Body=body_of(10 + i, i))
        yield c
    finally:
        proxy.stop()
        setup.stop()


def error_of(call: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        call()
    resp = exc.value.response
    return int(resp["ResponseMetadata"]["HTTPStatusCode"]), str(resp["Error"]["Code"])


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def multipart_etag(parts: list[bytes]) -> str:
    joined = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    return f'"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(parts)}"'


def assert_etag_shape(etag: str) -> None:
    assert len(etag) > 2 and etag.startswith('"') and etag.endswith('"'), etag
    assert '"' not in etag[1:-1]


# -- PutObject answers and what HEAD/GET then say -----------------------------------------------
@pytest.mark.parametrize("size", [0, 100, 2 * CHUNK + 1], ids=["empty", "inline", "chunked"])
def test_put_then_head_and_get(conf: Conf, size: int) -> None:
    key = conf.key("put/doc") + ".json"
    body = body_of(size, 7)
    meta = {"color": "Blue", "Owner-Team": "ml"}
    put = conf.client.put_object(
        Bucket=conf.bucket, Key=key, Body=body, ContentType="application/x-conf", Metadata=meta
    )
    assert_etag_shape(put["ETag"])
    if conf.caps.md5_etag:
        assert put["ETag"] == md5_etag(body)
    else:
        assert put["ETag"] != md5_etag(body), "an ETag that looks like an MD5 but is not one"
    head = conf.client.head_object(Bucket=conf.bucket, Key=key)
    got = conf.client.get_object(Bucket=conf.bucket, Key=key)
    assert got["Body"].read() == body
    for resp in (head, got):
        assert resp["ContentLength"] == size
        assert resp["ETag"] == put["ETag"]
        assert resp["ContentType"] == conf.content_type(key, "application/x-conf")
        assert resp["Metadata"] == conf.metadata(meta)
        assert resp["AcceptRanges"] == "bytes"
        assert abs(resp["LastModified"].timestamp() - time.time()) < 120
    assert got["LastModified"] == head["LastModified"]
    # read through the other backend too (from the store, not the write-through record)
    cold = conf.client.head_object(Bucket=conf.cold, Key=key)
    assert (cold["ETag"], cold["ContentLength"]) == (put["ETag"], size)
    assert cold["LastModified"] == head["LastModified"]
    assert cold["ContentType"] == head["ContentType"] and cold["Metadata"] == head["Metadata"]


def test_put_without_content_type(conf: Conf) -> None:
    key = conf.key("put/plain") + ".txt"
    conf.client.put_object(Bucket=conf.bucket, Key=key, Body=b"x")
    for bucket in (conf.bucket, conf.cold):
        head = conf.client.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == conf.content_type(key, None)
        assert head["Metadata"] == {}


# -- GET: whole and ranged, cold then warm ------------------------------------------------------
RANGES: list[tuple[str, int, int]] = [  # header, first, last (inclusive) of BIG
    ("bytes=0-0", 0, 0),
    ("bytes=100-199", 100, 199),
    (f"bytes={CHUNK - 10}-{2 * CHUNK + 10}", CHUNK - 10, 2 * CHUNK + 10),  # three chunks
    (f"bytes={2 * CHUNK}-", 2 * CHUNK, BIG - 1),  # a-
    ("bytes=-1000", BIG - 1000, BIG - 1),  # -n
    (f"bytes={BIG - 10}-{BIG + 5000}", BIG - 10, BIG - 1),  # past the end: clipped
    (f"bytes=-{BIG + 10}", 0, BIG - 1),  # a suffix longer than the object: all of it
    (f"bytes={BIG - 1}-", BIG - 1, BIG - 1),
]
UNSATISFIABLE = [f"bytes={BIG}-", f"bytes={BIG + 100}-{BIG + 200}"]


def check_ranges(conf: Conf, bucket: str) -> None:
    for header, first, last in RANGES:
        resp = conf.client.get_object(Bucket=bucket, Key="obj/big.bin", Range=header)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 206, header
        assert resp["ContentRange"] == f"bytes {first}-{last}/{BIG}", header
        assert resp["ContentLength"] == last - first + 1, header
        assert resp["ETag"] == conf.etags["obj/big.bin"]
        assert sha256(resp["Body"].read()) == sha256(BIG_BODY[first : last + 1]), header
    for header in UNSATISFIABLE:
        call = partial(conf.client.get_object, Bucket=bucket, Key="obj/big.bin", Range=header)
        assert error_of(call) == (416, "InvalidRange"), header
    whole = conf.client.get_object(Bucket=bucket, Key="obj/big.bin")
    assert whole["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert whole["ContentLength"] == BIG and "ContentRange" not in whole
    assert sha256(whole["Body"].read()) == sha256(BIG_BODY)
    small = conf.client.get_object(Bucket=bucket, Key="obj/small.txt", Range="bytes=1-4")
    assert small["Body"].read() == SMALL[1:5]
    assert small["ContentRange"] == f"bytes 1-4/{len(SMALL)}"
    assert (
        conf.client.get_object(Bucket=bucket, Key="obj/small.txt", Range="bytes=-3")["Body"].read()
        == SMALL[-3:]
    )
    assert error_of(
        lambda: conf.client.get_object(Bucket=bucket, Key="obj/small.txt", Range="bytes=100-")
    ) == (416, "InvalidRange")
    assert conf.client.get_object(Bucket=bucket, Key="obj/small.txt")["Body"].read() == SMALL
    empty = conf.client.get_object(Bucket=bucket, Key="obj/empty")
    assert empty["ContentLength"] == 0 and empty["Body"].read() == b""


def test_get_ranges_cold_then_warm(conf: Conf) -> None:
    before = conf.cold_requests()
    check_ranges(conf, conf.cold)  # ranges first: each one reaches chunks not yet cached
    assert conf.cold_requests() > before, "the cold reads never reached the store"
    conf.settle()
    warm = conf.cold_requests()
    check_ranges(conf, conf.cold)
    assert conf.cold_requests() == warm, "a warm read reached the store"
    check_ranges(conf, conf.bucket)  # the written objects, as write-through hits


# -- HEAD ---------------------------------------------------------------------------------------
def test_head_headers(conf: Conf) -> None:
    for bucket in (conf.cold, conf.bucket):
        for key, data in SEED.items():
            if key.startswith("cond/") and bucket == conf.cold:
                continue  # test_conditionals reads these cold through ``cold``
            head = conf.client.head_object(Bucket=bucket, Key=key)
            assert head["ResponseMetadata"]["HTTPStatusCode"] == 200
            assert head["ContentLength"] == len(data)
            assert head["ETag"] == conf.etags[key]
            assert head["AcceptRanges"] == "bytes"
            assert head["ContentType"] == conf.content_type(key, None)
            got = (
                conf.client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0") if data else None
            )
            if got is not None:
                assert got["ETag"] == head["ETag"]
                assert got["LastModified"] == head["LastModified"]
    etags = [conf.etags[k] for k in SEED]
    assert len(set(etags)) == len(etags), "two different objects with one ETag"


# -- conditionals -------------------------------------------------------------------------------
DAY = timedelta(days=1)
CondArgs = Callable[[str, datetime], dict[str, Any]]
CONDITIONS: list[tuple[str, CondArgs, int]] = [
    ("if-match", lambda e, lm: {"IfMatch": e}, 200),
    ("if-match-star", lambda e, lm: {"IfMatch": "*"}, 200),
    ("if-match-other", lambda e, lm: {"IfMatch": '"0123456789abcdef"'}, 412),
    ("if-none-match", lambda e, lm: {"IfNoneMatch": e}, 304),
    ("if-none-match-other", lambda e, lm: {"IfNoneMatch": '"0123456789abcdef"'}, 200),
    ("if-modified-since-last-modified", lambda e, lm: {"IfModifiedSince": lm}, 304),
    ("if-modified-since-earlier", lambda e, lm: {"IfModifiedSince": lm - DAY}, 200),
    ("if-unmodified-since-last-modified", lambda e, lm: {"IfUnmodifiedSince": lm}, 200),
    ("if-unmodified-since-earlier", lambda e, lm: {"IfUnmodifiedSince": lm - DAY}, 412),
    # S3: If-Match true and If-Unmodified-Since false -> 200 (If-Match wins)
    (
        "if-match-and-unmodified-since-earlier",
        lambda e, lm: {"IfMatch": e, "IfUnmodifiedSince": lm - DAY},
        200,
    ),  # fmt: skip
    # If-None-Match false -> 304 whatever If-Modified-Since says
    (
        "if-none-match-and-modified-since-earlier",
        lambda e, lm: {"IfNoneMatch": e, "IfModifiedSince": lm - DAY},
        304,
    ),  # fmt: skip
]


def _status(call: Callable[[], Any]) -> int:
    try:
        resp = call()
    except botocore.exceptions.ClientError as exc:
        status = int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
        if status == 412 and exc.response["Error"]["Code"] not in ("412", "PreconditionFailed"):
            raise
        return status
    if "Body" in resp:
        resp["Body"].read()
    return int(resp["ResponseMetadata"]["HTTPStatusCode"])


@pytest.mark.parametrize(("name", "args", "want"), CONDITIONS, ids=[c[0] for c in CONDITIONS])
def test_conditionals(conf: Conf, name: str, args: CondArgs, want: int) -> None:
    """Cold (the key's first read through ``cold``), warm, and on the written record."""
    i = [c[0] for c in CONDITIONS].index(name)
    key = f"cond/{i}.txt"
    head = conf.client.head_object(Bucket=conf.bucket, Key=key)
    kwargs = args(head["ETag"], head["LastModified"])
    for n, bucket in enumerate((conf.cold, conf.cold, conf.bucket)):
        before = conf.cold_requests()
        got = _status(partial(conf.client.get_object, Bucket=bucket, Key=key, **kwargs))
        assert got == want, f"GET {bucket}"
        if n == 0:
            assert conf.cold_requests() > before, "the first read through 'cold' was not cold"
            conf.settle()
        got = _status(partial(conf.client.head_object, Bucket=bucket, Key=key, **kwargs))
        assert got == want, f"HEAD {bucket}"
    if want == 412:
        code = error_of(lambda: conf.client.get_object(Bucket=conf.cold, Key=key, **kwargs))
        assert code == (412, "PreconditionFailed")


def test_conditional_range(conf: Conf) -> None:
    etag = conf.etags["obj/big.bin"]
    resp = conf.client.get_object(
        Bucket=conf.cold, Key="obj/big.bin", Range="bytes=10-19", IfMatch=etag
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert resp["Body"].read() == BIG_BODY[10:20]
    assert error_of(
        lambda: conf.client.get_object(
            Bucket=conf.cold, Key="obj/big.bin", Range="bytes=10-19", IfMatch='"nope"'
        )
    ) == (412, "PreconditionFailed")


# -- ListObjectsV2 / ListObjects ----------------------------------------------------------------
LIST_CASES: dict[str, dict[str, Any]] = {
    "all": {},
    "paged": {"MaxKeys": 2},
    "delimiter": {"Delimiter": "/"},
    "paged-delimiter": {"Delimiter": "/", "MaxKeys": 2},
    "prefix-delimiter": {"Prefix": "b/", "Delimiter": "/", "MaxKeys": 2},
    "partial-prefix-delimiter": {"Prefix": "b", "Delimiter": "/"},
    "prefix": {"Prefix": "b/", "MaxKeys": 2},
    "start-after": {"StartAfter": "b/1.txt", "MaxKeys": 2},
    "start-after-delimiter": {"StartAfter": "b-c.txt", "Delimiter": "/", "MaxKeys": 2},
    "start-after-prefix-name": {"StartAfter": "b/", "Delimiter": "/"},
    "unicode-prefix": {"Prefix": "ü"},
    "space-prefix": {"Prefix": "c "},
    "no-match": {"Prefix": "nothing/", "Delimiter": "/"},
    "start-after-everything": {"StartAfter": "zzz", "MaxKeys": 2},
}
# the answer every store must give, spelled out for the cases the issue names
LITERAL: dict[str, list[Page]] = {
    "paged-delimiter": [
        (["a.txt", "b-c.txt"], [], True),
        (["c d.txt"], ["b/"], True),
        (["e.txt"], ["d/"], True),
        (["ü.txt"], [], False),
    ],
    "paged": [
        (["a.txt", "b-c.txt"], [], True),
        (["b/1.txt", "b/2.txt"], [], True),
        (["b/c/3.txt", "c d.txt"], [], True),
        (["d/4.txt", "e.txt"], [], True),
        (["ü.txt"], [], False),
    ],
    "prefix-delimiter": [(["b/1.txt", "b/2.txt"], [], True), ([], ["b/c/"], False)],
    "partial-prefix-delimiter": [(["b-c.txt"], ["b/"], False)],
    "start-after-delimiter": [
        (["c d.txt"], ["b/"], True),
        (["e.txt"], ["d/"], True),
        (["ü.txt"], [], False),
    ],
    "start-after-prefix-name": [(["c d.txt", "e.txt", "ü.txt"], ["d/"], False)],
}


def list_v2_pages(conf: Conf, **params: Any) -> list[Page]:
    pages: list[Page] = []
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        resp = conf.client.list_objects_v2(Bucket=conf.lst, **params, **extra)
        keys = [c["Key"] for c in resp.get("Contents", [])]
        prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
        assert resp["KeyCount"] == len(keys) + len(prefixes)
        assert resp["MaxKeys"] == params.get("MaxKeys", 1000)
        assert resp.get("Prefix", "") == params.get("Prefix", "")
        assert resp.get("Delimiter", "") == params.get("Delimiter", "")
        assert resp.get("StartAfter", "") == params.get("StartAfter", "")
        assert resp.get("ContinuationToken") == token
        assert resp["Name"] == conf.lst
        pages.append((keys, prefixes, resp["IsTruncated"]))
        if not resp["IsTruncated"]:
            assert "NextContinuationToken" not in resp
            return pages
        token = resp["NextContinuationToken"]
        assert token and len(pages) < 50


def list_v1_pages(conf: Conf, **params: Any) -> list[Page]:
    pages: list[Page] = []
    marker = ""
    while True:
        resp = conf.client.list_objects(Bucket=conf.lst, Marker=marker, **params)
        keys = [c["Key"] for c in resp.get("Contents", [])]
        prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
        assert resp.get("Marker", "") == marker
        pages.append((keys, prefixes, resp["IsTruncated"]))
        if not resp["IsTruncated"]:
            return pages
        marker = resp.get("NextMarker") or keys[-1]  # NextMarker comes with a delimiter
        if params.get("Delimiter"):
            assert resp["NextMarker"] == max([*keys, *prefixes], key=lambda s: s.encode())
        assert len(pages) < 50


def expected_pages(case: str) -> list[Page]:
    params = LIST_CASES[case]
    model = model_pages(
        sorted(TREE, key=lambda k: k.encode()),
        prefix=params.get("Prefix", ""),
        delimiter=params.get("Delimiter", ""),
        start_after=params.get("StartAfter", ""),
        max_keys=params.get("MaxKeys", 1000),
    )
    if case in LITERAL:
        assert model == LITERAL[case], "the model disagrees with the spelled-out answer"
    return model


@pytest.mark.parametrize("case", list(LIST_CASES))
def test_list_objects_v2(conf: Conf, case: str, request: pytest.FixtureRequest) -> None:
    deviates(request, conf.kind, f"v2-{case}")
    assert list_v2_pages(conf, **LIST_CASES[case]) == expected_pages(case)


@pytest.mark.parametrize("case", ["all", "paged", "paged-delimiter", "prefix-delimiter"])
def test_list_objects_v1(conf: Conf, case: str, request: pytest.FixtureRequest) -> None:
    deviates(request, conf.kind, f"v1-{case}")
    assert list_v1_pages(conf, **LIST_CASES[case]) == expected_pages(case)


def test_list_entries(conf: Conf) -> None:
    """Sizes, ETags and dates in a listing agree with HEAD, for written and read objects."""
    resp = conf.client.list_objects_v2(Bucket=conf.cold, Prefix="obj/")
    entries = {c["Key"]: c for c in resp["Contents"]}
    assert sorted(entries) == ["obj/big.bin", "obj/empty", "obj/small.txt"]
    for key, entry in entries.items():
        head = conf.client.head_object(Bucket=conf.bucket, Key=key)
        assert entry["Size"] == len(SEED[key]) == head["ContentLength"]
        assert entry["ETag"] == head["ETag"] == conf.etags[key]
        assert entry["LastModified"] == head["LastModified"]
        assert entry["StorageClass"] == "STANDARD"


# -- missing keys and buckets -------------------------------------------------------------------
@pytest.mark.parametrize("key", ["no/such/key", "obj", "obj/", "cond", "obj/small.txt/x"])
def test_missing_key(conf: Conf, key: str, request: pytest.FixtureRequest) -> None:
    """Never-written keys, incl. names that are directories on fs and HDFS ("obj", "obj/")
    and a path below an object (a file on fs and HDFS)."""
    deviates(request, conf.kind, f"missing-key-{key}")
    c = conf.client
    for bucket in (conf.bucket, conf.cold):
        assert error_of(partial(c.get_object, Bucket=bucket, Key=key)) == (404, "NoSuchKey")
        assert error_of(partial(c.head_object, Bucket=bucket, Key=key))[0] == 404
        assert error_of(partial(c.get_object, Bucket=bucket, Key=key, Range="bytes=0-1")) == (
            404,
            "NoSuchKey",
        )
        assert error_of(partial(c.get_object, Bucket=bucket, Key=key, IfMatch='"x"')) == (
            404,
            "NoSuchKey",
        )


def test_missing_bucket(conf: Conf) -> None:
    gone = f"gone-{uuid.uuid4().hex[:8]}"  # valid for the "*" mount, absent in the store
    c = conf.client
    assert error_of(lambda: c.get_object(Bucket=gone, Key="obj/small.txt")) == (404, "NoSuchBucket")
    assert error_of(lambda: c.head_object(Bucket=gone, Key="obj/small.txt"))[0] == 404
    assert error_of(lambda: c.list_objects_v2(Bucket=gone)) == (404, "NoSuchBucket")
    assert error_of(lambda: c.head_bucket(Bucket=gone))[0] == 404
    assert error_of(lambda: c.delete_bucket(Bucket=gone)) == (404, "NoSuchBucket")
    # not a valid name for the "*" mount: no store is asked
    assert error_of(lambda: c.get_object(Bucket="Not_A_Mount", Key="k")) == (404, "NoSuchBucket")


def test_put_to_missing_bucket(conf: Conf, request: pytest.FixtureRequest) -> None:
    deviates(request, conf.kind, "put-missing-bucket")
    gone = f"gone-{uuid.uuid4().hex[:8]}"
    c = conf.client
    assert error_of(lambda: c.put_object(Bucket=gone, Key="k", Body=b"x")) == (404, "NoSuchBucket")
    assert error_of(lambda: c.head_bucket(Bucket=gone))[0] == 404


def test_bucket_lifecycle(conf: Conf) -> None:
    name = f"life-{uuid.uuid4().hex[:8]}"
    c = conf.client
    c.create_bucket(Bucket=name)
    assert c.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert name in {b["Name"] for b in c.list_buckets()["Buckets"]}
    assert c.list_objects_v2(Bucket=name)["KeyCount"] == 0
    c.put_object(Bucket=name, Key="k.txt", Body=b"x")
    assert error_of(lambda: c.delete_bucket(Bucket=name)) == (409, "BucketNotEmpty")
    c.delete_object(Bucket=name, Key="k.txt")
    assert c.delete_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert error_of(lambda: c.head_bucket(Bucket=name))[0] == 404
    assert error_of(lambda: c.get_object(Bucket=name, Key="k.txt")) == (404, "NoSuchBucket")


# -- overwrite, delete, copy --------------------------------------------------------------------
def test_overwrite_then_read(conf: Conf) -> None:
    key = conf.key("over/obj") + ".bin"
    v1, v2 = body_of(3 * CHUNK + 11, 10), body_of(CHUNK + 5, 11)
    conf.client.put_object(Bucket=conf.bucket, Key=key, Body=v1)
    for _ in range(2):
        got = conf.client.get_object(Bucket=conf.bucket, Key=key)
        assert sha256(got["Body"].read()) == sha256(v1)
    first = conf.client.head_object(Bucket=conf.bucket, Key=key)
    put = conf.client.put_object(Bucket=conf.bucket, Key=key, Body=v2)
    assert put["ETag"] != first["ETag"]
    got = conf.client.get_object(Bucket=conf.bucket, Key=key)
    assert sha256(got["Body"].read()) == sha256(v2)
    assert got["ContentLength"] == len(v2) and got["ETag"] == put["ETag"]
    tail = conf.client.get_object(Bucket=conf.bucket, Key=key, Range=f"bytes={CHUNK}-")
    assert tail["Body"].read() == v2[CHUNK:]
    assert tail["ContentRange"] == f"bytes {CHUNK}-{len(v2) - 1}/{len(v2)}"
    listed = conf.client.list_objects_v2(Bucket=conf.bucket, Prefix=key)["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [(key, len(v2), put["ETag"])]
    conf.client.put_object(Bucket=conf.bucket, Key=key, Body=b"v3")  # and back to inline
    assert conf.client.get_object(Bucket=conf.bucket, Key=key)["Body"].read() == b"v3"
    assert conf.client.get_object(Bucket=conf.cold, Key=key)["Body"].read() == b"v3"


def test_delete_object(conf: Conf) -> None:
    small, big = conf.key("del/small.txt"), conf.key("del/big.bin")
    conf.client.put_object(Bucket=conf.bucket, Key=small, Body=b"small")
    conf.client.put_object(Bucket=conf.bucket, Key=big, Body=body_of(2 * CHUNK + 1, 5))
    for key in (small, big):
        conf.client.get_object(Bucket=conf.bucket, Key=key)["Body"].read()  # cached
        resp = conf.client.delete_object(Bucket=conf.bucket, Key=key)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
        for bucket in (conf.bucket, conf.cold):
            assert error_of(partial(conf.client.get_object, Bucket=bucket, Key=key)) == (
                404,
                "NoSuchKey",
            )
            assert error_of(partial(conf.client.head_object, Bucket=bucket, Key=key))[0] == 404
    listed = conf.client.list_objects_v2(Bucket=conf.bucket, Prefix="del/")
    assert listed["KeyCount"] == 0
    resp = conf.client.delete_object(Bucket=conf.bucket, Key="del/never-there")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204


@pytest.mark.parametrize("quiet", [False, True], ids=["verbose", "quiet"])
def test_delete_objects(conf: Conf, quiet: bool) -> None:
    keys = [conf.key(f"batch/{i}") + ".bin" for i in range(3)]
    for i, key in enumerate(keys):
        conf.client.put_object(Bucket=conf.bucket, Key=key, Body=body_of(CHUNK + i, i))
    missing = conf.key("batch/missing")
    resp = conf.client.delete_objects(
        Bucket=conf.bucket,
        Delete={"Objects": [{"Key": k} for k in [*keys, missing]], "Quiet": quiet},
    )
    assert resp.get("Errors", []) == []
    deleted = sorted(d["Key"] for d in resp.get("Deleted", []))
    assert deleted == ([] if quiet else sorted([*keys, missing]))
    for key in keys:
        assert error_of(partial(conf.client.get_object, Bucket=conf.bucket, Key=key)) == (
            404,
            "NoSuchKey",
        )
    listed = conf.client.list_objects_v2(Bucket=conf.bucket, Prefix="batch/")
    assert not {o["Key"] for o in listed.get("Contents", [])} & set(keys)


def test_copy_object(conf: Conf) -> None:
    src, dst, new = conf.key("copy/src.bin"), conf.key("copy/dst.bin"), conf.key("copy/new.bin")
    body = body_of(2 * CHUNK + 3, 21)
    conf.client.put_object(
        Bucket=conf.bucket, Key=src, Body=body, ContentType="text/x-src", Metadata={"k": "v"}
    )
    conf.client.put_object(Bucket=conf.bucket, Key=dst, Body=b"old destination")
    assert conf.client.get_object(Bucket=conf.bucket, Key=dst)["Body"].read() == b"old destination"
    resp = conf.client.copy_object(
        Bucket=conf.bucket, Key=dst, CopySource={"Bucket": conf.bucket, "Key": src}
    )
    etag = resp["CopyObjectResult"]["ETag"]
    assert_etag_shape(etag)
    if conf.caps.md5_etag:
        assert etag == md5_etag(body)
    for bucket in (conf.bucket, conf.cold):
        got = conf.client.get_object(Bucket=bucket, Key=dst)
        assert sha256(got["Body"].read()) == sha256(body)
        assert got["ETag"] == etag
        assert got["ContentType"] == conf.content_type(dst, "text/x-src")
        assert got["Metadata"] == conf.metadata({"k": "v"})
        part = conf.client.get_object(Bucket=bucket, Key=dst, Range="bytes=5-9")
        assert part["Body"].read() == body[5:10]
    conf.client.copy_object(
        Bucket=conf.bucket,
        Key=new,
        CopySource={"Bucket": conf.cold, "Key": src},  # from the other backend's mount
        MetadataDirective="REPLACE",
        ContentType="application/x-replaced",
        Metadata={"b": "2"},
    )
    head = conf.client.head_object(Bucket=conf.bucket, Key=new)
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == conf.content_type(new, "application/x-replaced")
    assert head["Metadata"] == conf.metadata({"b": "2"})
    assert error_of(
        lambda: conf.client.copy_object(
            Bucket=conf.bucket, Key=dst, CopySource={"Bucket": conf.bucket, "Key": "copy/nope"}
        )
    ) == (404, "NoSuchKey")


# -- multipart ----------------------------------------------------------------------------------
def test_multipart_upload_fileobj(conf: Conf) -> None:
    key = conf.key("mp/big") + ".bin"
    body = body_of(2 * PART + 12_345, 31)
    parts = [body[:PART], body[PART : 2 * PART], body[2 * PART :]]
    conf.client.upload_fileobj(
        io.BytesIO(body),
        conf.bucket,
        key,
        ExtraArgs={"ContentType": "application/x-mp", "Metadata": {"m": "1"}},
        Config=TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=2
        ),
    )
    head = conf.client.head_object(Bucket=conf.bucket, Key=key)
    assert head["ContentLength"] == len(body)
    assert_etag_shape(head["ETag"])
    if conf.caps.multipart_etag:
        assert head["ETag"] == multipart_etag(parts)
    else:
        assert not head["ETag"].endswith('-3"')
    assert head["ContentType"] == conf.content_type(key, "application/x-mp")
    assert head["Metadata"] == conf.metadata({"m": "1"})
    for bucket in (conf.bucket, conf.cold):  # written record, then the store
        got = conf.client.get_object(Bucket=bucket, Key=key)
        assert got["ETag"] == head["ETag"]
        assert sha256(got["Body"].read()) == sha256(body)
        edge = conf.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={PART - 5}-{PART + 4}")
        assert edge["Body"].read() == body[PART - 5 : PART + 5]


def complete(conf: Conf, key: str, upload: str, etags: list[str]) -> dict[str, Any]:
    parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
    done: dict[str, Any] = conf.client.complete_multipart_upload(
        Bucket=conf.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    return done


def test_multipart_by_hand(conf: Conf) -> None:
    """Create, parts out of order, ListParts, Complete, read; then an Abort."""
    c, key = conf.client, conf.key("mp/hand.bin")
    one, two = body_of(PART + 1, 42), b"the end"
    upload = c.create_multipart_upload(Bucket=conf.bucket, Key=key, ContentType="text/x-hand")[
        "UploadId"
    ]
    e2 = c.upload_part(Bucket=conf.bucket, Key=key, UploadId=upload, PartNumber=2, Body=two)
    e1 = c.upload_part(Bucket=conf.bucket, Key=key, UploadId=upload, PartNumber=1, Body=one)
    assert (e1["ETag"], e2["ETag"]) == (md5_etag(one), md5_etag(two))
    listed = c.list_parts(Bucket=conf.bucket, Key=key, UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (1, e1["ETag"], len(one)),
        (2, e2["ETag"], len(two)),
    ]
    uploads = c.list_multipart_uploads(Bucket=conf.bucket, Prefix="mp/hand")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(key, upload)]
    done = complete(conf, key, upload, [e1["ETag"], e2["ETag"]])
    head = c.head_object(Bucket=conf.bucket, Key=key)
    assert done["ETag"] == head["ETag"]
    assert_etag_shape(head["ETag"])
    if conf.caps.multipart_etag:
        assert head["ETag"] == multipart_etag([one, two])
    assert head["ContentLength"] == len(one) + len(two)
    assert head["ContentType"] == conf.content_type(key, "text/x-hand")
    for bucket in (conf.bucket, conf.cold):
        got = c.get_object(Bucket=bucket, Key=key)
        assert got["ETag"] == head["ETag"]
        assert sha256(got["Body"].read()) == sha256(one + two)
    assert c.list_multipart_uploads(Bucket=conf.bucket, Prefix="mp/hand").get("Uploads", []) == []

    aborted = c.create_multipart_upload(Bucket=conf.bucket, Key=key)["UploadId"]
    c.upload_part(Bucket=conf.bucket, Key=key, UploadId=aborted, PartNumber=1, Body=b"abc")
    c.abort_multipart_upload(Bucket=conf.bucket, Key=key, UploadId=aborted)
    assert error_of(lambda: c.list_parts(Bucket=conf.bucket, Key=key, UploadId=aborted)) == (
        404,
        "NoSuchUpload",
    )
    assert sha256(c.get_object(Bucket=conf.bucket, Key=key)["Body"].read()) == sha256(one + two)


@pytest.mark.parametrize("stage", ["complete", "list-parts"])
def test_multipart_part_resent(conf: Conf, stage: str, request: pytest.FixtureRequest) -> None:
    """A part uploaded again replaces the first one: in ListParts and in the object."""
    if stage == "list-parts":
        deviates(request, conf.kind, "list-parts-resent")
    c, key = conf.client, conf.key("mp/resent.bin")
    old, new, two = body_of(PART, 51), body_of(PART + 2, 52), b"tail"
    upload = c.create_multipart_upload(Bucket=conf.bucket, Key=key)["UploadId"]
    c.upload_part(Bucket=conf.bucket, Key=key, UploadId=upload, PartNumber=1, Body=old)
    e1 = c.upload_part(Bucket=conf.bucket, Key=key, UploadId=upload, PartNumber=1, Body=new)
    e2 = c.upload_part(Bucket=conf.bucket, Key=key, UploadId=upload, PartNumber=2, Body=two)
    if stage == "list-parts":
        listed = c.list_parts(Bucket=conf.bucket, Key=key, UploadId=upload)["Parts"]
        assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
            (1, e1["ETag"], len(new)),
            (2, e2["ETag"], len(two)),
        ]
        c.abort_multipart_upload(Bucket=conf.bucket, Key=key, UploadId=upload)
        return
    complete(conf, key, upload, [e1["ETag"], e2["ETag"]])
    got = c.get_object(Bucket=conf.cold, Key=key)
    assert sha256(got["Body"].read()) == sha256(new + two)


def test_upload_part_after_complete(conf: Conf, request: pytest.FixtureRequest) -> None:
    deviates(request, conf.kind, "upload-part-after-complete")
    c, key = conf.client, conf.key("mp/done.bin")
    upload = c.create_multipart_upload(Bucket=conf.bucket, Key=key)["UploadId"]
    e1 = c.upload_part(Bucket=conf.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"only")
    complete(conf, key, upload, [e1["ETag"]])
    assert c.get_object(Bucket=conf.bucket, Key=key)["Body"].read() == b"only"
    assert error_of(
        lambda: c.upload_part(Bucket=conf.bucket, Key=key, UploadId=upload, PartNumber=2, Body=b"x")
    ) == (404, "NoSuchUpload")


# -- every kind in one process ------------------------------------------------------------------
def test_six_stores_in_one_process(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The same remote bucket name and keys in all six stores, different bytes in each:
    written through one proxy, read back there (write-through hits) and through a second
    proxy with an empty cache (cold, then warm); a delete in one store leaves the others'."""
    remote = f"multi-{uuid.uuid4().hex[:8]}"
    setups: dict[str, StoreSetup] = {}
    try:
        for kind in KINDS:
            (tmp_path / kind).mkdir()
            setups[kind] = store_setup(kind, request, tmp_path / kind)
        env: dict[str, str] = {}
        for s in setups.values():
            env.update(s.env)
            assert s.make_bucket is not None
            s.make_bucket(remote)
        config = {
            "workers": 1,
            "cache": {"dir": "cache", "chunk_size": CHUNK, "inline_max": INLINE_MAX},
            "backends": {kind: s.backend for kind, s in setups.items()},
            "buckets": {kind: {"backend": kind, "bucket": remote} for kind in KINDS},
            "log": {"level": "warning", "access_log": False},
        }
        data = {
            kind: {
                "same/key.bin": body_of(2 * CHUNK + 7, 100 + n),
                "small.txt": f"small from {kind}\n".encode(),
                f"only-{kind}.txt": kind.encode(),
            }
            for n, kind in enumerate(KINDS)
        }
        writer = ProxyProcess(config, tmp_path / "writer", env).start()
        try:
            client = make_s3_client(writer.url)
            for kind in KINDS:
                for key, body in data[kind].items():
                    client.put_object(Bucket=kind, Key=key, Body=body)
            check_each_store(writer, data, "written")
        finally:
            writer.stop()
        reader = ProxyProcess(config, tmp_path / "reader", env).start()
        try:
            check_each_store(reader, data, "cold")
            check_each_store(reader, data, "warm")
            client = make_s3_client(reader.url)
            client.delete_object(Bucket="azure", Key="small.txt")
            for kind in KINDS:
                if kind == "azure":
                    assert error_of(lambda: client.get_object(Bucket="azure", Key="small.txt")) == (
                        404,
                        "NoSuchKey",
                    )
                else:
                    got = client.get_object(Bucket=kind, Key="small.txt")["Body"].read()
                    assert got == data[kind]["small.txt"], kind
        finally:
            reader.stop()
    finally:
        for s in setups.values():
            s.stop()


def check_each_store(
    proxy: ProxyProcess, data: dict[str, dict[str, bytes]], temperature: str
) -> None:
    """Each mount lists and serves its own store's objects. ``temperature``: "cold" (every
    store is read), "warm" (no store is read) or "written" (write-through hits, not counted)."""
    client = make_s3_client(proxy.url)
    etags: set[str] = set()
    for kind, objects in data.items():
        listed = client.list_objects_v2(Bucket=kind)
        assert [o["Key"] for o in listed["Contents"]] == sorted(objects), kind
        before = metric(proxy.admin_url, "slipstream_backend_requests_total", backend=kind)
        for key, body in objects.items():
            got = client.get_object(Bucket=kind, Key=key)
            assert sha256(got["Body"].read()) == sha256(body), (kind, key)
        big = objects["same/key.bin"]
        part = client.get_object(
            Bucket=kind, Key="same/key.bin", Range=f"bytes={CHUNK - 2}-{CHUNK + 2}"
        )
        assert part["Body"].read() == big[CHUNK - 2 : CHUNK + 3], kind
        etags.add(client.head_object(Bucket=kind, Key="same/key.bin")["ETag"])
        after = metric(proxy.admin_url, "slipstream_backend_requests_total", backend=kind)
        if temperature == "cold":
            assert after > before, f"{kind}: a cold read never reached the store"
        elif temperature == "warm":
            assert after == before, f"{kind}: a warm read reached the store"
    assert len(etags) == len(data), "two stores answered one ETag for different bytes"
    deadline = time.monotonic() + 10
    while metric(proxy.admin_url, "slipstream_inflight_fills") > 0:
        assert time.monotonic() < deadline, "fills still in flight"
        time.sleep(0.01)
