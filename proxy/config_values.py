"""Value parsers for the configuration: sizes, durations, addresses, secrets, and a reader
that pulls typed fields out of one mapping, naming the field in every error. Pure."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def read_secret(env: str | None, path: Path | None, where: str) -> str | None:
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{where}: environment variable {env} is not set")
        return value
    if path:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret file {path}: {exc.strerror}") from exc
    return None


def parse_size(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size like 10GiB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _SIZE_UNITS:
            raise ConfigError(f"{where}: expected a size like 10GiB, got {value!r}")
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size < 0:
        raise ConfigError(f"{where}: must not be negative")
    return size


@dataclass(frozen=True, kw_only=True)
class SizeOrShare:
    """A size in bytes, or a percentage of a whole known only at run time (a volume's size)."""

    size: int = 0
    percent: float | None = None

    def of(self, whole: int) -> int:
        return int(whole * self.percent / 100) if self.percent is not None else self.size

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.size} bytes"


def parse_size_or_share(value: Any, where: str) -> SizeOrShare:
    """A size like ``2GiB`` or a percentage like ``5%`` (below 100)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value) if isinstance(value, str) else None
    if m is None:
        try:
            return SizeOrShare(size=parse_size(value, where))
        except ConfigError:
            raise ConfigError(
                f"{where}: expected a size like 2GiB or a percentage like 5%, got {value!r}"
            ) from None
    percent = float(m.group(1))
    if percent >= 100:
        raise ConfigError(f"{where}: a percentage must be below 100%, got {value!r}")
    return SizeOrShare(percent=percent)


def parse_duration(value: Any, where: str, *, allow_never: bool = False) -> float | None:
    if allow_never and (value is None or str(value).strip().lower() == "never"):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like 60s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)\s*", str(value))
        if not m:
            hint = " or 'never'" if allow_never else ""
            raise ConfigError(f"{where}: expected a duration like 60s{hint}, got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise ConfigError(f"{where}: must not be negative")
    return seconds


def split_host_port(value: str, where: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FieldReader:
    """Pulls typed fields out of one mapping, naming the field in every error."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def take(self, name: str, default: Any = None) -> Any:
        return self.data.pop(name, default)

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.take(name, default)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{self.path(name)}: expected a string, got {value!r}")

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.take(name, default)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{self.path(name)}: expected an integer >= {minimum}, got {value!r}")
        return value

    def flag(self, name: str, default: bool | None) -> bool | None:
        value = self.take(name, default)
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            value = value.lower() in {"true", "yes", "1"}
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{self.path(name)}: expected true or false, got {value!r}")
        return value

    def choice(self, name: str, default: str | None, choices: tuple[str, ...]) -> Any:
        value = self.take(name, default)
        if value not in choices:
            raise ConfigError(
                f"{self.path(name)}: expected one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def size(self, name: str, default: int) -> int:
        return parse_size(self.take(name, default), self.path(name))

    def size_or_share(self, name: str, default: SizeOrShare) -> SizeOrShare:
        value = self.take(name, None)
        return default if value is None else parse_size_or_share(value, self.path(name))

    def duration(self, name: str, default: Any, *, allow_never: bool = False) -> float | None:
        return parse_duration(self.take(name, default), self.path(name), allow_never=allow_never)

    def finish(self) -> None:
        if self.data:
            unknown = ", ".join(sorted(map(str, self.data)))
            raise ConfigError(f"{self.where or 'config'}: unknown field(s): {unknown}")
