"""A small fake Core for the D-Bus mapping unit tests ONLY (end-to-end tests use the real core)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from typing import Any

from steno_exportd import config, events
from steno_exportd.errors import NotFoundError
from steno_exportd.model import SessionSummary


def summary(i: int) -> SessionSummary:
    t = dt.datetime(2026, 1, 1, 9, tzinfo=dt.timezone.utc) + dt.timedelta(days=i)
    return SessionSummary(id=i, uuid=f"{i:08x}-0000-4000-8000-000000000000", title=f"Meeting {i}",
                          status="completed", start_time=t, end_time=t + dt.timedelta(hours=1),
                          duration_seconds=3600, updated_at=t, created_at=t, location="Room",
                          participant_count=3, audio_format="flac", audio_size=1000)


class FakeLibrary:
    def __init__(self, n: int) -> None:
        self.sessions = [summary(i) for i in range(1, n + 1)]

    def list_sessions(self, exportable_only: bool = False) -> list[SessionSummary]:
        return list(self.sessions)

    def get_session(self, key: Any) -> Any:
        for s in self.sessions:
            if key in (s.id, s.uuid, s.short_id):
                return s
        raise NotFoundError(f"no session {key!r}")

    def data_version(self) -> int:
        return 1


class FakeJobs:
    def __init__(self, core: "FakeCore") -> None:
        self.core = core
        self.jobs: dict[int, events.JobSnapshot] = {}

    def list(self) -> list[events.JobSnapshot]:
        return list(self.jobs.values())

    def cancel(self, job_id: int) -> None:
        if job_id not in self.jobs:
            raise NotFoundError(f"no job {job_id}")
        self.core.update_job(job_id, state=events.JobState.CANCELLED, error="cancelled")


class FakeDevices:
    def __init__(self) -> None:
        self.devices: dict[str, events.DeviceSnapshot] = {}

    def list(self) -> list[events.DeviceSnapshot]:
        return list(self.devices.values())


class FakeCore:
    def __init__(self, cfg: config.Config, n: int = 3) -> None:
        self.cfg = cfg
        self.events = events.EventBus()
        self.library = FakeLibrary(n)
        self.jobs = FakeJobs(self)
        self.devices = FakeDevices()
        self.auto_export = True
        self.sharing_enabled = False
        self.samba_state = "off"
        self._ids = itertools.count(1)

    async def export_sessions(self, ids, formats, target, options) -> events.JobSnapshot:
        for i in ids:
            self.library.get_session(i)
        j = events.JobSnapshot(id=next(self._ids), operation="export", target=str(target),
                               state=events.JobState.QUEUED, sessions=tuple(int(i) for i in ids),
                               formats=tuple(formats), bytes_total=1000)
        self.jobs.jobs[j.id] = j
        self.events.publish(events.JobUpdated(j))
        return j

    async def eject(self, device_id: str) -> events.JobSnapshot:
        if device_id not in self.devices.devices:
            raise NotFoundError(f"no device {device_id!r}")
        j = events.JobSnapshot(id=next(self._ids), operation="eject", target=device_id,
                               state=events.JobState.RUNNING, device_id=device_id)
        self.jobs.jobs[j.id] = j
        return j

    def update_job(self, job_id: int, **changes: Any) -> None:
        j = dataclasses.replace(self.jobs.jobs[job_id], **changes)
        self.jobs.jobs[job_id] = j
        self.events.publish(events.JobUpdated(j))

    def add_device(self, d: events.DeviceSnapshot) -> None:
        self.devices.devices[d.id] = d
        self.events.publish(events.DeviceUpdated(d))

    def set_auto_export(self, on: bool) -> None:
        self.auto_export = on
        self.events.publish(events.StatusChanged("auto_export", on))

    def set_samba_state(self, state: str) -> None:
        self.samba_state = state
        self.events.publish(events.StatusChanged("samba_state", state))

    def set_sharing(self, on: bool) -> None:
        self.sharing_enabled = on
        self.events.publish(events.StatusChanged("samba_enabled", on))

    def web_access(self) -> str:
        return "paired browsers only (no web password set yet)"

    def status_text(self) -> str:
        return f"idle; {len(self.library.sessions)} sessions; {len(self.devices.devices)} sticks"
