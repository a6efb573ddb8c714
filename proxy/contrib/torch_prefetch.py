"""Post each epoch's order to Slipstream's training-aware prefetch from a PyTorch sampler.

``PrefetchSampler`` wraps any sampler (an iterable of indices: a ``RandomSampler``, a
``DistributedSampler``, a list) and a function from an index to the object key it reads. On
each ``__iter__`` (each epoch) it materialises the epoch's order, posts it as NDJSON to
``POST /admin/v1/prefetch`` (from a background thread, streamed, so the first batches do not
wait for a million-key order to be sent), cancels the previous epoch's job, then yields the
indices unchanged. Given a ``DistributedSampler`` each rank posts its own share (what the
sampler yields on that rank) as its own job, which is how Slipstream takes several ranks.

It uses only the standard library (urllib) and never imports torch: pass it to a
``DataLoader`` as ``sampler=``. A proxy that cannot be reached (or refuses the order) never
breaks training: a warning is logged once and the indices are yielded anyway.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

log = logging.getLogger("proxy.contrib.torch_prefetch")

T = TypeVar("T")
PIECE = 10_000  # keys per chunk of the posted body


class PrefetchSampler(Generic[T]):
    def __init__(
        self,
        sampler: Iterable[T],
        key_of: Callable[[T], str],
        *,
        bucket: str,
        admin_url: str = "http://127.0.0.1:9901",
        token: str | None = None,
        window: int | None = None,
        window_bytes: int | None = None,
        concurrency: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        """``token``: the admin token (default: $SLIPSTREAM_ADMIN_TOKEN, if set)."""
        self.sampler = sampler
        self.key_of = key_of
        self.bucket = bucket
        self.admin_url = admin_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("SLIPSTREAM_ADMIN_TOKEN")
        self.window, self.window_bytes, self.timeout = window, window_bytes, timeout
        self.concurrency = concurrency
        self.job: dict[str, Any] | None = None  # the last epoch's job, as the proxy answered
        self._poster: threading.Thread | None = None
        self._warned = False

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the wrapped sampler (a DistributedSampler's shuffle depends on it)."""
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __iter__(self) -> Iterator[T]:
        order = list(self.sampler)
        self.wait_posted()  # the previous epoch's post (a no-op once it is done)
        previous = self.job
        self.job = None
        self._poster = threading.Thread(
            target=self._post, args=(order, previous), name="slipstream-prefetch", daemon=True
        )
        self._poster.start()
        return iter(order)

    def wait_posted(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for this epoch's order to have been posted; the job, or None when it failed."""
        if self._poster is not None:
            self._poster.join(timeout)
        return self.job

    # -- HTTP (standard library only) -------------------------------------------------------------
    def _post(self, order: list[T], previous: dict[str, Any] | None) -> None:
        try:
            if previous is not None and previous.get("state") != "done":
                self._request("DELETE", f"/admin/v1/prefetch/{previous['id']}")
            query = {"bucket": self.bucket}
            if self.window is not None:  # else the server's default, as for the two below
                query["window"] = str(self.window)
            if self.concurrency is not None:  # else the server's default
                query["concurrency"] = str(self.concurrency)
            if self.window_bytes is not None:
                query["window_bytes"] = str(self.window_bytes)
            path = "/admin/v1/prefetch?" + urllib.parse.urlencode(query)
            self.job = self._request("POST", path, self._lines(order))
        except Exception as exc:  # never break training: warn once, yield the indices anyway
            if not self._warned:
                self._warned = True
                log.warning("slipstream prefetch unavailable at %s: %s", self.admin_url, exc)

    def _lines(self, order: list[T]) -> Iterator[bytes]:
        for start in range(0, len(order), PIECE):
            piece = order[start : start + PIECE]
            yield b"".join(json.dumps(self.key_of(i)).encode() + b"\n" for i in piece)

    def _request(self, method: str, path: str, body: Iterable[bytes] | None = None) -> Any:
        headers = {"Content-Type": "application/x-ndjson"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(
            self.admin_url + path, data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            raise RuntimeError(f"{method} {path.split('?')[0]}: {exc.code} {detail}") from None
