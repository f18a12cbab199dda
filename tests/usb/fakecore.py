"""A stand-in Core for the USB adapter's tests: the udev/udisks2 path without the renderers.

It writes one file per session (chunked, fsynced, temp name then rename, with a settable
pace and size), then a manifest, and publishes JobUpdated events like the real core.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import os
import time
from pathlib import Path

from steno_exportd.config import Config
from steno_exportd.devices import DeviceRegistry
from steno_exportd.engine import manifest as mf
from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.events import EventBus, JobSnapshot, JobState, JobUpdated, SessionResult
from steno_exportd.library import SessionListing
from steno_exportd.model import SessionSummary


def summary(i: int, status: str = "completed") -> SessionSummary:
    t = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.timezone.utc) + dt.timedelta(days=i)
    return SessionSummary(id=i, uuid=f"00000000-0000-4000-8000-{i:012d}", title=f"Meeting {i}",
                          status=status, start_time=t, end_time=t, duration_seconds=60, updated_at=t,
                          created_at=t, location=None, participant_count=2, audio_format=None,
                          audio_size=None)


class FakeLibrary:
    def __init__(self, n: int) -> None:
        self.sessions = [summary(i) for i in range(1, n + 1)]

    def list_sessions(self, exportable_only: bool = False):
        return list(self.sessions)


class FakeJobs:
    def __init__(self) -> None:
        self.jobs: dict[int, JobSnapshot] = {}
        self.cancelled: set[int] = set()
        self.ejects: list[JobSnapshot] = []

    def get(self, job_id: int) -> JobSnapshot:
        return self.jobs[job_id]

    def list(self):
        return list(self.jobs.values())

    def cancel(self, job_id: int) -> None:
        self.cancelled.add(job_id)


class FakeCore:
    def __init__(self, cfg: Config, n_sessions: int = 2, file_size: int = 64 * 1024,
                 chunk_delay: float = 0.0) -> None:
        self.cfg = cfg
        self.events = EventBus()
        self.library = FakeLibrary(n_sessions)
        self.jobs = FakeJobs()
        self.devices = DeviceRegistry(self.events)
        self.auto_export = True
        self.file_size = file_size
        self.chunk_delay = chunk_delay
        self.first_byte_at: float = 0.0
        self.copy_seconds: float = 0.0
        self.written: list[tuple[str, list[int]]] = []     # (target, session ids) per finished job
        self._ids = itertools.count(1)
        self._ejector = None

    def set_ejector(self, ejector) -> None:
        self._ejector = ejector

    async def eject(self, device_id: str) -> JobSnapshot:
        """Like Core.eject: the adapter's ejector run as a short tracked job."""
        self.devices.get(device_id)
        job = JobSnapshot(id=next(self._ids), operation="eject", target=device_id, state=JobState.RUNNING,
                          device_id=device_id)
        try:
            await self._ejector(device_id)
            job = dataclasses.replace(job, state=JobState.COMPLETED)
        except Exception as e:  # noqa: BLE001
            job = dataclasses.replace(job, state=JobState.FAILED, error=str(e))
        self.jobs.ejects.append(job)
        return job

    async def listing(self) -> SessionListing:
        return SessionListing(tuple(self.library.sessions))

    async def export_sessions(self, ids, formats, target, options, *, trusted=False) -> JobSnapshot:
        assert trusted, "a stick's mount point comes from udisks2: not subject to export.allowed_dirs"
        opts = dataclasses.asdict(options)
        job = JobSnapshot(id=next(self._ids), operation="export", target=opts.get("target_name", str(target)),
                          device_id=opts.get("device_id", ""),
                          state=JobState.RUNNING, sessions=tuple(ids), formats=tuple(formats),
                          bytes_total=self.file_size * len(ids), created=time.time(), started=time.time())
        self._set(job)
        asyncio.get_running_loop().create_task(self._run(job, list(ids), Path(target)))
        return job

    def _set(self, job: JobSnapshot) -> None:
        self.jobs.jobs[job.id] = job
        self.events.publish(JobUpdated(job))

    async def _run(self, job: JobSnapshot, ids: list[int], root: Path) -> None:
        t0 = time.monotonic()
        try:
            results = await asyncio.to_thread(self._write, ids, root, job.id)
            job = dataclasses.replace(job, state=JobState.COMPLETED, bytes_done=job.bytes_total,
                                      results=tuple(results), finished=time.time())
            self.written.append((str(root), ids))
        except InterruptedError:
            job = dataclasses.replace(job, state=JobState.CANCELLED, error="cancelled", finished=time.time())
        except OSError as e:
            job = dataclasses.replace(job, state=JobState.FAILED, error=f"writing to the stick failed: {e}",
                                      finished=time.time())
        self.copy_seconds = time.monotonic() - t0
        self._set(job)

    def _write(self, ids: list[int], root: Path, job_id: int) -> list[SessionResult]:
        base = root / "SilentSteno"
        base.mkdir(exist_ok=True)
        by_id = {s.id: s for s in self.library.sessions}
        results = []
        for i in ids:
            s = by_id[i]
            d = base / s.uuid
            d.mkdir(exist_ok=True)
            tmp, final = d / ".transcript.txt.part", d / "transcript.txt"
            with open(tmp, "wb") as f:
                left = self.file_size
                while left:
                    n = min(left, 64 * 1024)
                    f.write(b"x" * n)
                    if not self.first_byte_at:
                        f.flush()
                        self.first_byte_at = time.monotonic()
                    left -= n
                    if job_id in self.jobs.cancelled:
                        tmp.unlink()
                        raise InterruptedError
                    if self.chunk_delay:
                        time.sleep(self.chunk_delay)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            results.append(SessionResult(session_id=i, uuid=s.uuid, title=s.title, ok=True))
        man = base / "manifest.json"         # the engine's manifest, as the real core writes it
        m = mf.read(DirectoryTarget(root), "SilentSteno") if man.exists() else mf.Manifest()
        m.sessions.update({by_id[i].uuid: {"folder": by_id[i].uuid, "files": {}} for i in ids})
        man.with_suffix(".tmp").write_text(json.dumps(m.to_json()))
        os.replace(man.with_suffix(".tmp"), man)
        return results
