"""The CLI's side of the jobs API: blocking HTTP calls to the admin listener, and the
progress line ``slipstream warm --wait`` draws. Blocking on purpose: the CLI has no loop."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

DEFAULT_ADMIN = "http://127.0.0.1:9901"


class AdminError(RuntimeError):
    """The admin listener refused a call or could not be reached; the message says why."""


class AdminClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{exc.code}: {_error_of(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(f"cannot reach the admin listener at {self.url}: {exc}") from None

    def warm(self, spec: dict[str, Any]) -> str:
        return str(self.call("POST", "/admin/v1/warm", spec)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        got: dict[str, Any] = self.call("GET", f"/admin/v1/jobs/{job_id}")
        return got

    def jobs(self) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.call("GET", "/admin/v1/jobs")["jobs"]
        return got

    def cancel(self, job_id: str) -> dict[str, Any]:
        got: dict[str, Any] = self.call("DELETE", f"/admin/v1/jobs/{job_id}")
        return got


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200]


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix); ValueError otherwise."""
    if not url.startswith("s3://"):
        raise ValueError(f"expected s3://BUCKET/PREFIX, got {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, prefix


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable


def progress_line(job: dict[str, Any]) -> str:
    """One line: objects done of total, bytes, rate, ETA (once the listing is done), failures."""
    done, total = job["objects_done"], job["total_known"]
    total_text = str(total) if job["listing_done"] else f"{total}+"
    eta = ""
    rate = job["objects_per_s"]
    if job["listing_done"] and rate > 0 and job["state"] == "running":
        eta = f", ETA {max(0, total - done) / rate:.0f}s"
    return (
        f"[{job['state']}] {done}/{total_text} objects, {human_bytes(job['bytes_done'])}, "
        f"{human_bytes(job['bytes_per_s'])}/s{eta}, {job['failed']} failed"
    )


def summary(job: dict[str, Any]) -> str:
    lines = [
        f"job {job['id']} {job['state']}: {job['objects_done']} objects "
        f"({job['fetched']} fetched, {job['cached']} already cached), "
        f"{human_bytes(job['bytes_done'])} in {job['elapsed_s']:.1f}s "
        f"({human_bytes(job['bytes_per_s'])}/s); {job['failed']} failed"
    ]
    if job.get("verify"):
        lines.append(f"  verify: {job['verified']} listed again, {job['added']} added or changed")
    if job.get("error") and not job["failed"]:
        lines.append(f"  error: {job['error']}")
    lines += [f"  failed: {f['key']!r}: {f['error']}" for f in job["failures"]]
    return "\n".join(lines)
