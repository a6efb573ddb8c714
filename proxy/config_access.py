"""Who may do what: the ``auth`` section (client credentials, anonymous grants) and the ``admin``
section (the admin listener's token), parsed and validated; errors name the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from proxy.config_values import FieldReader, is_loopback, read_secret, split_host_port
from proxy.errors import ConfigError
from proxy.model import valid_bucket_name

AccessLevel = Literal["read", "read-write"]


@dataclass(frozen=True, kw_only=True)
class UserConfig:
    """One client credential: the secret stays in its env variable or file until start."""

    access_key: str
    secret_key_env: str | None = None
    secret_key_file: Path | None = None
    allow: Mapping[str, AccessLevel] = field(default_factory=dict)  # bucket or "*" -> level

    def secret(self) -> str:
        """Read the secret key now (raises ConfigError naming the field when it is missing)."""
        source = "secret_key_env" if self.secret_key_env else "secret_key_file"
        where = f"auth.users[{self.access_key}].{source}"
        value = read_secret(self.secret_key_env, self.secret_key_file, where)
        if not value:
            raise ConfigError(f"{where}: the secret key is empty")
        return value


# read-only by convention (a MappingProxyType cannot be pickled for the worker processes)
OPEN_ACCESS: Mapping[str, AccessLevel] = {"*": "read-write"}
READ_EVERYWHERE: Mapping[str, AccessLevel] = {"*": "read"}


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    """``anonymous``: None (unset) lets unsigned requests read and write everything while no
    users are configured (a loopback listener only) and nothing otherwise; True is read on every
    bucket; a mapping grants per bucket (bucket or "*" -> read | read-write); False: nothing."""

    anonymous: bool | Mapping[str, AccessLevel] | None = None
    users: tuple[UserConfig, ...] = ()
    region: str = "us-east-1"  # the region clients sign for (SigV4 credential scope)

    def anonymous_grants(self) -> Mapping[str, AccessLevel] | None:
        """What an unsigned request may touch, or None when unsigned requests are refused."""
        if self.anonymous is None:
            return None if self.users else OPEN_ACCESS
        if self.anonymous is True:
            return READ_EVERYWHERE
        if self.anonymous is False:
            return None
        return self.anonymous


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    """The admin listener's bearer token for routes that change state: required when
    ``admin_listen`` is not a loopback address. Read at start, kept only in memory."""

    token_env: str | None = None
    token_file: Path | None = None

    def token(self) -> str | None:
        """Read the token now (raises ConfigError naming the field when it is missing)."""
        if not self.token_env and not self.token_file:
            return None
        where = "admin.token_env" if self.token_env else "admin.token_file"
        value = read_secret(self.token_env, self.token_file, where)
        if not value:
            raise ConfigError(f"{where}: the token is empty")
        return value


_ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9._\-]{1,128}")
_REGION_RE = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")


def parse_auth(data: Any) -> AuthConfig:
    r = FieldReader(data, "auth")
    raw_anonymous = r.take("anonymous", None)
    anonymous: bool | Mapping[str, AccessLevel] | None
    if raw_anonymous is None or isinstance(raw_anonymous, bool | str):
        anonymous = FieldReader({"anonymous": raw_anonymous}, "auth").flag("anonymous", None)
    else:
        anonymous = _grants(raw_anonymous, "auth.anonymous")
    region = r.text("region", "us-east-1") or ""
    raw_users = r.take("users", None)
    r.finish()
    if not _REGION_RE.fullmatch(region):
        raise ConfigError(f"auth.region: expected a region name like us-east-1, got {region!r}")
    if raw_users is None:
        raw_users = []
    if not isinstance(raw_users, list):
        raise ConfigError("auth.users: expected a list of {access_key, secret_key_env, allow}")
    users: list[UserConfig] = []
    for n, raw in enumerate(raw_users):
        user = _user(raw, f"auth.users[{n}]")
        if any(u.access_key == user.access_key for u in users):
            raise ConfigError(f"auth.users[{n}].access_key: {user.access_key!r} appears twice")
        users.append(user)
    if (anonymous is False or anonymous == {}) and not users:
        raise ConfigError("auth.anonymous: false with no auth.users lets nobody in")
    return AuthConfig(anonymous=anonymous, users=tuple(users), region=region)


def _user(data: Any, where: str) -> UserConfig:
    r = FieldReader(data, where)
    for secret_field in ("secret_key", "secret", "secret_access_key"):
        if secret_field in r.data:
            raise ConfigError(
                f"{where}.{secret_field}: secrets are not read from the config file; "
                "use secret_key_env or secret_key_file"
            )
    access_key = r.text("access_key") or ""
    env = r.text("secret_key_env")
    path = r.text("secret_key_file")
    raw_allow = r.take("allow", None)
    r.finish()
    if not _ACCESS_KEY_RE.fullmatch(access_key):
        raise ConfigError(
            f"{where}.access_key: required; 1-128 of A-Z a-z 0-9 . _ -, got {access_key!r}"
        )
    if bool(env) == bool(path):
        raise ConfigError(
            f"{where}.secret_key_env: give exactly one of secret_key_env and secret_key_file"
        )
    return UserConfig(
        access_key=access_key,
        secret_key_env=env,
        secret_key_file=Path(path) if path else None,
        allow=_grants(raw_allow, f"{where}.allow"),
    )


def _grants(data: Any, where: str) -> dict[str, AccessLevel]:
    """bucket name (or "*") -> read | read-write, each name and level validated."""
    ar = FieldReader(data, where)
    allow: dict[str, AccessLevel] = {}
    for bucket in list(ar.data):
        name = str(bucket)
        if name != "*" and not valid_bucket_name(name, min_length=2):
            raise ConfigError(f"{where}.{name}: not a bucket name or '*'")
        allow[name] = ar.choice(bucket, None, ("read", "read-write"))
    ar.finish()
    return allow


def parse_admin(data: Any, admin_listen: str) -> AdminConfig:
    r = FieldReader(data, "admin")
    env = r.text("token_env")
    path = r.text("token_file")
    r.finish()
    if env and path:
        raise ConfigError("admin.token_env: give one of token_env and token_file, not both")
    admin = AdminConfig(token_env=env or None, token_file=Path(path) if path else None)
    host, _ = split_host_port(admin_listen, "admin_listen")
    if not is_loopback(host) and not (env or path):
        raise ConfigError(
            f"admin.token_env: admin_listen {admin_listen} is not a loopback address; set "
            "admin.token_env (or admin.token_file) to the bearer token its state-changing "
            "routes require, or listen on 127.0.0.1"
        )
    return admin
