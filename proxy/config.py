"""Configuration: frozen dataclasses, loaded from YAML, overridden by env, validated at start.

Every field can be set by an environment variable: ``SLIPSTREAM_`` then the field path in upper
case with ``__`` between levels, e.g. ``SLIPSTREAM_CACHE__MAX_SIZE=20GiB`` or
``SLIPSTREAM_BACKENDS__MYSTORE__ENDPOINT=http://...``. Errors name the source and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from proxy.cluster.config import ClusterConfig, parse_cluster
from proxy.config_access import AdminConfig, AuthConfig, parse_admin, parse_auth
from proxy.config_values import (
    FieldReader,
    SizeOrShare,
    is_loopback,
    read_secret,
    split_host_port,
)
from proxy.errors import ConfigError
from proxy.model import valid_bucket_name

ENV_PREFIX = "SLIPSTREAM_"


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    dir: Path = Path("./.slipstream/cache")
    max_size: int = 10 * 1024**3
    # kept free on the volume under ``dir`` by evicting: the cache holds at most
    # min(max_size, what the volume can hold beyond this)
    min_free: SizeOrShare = SizeOrShare(percent=5.0)
    chunk_size: int = 8 * 1024**2
    inline_max: int = 256 * 1024
    metadata_ttl: float | None = 60.0  # None: never revalidate (immutable data)
    stale_if_error: float = 300.0  # serve a stale entry this long past its TTL if the store fails
    max_fills: int = 128  # concurrent store fetches per worker; beyond this: 503 SlowDown
    fill_memory: int = 512 * 1024**2  # chunk buffers of fills per worker; beyond it fills wait
    index_map_size: int = 2 * 1024**3
    # multipart staging (parts of stores without native multipart, parts copied for the
    # cache) untouched this long is removed, as S3's AbortIncompleteMultipartUpload would
    upload_staging_ttl: float = 86400.0
    # client-facing bucket -> the bytes its cached objects may hold at most (pinned included);
    # over it, a fill evicts that bucket's own entries first, never another bucket's
    quotas: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    name: str
    type: Literal["s3", "fs", "azure", "gcs", "webhdfs"]
    # s3
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_env: str | None = None
    secret_key_env: str | None = None
    access_key_file: Path | None = None
    secret_key_file: Path | None = None
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    max_connections: int = 128
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 2
    # fs
    root: Path | None = None
    # azure (account key, SAS token or connection string; each from env or file)
    account_url: str | None = None
    account_name: str | None = None
    account_key_env: str | None = None
    account_key_file: Path | None = None
    sas_token_env: str | None = None
    sas_token_file: Path | None = None
    connection_string_env: str | None = None
    connection_string_file: Path | None = None
    # gcs (endpoint: an emulator's URL)
    project: str | None = None
    credentials_file: Path | None = None
    # webhdfs (WebHDFS on the NameNode, or an HttpFS gateway)
    url: str | None = None
    user: str | None = None
    delegation_token_env: str | None = None
    delegation_token_file: Path | None = None
    kerberos: bool = False

    def secret(self, name: str) -> str | None:
        """The secret ``name`` (e.g. "account_key") from its ``_env`` or ``_file`` field."""
        return read_secret(
            getattr(self, f"{name}_env"), getattr(self, f"{name}_file"), f"backends.{self.name}"
        )

    def credentials(self) -> tuple[str, str] | None:
        """Read the store's key pair from env or files; None means the SDK's default chain."""
        access = read_secret(self.access_key_env, self.access_key_file, f"backends.{self.name}")
        secret = read_secret(self.secret_key_env, self.secret_key_file, f"backends.{self.name}")
        if access is None and secret is None:
            return None
        if access is None or secret is None:
            raise ConfigError(f"backends.{self.name}: give both the access key and the secret key")
        return access, secret


@dataclass(frozen=True, kw_only=True)
class MountConfig:
    name: str
    backend: str
    bucket: str | None = None  # remote bucket; None: the client-facing name
    prefix: str = ""
    metadata_ttl: float | None | Literal["default"] = "default"
    read_only: bool = False  # writes answer AccessDenied
    cacheable: bool = True  # false: pass-through, nothing of this bucket is cached
    prefetch: Literal["off", "listing"] = "off"  # listing: a listing queues its objects' fetch


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    keepalive_timeout: float = 15.0  # idle keep-alive, and the bound on reading a request head
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 100
    max_concurrency: int = 4096
    shutdown_timeout: float = 20.0
    body_idle_timeout: float = 60.0  # a request body that sends nothing this long: RequestTimeout
    domains: tuple[str, ...] = ("localhost",)  # virtual-hosted style: BUCKET.<domain>
    sendfile: bool = True
    hot_objects: int = 64 * 1024 * 1024  # per worker: table of hot inline answers; 0 off


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Serve the S3 listener over HTTPS when both files are given (PEM)."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    access_log: bool = True


@dataclass(frozen=True, kw_only=True)
class Config:
    listen: str = "127.0.0.1:9900"
    admin_listen: str = "127.0.0.1:9901"
    workers: int = 1
    cache: CacheConfig = field(default_factory=CacheConfig)
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    buckets: Mapping[str, MountConfig] = field(default_factory=dict)
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    cluster: ClusterConfig | None = None  # None: one node
    source: str = "<defaults>"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen, "listen")

    @property
    def admin_host_port(self) -> tuple[str, int]:
        return split_host_port(self.admin_listen, "admin_listen")


EMBEDDED_DEFAULT: dict[str, Any] = {
    "backends": {"local": {"type": "fs", "root": "./data"}},
    "buckets": {"*": {"backend": "local"}},
}


def _domains(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"server.domains: expected a list of host names, got {value!r}")
    return tuple(v.lower().strip(".") for v in value)


def _tls(data: Any) -> TlsConfig:
    r = FieldReader(data, "tls")
    cert, key = r.text("cert_file"), r.text("key_file")
    r.finish()
    if bool(cert) != bool(key):
        raise ConfigError("tls: give both cert_file and key_file")
    for name, value in (("cert_file", cert), ("key_file", key)):
        if value and not os.access(value, os.R_OK):
            raise ConfigError(f"tls.{name}: cannot read {value}")
    return TlsConfig(cert_file=Path(cert) if cert else None, key_file=Path(key) if key else None)


def _workers(value: Any) -> int:
    if value in (None, "auto"):
        return max(1, min(os.cpu_count() or 1, 8))
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"workers: expected 'auto' or an integer >= 1, got {value!r}")
    return value


def _quotas(data: Any) -> dict[str, int]:
    r = FieldReader(data, "cache.quotas")
    quotas = {str(name): r.size(name, 0) for name in list(r.data)}
    for name, size in quotas.items():
        if size < 1:
            raise ConfigError(f"cache.quotas.{name}: must be at least 1 byte")
    return quotas


def _check_quotas(cache: CacheConfig, buckets: Mapping[str, MountConfig]) -> None:
    """A quota names a configured bucket (not '*': one quota per client-facing bucket)."""
    for name in cache.quotas:
        if name == "*" or name not in buckets:
            raise ConfigError(
                f"cache.quotas.{name}: no such bucket is configured (a quota names one of"
                " buckets:, not '*')"
            )
        if not buckets[name].cacheable:
            raise ConfigError(f"cache.quotas.{name}: the bucket is not cacheable")


def _cache(data: Any) -> CacheConfig:
    r = FieldReader(data, "cache")
    d = CacheConfig()
    cfg = CacheConfig(
        dir=Path(r.text("dir", str(d.dir)) or d.dir),
        max_size=r.size("max_size", d.max_size),
        min_free=r.size_or_share("min_free", d.min_free),
        chunk_size=r.size("chunk_size", d.chunk_size),
        inline_max=r.size("inline_max", d.inline_max),
        metadata_ttl=r.duration("metadata_ttl", d.metadata_ttl, allow_never=True),
        stale_if_error=r.duration("stale_if_error", d.stale_if_error) or 0.0,
        max_fills=r.integer("max_fills", d.max_fills, minimum=1),
        fill_memory=r.size("fill_memory", d.fill_memory),
        index_map_size=r.size("index_map_size", d.index_map_size),
        upload_staging_ttl=r.duration("upload_staging_ttl", d.upload_staging_ttl) or 0.0,
        quotas=_quotas(r.take("quotas")),
    )
    r.finish()
    if cfg.chunk_size < 64 * 1024:
        raise ConfigError("cache.chunk_size: must be at least 64KiB")
    if cfg.inline_max > cfg.chunk_size:
        raise ConfigError("cache.inline_max: must not exceed cache.chunk_size")
    if cfg.inline_max > 16 * 1024**2:
        raise ConfigError("cache.inline_max: must not exceed 16MiB (values live inside LMDB)")
    if cfg.max_size < cfg.chunk_size:
        raise ConfigError("cache.max_size: must be at least one chunk (cache.chunk_size)")
    if cfg.fill_memory < cfg.chunk_size:
        raise ConfigError("cache.fill_memory: must be at least one chunk (cache.chunk_size)")
    if cfg.upload_staging_ttl < 1:
        raise ConfigError("cache.upload_staging_ttl: must be at least 1s")
    return cfg


def _backend(name: str, data: Any) -> BackendConfig:
    where = f"backends.{name}"
    r = FieldReader(data, where)
    kind = r.choice("type", None, ("s3", "fs", "azure", "gcs", "webhdfs"))

    def opt_path(field_name: str) -> Path | None:
        value = r.text(field_name)
        return Path(value) if value else None

    d = BackendConfig(name=name, type=kind)
    cfg = BackendConfig(
        name=name,
        type=kind,
        endpoint=r.text("endpoint"),
        region=r.text("region", d.region) or d.region,
        access_key_env=r.text("access_key_env"),
        secret_key_env=r.text("secret_key_env"),
        access_key_file=opt_path("access_key_file"),
        secret_key_file=opt_path("secret_key_file"),
        addressing_style=r.choice(
            "addressing_style", d.addressing_style, ("path", "virtual", "auto")
        ),
        max_connections=r.integer("max_connections", d.max_connections, minimum=1),
        connect_timeout=r.duration("connect_timeout", d.connect_timeout) or d.connect_timeout,
        read_timeout=r.duration("read_timeout", d.read_timeout) or d.read_timeout,
        retries=r.integer("retries", d.retries),
        root=opt_path("root"),
        account_url=r.text("account_url"),
        account_name=r.text("account_name"),
        account_key_env=r.text("account_key_env"),
        account_key_file=opt_path("account_key_file"),
        sas_token_env=r.text("sas_token_env"),
        sas_token_file=opt_path("sas_token_file"),
        connection_string_env=r.text("connection_string_env"),
        connection_string_file=opt_path("connection_string_file"),
        project=r.text("project"),
        credentials_file=opt_path("credentials_file"),
        url=r.text("url"),
        user=r.text("user"),
        delegation_token_env=r.text("delegation_token_env"),
        delegation_token_file=opt_path("delegation_token_file"),
        kerberos=bool(r.flag("kerberos", False)),
    )
    for secret_field in (
        "access_key",
        "secret_key",
        "secret",
        "account_key",
        "sas_token",
        "connection_string",
        "delegation_token",
    ):
        if secret_field in r.data:
            raise ConfigError(
                f"{where}.{secret_field}: secrets are not read from the config file; "
                f"use {secret_field}_env or {secret_field}_file"
            )
    r.finish()
    if kind == "fs" and cfg.root is None:
        raise ConfigError(f"{where}.root: required for an fs backend")
    for url_field in ("endpoint", "account_url", "url"):
        value = getattr(cfg, url_field)
        if value and not re.match(r"https?://", value):
            raise ConfigError(f"{where}.{url_field}: expected an http:// or https:// URL")
    if kind == "azure" and not (
        cfg.account_url or cfg.connection_string_env or cfg.connection_string_file
    ):
        raise ConfigError(f"{where}.account_url: required (or connection_string_env/_file)")
    if kind == "webhdfs" and not cfg.url:
        raise ConfigError(f"{where}.url: required for a webhdfs backend (http://namenode:9870)")
    if kind == "webhdfs" and cfg.kerberos:
        raise ConfigError(
            f"{where}.kerberos: Kerberos/SPNEGO is not supported by the webhdfs backend; use a "
            "delegation token (delegation_token_env or delegation_token_file) or user"
        )
    return cfg


def _mount(name: str, data: Any, backends: Mapping[str, BackendConfig]) -> MountConfig:
    where = f"buckets.{name}"
    if name != "*" and not valid_bucket_name(name, min_length=2):
        raise ConfigError(f"{where}: not a valid S3 bucket name")
    r = FieldReader(data, where)
    backend = r.text("backend")
    if not backend:
        raise ConfigError(f"{where}.backend: required")
    if backend not in backends:
        raise ConfigError(f"{where}.backend: no backend named {backend!r}")
    bucket = r.text("bucket")
    prefix = r.text("prefix", "") or ""
    ttl: float | None | Literal["default"] = "default"
    if "metadata_ttl" in r.data:
        ttl = r.duration("metadata_ttl", None, allow_never=True)
    read_only = bool(r.flag("read_only", False))
    cacheable = bool(r.flag("cache", True))
    prefetch = r.choice("prefetch", "off", ("off", "listing"))
    r.finish()
    if name == "*" and bucket:
        raise ConfigError(f"{where}.bucket: the '*' mapping uses the client's bucket name")
    if prefetch == "listing" and not cacheable:
        raise ConfigError(f"{where}.prefetch: listing needs a cached bucket (it has cache: false)")
    if prefix.startswith("/") or "\x00" in prefix or ".." in prefix.split("/"):
        raise ConfigError(f"{where}.prefix: must be relative, without '..' or NUL")
    return MountConfig(
        name=name,
        backend=backend,
        bucket=bucket,
        prefix=prefix,
        metadata_ttl=ttl,
        read_only=read_only,
        cacheable=cacheable,
        prefetch=prefetch,
    )


def _env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for env_name, value in environ.items():
        if not env_name.startswith(ENV_PREFIX) or env_name == f"{ENV_PREFIX}CONFIG":
            continue  # SLIPSTREAM_CONFIG names the file (cli.py), not a field
        parts = [p.lower() for p in env_name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                # env names are upper case; match an existing key case-insensitively
                match = next((k for k in node if str(k).lower() == part), None)
                child = node.get(match) if match is not None else None
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                else:
                    part = match  # type: ignore[assignment]
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            node[parts[-1]] = value


def from_mapping(
    raw: Mapping[str, Any] | None, source: str, environ: Mapping[str, str] | None = None
) -> Config:
    data: dict[str, Any] = dict(raw or {})
    if not data.get("backends") and not data.get("buckets"):
        data["backends"] = {n: dict(b) for n, b in EMBEDDED_DEFAULT["backends"].items()}
        data["buckets"] = {n: dict(b) for n, b in EMBEDDED_DEFAULT["buckets"].items()}
    _env_overrides(data, os.environ if environ is None else environ)
    try:
        return _build(data, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _build(data: dict[str, Any], source: str) -> Config:
    r = FieldReader(data, "")
    listen = r.text("listen", "127.0.0.1:9900") or ""
    admin_listen = r.text("admin_listen", "127.0.0.1:9901") or ""
    split_host_port(listen, "listen")
    split_host_port(admin_listen, "admin_listen")
    workers = _workers(r.take("workers", "auto"))
    cache = _cache(r.take("cache"))

    raw_backends = FieldReader(r.take("backends"), "backends").data
    backends = {str(n): _backend(str(n), b) for n, b in raw_backends.items()}
    raw_buckets = FieldReader(r.take("buckets"), "buckets").data
    if not raw_buckets:
        raise ConfigError("buckets: at least one bucket mapping is required")
    buckets = {str(n): _mount(str(n), m, backends) for n, m in raw_buckets.items()}
    _check_quotas(cache, buckets)

    sr = FieldReader(r.take("server"), "server")
    sd = ServerConfig()
    server = ServerConfig(
        keepalive_timeout=sr.duration("keepalive_timeout", sd.keepalive_timeout) or 0.0,
        max_line_size=sr.size("max_line_size", sd.max_line_size),
        max_field_size=sr.size("max_field_size", sd.max_field_size),
        max_headers=sr.integer("max_headers", sd.max_headers, minimum=8),
        max_concurrency=sr.integer("max_concurrency", sd.max_concurrency, minimum=1),
        shutdown_timeout=sr.duration("shutdown_timeout", sd.shutdown_timeout) or 0.0,
        body_idle_timeout=sr.duration("body_idle_timeout", sd.body_idle_timeout) or 0.0,
        domains=_domains(sr.take("domains", list(sd.domains))),
        sendfile=bool(sr.flag("sendfile", sd.sendfile)),
        hot_objects=sr.size("hot_objects", sd.hot_objects),
    )
    sr.finish()
    if server.body_idle_timeout <= 0:
        raise ConfigError("server.body_idle_timeout: must be more than 0s")

    auth = parse_auth(r.take("auth"))
    admin = parse_admin(r.take("admin"), admin_listen)
    tls = _tls(r.take("tls"))

    lr = FieldReader(r.take("log"), "log")
    ld = LogConfig()
    log = LogConfig(
        level=lr.choice("level", ld.level, ("debug", "info", "warning", "error")),
        format=lr.choice("format", ld.format, ("text", "json")),
        access_log=bool(lr.flag("access_log", ld.access_log)),
    )
    lr.finish()
    cluster = parse_cluster(r.take("cluster"), listen)
    r.finish()

    host, _ = split_host_port(listen, "listen")
    if not is_loopback(host) and not auth.users and not auth.anonymous:
        raise ConfigError(
            f"auth.users: listen {listen} is not a loopback address and no client credentials "
            "are configured; add auth.users, or set auth.anonymous: true to serve anyone who "
            "can reach it"
        )
    return Config(
        listen=listen,
        admin_listen=admin_listen,
        workers=workers,
        cache=cache,
        backends=backends,
        buckets=buckets,
        server=server,
        auth=auth,
        admin=admin,
        tls=tls,
        log=log,
        cluster=cluster,
        source=source,
    )


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate; no path gives the embedded default (./data over an fs backend)."""
    if path is None:
        return from_mapping({}, "<embedded default>", environ)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_mapping(raw, str(path), environ)
