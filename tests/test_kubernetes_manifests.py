"""config/kubernetes/: the manifests parse, and what they say matches what Slipstream does.

Each workload's embedded config goes through the real loader (``proxy.config.from_mapping``)
with the environment the container would have (the image's ENV from the Dockerfile, then the
container's env with Kubernetes' ``$(VAR)`` expansion), and through ``slipstream
check-config``. The checks are functions of one parsed manifest file, so that
``test_a_drifted_manifest_fails`` can show that each of them notices a change.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from proxy.admin import AdminAuth, Health, build_admin_app
from proxy.config import Config, from_mapping
from proxy.config_values import parse_size
from proxy.errors import ConfigError
from tests.proxyproc import REPO_ROOT

K8S = REPO_ROOT / "config" / "kubernetes"
MANIFESTS = ("sidecar.yaml", "cluster-dns.yaml", "cluster-etcd.yaml")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
POD_IP = "10.1.2.3"
WORKER_STOP_MARGIN = 5.0  # proxy/app.py: workers.stop(shutdown_timeout + 5)

Doc = dict[str, Any]
Mutation = Callable[[list[Doc]], None]


def _image_env() -> dict[str, str]:
    """The Dockerfile's ENV (the runtime stage's, the last one): the container starts with it."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("FROM "):
            env = {}
        if line.startswith("ENV "):
            for pair in line[4:].split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(value: str) -> int:
    """A Kubernetes size (50Gi, 200G) in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]i?)?", value)
    assert m, f"not a size quantity: {value!r}"
    return int(m.group(1)) * UNITS[m.group(2) or ""]


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variables: $(NAME) of an earlier entry; $$ escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


@dataclass
class Manifest:
    """One file's documents, its workload, the Slipstream container and its effective config."""

    name: str
    docs: list[Doc]

    def kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, name: str) -> Doc:
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: no single {kind} named {name!r}"
        return found[0]

    @property
    def workload(self) -> Doc:
        found = [d for d in self.docs if d["kind"] in WORKLOADS]
        assert len(found) == 1, f"{self.name}: expected one workload, got {len(found)}"
        return found[0]

    @property
    def pod(self) -> Doc:
        spec: Doc = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Doc:
        every = self.pod.get("initContainers", []) + self.pod["containers"]
        found: list[Doc] = [c for c in every if c["name"] == "slipstream"]
        assert len(found) == 1, f"{self.name}: no single container named slipstream"
        return found[0]

    def env(self) -> dict[str, str]:
        """The container's environment at run time: image ENV, then its env, expanded."""
        env = _image_env()
        for entry in self.container.get("env", []):
            source = entry.get("valueFrom")
            if source is None:
                env[entry["name"]] = _expand(str(entry.get("value", "")), env)
            elif "fieldRef" in source:
                assert source["fieldRef"]["fieldPath"] == "status.podIP", entry
                env[entry["name"]] = POD_IP
            else:
                ref = source["secretKeyRef"]
                env[entry["name"]] = f"secret-{ref['name']}-{ref['key']}"
        return env

    def config_text(self) -> str:
        """The ConfigMap file that SLIPSTREAM_CONFIG names, through the container's mounts."""
        path = Path(self.env()["SLIPSTREAM_CONFIG"])
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        assert str(path.parent) in mounts, f"{self.name}: nothing is mounted at {path.parent}"
        volume = self.volume(mounts[str(path.parent)])
        configmap = self.named("ConfigMap", volume["configMap"]["name"])
        text: str = configmap["data"][path.name]
        return text

    def volume(self, name: str) -> Doc:
        found: list[Doc] = [v for v in self.pod.get("volumes", []) if v["name"] == name]
        assert len(found) == 1, f"{self.name}: no single volume named {name!r}"
        return found[0]

    def config(self, environ: dict[str, str] | None = None) -> Config:
        raw = yaml.safe_load(self.config_text())
        env = self.env() if environ is None else environ
        return from_mapping(raw, f"{self.name} (ConfigMap)", env)

    def port(self, ref: int | str) -> int:
        """A probe's or Service's port (a number or a name) as one the container declares."""
        ports = self.container["ports"]
        found = [p["containerPort"] for p in ports if ref in (p.get("name"), p["containerPort"])]
        assert found, f"{self.name}: the container declares no port {ref!r}"
        return int(found[0])


