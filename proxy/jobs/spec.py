"""What a warm-up job is asked to do, parsed and validated from the admin API's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config_values import parse_size
from proxy.errors import ConfigError

DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 256
MAX_KEYS = 1_000_000
FIELDS = frozenset(
    {"bucket", "prefix", "keys", "concurrency", "bandwidth", "allow_partial", "verify", "pin"}
)


class SpecError(ValueError):
    """Bad job input; ``field`` names the JSON field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, kw_only=True)
class WarmSpec:
    bucket: str
    prefix: str | None = None  # the selection: every key under prefix ...
    keys: tuple[str, ...] | None = None  # ... or these keys
    concurrency: int = DEFAULT_CONCURRENCY
    bandwidth: int = 0  # bytes per second; 0: no cap
    allow_partial: bool = False  # go on when the selection is larger than the cache's room
    verify: bool = False  # re-list the prefix at the end and fetch what appeared or changed
    pin: bool = False  # pin what the job caches (a prefix job: a pin rule for the prefix)

    def describe(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "keys": len(self.keys) if self.keys is not None else None,
            "concurrency": self.concurrency,
            "bandwidth": self.bandwidth or None,
            "allow_partial": self.allow_partial,
            "verify": self.verify,
            "pin": self.pin,
        }

    def body(self) -> dict[str, Any]:
        """The JSON body that ``parse_warm`` turns back into this spec (kept on disk)."""
        out: dict[str, Any] = {
            "bucket": self.bucket,
            "concurrency": self.concurrency,
            "bandwidth": self.bandwidth,
            "allow_partial": self.allow_partial,
            "verify": self.verify,
            "pin": self.pin,
        }
        if self.keys is not None:
            out["keys"] = list(self.keys)
        else:
            out["prefix"] = self.prefix
        return out


def parse_bandwidth(value: Any) -> int:
    """``"500MB/s"``, ``"1GiB"`` or an int (bytes per second) -> bytes per second."""
    text = value
    if isinstance(value, str) and value.strip().lower().endswith("/s"):
        text = value.strip()[:-2]
    try:
        return parse_size(text, "bandwidth")
    except ConfigError as exc:
        raise SpecError("bandwidth", "expected a rate like 500MB/s") from exc


def parse_warm(body: Any) -> WarmSpec:
    """The JSON body of ``POST /admin/v1/warm`` -> WarmSpec; SpecError names the bad field."""
    if not isinstance(body, Mapping):
        raise SpecError("body", "expected a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise SpecError(str(unknown[0])[:64], "unknown field")
    bucket = body.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        raise SpecError("bucket", "required, a bucket name")
    prefix, keys = body.get("prefix"), body.get("keys")
    if prefix is not None and keys is not None:
        raise SpecError("keys", "give prefix or keys, not both")
    if keys is None:
        if prefix is None:
            prefix = ""
        if not isinstance(prefix, str):
            raise SpecError("prefix", "expected a string")
    else:
        if not isinstance(keys, list) or not keys:
            raise SpecError("keys", "expected a non-empty list of keys")
        if len(keys) > MAX_KEYS:
            raise SpecError("keys", f"at most {MAX_KEYS} keys in one job")
        if not all(isinstance(k, str) and k for k in keys):
            raise SpecError("keys", "every key must be a non-empty string")
    concurrency = body.get("concurrency", DEFAULT_CONCURRENCY)
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        raise SpecError("concurrency", f"expected an integer from 1 to {MAX_CONCURRENCY}")
    bandwidth = body.get("bandwidth")
    allow_partial = body.get("allow_partial", False)
    if not isinstance(allow_partial, bool):
        raise SpecError("allow_partial", "expected true or false")
    verify = body.get("verify", False)
    if not isinstance(verify, bool):
        raise SpecError("verify", "expected true or false")
    pin = body.get("pin", False)
    if not isinstance(pin, bool):
        raise SpecError("pin", "expected true or false")
    if verify and keys is not None:
        raise SpecError("verify", "verify re-lists a prefix: not with keys")
    return WarmSpec(
        bucket=bucket,
        prefix=prefix if keys is None else None,
        keys=tuple(keys) if keys is not None else None,
        concurrency=concurrency,
        bandwidth=0 if bandwidth is None else parse_bandwidth(bandwidth),
        allow_partial=allow_partial,
        verify=verify,
        pin=pin,
    )
