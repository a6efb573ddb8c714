"""The ``cluster:`` section: replicas, the cluster secret, this node's address, and exactly one
membership source (a static list, a DNS name, or etcd). Absent: one node, no cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config_values import FieldReader, read_secret, split_host_port
from proxy.errors import ConfigError

MEMBERSHIP = ("members", "dns", "etcd")


@dataclass(frozen=True, kw_only=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    prefix: str = "/slipstream/"
    ttl: float = 10.0


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    replicas: int = 1
    secret_env: str | None = None
    secret_file: Path | None = None
    self_addr: str  # "host:port": how peers reach this node's S3 listener
    members: tuple[str, ...] | None = None
    dns: str | None = None
    etcd: EtcdConfig | None = None
    # bytes of a local copy of what this node's own clients read of objects it does not own
    # (the cache group quota.LOCAL); 0: none, each such read is streamed from an owner
    local_copy: int = 0

    @property
    def membership(self) -> str:
        return "members" if self.members is not None else "dns" if self.dns else "etcd"

    def secret(self) -> bytes:
        where = "cluster.secret_env" if self.secret_env else "cluster.secret_file"
        value = read_secret(self.secret_env, self.secret_file, where)
        if not value:
            raise ConfigError("cluster.secret_env: the cluster secret is empty or missing")
        return value.encode()


def _etcd(data: Any) -> EtcdConfig:
    r = FieldReader(data, "cluster.etcd")
    endpoints = r.take("endpoints")
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not isinstance(endpoints, list) or not endpoints:
        raise ConfigError("cluster.etcd.endpoints: expected a list of http(s):// URLs")
    for url in endpoints:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"cluster.etcd.endpoints: expected an http(s):// URL, got {url!r}")
    prefix = r.text("prefix", "/slipstream/") or "/slipstream/"
    ttl = r.duration("ttl", 10.0) or 0.0
    r.finish()
    if ttl < 2:
        raise ConfigError("cluster.etcd.ttl: must be at least 2s")
    return EtcdConfig(endpoints=tuple(endpoints), prefix=prefix, ttl=ttl)


def _members(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value:
        raise ConfigError("cluster.members: expected a list of host:port")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"cluster.members[{i}]: expected host:port, got {item!r}")
        split_host_port(item, f"cluster.members[{i}]")
        out.append(item)
    if len(set(out)) != len(out):
        raise ConfigError("cluster.members: a member is listed twice")
    return tuple(out)


def parse_cluster(data: Any, listen: str) -> ClusterConfig | None:
    if data is None:
        return None
    r = FieldReader(data, "cluster")
    replicas = r.integer("replicas", 1, minimum=1)
    secret_env, secret_file = r.text("secret_env"), r.text("secret_file")
    self_addr = r.text("self", listen) or listen
    split_host_port(self_addr, "cluster.self")
    given = [name for name in MEMBERSHIP if r.data.get(name) is not None]
    members = _members(r.take("members")) if "members" in given else None
    dns = r.text("dns")
    etcd = _etcd(r.take("etcd")) if "etcd" in given else None
    local_copy = r.size("local_copy", 0)
    if "secret" in r.data:
        raise ConfigError(
            "cluster.secret: secrets are not read from the config file; use secret_env or "
            "secret_file"
        )
    r.finish()
    if not secret_env and not secret_file:
        raise ConfigError("cluster.secret_env: required (or secret_file): the cluster secret")
    if len(given) != 1:
        raise ConfigError(
            "cluster.members: give exactly one of members, dns or etcd"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if dns is not None:
        split_host_port(dns, "cluster.dns")
    if members is not None and self_addr not in members:
        raise ConfigError(f"cluster.self: {self_addr} is not one of cluster.members")
    return ClusterConfig(
        replicas=replicas,
        secret_env=secret_env,
        secret_file=Path(secret_file) if secret_file else None,
        self_addr=self_addr,
        members=members,
        dns=dns,
        etcd=etcd,
        local_copy=local_copy,
    )
