"""The ``slipstream`` command: arguments and env -> Config; logging; runs the app."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from proxy import __version__, log
from proxy.config import ENV_PREFIX, Config, load
from proxy.errors import CacheTooNew, ConfigError, ListenError
from proxy.jobs.client import (
    DEFAULT_ADMIN,
    AdminClient,
    AdminError,
    human_bytes,
    progress_line,
    split_s3_url,
    summary,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slipstream")
def main() -> None:
    """Slipstream: an S3-compatible caching proxy that feeds AI/ML training data.

    Point any S3 client at it (aws --endpoint-url http://127.0.0.1:9900, boto3 endpoint_url,
    s3fs client_kwargs) and it serves objects from a local cache, reading through to the real
    store on a miss.
    """


def _load(config: Path | None) -> Config:
    try:
        cfg = load(config)
        for backend in cfg.backends.values():
            backend.credentials()  # a missing secret variable or file fails now, by name
            for name in ("account_key", "sas_token", "connection_string", "delegation_token"):
                backend.secret(name)
        for user in cfg.auth.users:
            user.secret()  # a client's missing secret fails now too (read again at start)
        cfg.admin.token()  # and the admin token's
        if cfg.cluster is not None:
            cfg.cluster.secret()  # and the cluster secret
        return cfg
    except ConfigError as exc:
        click.echo(f"slipstream: invalid configuration: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.option(
    "-c",
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=f"{ENV_PREFIX}CONFIG",
    help="YAML config file. Without one: the embedded "
    "default (every subdirectory of ./data is a bucket, cache in ./.slipstream).",
)
def serve(config: Path | None) -> None:
    """Run the proxy (S3 API on `listen`, metrics and health on `admin_listen`).

    Every config field can be overridden by an environment variable: SLIPSTREAM_ + the field
    path in capitals, with __ between levels, e.g. SLIPSTREAM_CACHE__MAX_SIZE=50GiB.
    """
    cfg = _load(config)
    log.configure(cfg.log.level, cfg.log.format)
    # Imported here, not at the top: the app pulls in aiohttp and the SDKs (over a second),
    # which `check-config` and `--help` do not need.
    from proxy.app import run

    try:
        run(cfg)
    except (ListenError, CacheTooNew) as exc:
        log.server.error("%s", exc)
        sys.exit(1)


@main.command("check-config")
@click.option(
    "-c",
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=f"{ENV_PREFIX}CONFIG",
    help="YAML config file to validate.",
)
def check_config(config: Path | None) -> None:
    """Validate the configuration and print the effective settings (secrets are never read
    into the output: only the names of the variables and files that hold them)."""
    cfg = _load(config)
    click.echo(f"{cfg.source}: OK")
    click.echo(f"  listen {cfg.listen}, admin {cfg.admin_listen}, workers {cfg.workers}")
    click.echo(
        f"  cache {cfg.cache.dir} max_size={cfg.cache.max_size} "
        f"chunk_size={cfg.cache.chunk_size} inline_max={cfg.cache.inline_max} "
        f"metadata_ttl={cfg.cache.metadata_ttl or 'never'}"
    )
    if cfg.cache.quotas:
        click.echo("  quotas " + ", ".join(f"{n}={s}" for n, s in cfg.cache.quotas.items()))
    for b in cfg.backends.values():
        where = b.endpoint or b.root or b.account_url or b.url or "(default endpoint)"
        click.echo(f"  backend {b.name}: {b.type} {where}")
    for m in cfg.buckets.values():
        click.echo(f"  bucket {m.name} -> {m.backend}:{m.bucket or m.name}/{m.prefix}")
    grants = cfg.auth.anonymous_grants()
    anonymous = ", ".join(f"{b}: {level}" for b, level in (grants or {}).items()) or "no"
    click.echo(f"  auth region={cfg.auth.region} anonymous={anonymous}")
    token = cfg.admin.token_env or cfg.admin.token_file
    click.echo(f"  admin token {'from ' + str(token) if token else 'none (loopback only)'}")
    if cfg.cluster is not None:
        c = cfg.cluster
        places = ", ".join(c.members or (c.etcd.endpoints if c.etcd else ())) or c.dns
        click.echo(
            f"  cluster self={c.self_addr} replicas={c.replicas} {c.membership}: {places}"
            f" (secret from {c.secret_env or c.secret_file})"
        )
    for u in cfg.auth.users:
        allow = ", ".join(f"{b}: {level}" for b, level in u.allow.items()) or "nothing"
        click.echo(
            f"  user {u.access_key} (secret from {u.secret_key_env or u.secret_key_file})"
            f" allow {allow}"
        )


ENDED = ("done", "failed", "cancelled")


def _admin_options(fn: Any) -> Any:
    fn = click.option(
        "--token-env",
        metavar="NAME",
        help="Environment variable holding the admin token (sent as a Bearer token).",
    )(fn)
    return click.option(
        "--admin",
        "admin_url",
        default=DEFAULT_ADMIN,
        show_default=True,
        help="The proxy's admin listener.",
    )(fn)


def _client(admin_url: str, token_env: str | None) -> AdminClient:
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise click.UsageError(f"--token-env: the variable {token_env} is not set")
    return AdminClient(admin_url, token)


@main.command()
@click.argument("url", metavar="s3://BUCKET/PREFIX")
@click.option(
    "--manifest",
    type=click.File("r"),
    help="Warm the keys in this file (one a line; PREFIX, if any, goes before each) "
    "instead of every key under PREFIX. '-' reads standard input.",
)
@click.option("--wait", is_flag=True, help="Follow the job to its end, then print a summary.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Objects fetched at once.",
)
@click.option("--bandwidth", metavar="RATE", help="Cap on store reads, e.g. 500MB/s.")
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Go on when the selection is larger than the cache's free room (by default the job "
    "stops, before evicting anything, once the listing shows it cannot fit).",
)
@click.option(
    "--verify",
    is_flag=True,
    help="When the pass ends, list PREFIX again and fetch what appeared or changed since.",
)
@click.option(
    "--pin",
    is_flag=True,
    help="Pin what the job caches (never evicted; see slipstream unpin). A PREFIX job adds a "
    "pin rule, so objects cached under it later are pinned too.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the job as JSON (at the end with --wait)."
)
@_admin_options
def warm(
    url: str,
    manifest: Any,
    wait: bool,
    concurrency: int,
    bandwidth: str | None,
    allow_partial: bool,
    verify: bool,
    pin: bool,
    as_json: bool,
    admin_url: str,
    token_env: str | None,
) -> None:
    """Warm the cache: fetch every object under s3://BUCKET/PREFIX (or the keys of a manifest)
    that is not cached and fresh yet. The proxy runs the job; this command starts it, and with
    --wait follows it. Exits non-zero if any object failed (with --wait).

    \b
    Example: slipstream warm s3://datasets/imagenet/train/ --wait --bandwidth 500MB/s
    """
    try:
        bucket, prefix = split_s3_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    spec: dict[str, Any] = {"bucket": bucket, "concurrency": concurrency}
    if manifest is not None:
        spec["keys"] = [prefix + line.strip() for line in manifest if line.strip()]
        if not spec["keys"]:
            raise click.BadParameter("the manifest lists no keys", param_hint="--manifest")
    else:
        spec["prefix"] = prefix
    if bandwidth:
        spec["bandwidth"] = bandwidth
    if allow_partial:
        spec["allow_partial"] = True
    if verify:
        spec["verify"] = True
    if pin:
        spec["pin"] = True
    client = _client(admin_url, token_env)
    try:
        job_id = client.warm(spec)
        if not wait:
            job = client.job(job_id)
            click.echo(json.dumps(job) if as_json else f"started job {job_id}")
            return
        job = _follow(client, job_id, quiet=as_json)
    except AdminError as exc:
        click.echo(f"slipstream warm: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(job) if as_json else summary(job))
    if job["state"] != "done":
        sys.exit(1)


def _follow(client: AdminClient, job_id: str, *, quiet: bool) -> dict[str, Any]:
    """Poll the job to its end, drawing a progress line (on a TTY) or a line every 10 s."""
    tty = sys.stderr.isatty()
    last_line = 0.0
    while True:
        job = client.job(job_id)
        ended = job["state"] in ENDED
        if not quiet:
            now = time.monotonic()
            if tty:
                click.echo("\r\033[K" + progress_line(job), nl=ended, err=True)
            elif ended or now - last_line >= 10:
                click.echo(progress_line(job), err=True)
                last_line = now
        if ended:
            return job
        time.sleep(0.5)


def _cache_command(action: str, done: str, doc: str) -> None:
    """Define ``slipstream ACTION s3://BUCKET/PREFIX``: POST /admin/v1/ACTION, print what it
    touched (exit 2 if the admin listener refused or could not be reached)."""

    @main.command(action, help=doc)
    @click.argument("url", metavar="s3://BUCKET/PREFIX")
    @click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
    @_admin_options
    def command(url: str, as_json: bool, admin_url: str, token_env: str | None) -> None:
        try:
            bucket, prefix = split_s3_url(url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="URL") from None
        client = _client(admin_url, token_env)
        try:
            got = client.call("POST", f"/admin/v1/{action}", {"bucket": bucket, "prefix": prefix})
        except AdminError as exc:
            click.echo(f"slipstream {action}: {exc}", err=True)
            sys.exit(2)
        if as_json:
            click.echo(json.dumps(got))
        else:
            click.echo(f"{done} {got['objects']} objects ({human_bytes(got['bytes'])}) under {url}")


_cache_command(
    "pin",
    "pinned",
    """Pin every object under s3://BUCKET/PREFIX: cached ones now, others once they are read
    (or warmed). Pinned objects are never evicted; the pin survives restarts. Pinned bytes
    count toward the bucket's cache.quotas entry.

    \b
    Example: slipstream pin s3://datasets/imagenet/val/
    """,
)
_cache_command(
    "unpin",
    "unpinned",
    """Remove the pin of s3://BUCKET/PREFIX (exactly as pinned): its objects become evictable
    again, except those another pin covers. Exits 2 if there is no such pin.""",
)
_cache_command(
    "evict",
    "evicted",
    """Drop the cached copies of every object under s3://BUCKET/PREFIX (pinned ones too; a pin
    stays and applies when they are read again), e.g. after the dataset was rewritten in the
    store. Reads in flight finish; the next read fetches from the store.

    \b
    Example: slipstream evict s3://datasets/imagenet/
    """,
)


@main.command()
@click.argument("job_id", required=False)
@click.option("--cancel", is_flag=True, help="Cancel JOB_ID.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_admin_options
def jobs(
    job_id: str | None, cancel: bool, as_json: bool, admin_url: str, token_env: str | None
) -> None:
    """List the proxy's jobs, or show (or --cancel) one."""
    if cancel and not job_id:
        raise click.UsageError("--cancel needs a JOB_ID")
    client = _client(admin_url, token_env)
    try:
        if job_id:
            job = client.cancel(job_id) if cancel else client.job(job_id)
            click.echo(json.dumps(job) if as_json else summary(job))
            return
        listed = client.jobs()
    except AdminError as exc:
        click.echo(f"slipstream jobs: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(listed))
        return
    for job in listed:
        click.echo(f"{job['id']}  {_selection(job)}  {progress_line(job)}")


def _selection(job: dict[str, Any]) -> str:
    """What a job reads: ``s3://BUCKET/PREFIX``, and how many keys a list of keys names."""
    where = f"s3://{job['bucket']}/{job.get('prefix') or ''}"
    keys = job.get("keys")
    return where if keys is None else f"{where} ({keys} keys)"


@main.group()
def cluster() -> None:
    """The cluster this node belongs to (the cluster: section of the config)."""


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_admin_options
def cluster_status(as_json: bool, admin_url: str, token_env: str | None) -> None:
    """This node's view: members, which are live, self, replicas, and what it caches."""
    try:
        got = _client(admin_url, token_env).call("GET", "/admin/v1/cluster")
    except AdminError as exc:
        click.echo(f"slipstream cluster status: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(got))
        return
    cached = f"{got['cached_objects']} objects, {human_bytes(got['cached_bytes'])}"
    if not got.get("enabled"):
        click.echo(f"no cluster (one node); cached here: {cached}")
        return
    live = set(got["live"])
    click.echo(
        f"self {got['self']}, replicas {got['replicas']}, membership {got['membership']}, "
        f"{len(live)}/{len(got['members'])} live; cached here: {cached}"
    )
    for node in got["nodes"]:
        member = node["address"]
        mark = "live" if node["live"] else "DOWN"
        held = (
            f"{node['cached_objects']} objects, {human_bytes(node['cached_bytes'])}"
            if node["cached_bytes"] is not None
            else "holdings unknown"
        )
        click.echo(
            f"  {member}  {mark}  owns {100 * node['share']:.0f}%  {held}"
            f"{'  (self)' if member == got['self'] else ''}"
        )
