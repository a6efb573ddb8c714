"""The optional TLS listener: S3 over HTTPS with a configured certificate; plain HTTP to it
fails; a half-given or unreadable TLS config fails at start, naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from tests.conftest import ProxyFactory


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_s3_over_https(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    (tmp_path / "data" / "demo").mkdir(parents=True)
    proxy = proxy_factory(
        {
            "workers": 1,
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "cache": {"dir": str(tmp_path / "cache")},
            "backends": {"local": {"type": "fs", "root": str(tmp_path / "data")}},
            "buckets": {"*": {"backend": "local"}},
        }
    )
    https = proxy.url.replace("http://", "https://")
    client = boto3.client(
        "s3",
        endpoint_url=https,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        verify=str(cert),
        config=Config(s3={"addressing_style": "path"}),
    )
    client.put_object(Bucket="demo", Key="secret.txt", Body=b"over tls")
    assert client.get_object(Bucket="demo", Key="secret.txt")["Body"].read() == b"over tls"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{proxy.url}/demo/secret.txt", timeout=5)


def test_tls_config_errors_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"tls: {{cert_file: {tmp_path / 'missing.pem'}, key_file: {tmp_path / 'k'}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "tls.cert_file" in done.stderr
    cfg.write_text(f"tls: {{cert_file: {cfg}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "tls: give both cert_file and key_file" in done.stderr
