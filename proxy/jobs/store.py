"""Jobs on disk: one small JSON file per job in the cache directory's ``jobs/`` folder,
so jobs survive a restart. Written atomically (temp file, fsync, rename, fsync of the folder)
in a thread: never on the event loop. File names are job ids the proxy made (hex), never
anything a client sent."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from proxy import log

_ID = re.compile(r"^[0-9a-f]{16}$")


def jobs_dir(cache_dir: Path) -> Path:
    return cache_dir.resolve() / "jobs"


class JobFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def save(self, job_id: str, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self._write, job_id, record)

    async def delete(self, job_id: str) -> None:
        await asyncio.to_thread(self._unlink, job_id)

    async def load(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._read_all)

    def _path(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise ValueError("not a job id")
        return self.folder / f"{job_id}.json"

    def _write(self, job_id: str, record: dict[str, Any]) -> None:
        data = json.dumps(record).encode()  # a million keys: encoded here, off the loop
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(job_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _unlink(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)

    def _read_all(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        records = []
        for path in self.folder.glob("*.json"):
            if not _ID.match(path.stem):
                continue
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.jobs.warning("skipping the unreadable job file %s: %s", path.name, exc)
                continue
            if isinstance(record, dict) and record.get("id") == path.stem:
                records.append(record)
        return records
