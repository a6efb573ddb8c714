"""The job table: ids, start, lookup, cancel; the ``slipstream_jobs`` gauge per state.

With a ``JobFiles`` folder the table survives a restart: each job is saved when it starts and
when it ends; at the next start (``attach``) jobs saved as queued or running start again under
the same id (what they had cached costs no store request the second time) and ended jobs are
listed as they ended, the last ``KEEP_ENDED`` of them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from proxy import errors, log, metrics
from proxy.jobs.spec import SpecError, WarmSpec, parse_warm
from proxy.jobs.store import JobFiles
from proxy.jobs.warm import STATES, JobCore, WarmJob

KEEP_ENDED = 100  # finished jobs kept for GET /admin/v1/jobs, oldest dropped first


class JobsUnavailable(RuntimeError):
    """The core is not up yet (starting) or is going away (draining)."""


class PastJob:
    """A job that ended before this process started: what it reported last."""

    ended = True

    def __init__(self, record: dict[str, Any]) -> None:
        self.id: str = record["id"]
        self.state: str = record["state"]
        self.created: float = float(record.get("created") or 0.0)
        self._record = {k: v for k, v in record.items() if k != "spec"}
        metrics.JOBS.labels(self.state).inc()

    def describe(self) -> dict[str, Any]:
        return self._record

    def cancel(self, *, shutdown: bool = False) -> bool:
        return False

    async def wait(self) -> None:
        return None


Job = WarmJob | PastJob


class Jobs:
    def __init__(self, files: JobFiles | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._core: JobCore | None = None
        self._files = files
        for state in STATES:
            metrics.JOBS.labels(state).set(0)

    async def attach(self, core: JobCore) -> None:
        """Serve jobs on ``core``; resume the saved jobs that had not ended."""
        self._core = core
        if self._files is None:
            return
        for record in sorted(await self._files.load(), key=lambda r: r.get("created") or 0):
            try:
                self._restore(core, record)
            except (SpecError, errors.NoSuchBucket, KeyError, TypeError, ValueError) as exc:
                log.jobs.warning("job %s cannot be resumed: %s", record.get("id"), exc)
        for old in self._forget_old():
            await self._files.delete(old)

    def _restore(self, core: JobCore, record: dict[str, Any]) -> None:
        if record["state"] not in ("queued", "running"):
            if record["state"] in STATES:
                self._jobs[record["id"]] = PastJob(record)
            return
        spec = parse_warm(record["spec"])
        mount = core.router.resolve(spec.bucket)
        job = WarmJob(
            record["id"], spec, core, mount, saver=self._save, created=float(record["created"])
        )
        self._jobs[job.id] = job
        job.start()
        log.jobs.info("warm job %s resumed", job.id)

    def warm(self, spec: WarmSpec) -> WarmJob:
        """Start a warm job. Raises NoSuchBucket for a bucket the router does not know."""
        if self._core is None:
            raise JobsUnavailable("the proxy is not serving yet")
        mount = self._core.router.resolve(spec.bucket)
        saver = self._save if self._files is not None else None
        if saver is None:
            self._forget_old()
        job = WarmJob(uuid.uuid4().hex[:16], spec, self._core, mount, saver=saver)
        self._jobs[job.id] = job
        job.start()
        return job

    async def _save(self, job: WarmJob) -> None:
        assert self._files is not None
        await self._files.save(job.id, {**job.describe(), "spec": job.spec.body()})
        if job.ended:
            for old in self._forget_old():
                await self._files.delete(old)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created)

    def _forget_old(self) -> list[str]:
        ended = [j for j in self.all() if j.ended]
        gone = ended[: max(0, len(ended) - KEEP_ENDED)]
        for job in gone:
            del self._jobs[job.id]
            metrics.JOBS.labels(job.state).dec()
        return [j.id for j in gone]

    async def close(self) -> None:
        """Cancel every running job and wait for it (shut-down); saved running jobs stay
        running on disk, to resume at the next start."""
        self._core = None
        for job in self._jobs.values():
            job.cancel(shutdown=True)
        await asyncio.gather(*(j.wait() for j in self._jobs.values()))
