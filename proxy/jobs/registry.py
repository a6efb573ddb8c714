"""The job table: ids, start, lookup, cancel; the ``slipstream_jobs`` gauge per state."""

from __future__ import annotations

import asyncio
import uuid

from proxy import metrics
from proxy.jobs.spec import WarmSpec
from proxy.jobs.warm import STATES, JobCore, WarmJob

KEEP_ENDED = 100  # finished jobs kept for GET /admin/v1/jobs, oldest dropped first


class JobsUnavailable(RuntimeError):
    """The core is not up yet (starting) or is going away (draining)."""


class Jobs:
    def __init__(self) -> None:
        self._jobs: dict[str, WarmJob] = {}
        self._core: JobCore | None = None
        for state in STATES:
            metrics.JOBS.labels(state).set(0)

    def attach(self, core: JobCore) -> None:
        self._core = core

    def warm(self, spec: WarmSpec) -> WarmJob:
        """Start a warm job. Raises NoSuchBucket for a bucket the router does not know."""
        if self._core is None:
            raise JobsUnavailable("the proxy is not serving yet")
        mount = self._core.router.resolve(spec.bucket)
        job = WarmJob(uuid.uuid4().hex[:16], spec, self._core, mount)
        self._forget_old()
        self._jobs[job.id] = job
        job.start()
        return job

    def get(self, job_id: str) -> WarmJob | None:
        return self._jobs.get(job_id)

    def all(self) -> list[WarmJob]:
        return sorted(self._jobs.values(), key=lambda j: j.created)

    def _forget_old(self) -> None:
        ended = [j for j in self.all() if j.state not in ("queued", "running")]
        for job in ended[: max(0, len(ended) - KEEP_ENDED + 1)]:
            del self._jobs[job.id]
            metrics.JOBS.labels(job.state).dec()

    async def close(self) -> None:
        """Cancel every running job and wait for it (shut-down)."""
        self._core = None
        for job in self._jobs.values():
            job.cancel()
        await asyncio.gather(*(j.wait() for j in self._jobs.values()))
