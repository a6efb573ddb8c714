"""The ``slipstream`` command: arguments and env -> Config; logging; runs the app."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from proxy import __version__, log
from proxy.config import ENV_PREFIX, Config, load
from proxy.errors import ConfigError, ListenError


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
    except ListenError as exc:
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
    for u in cfg.auth.users:
        allow = ", ".join(f"{b}: {level}" for b, level in u.allow.items()) or "nothing"
        click.echo(
            f"  user {u.access_key} (secret from {u.secret_key_env or u.secret_key_file})"
            f" allow {allow}"
        )
