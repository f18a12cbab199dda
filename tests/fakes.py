"""The one fake Core and the one fake library of the unit tests.

``FakeLibrary`` holds real ``Session`` objects in memory behind the Library API (for the engine
and for faults a recorder database cannot provoke). ``FakeCore`` has the public API of
``steno_exportd.core.Core`` over a FakeLibrary, without the engine: adapter tests run the real
adapter against it and look at what it was asked (``exports``) and what its jobs did. What callers
send is checked by the real core's checks (``Core.check_export``, ``Core.listing``,
``Core.session``) over the fake library, and mail goes to the real outbox. Tests that can use the
real Core on a demo library do.
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
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from steno_exportd import events as ev
from steno_exportd.access import Login, PairingCode
from steno_exportd.access.store import AT_DEVICE
from steno_exportd.config import Config
from steno_exportd.core import Core
from steno_exportd.devices import DeviceRegistry
from steno_exportd.engine import manifest as mf
from steno_exportd.engine.jobs import JobSpec
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.targets import DirectoryTarget, Target
from steno_exportd.errors import NotFoundError, SessionReplaced
from steno_exportd.rclone.kind import RcloneKind
from steno_exportd.library import SessionListing, SessionsDelta, uuid_key
from steno_exportd.search import SearchResults
from steno_exportd.smb.push import SmbKind
from steno_exportd.model import FileRef, Session, SessionSummary

T0 = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.timezone.utc)


def make_session(i: int, audio: Path | None = None, title: str | None = None, status: str = "completed") -> Session:
    """Session ``i`` (a day after session i-1, an hour long), with ``audio`` as its recording when given."""
    t = T0 + dt.timedelta(days=i)
    size = audio.stat().st_size if audio is not None and audio.exists() else None
    summ = SessionSummary(id=i, uuid=f"{i:08x}-0000-4000-8000-{i:012d}", title=title or f"Meeting {i}",
                          status=status, start_time=t, end_time=t + dt.timedelta(hours=1), duration_seconds=3600,
                          updated_at=t, created_at=t, location="Room 1", participant_count=2,
                          audio_format="wav" if audio is not None else None, audio_size=size)
    ref = FileRef(audio.name, audio, "audio", "wav", size or 0) if audio is not None else None
    return Session(summ, None, None, (), (), "summary", (), (), ref, ())


def summary(i: int, status: str = "completed") -> SessionSummary:
    return make_session(i, status=status).summary


class FakeLibrary:
    """The Library API over sessions in memory; ``add`` replaces a session with the same id."""

    def __init__(self, sessions: Iterable[Session] = (), data_dir: Path | None = None) -> None:
        self.sessions: dict[int, Session] = {}
        self._data_dir = data_dir
        self._version = 0
        self.add(*sessions)

    @classmethod
    def of(cls, n: int) -> "FakeLibrary":
        return cls(make_session(i) for i in range(1, n + 1))

    def add(self, *sessions: Session) -> None:
        for s in sessions:
            self.sessions[s.id] = s
        self._version += 1

    def list_sessions(self, exportable_only: bool = False) -> list[SessionSummary]:
        return [s.summary for s in self.sessions.values() if s.summary.exportable or not exportable_only]

    def get_session(self, key: int | str, uuid: str | None = None) -> Session:
        for s in self.sessions.values():
            if key in (s.id, s.uuid, s.summary.short_id):
                if uuid is not None and uuid_key(s.uuid) != uuid_key(uuid):
                    raise SessionReplaced(f"session {s.id} is another meeting now (not uuid {uuid[:36]})")
                return s
        raise NotFoundError(f"no session {key!r}")

    @property
    def data_dir(self) -> Path:
        """The recorder's data folder, as Library.data_dir: here the folder that holds every session's recording
        (the engine opens each recording through it without following a symlink), unless one was given."""
        if self._data_dir is not None:
            return self._data_dir
        parents = [str(s.audio.path.parent) for s in self.sessions.values() if s.audio is not None]
        return Path(os.path.commonpath(parents)) if parents else Path("/")

    def data_version(self) -> int:
        return self._version

    def changed_since(self, token: Any) -> tuple[SessionsDelta, Any]:
        """Everything is new to a first caller; later callers hear of nothing (the tests add no watchers)."""
        if token == self._version:
            return SessionsDelta(), token
        return SessionsDelta(added=tuple(self.list_sessions())), self._version

    def close(self) -> None:
        pass


def library(tmp: Path, n: int, audio_size: int = 200_000) -> FakeLibrary:
    """n sessions, each with a recording of ``audio_size`` random bytes under tmp/rec."""
    src = tmp / "rec"
    src.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(1, n + 1):
        a = src / f"s{i}.wav"
        a.write_bytes(os.urandom(audio_size))
        out.append(make_session(i, a))
    return FakeLibrary(out)


class ExportCall(NamedTuple):
    """What an adapter asked of Core.export_sessions."""

    ids: Any
    formats: tuple[str, ...]
    target: Any
    trusted: bool
    internal: bool


class FakeJobs:
    """The JobManager API (list, get, cancel) over the jobs a FakeCore made; ``update`` moves one."""

    def __init__(self, events: ev.EventBus) -> None:
        self._events = events
        self._jobs: dict[int, ev.JobSnapshot] = {}
        self._ids = itertools.count(1)
        self.cancelled: set[int] = set()

    def list(self) -> list[ev.JobSnapshot]:
        return list(self._jobs.values())

    def get(self, job_id: int) -> ev.JobSnapshot:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"no job {job_id}") from None

    def cancel(self, job_id: int) -> ev.JobSnapshot:
        job = self.get(job_id)
        self.cancelled.add(job_id)
        if job.state == ev.JobState.QUEUED:         # a running one stops at its next chunk
            job = self.update(job_id, state=ev.JobState.CANCELLED, error="cancelled", finished=time.time())
        return job

    def add(self, **fields: Any) -> ev.JobSnapshot:
        job = ev.JobSnapshot(id=next(self._ids), created=time.time(), **fields)
        self._jobs[job.id] = job
        self._events.publish(ev.JobUpdated(job))
        return job

    def update(self, job_id: int, **changes: Any) -> ev.JobSnapshot:
        job = self._jobs[job_id] = dataclasses.replace(self._jobs[job_id], **changes)
        self._events.publish(ev.JobUpdated(job))
        return job

    def end(self, job_id: int, ok: bool, error: str = "") -> ev.JobSnapshot:
        """Finish a job: every session of it done, or every one failed with ``error``."""
        job = self.get(job_id)
        results = tuple(ev.SessionResult(i, f"u{i}", "", ok, error="" if ok else error) for i in job.sessions)
        return self.update(job_id, state=ev.JobState.COMPLETED if ok else ev.JobState.FAILED,
                           error="" if ok else error, results=results, finished=time.time())


class FakeCore:
    """Core's API over a FakeLibrary, without the engine.

    Every export_sessions call is kept in ``exports`` and becomes a job. By default the job stays
    queued (the test moves it with ``jobs.update``); with ``write_files`` it runs: one file of
    ``file_size`` bytes per session under <target>/SilentSteno/<uuid>/ (chunked, temp name then
    rename, ``chunk_delay`` after each chunk, stopped by a cancel), then a manifest; ``written``
    lists (target, session ids) of the jobs that completed."""

    def __init__(self, cfg: Config, n_sessions: int = 3, *, library: FakeLibrary | None = None,
                 write_files: bool = False, file_size: int = 64 * 1024, chunk_delay: float = 0.0) -> None:
        self.cfg = cfg
        self.library = library if library is not None else FakeLibrary.of(n_sessions)
        # a real Core over the same library, never started: its checks, its listing cache, and the real
        # state DB and outbox (opened by start()) on its event bus, which is this fake's bus
        self._core = Core(cfg, library=self.library)
        self.events = self._core.events
        self.state = self._core.state
        self.outbox = self._core.outbox
        self.access = self._core.access
        self.search_index = self._core.search_index
        self.prehasher = self._core.prehasher        # never started: hashes nothing ahead
        self.schedules = self._core.schedules      # never started: lists nothing
        self.remote_folder = self._core.remote_folder
        self.targets = self._core.targets
        self.targets.register(SmbKind())        # as the daemon does: smb: and rclone: targets are checked as there
        self.targets.register(RcloneKind())
        self.jobs = FakeJobs(self.events)
        self.devices = self._core.devices = DeviceRegistry(self.events)    # (the real check of a device_id reads it)
        self.auto_export = cfg.usb.auto_export.enabled
        self.sharing_enabled = cfg.samba.enabled
        self.samba_state = "off"
        self.exports: list[ExportCall] = []
        self.write_files, self.file_size, self.chunk_delay = write_files, file_size, chunk_delay
        self.written: list[tuple[str, list[int]]] = []
        self._ejector: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._token: Any = None

    async def start(self) -> None:
        await asyncio.to_thread(self.state.open)
        await asyncio.to_thread(self.access.open)
        await self.outbox.start()

    async def stop(self) -> None:
        """Cancel running jobs (a write stops at its next chunk) and wait for them; idempotent."""
        self.jobs.cancelled.update(j.id for j in self.jobs.list())
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.outbox.stop()
        await asyncio.to_thread(self.state.close)
        await asyncio.to_thread(self.access.close)

    async def reload(self, cfg: Config) -> None:
        self.cfg = self._core.cfg = cfg
        self.outbox.reload(cfg)
        await self.access.reload(cfg)
        self.events.publish(ev.StatusChanged("config", "reloaded"))

    async def refresh_library(self) -> ev.SessionsChanged:
        delta, self._token = self.library.changed_since(self._token)
        change = ev.SessionsChanged(tuple(s.id for s in delta.added), tuple(s.id for s in delta.changed),
                                    delta.removed)
        if delta:
            self.events.publish(change)
        return change

    async def listing(self) -> SessionListing:
        return await self._core.listing()

    async def session(self, key: Any, uuid: str | None = None) -> Session:
        return await self._core.session(key, uuid)

    async def summary(self, key: Any, uuid: str | None = None) -> Any:
        return await self._core.summary(key, uuid)

    async def recording(self, key: Any, uuid: str | None = None) -> Any:
        return await self._core.recording(key, uuid)

    def template_names(self) -> list[str]:
        return self._core.template_names()

    async def search(self, query: str, limit: int = 20, offset: int = 0) -> SearchResults:
        return await self._core.search(query, limit, offset)

    async def check_export(self, ids: Any, formats: Any, target: str | Target,
                           options: ExportOptions | Mapping[str, Any] | None = None,
                           *, trusted: bool = False) -> JobSpec:
        return await self._core.check_export(ids, formats, target, options, trusted=trusted)

    async def export_sessions(self, ids: Any, formats: Any, target: str | Target,
                              options: ExportOptions | Mapping[str, Any] | None = None,
                              *, trusted: bool = False, internal: bool = False) -> ev.JobSnapshot:
        """Core's check (an unknown session, format, option or target raises as there), then a fake job."""
        spec = await self.check_export(ids, formats, target, options, trusted=trusted)
        self.exports.append(ExportCall(ids, tuple(formats), target, trusted, internal))
        job = self.jobs.add(operation=spec.operation, target=spec.target_name, device_id=spec.device_id,
                            state=ev.JobState.QUEUED, sessions=spec.session_ids, formats=spec.formats,
                            bytes_total=self.file_size * len(spec.session_ids))
        if self.write_files:
            job = self.jobs.update(job.id, state=ev.JobState.RUNNING, started=time.time())
            task = asyncio.get_running_loop().create_task(self._run(job, Path(target)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return job

    async def email_sessions(self, ids: Any, formats: Any, recipients: list[str], template: str | None = None,
                             *, made_by: str = AT_DEVICE, login_id: str = "") -> ev.OutboxEntry:
        """Core's checks, then the real outbox (composed and queued there; nothing sends it here)."""
        return await self._core.email_sessions(ids, formats, recipients, template, made_by=made_by,
                                               login_id=login_id)

    def set_ejector(self, ejector: Any) -> None:
        self._ejector = ejector

    async def eject(self, device_id: str) -> ev.JobSnapshot:
        """Like Core.eject: the USB adapter's ejector run as a short tracked job."""
        dev = self.devices.get(device_id)
        if self._ejector is None:
            raise NotFoundError("no ejector installed (USB support is off)")
        job = self.jobs.add(operation="eject", target=dev.label or dev.device, state=ev.JobState.RUNNING,
                            device_id=device_id)
        try:
            await self._ejector(device_id)
        except Exception as e:  # noqa: BLE001 - the job records why
            return self.jobs.update(job.id, state=ev.JobState.FAILED, error=str(e), finished=time.time())
        return self.jobs.update(job.id, state=ev.JobState.COMPLETED, finished=time.time())

    def set_auto_export(self, on: bool) -> None:
        self.auto_export = bool(on)
        self.events.publish(ev.StatusChanged("auto_export", self.auto_export))

    def set_sharing(self, on: bool) -> None:
        self.sharing_enabled = bool(on)
        self.events.publish(ev.StatusChanged("samba_enabled", self.sharing_enabled))

    def set_samba_state(self, state: str) -> None:
        self.samba_state = state
        self.events.publish(ev.StatusChanged("samba_state", state))

    # who may reach the meetings: the real Core's, over the real access store
    def web_access(self) -> str:
        return self._core.web_access()

    def start_pairing(self) -> PairingCode:
        return self._core.start_pairing()

    async def pair_browser(self, code: str, addr: str, agent: str) -> tuple[Login, str] | None:
        return await self._core.pair_browser(code, addr, agent)

    async def paired_browsers(self) -> list[Login]:
        return await self._core.paired_browsers()

    async def revoke_browser(self, login_id: str) -> Login:
        return await self._core.revoke_browser(login_id)

    async def set_web_password(self, password: str) -> None:
        await self._core.set_web_password(password)

    async def retry_mail(self, entry_id: Any, *, made_by: str = AT_DEVICE, login_id: str = "") -> ev.OutboxEntry:
        return await self._core.retry_mail(entry_id, made_by=made_by, login_id=login_id)

    async def cancel_mail(self, entry_id: Any) -> ev.OutboxEntry:
        return await self._core.cancel_mail(entry_id)

    @property
    def web_url(self) -> str:
        return self._core.web_url

    def set_web_url(self, url: str) -> None:
        self._core.set_web_url(url)

    def set_samba_passworder(self, fn: Callable[[Config, str], None] | None) -> None:
        self._core.set_samba_passworder(fn)

    async def set_samba_password(self, password: str) -> None:
        await self._core.set_samba_password(password)

    def directory_target(self, path: str, name: str = "") -> DirectoryTarget:
        return DirectoryTarget(path, name)

    def status_text(self) -> str:
        sticks = len(self.devices)
        return f"idle; {len(self.library.sessions)} sessions; {sticks} stick" + ("" if sticks == 1 else "s")

    async def _run(self, job: ev.JobSnapshot, root: Path) -> None:
        try:
            results = await asyncio.to_thread(self._write, list(job.sessions), root, job.id)
        except InterruptedError:
            self.jobs.update(job.id, state=ev.JobState.CANCELLED, error="cancelled", finished=time.time())
        except OSError as e:
            self.jobs.update(job.id, state=ev.JobState.FAILED, error=f"writing to the stick failed: {e}",
                             finished=time.time())
        else:
            self.written.append((str(root), list(job.sessions)))
            self.jobs.update(job.id, state=ev.JobState.COMPLETED, bytes_done=job.bytes_total,
                             results=tuple(results), finished=time.time())

    def _write(self, ids: list[int], root: Path, job_id: int) -> list[ev.SessionResult]:
        base = root / "SilentSteno"
        base.mkdir(exist_ok=True)
        results = []
        for i in ids:
            s = self.library.get_session(i)
            d = base / s.uuid
            d.mkdir(exist_ok=True)
            tmp, final = d / ".transcript.txt.part", d / "transcript.txt"
            with open(tmp, "wb") as f:
                left = self.file_size
                while left:
                    n = min(left, 64 * 1024)
                    f.write(b"x" * n)
                    left -= n
                    if job_id in self.jobs.cancelled:
                        tmp.unlink()
                        raise InterruptedError
                    if self.chunk_delay:
                        time.sleep(self.chunk_delay)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            results.append(ev.SessionResult(session_id=i, uuid=s.uuid, title=s.title, ok=True))
        man = base / "manifest.json"         # the engine's manifest, as the real core writes it
        m = mf.read(DirectoryTarget(root), "SilentSteno") if man.exists() else mf.Manifest()
        for i in ids:
            uuid = self.library.get_session(i).uuid
            m.sessions[uuid] = {"folder": uuid, "files": {}}
        man.with_suffix(".tmp").write_text(json.dumps(m.to_json()))
        os.replace(man.with_suffix(".tmp"), man)
        return results