def load(name: str) -> Manifest:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    return Manifest(name, docs)


# -- the checks ---------------------------------------------------------------------------------


def check_shapes(m: Manifest) -> None:
    for doc in m.docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{m.name}: {doc}"
        assert doc.get("metadata", {}).get("name"), f"{m.name}: a {doc['kind']} without a name"
    pod = m.pod
    for c in pod.get("initContainers", []) + pod["containers"]:
        assert c.get("name") and c.get("image"), f"{m.name}: a container without name or image"
    labels = m.workload["spec"]["template"]["metadata"]["labels"]
    selector = m.workload["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), f"{m.name}: the selector misses the pod labels"


def check_probes(m: Manifest) -> None:
    """Liveness on /healthz, readiness (and startup) on /readyz, on the admin listener's port:
    one the container declares and the config listens on, on an address the kubelet reaches."""
    cfg = m.config()
    host, admin_port = cfg.admin_host_port
    assert host in ("0.0.0.0", "::", ""), f"{m.name}: the kubelet cannot reach admin {host}"
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"}
    for probe, path in expected.items():
        if probe == "startupProbe" and probe not in m.container:
            continue
        get = m.container[probe]["httpGet"]
        assert get["path"] == path, f"{m.name}: {probe} asks {get['path']}, not {path}"
        assert m.port(get["port"]) == admin_port, f"{m.name}: {probe} is not on {cfg.admin_listen}"
    s3_port = m.port("s3")
    assert s3_port == cfg.listen_host_port[1], f"{m.name}: port s3 is not {cfg.listen}"


def check_file_agrees_with_env(m: Manifest) -> None:
    """The image's ENV overrides the file's listen fields: the two must say the same."""
    alone, effective = m.config(environ={}), m.config()
    assert alone.listen == effective.listen, f"{m.name}: env moves listen to {effective.listen}"
    assert alone.admin_listen == effective.admin_listen, f"{m.name}: env moves admin_listen"
    assert alone.cache.dir == effective.cache.dir, f"{m.name}: env moves cache.dir"


def check_grace(m: Manifest) -> None:
    drain = m.config().server.shutdown_timeout + WORKER_STOP_MARGIN
    grace = m.pod["terminationGracePeriodSeconds"]
    assert grace > drain, f"{m.name}: grace {grace}s is not longer than the drain ({drain}s)"


def env_names(cfg: Config) -> set[str]:
    """Every environment variable the config reads a secret from."""
    names = {u.secret_key_env for u in cfg.auth.users} | {cfg.admin.token_env}
    for b in cfg.backends.values():
        names |= {getattr(b, f) for f in vars(b) if f.endswith("_env")}
    if cfg.cluster is not None:
        names.add(cfg.cluster.secret_env)
    return {n for n in names if n}


def check_env(m: Manifest) -> None:
    """Each variable the config names is set by the container, from a Secret."""
    declared = {e["name"]: e for e in m.container["env"]}
    for name in env_names(m.config()):
        assert name in declared, f"{m.name}: the config reads {name}; the container does not set it"
        assert "secretKeyRef" in declared[name].get("valueFrom", {}), f"{m.name}: {name} in clear"
    secrets = load("secrets.example.yaml")
    for entry in declared.values():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            example = secrets.named("Secret", ref["name"])
            assert ref["key"] in example["stringData"], f"{m.name}: {ref} is not in the example"


def check_cache_volume(m: Manifest) -> None:
    """The cache dir is a volume (emptyDir or a claim) larger than cache.max_size."""
    cfg = m.config()
    mounts = {m_["mountPath"]: m_["name"] for m_ in m.container["volumeMounts"]}
    name = mounts.get(str(cfg.cache.dir))
    assert name, f"{m.name}: no volume is mounted at cache.dir {cfg.cache.dir}"
    claims = {c["metadata"]["name"]: c for c in m.workload["spec"].get("volumeClaimTemplates", [])}
    if name in claims:
        size = claims[name]["spec"]["resources"]["requests"]["storage"]
    else:
        size = m.volume(name)["emptyDir"]["sizeLimit"]
    assert cfg.cache.max_size < _quantity(size), f"{m.name}: max_size exceeds the volume {size}"


def check_sidecar(m: Manifest) -> None:
    """A native sidecar on loopback, and the trainer's SDK pointed at it."""
    sidecars = [c for c in m.pod.get("initContainers", []) if c["name"] == "slipstream"]
    assert sidecars and sidecars[0].get("restartPolicy") == "Always", f"{m.name}: not a sidecar"
    cfg = m.config()
    trainer = [c for c in m.pod["containers"] if c["name"] != "slipstream"]
    assert trainer, f"{m.name}: no training container"
    env = {e["name"]: e.get("value") for e in trainer[0]["env"]}
    url = urlsplit(env["AWS_ENDPOINT_URL"])
    assert url.hostname in ("127.0.0.1", "localhost"), f"{m.name}: {url.hostname}"
    assert url.port == cfg.listen_host_port[1], f"{m.name}: the trainer is not on {cfg.listen}"
    assert cfg.listen_host_port[0] == "127.0.0.1", f"{m.name}: the sidecar leaves the loopback"


def check_cluster_self(m: Manifest) -> None:
    """Peers reach a pod at its own IP and the S3 port; the config alone would say 0.0.0.0."""
    cfg = m.config()
    assert cfg.cluster is not None, f"{m.name}: no cluster section"
    addr = cfg.cluster.self_addr
    assert addr == f"{POD_IP}:{cfg.listen_host_port[1]}", f"{m.name}: self is {addr}"
    assert cfg.cluster.replicas == 2


def check_headless_service(m: Manifest) -> None:
    """The DNS membership name is the headless Service's, which lists the ready pods on the port
    the peers use (the S3 listener's)."""
    cfg = m.config()
    assert cfg.cluster is not None and cfg.cluster.dns, f"{m.name}: no cluster.dns"
    host, _, port = cfg.cluster.dns.rpartition(":")
    svc_name = host.split(".")[0]
    assert m.workload["spec"]["serviceName"] == svc_name, f"{m.name}: serviceName is not {host}"
    svc = m.named("Service", svc_name)
    assert svc["spec"]["clusterIP"] == "None", f"{m.name}: {svc_name} is not headless"
    assert svc["spec"]["publishNotReadyAddresses"] is False, f"{m.name}: lists unready pods"
    labels = m.workload["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items(), f"{m.name}: selects other pods"
    assert [p["port"] for p in svc["spec"]["ports"]] == [int(port)], f"{m.name}: svc port"
    assert m.port(svc["spec"]["ports"][0]["targetPort"]) == int(port) == cfg.listen_host_port[1]


def check_client_services(m: Manifest) -> None:
    """Every Service selects the workload's pods and sends to its S3 port."""
    labels = m.workload["spec"]["template"]["metadata"]["labels"]
    cfg = m.config()
    for svc in m.kind("Service"):
        name = svc["metadata"]["name"]
        assert svc["spec"]["selector"].items() <= labels.items(), f"{name} selects other pods"
        for p in svc["spec"]["ports"]:
            assert m.port(p["targetPort"]) == cfg.listen_host_port[1], f"{name}: not port s3"


def check_etcd(m: Manifest) -> None:
    cfg = m.config()
    assert cfg.cluster is not None and cfg.cluster.etcd is not None, f"{m.name}: no cluster.etcd"
    assert cfg.cluster.etcd.prefix.endswith("/")
    assert m.pod["terminationGracePeriodSeconds"] > cfg.cluster.etcd.ttl


COMMON: tuple[Callable[[Manifest], None], ...] = (
    check_shapes,
    check_probes,
    check_file_agrees_with_env,
    check_grace,
    check_env,
    check_cache_volume,
    check_client_services,
)
CHECKS: dict[str, tuple[Callable[[Manifest], None], ...]] = {
    "sidecar.yaml": (*COMMON, check_sidecar),
    "cluster-dns.yaml": (*COMMON, check_cluster_self, check_headless_service),
    "cluster-etcd.yaml": (*COMMON, check_cluster_self, check_etcd),
}


def run_checks(m: Manifest) -> None:
    for check in CHECKS[m.name]:
        check(m)


# -- the tests ----------------------------------------------------------------------------------


def test_every_file_is_covered() -> None:
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(
        [*MANIFESTS, "secrets.example.yaml"]
    )
    for doc in load("secrets.example.yaml").docs:
        assert doc["kind"] == "Secret" and doc["apiVersion"] == "v1"


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_proxy(name: str) -> None:
    run_checks(load(name))


def test_probe_paths_are_admin_routes() -> None:
    """/healthz and /readyz are routes of the admin listener (not of the S3 one)."""
    app = build_admin_app(Health(), CollectorRegistry(), dict, AdminAuth())
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert {"/healthz", "/readyz"} <= paths


@pytest.mark.parametrize("name", MANIFESTS)
def test_check_config_accepts_the_embedded_config(name: str, tmp_path: Path) -> None:
    """`slipstream check-config` with the container's environment, secrets included."""
    m = load(name)
    config = tmp_path / "slipstream.yaml"
    config.write_text(m.config_text())
    env = {**os.environ, **m.env(), "SLIPSTREAM_CONFIG": str(config)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    cfg = m.config()
    assert f"listen {cfg.listen}, admin {cfg.admin_listen}" in done.stdout
    if cfg.cluster is not None:
        assert f"cluster self={POD_IP}:" in done.stdout


def _set(path: str, value: Any) -> Mutation:
    """A mutation: set ``value`` at ``path`` (kind/dotted.keys, [n] for list items)."""
    kind, _, keys = path.partition("/")

    def mutate(docs: list[Doc]) -> None:
        node: Any = next(d for d in docs if d["kind"] == kind)
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", keys)
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value

    return mutate


def _configmap(old: str, new: str) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        assert old in cm["data"]["slipstream.yaml"]
        cm["data"]["slipstream.yaml"] = cm["data"]["slipstream.yaml"].replace(old, new)

    return mutate


def _env(kind: str, var: str, *, value: str | None = None, key: str | None = None) -> Mutation:
    """A mutation of the slipstream container's env entry ``var``: its value or Secret key."""

    def mutate(docs: list[Doc]) -> None:
        m = Manifest("", docs)
        assert m.workload["kind"] == kind
        entry = next(e for e in m.container["env"] if e["name"] == var)
        if key is not None:
            entry["valueFrom"]["secretKeyRef"]["key"] = key
        else:
            entry["value"] = value

    return mutate


def _rename_env(var: str, new: str) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        entry = next(e for e in Manifest("", docs).container["env"] if e["name"] == var)
        entry["name"] = new

    return mutate


def _selector(component: str) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        svc = next(d for d in docs if d["kind"] == "Service")
        svc["spec"]["selector"]["app.kubernetes.io/component"] = component

    return mutate


POD = "spec.template.spec"
SIDECAR = f"Deployment/{POD}.initContainers.[0]"
STS = f"StatefulSet/{POD}.containers.[0]"
DS = f"DaemonSet/{POD}.containers.[0]"
DRIFTS: dict[str, tuple[str, Mutation, str]] = {
    "liveness path": (
        "sidecar.yaml",
        _set(f"{SIDECAR}.livenessProbe.httpGet.path", "/health"),
        "asks /health,",
    ),
    "readiness path": (
        "cluster-dns.yaml",
        _set(f"{STS}.readinessProbe.httpGet.path", "/healthz"),
        "readinessProbe asks /healthz",
    ),
    "startup path": (
        "cluster-etcd.yaml",
        _set(f"{DS}.startupProbe.httpGet.path", "/"),
        "startupProbe asks /,",
    ),
    "probe on the S3 port": (
        "sidecar.yaml",
        _set(f"{SIDECAR}.readinessProbe.httpGet.port", "s3"),
        "readinessProbe is not on",
    ),
    "undeclared probe port": (
        "cluster-etcd.yaml",
        _set(f"{DS}.livenessProbe.httpGet.port", 9902),
        "declares no port 9902",
    ),
    "admin on loopback": (
        "sidecar.yaml",
        _configmap("0.0.0.0:9901", "127.0.0.1:9901"),
        "moves admin_listen",
    ),
    "not a native sidecar": (
        "sidecar.yaml",
        _set(f"{SIDECAR}.restartPolicy", "OnFailure"),
        "not a sidecar",
    ),
    "short grace": (
        "cluster-dns.yaml",
        _set(f"StatefulSet/{POD}.terminationGracePeriodSeconds", 20),
        "grace 20s",
    ),
    "longer drain": (
        "cluster-etcd.yaml",
        _configmap("shutdown_timeout: 20s", "shutdown_timeout: 60s"),
        "not longer than the drain",
    ),
    "secret the container lacks": (
        "cluster-dns.yaml",
        _configmap("CLUSTER_SECRET", "PEER_SECRET"),
        "reads PEER_SECRET",
    ),
    "secret env renamed": (
        "cluster-dns.yaml",
        _rename_env("CLUSTER_SECRET", "CLUSTER_KEY"),
        "reads CLUSTER_SECRET",
    ),
    "unknown Secret key": (
        "sidecar.yaml",
        _env("Deployment", "STORE_SECRET_KEY", key="secret"),
        "not in the example",
    ),
    "env overrides listen": (
        "cluster-dns.yaml",
        _env("StatefulSet", "SLIPSTREAM_LISTEN", value="0.0.0.0:9000"),
        "is not 0.0.0.0:9000",
    ),
    "self not the pod IP": (
        "cluster-etcd.yaml",
        _env("DaemonSet", "SLIPSTREAM_CLUSTER__SELF", value="0.0.0.0:9900"),
        "self is 0.0.0.0:9900",
    ),
    "self on another port": (
        "cluster-dns.yaml",
        _env("StatefulSet", "SLIPSTREAM_CLUSTER__SELF", value="$(POD_IP):9901"),
        "self is 10.1.2.3:9901",
    ),
    "dns name": (
        "cluster-dns.yaml",
        _configmap("dns: slipstream-headless:", "dns: slipstream:"),
        "serviceName is not",
    ),
    "dns port": (
        "cluster-dns.yaml",
        _configmap("slipstream-headless:9900", "slipstream-headless:9000"),
        "svc port",
    ),
    "unready pods listed": (
        "cluster-dns.yaml",
        _set("Service/spec.publishNotReadyAddresses", True),
        "lists unready pods",
    ),
    "not headless": (
        "cluster-dns.yaml",
        _set("Service/spec.clusterIP", "10.0.0.1"),
        "is not headless",
    ),
    "service selects other pods": ("cluster-dns.yaml", _selector("other"), "selects other pods"),
    "trainer off the sidecar": (
        "sidecar.yaml",
        _set(f"Deployment/{POD}.containers.[0].env.[0].value", "http://127.0.0.1:9000"),
        "trainer is not on",
    ),
    "cache larger than its volume": (
        "sidecar.yaml",
        _configmap("max_size: 40GiB", "max_size: 60GiB"),
        "exceeds the volume",
    ),
    "cache off its volume": (
        "cluster-dns.yaml",
        _configmap("dir: /var/lib/slipstream/cache", "dir: /tmp/c"),
        "moves cache.dir",
    ),
    "invalid config": ("cluster-etcd.yaml", _configmap("ttl: 10s", "ttl: 1s"), "cluster.etcd.ttl"),
}


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_a_drifted_manifest_fails(drift: str) -> None:
    """Each check notices its kind of drift: the same checks fail on a changed copy."""
    name, mutate, says = DRIFTS[drift]
    docs = copy.deepcopy(load(name).docs)
    mutate(docs)
    with pytest.raises((AssertionError, ConfigError), match=re.escape(says)):
        run_checks(Manifest(name, docs))


def test_kubernetes_quantities() -> None:
    assert _quantity("50Gi") == 50 * 1024**3 == parse_size("50GiB", "x")
    assert _quantity("200G") == 200 * 1000**3
