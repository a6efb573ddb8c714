"""Peer traffic between nodes, authenticated with the cluster secret.

A peer request carries ``x-slipstream-time`` (unix seconds), ``x-slipstream-nonce`` and
``x-slipstream-signature``: hex HMAC-SHA256 over method, path with query, time and nonce.
The receiver refuses a time more than REPLAY_WINDOW seconds off its clock, a signature that does
not match (constant-time compare), and a signature it has already seen within the window.
The routes live on the S3 listener under PREFIX, which no S3 request can reach: bucket names
cannot start with '_'.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Mapping

PREFIX = "/_slipstream/peer/v1/"
HEALTH_PATH = PREFIX + "health"
OBJECT_PATH = PREFIX + "object"
INVALIDATE_PATH = PREFIX + "invalidate"
REPLICATE_PATH = PREFIX + "replicate"
REPLAY_WINDOW = 60.0
TIME_HEADER = "x-slipstream-time"
NONCE_HEADER = "x-slipstream-nonce"
SIGNATURE_HEADER = "x-slipstream-signature"
MAX_REMEMBERED = 200_000


def _mac(secret: bytes, method: str, path_qs: str, ts: str, nonce: str) -> str:
    message = "\n".join((method.upper(), path_qs, ts, nonce)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path_qs: str, now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one peer request."""
    ts = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    return {
        TIME_HEADER: ts,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _mac(secret, method, path_qs, ts, nonce),
    }


def object_path(bucket: str, key: str, route: str = OBJECT_PATH) -> str:
    return route + "?" + urllib.parse.urlencode({"bucket": bucket, "key": key})


class Verifier:
    """Checks peer signatures and remembers the ones it accepted for the replay window."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._seen: dict[str, float] = {}  # signature -> when it may be forgotten

    def refusal(
        self, method: str, path_qs: str, headers: Mapping[str, str], now: float | None = None
    ) -> str | None:
        """None when the request is authentic and fresh; else why it is refused."""
        now = time.time() if now is None else now
        ts, nonce = headers.get(TIME_HEADER, ""), headers.get(NONCE_HEADER, "")
        signature = headers.get(SIGNATURE_HEADER, "")
        if not ts or not nonce or not signature:
            return "peer request without a cluster signature"
        if not ts.isdigit() or len(ts) > 12 or len(nonce) > 64:
            return "peer request with a malformed signature"
        if abs(now - int(ts)) > REPLAY_WINDOW:
            return "peer request outside the replay window (check the clocks)"
        expected = _mac(self._secret, method, path_qs, ts, nonce)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return "peer request with a bad signature"
        self._forget(now)
        if signature in self._seen:
            return "peer request replayed"
        self._seen[signature] = now + 2 * REPLAY_WINDOW
        return None

    def _forget(self, now: float) -> None:
        """Drop signatures past the window (insertion order is time order), and the oldest
        beyond MAX_REMEMBERED."""
        while self._seen:
            oldest, until = next(iter(self._seen.items()))
            if until >= now and len(self._seen) < MAX_REMEMBERED:
                break
            del self._seen[oldest]
