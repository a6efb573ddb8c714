"""Helpers for the S3 conformance tests: one proxy in front of one store, raw HTTP, metrics.

An :class:`Env` is a running proxy over one kind of store (``moto``, ``seaweedfs`` or ``fs``),
with a :class:`~tests.relay.CountingRelay` between proxy and store for the S3 kinds so tests
can tell whether a read reached the store.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import pytest

from tests.proxyproc import ProxyProcess
from tests.relay import CountingRelay
from tests.servers import S3Endpoint, make_s3_client

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
CHUNK = 64 * 1024
INLINE_MAX = 4 * 1024


@dataclass(frozen=True)
class Raw:
    """One HTTP exchange as it went over the wire (no client-side normalisation)."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def error_code(self) -> str | None:
        """The ``<Code>`` of an S3 XML error body, or None."""
        if not self.body.startswith(b"<?xml"):
            return None
        root = ET.fromstring(self.body)
        if root.tag != "Error":
            return None
        return root.findtext("Code")

    def error_fields(self) -> dict[str, str]:
        root = ET.fromstring(self.body)
        return {child.tag: child.text or "" for child in root}


def raw_request(
    base_url: str, method: str, path: str, headers: dict[str, str] | None = None
) -> Raw:
    """Send ``method path`` exactly as given (``path`` is the raw, already-encoded target)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        skip_host = any(name.lower() == "host" for name in headers or {})
        conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body_of(size: int, seed: int) -> bytes:
    """``size`` deterministic pseudo-random bytes (different for each ``seed``)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(admin_url: str) -> list[tuple[str, str, float]]:
    """(name, labels, value) of every sample on the admin /metrics page."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.append((m.group(1), m.group(2) or "", float(m.group(3))))
    return out


def metric(admin_url: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value for n, lab, value in scrape(admin_url) if n == name and all(w in lab for w in want)
    )


@dataclass
class Env:
    """A proxy over one store, plus what the tests need to seed and observe that store."""

    kind: str  # "moto" | "seaweedfs" | "fs"
    proxy: ProxyProcess
    client: Any  # boto3 client for the proxy
    bucket: str  # client-facing (and store) bucket for object tests
    list_bucket: str  # a bucket holding only the listing tree
    datasets: str  # store bucket behind the "imagenet" mount (prefix "imagenet/")
    store: Any = None  # boto3 client straight to the store (None for fs)
    relay: CountingRelay | None = None
    root: Path | None = None  # fs data root
    _seq: list[int] = field(default_factory=lambda: [0])

    @property
    def is_fs(self) -> bool:
        return self.kind == "fs"

    def fresh_key(self, stem: str) -> str:
        """``stem`` made unique, keeping its extension: ``a/b.txt`` -> ``a/b-7.txt``."""
        self._seq[0] += 1
        head, dot, ext = stem.rpartition(".")
        if not dot or "/" in ext:
            return f"{stem}-{self._seq[0]}"
        return f"{head}-{self._seq[0]}.{ext}"

    def seed(
        self,
        key: str,
        body: bytes,
        *,
        bucket: str | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        bucket = bucket or self.bucket
        if self.store is None:
            assert self.root is not None
            path = self.root / bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            return
        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = metadata
        self.store.put_object(Bucket=bucket, Key=key, Body=body, **extra)

    def store_requests(self) -> int:
        """Requests that reached the store so far (relay count, or the fs backend's own)."""
        if self.relay is not None:
            return self.relay.count
        return int(self.metric("slipstream_backend_requests_total"))

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.proxy.admin_url, name, **labels)

    def hits(self) -> float:
        return self.metric("slipstream_cache_hits_total")

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until no fill is in flight (each commits to the cache before it ends)."""
        deadline = time.monotonic() + timeout
        while self.metric("slipstream_inflight_fills") > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("fills still in flight")
            time.sleep(0.01)

    def get(self, key: str, headers: dict[str, str] | None = None, method: str = "GET") -> Raw:
        from urllib.parse import quote

        return raw_request(self.proxy.url, method, f"/{self.bucket}/{quote(key)}", headers)

    def store_get(
        self, key: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> Raw | None:
        """The same request answered by the store itself (signed), or None for fs."""
        if self.store is None:
            return None
        return signed_request(self.store, method, self.bucket, key, headers or {})


def signed_request(client: Any, method: str, bucket: str, key: str, headers: dict[str, str]) -> Raw:
    """GetObject/HeadObject through boto3, reported as a :class:`Raw`.

    ``headers`` go out verbatim (added just before signing, so botocore does not reparse
    dates or entity-tags). An error body is rebuilt from the fields botocore parsed.
    """
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    extra_headers = {k: v for k, v in headers.items() if k != "Range"}
    if "Range" in headers:
        params["Range"] = headers["Range"]
    op = client.get_object if method == "GET" else client.head_object

    def add_headers(request: Any, **_: Any) -> None:
        for name, value in extra_headers.items():
            request.headers[name] = value

    event = f"before-sign.s3.{'GetObject' if method == 'GET' else 'HeadObject'}"
    client.meta.events.register(event, add_headers)
    try:
        try:
            resp = op(**params)
        except botocore.exceptions.ClientError as exc:
            meta = exc.response["ResponseMetadata"]
            body = b""
            err = exc.response.get("Error", {})
            if err and method == "GET" and meta["HTTPStatusCode"] not in (304,):
                inner = "".join(f"<{k}>{v}</{k}>" for k, v in err.items())
                body = f'<?xml version="1.0"?><Error>{inner}</Error>'.encode()
            return Raw(meta["HTTPStatusCode"], dict(meta["HTTPHeaders"]), body)
        data = resp["Body"].read() if method == "GET" else b""
        meta = resp["ResponseMetadata"]
        return Raw(meta["HTTPStatusCode"], dict(meta["HTTPHeaders"]), data)
    finally:
        client.meta.events.unregister(event, add_headers)


def aws_env(tmp: Path) -> dict[str, str]:
    """Environment for an isolated aws cli subprocess (no user config, no instance metadata)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="conformance",
        AWS_SECRET_ACCESS_KEY="conformance-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
        HOME=str(tmp),
    )
    return env


