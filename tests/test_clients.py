"""Real S3 tools against the proxy, each at its default settings except the endpoint and
path-style addressing: the aws cli, s3fs/fsspec, s3cmd, rclone and a FUSE mount by s3fs-fuse.

Each runs over two stores: S3 on SeaweedFS, and the embedded default (a config without
backends: the fs backend over ``./data``). The proxy runs with anonymous loopback access, so
any credentials are accepted. What a tool writes is checked in the store itself, and read back
through boto3 as well as through the tool.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.conformance import aws_env, body_of, sha256
from tests.proxyproc import ProxyProcess
from tests.servers import S3Endpoint, make_s3_client

KiB, MiB = 1024, 1024 * 1024
CHUNK = 256 * KiB
ACCESS_KEY, SECRET_KEY = "tool-user", "tool-secret-key"


@dataclass
class T:
    kind: str  # "seaweedfs" | "fs"
    proxy: ProxyProcess
    client: Any  # boto3 through the proxy
    bucket: str
    store: Any | None  # boto3 straight to SeaweedFS; None for fs
    root: Path | None  # the fs data root
    _seq: list[int] = field(default_factory=lambda: [0])

    def prefix(self, tool: str) -> str:
        self._seq[0] += 1
        return f"{tool}-{self._seq[0]}"

    def stored(self, key: str) -> bytes | None:
        if self.store is None:
            assert self.root is not None
            path = self.root / self.bucket / key
            return path.read_bytes() if path.is_file() else None
        try:
            return bytes(self.store.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def via_proxy(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture(scope="module", params=["seaweedfs", "fs"])
def t(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[T]:
    kind: str = request.param
    bucket = f"tools-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp(f"clients-{kind}")
    config: dict[str, Any] = {
        "cache": {"dir": "cache", "chunk_size": CHUNK, "max_size": "512MiB"},
        "log": {"level": "warning", "access_log": False},
    }
    env: dict[str, str] = {}
    store: Any = None
    root: Path | None = None
    if kind == "fs":  # the embedded default: no backends, the fs backend over ./data
        root = workdir / "proxy" / "data"
        (root / bucket).mkdir(parents=True)
    else:
        endpoint: S3Endpoint = request.getfixturevalue("seaweedfs")
        store = make_s3_client(endpoint)
        store.create_bucket(Bucket=bucket)
        config["backends"] = {
            "sw": {
                "type": "s3",
                "endpoint": endpoint.url,
                "access_key_env": "TOOLS_STORE_KEY",
                "secret_key_env": "TOOLS_STORE_SECRET",
            }
        }
        config["buckets"] = {"*": {"backend": "sw"}}
        env = {"TOOLS_STORE_KEY": endpoint.access_key, "TOOLS_STORE_SECRET": endpoint.secret_key}
    proxy = ProxyProcess(config, workdir / "proxy", env)
    try:
        proxy.start()
        yield T(
            kind=kind,
            proxy=proxy,
            client=make_s3_client(proxy.url, ACCESS_KEY, SECRET_KEY),
            bucket=bucket,
            store=store,
            root=root,
        )
    finally:
        proxy.stop()


def _run(
    cmd: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        pytest.skip(f"{binary} is not installed (Debian package; scripts/setup test installs it)")
    return found


# -- the aws cli ------------------------------------------------------------------------------
def _aws(t: T, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "aws"
    env = aws_env(tmp)
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    return _run([str(cli), "--endpoint-url", t.proxy.url, *args], env, timeout=120)


def test_aws_cli_cp_and_s3api(t: T, tmp_path: Path) -> None:
    p = t.prefix("awscli")
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_bytes(b"hello from the aws cli\n")
    big_body = body_of(9 * MiB + 5, 1)  # above the cli's 8 MiB multipart threshold: 2 parts
    big.write_bytes(big_body)
    _ok(_aws(t, tmp_path, "s3", "cp", str(small), f"s3://{t.bucket}/{p}/small.txt"))
    _ok(_aws(t, tmp_path, "s3", "cp", str(big), f"s3://{t.bucket}/{p}/big.bin"))
    assert t.stored(f"{p}/small.txt") == small.read_bytes()
    stored = t.stored(f"{p}/big.bin")
    assert stored is not None and sha256(stored) == sha256(big_body)
    if t.store is not None:  # it went up as a multipart upload
        assert t.store.head_object(Bucket=t.bucket, Key=f"{p}/big.bin")["ETag"].endswith('-2"')
    down = tmp_path / "down"
    _ok(_aws(t, tmp_path, "s3", "cp", f"s3://{t.bucket}/{p}/big.bin", str(down / "big.bin")))
    assert sha256((down / "big.bin").read_bytes()) == sha256(big_body)
    out = _ok(_aws(t, tmp_path, "s3", "cp", f"s3://{t.bucket}/{p}/small.txt", "-"))
    assert out == "hello from the aws cli\n"
    # s3api
    _ok(
        _aws(
            t, tmp_path, "s3api", "put-object", "--bucket", t.bucket, "--key", f"{p}/api.txt",
            "--body", str(small), "--content-type", "text/plain",
        )
    )  # fmt: skip
    got = tmp_path / "api.out"
    _ok(
        _aws(
            t, tmp_path, "s3api", "get-object", "--bucket", t.bucket, "--key", f"{p}/api.txt",
            str(got),
        )
    )  # fmt: skip
    assert got.read_bytes() == small.read_bytes()
    _ok(_aws(t, tmp_path, "s3api", "delete-object", "--bucket", t.bucket, "--key", f"{p}/api.txt"))
    assert t.stored(f"{p}/api.txt") is None
    missing = _aws(
        t, tmp_path, "s3api", "get-object", "--bucket", t.bucket, "--key", f"{p}/api.txt",
        str(got),
    )  # fmt: skip
    assert missing.returncode != 0 and "NoSuchKey" in missing.stderr


def test_aws_cli_sync(t: T, tmp_path: Path) -> None:
    p = t.prefix("sync")
    src = tmp_path / "src"
    files = {"a.txt": b"a" * 10, "dir/b.bin": body_of(CHUNK + 3, 2), "dir/sub/c.txt": b"c"}
    past = time.time() - 120  # sync re-sends a file newer than the object's (whole-second) date
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
        os.utime(src / name, (past, past))
    _ok(_aws(t, tmp_path, "s3", "sync", str(src), f"s3://{t.bucket}/{p}/"))
    assert t.keys(f"{p}/") == sorted(f"{p}/{n}" for n in files)
    for name, data in files.items():
        assert t.stored(f"{p}/{name}") == data
    # change one file (another size), add one, remove one; sync --delete sends only those
    (src / "a.txt").write_bytes(b"a changed")
    (src / "new.txt").write_bytes(b"new")
    (src / "dir/sub/c.txt").unlink()
    out = _ok(_aws(t, tmp_path, "s3", "sync", "--delete", str(src), f"s3://{t.bucket}/{p}/"))
    uploads = sorted(
        Path(line.split()[1]).resolve() for line in out.splitlines() if line.startswith("upload:")
    )
    assert uploads == sorted((src / n).resolve() for n in ("a.txt", "new.txt")), out
    assert "delete:" in out
    want = {"a.txt": b"a changed", "dir/b.bin": files["dir/b.bin"], "new.txt": b"new"}
    assert t.keys(f"{p}/") == sorted(f"{p}/{n}" for n in want)
    assert t.via_proxy(f"{p}/a.txt") == b"a changed"
    # and back down
    dst = tmp_path / "dst"
    _ok(_aws(t, tmp_path, "s3", "sync", f"s3://{t.bucket}/{p}/", str(dst)))
    got = {str(f.relative_to(dst)): f.read_bytes() for f in dst.rglob("*") if f.is_file()}
    assert got == want
    again = _ok(_aws(t, tmp_path, "s3", "sync", f"s3://{t.bucket}/{p}/", str(dst)))
    assert "download:" not in again


# -- s3fs / fsspec ----------------------------------------------------------------------------
def test_fsspec_s3fs(t: T, tmp_path: Path) -> None:
    import s3fs

    p = t.prefix("fsspec")
    fs = s3fs.S3FileSystem(
        endpoint_url=t.proxy.url,
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"region_name": "us-east-1"},
        skip_instance_cache=True,
        use_listings_cache=False,
    )
    base = f"{t.bucket}/{p}"
    fs.pipe(f"{base}/small.txt", b"written by fsspec")
    body = body_of(6 * MiB + 7, 3)
    with fs.open(f"{base}/big.bin", "wb", block_size=5 * MiB) as f:  # a multipart upload
        for i in range(0, len(body), MiB):
            f.write(body[i : i + MiB])
    local = tmp_path / "put.bin"
    local.write_bytes(b"put with fs.put")
    fs.put(str(local), f"{base}/dir/put.bin")
    assert t.stored(f"{p}/small.txt") == b"written by fsspec"
    stored = t.stored(f"{p}/big.bin")
    assert stored is not None and sha256(stored) == sha256(body)
    assert fs.cat(f"{base}/small.txt") == b"written by fsspec"
    assert sha256(fs.cat(f"{base}/big.bin")) == sha256(body)
    with fs.open(f"{base}/big.bin", "rb", block_size=CHUNK, cache_type="none") as f:
        f.seek(5 * MiB - 3)
        assert f.read(10) == body[5 * MiB - 3 : 5 * MiB + 7]
    assert sorted(fs.ls(base, detail=False)) == [
        f"{base}/{n}" for n in ("big.bin", "dir", "small.txt")
    ]
    assert fs.info(f"{base}/big.bin")["size"] == len(body)
    fs.get(f"{base}/dir/put.bin", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == b"put with fs.put"
    fs.rm(f"{base}/small.txt")
    fs.rm(base, recursive=True)
    assert not fs.exists(f"{base}/small.txt")
    assert t.keys(f"{p}/") == []
    assert t.stored(f"{p}/big.bin") is None


# -- s3cmd ------------------------------------------------------------------------------------
def _s3cmd_config(t: T, tmp: Path) -> Path:
    host = t.proxy.config["listen"]
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["default"] = {
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "host_base": host,
        "host_bucket": host,  # no %(bucket)s: path-style
        "use_https": "False",
        "signature_v2": "False",
        "bucket_location": "us-east-1",
        "check_ssl_certificate": "False",
        "progress_meter": "False",
    }
    path = tmp / "s3cmd.cfg"
    with open(path, "w") as f:
        cfg.write(f)
    return path


def test_s3cmd(t: T, tmp_path: Path) -> None:
    s3cmd = _need("s3cmd")
    cfg = _s3cmd_config(t, tmp_path)
    env = {**os.environ, "HOME": str(tmp_path)}
    p = t.prefix("s3cmd")

    def run(*args: str) -> str:
        return _ok(_run([s3cmd, "-c", str(cfg), *args], env))

    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_bytes(b"hello from s3cmd\n")
    big_body = body_of(6 * MiB + 1, 4)
    big.write_bytes(big_body)
    run("put", str(small), f"s3://{t.bucket}/{p}/small.txt")
    run("put", "--multipart-chunk-size-mb=5", str(big), f"s3://{t.bucket}/{p}/big.bin")
    assert t.stored(f"{p}/small.txt") == small.read_bytes()
    stored = t.stored(f"{p}/big.bin")
    assert stored is not None and sha256(stored) == sha256(big_body)
    out = tmp_path / "out"
    out.mkdir()
    run("get", f"s3://{t.bucket}/{p}/small.txt", str(out / "small.txt"))
    run("get", f"s3://{t.bucket}/{p}/big.bin", str(out / "big.bin"))
    assert (out / "small.txt").read_bytes() == small.read_bytes()
    assert sha256((out / "big.bin").read_bytes()) == sha256(big_body)
    listing = run("ls", f"s3://{t.bucket}/{p}/")
    assert sorted(line.split()[-1] for line in listing.splitlines()) == [
        f"s3://{t.bucket}/{p}/big.bin",
        f"s3://{t.bucket}/{p}/small.txt",
    ]
    run("del", f"s3://{t.bucket}/{p}/small.txt")
    assert t.stored(f"{p}/small.txt") is None
    assert t.keys(f"{p}/") == [f"{p}/big.bin"]


# -- rclone -----------------------------------------------------------------------------------
def test_rclone(t: T, tmp_path: Path) -> None:
    rclone = _need("rclone")
    conf = tmp_path / "rclone.conf"
    conf.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env |= {
        "HOME": str(tmp_path),
        "RCLONE_CONFIG": str(conf),
        "RCLONE_CONFIG_SLIP_TYPE": "s3",
        "RCLONE_CONFIG_SLIP_PROVIDER": "Other",
        "RCLONE_CONFIG_SLIP_ENDPOINT": t.proxy.url,
        "RCLONE_CONFIG_SLIP_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_SLIP_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_SLIP_REGION": "us-east-1",
        "RCLONE_CONFIG_SLIP_FORCE_PATH_STYLE": "true",
    }
    p = t.prefix("rclone")
    remote = f"slip:{t.bucket}/{p}"

    def run(*args: str) -> str:
        return _ok(_run([rclone, *args], env))

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello from rclone\n")
    (src / "sub" / "b.bin").write_bytes(body_of(CHUNK * 2 + 1, 5))
    big_body = body_of(6 * MiB + 9, 6)
    (tmp_path / "big.bin").write_bytes(big_body)
    run("copy", str(src), remote)
    run("copyto", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M",
        str(tmp_path / "big.bin"), f"{remote}/big.bin")  # fmt: skip
    assert t.stored(f"{p}/a.txt") == b"hello from rclone\n"
    assert t.stored(f"{p}/sub/b.bin") == body_of(CHUNK * 2 + 1, 5)
    stored = t.stored(f"{p}/big.bin")
    assert stored is not None and sha256(stored) == sha256(big_body)
    listing = run("ls", remote)
    sizes = {line.split(maxsplit=1)[1]: int(line.split()[0]) for line in listing.splitlines()}
    assert sizes == {"a.txt": 18, "sub/b.bin": CHUNK * 2 + 1, "big.bin": len(big_body)}
    assert run("cat", f"{remote}/a.txt") == "hello from rclone\n"
    # a check against the local tree: sizes and MD5s (ETags) agree
    run("check", str(src), remote, "--one-way")
    run("delete", f"{remote}/sub")
    run("deletefile", f"{remote}/a.txt")
    assert t.keys(f"{p}/") == [f"{p}/big.bin"]
    assert t.stored(f"{p}/a.txt") is None


# -- a FUSE mount with s3fs-fuse --------------------------------------------------------------
def _unmount(mnt: Path) -> None:
    for cmd in (["fusermount", "-u", str(mnt)], ["umount", str(mnt)], ["umount", "-l", str(mnt)]):
        if not os.path.ismount(mnt):
            return
        if shutil.which(cmd[0]):
            subprocess.run(cmd, capture_output=True, timeout=30, check=False)


@pytest.mark.may_skip("FUSE needs /dev/fuse and mount rights, which a container often lacks")
def test_s3fs_fuse_mount(t: T, tmp_path: Path) -> None:
    s3fs_bin = _need("s3fs")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts are not possible here")
    pw = tmp_path / "passwd"
    pw.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
    pw.chmod(0o600)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "s3fs.log"
    cmd = [
        s3fs_bin, t.bucket, str(mnt), "-f",
        "-o", f"url={t.proxy.url}",
        "-o", "use_path_request_style",
        "-o", f"passwd_file={pw}",
        "-o", "endpoint=us-east-1",
        "-o", "stat_cache_expire=1",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                text = log.read_text(errors="replace")
                if any(s in text for s in ("ermission", "not permitted", "fuse: device")):
                    pytest.skip(f"FUSE mounting is not permitted here: {text[-300:]}")
                pytest.fail(f"s3fs exited with {proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"s3fs did not mount:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        p = t.prefix("fuse")
        d = mnt / p
        d.mkdir()
        (d / "hello.txt").write_bytes(b"written through FUSE\n")
        body = body_of(11 * MiB + 3, 7)  # above s3fs's 10 MiB multipart size
        with open(d / "big.bin", "wb") as f:
            for i in range(0, len(body), MiB):
                f.write(body[i : i + MiB])
        assert sorted(os.listdir(d)) == ["big.bin", "hello.txt"]
        assert (d / "hello.txt").read_bytes() == b"written through FUSE\n"
        assert sha256((d / "big.bin").read_bytes()) == sha256(body)
        assert (d / "big.bin").stat().st_size == len(body)
        # what the mount wrote is in the store, and readable by other clients
        assert t.stored(f"{p}/hello.txt") == b"written through FUSE\n"
        stored = t.stored(f"{p}/big.bin")
        assert stored is not None and sha256(stored) == sha256(body)
        assert t.via_proxy(f"{p}/hello.txt") == b"written through FUSE\n"
        # overwrite and remove through the mount
        (d / "hello.txt").write_bytes(b"v2")
        assert t.via_proxy(f"{p}/hello.txt") == b"v2"
        (d / "big.bin").unlink()
        assert t.stored(f"{p}/big.bin") is None
        assert sorted(os.listdir(d)) == ["hello.txt"]
    finally:
        _unmount(mnt)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not os.path.ismount(mnt)