@dataclass
class StoreSide:
    """The store half of a proxy-over-one-store fixture: the backend config to give the proxy,
    the env it needs, and the handles the tests use to seed and observe the store."""

    backend: dict[str, Any]
    env: dict[str, str]
    store: Any  # a boto3 client on the store itself (S3 kinds)
    relay: CountingRelay | None  # counts store requests (S3 kinds)
    root: Path | None  # the data directory (fs)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop_thread()


def store_side(
    kind: str, request: pytest.FixtureRequest, root: Path, buckets: Iterable[str]
) -> StoreSide:
    """``kind`` is "fs", "moto" or "seaweedfs"; ``buckets`` are created in the store (or as
    directories under ``root`` for fs). S3 stores sit behind a CountingRelay."""
    if kind == "fs":
        for b in buckets:
            (root / b).mkdir(parents=True)
        return StoreSide({"type": "fs", "root": str(root)}, {}, None, None, root)
    endpoint: S3Endpoint = request.getfixturevalue("moto_server" if kind == "moto" else "seaweedfs")
    store = make_s3_client(endpoint)
    for b in buckets:
        store.create_bucket(Bucket=b)
    relay = CountingRelay(endpoint.url)
    relay.start_thread()
    backend = {
        "type": "s3",
        "endpoint": relay.url,
        "region": endpoint.region,
        "access_key_env": "TEST_STORE_KEY",
        "secret_key_env": "TEST_STORE_SECRET",
    }
    env = {"TEST_STORE_KEY": endpoint.access_key, "TEST_STORE_SECRET": endpoint.secret_key}
    return StoreSide(backend, env, store, relay, None)
