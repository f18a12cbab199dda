"""Core events and the snapshots they carry; adapters (D-Bus, web, notify) follow them.

The core publishes; adapters subscribe. Events are frozen dataclasses, never strings.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
from typing import AsyncIterator

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"          # every file written and verified
    FAILED = "failed"                # finished, with at least one error (see results)
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"      # the daemon died while it ran; can be resumed

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class DeviceState(enum.StrEnum):
    DETECTED = "detected"
    MOUNTING = "mounting"
    MOUNTED = "mounted"
    EXPORTING = "exporting"
    VERIFYING = "verifying"
    EJECTING = "ejecting"
    SAFE_TO_REMOVE = "safe_to_remove"
    REMOVED = "removed"
    ERROR = "error"


class OutboxState(enum.StrEnum):
    COMPOSING = "composing"          # stored; its attachments are being rendered
    QUEUED = "queued"                # stored and waiting to be sent (or for its next try)
    SENDING = "sending"
    SENT = "sent"                    # the server accepted it (for every recipient it did not refuse)
    FAILED = "failed"                # given up: a permanent refusal, or transient ones for too long
    CANCELLED = "cancelled"          # withdrawn before it was sent (Core.cancel_mail); retry_mail sends it again

    @property
    def finished(self) -> bool:
        return self in (OutboxState.SENT, OutboxState.FAILED, OutboxState.CANCELLED)


@dataclasses.dataclass(frozen=True, slots=True)
class FileResult:
    path: str                 # relative to the target root, e.g. "SilentSteno/<folder>/x.pdf"
    ok: bool
    size: int = 0
    sha256: str = ""
    error: str = ""
    source_problem: bool = False   # the recorder's data is at fault (missing audio), not the target


class SessionStatus(enum.StrEnum):
    OK = "ok"
    WARNINGS = "ok with warnings"    # everything asked for is there, minus what the recorder lacks
    FAILED = "failed"                # something it was asked to write is not there (see error)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionResult:
    session_id: int
    uuid: str
    title: str
    ok: bool                  # every file it was asked to write is there (a recording the recorder lacks aside)
    skipped: bool = False     # already on the target and unchanged
    error: str = ""
    files: tuple[FileResult, ...] = ()
    warnings: tuple[str, ...] = ()   # e.g. the recording is missing on the recorder: exported without it
    problem: str = ""         # a failure's kind for the target: "full", "pulled", "read-only", "permission", ""

    @property
    def status(self) -> SessionStatus:
        if not self.ok:
            return SessionStatus.FAILED
        return SessionStatus.WARNINGS if self.warnings else SessionStatus.OK


@dataclasses.dataclass(frozen=True, slots=True)
class JobSnapshot:
    id: int
    operation: str            # "export", "push", "eject", ...
    target: str               # what a person recognises: a path, "KINGSTON (sdb1)", "smb:office"
    state: JobState
    sessions: tuple[int, ...] = ()
    formats: tuple[str, ...] = ()
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    rate: float = 0.0         # bytes/s
    expected_end: float = 0.0  # unix time; 0 unknown
    current_file: str = ""
    error: str = ""
    results: tuple[SessionResult, ...] = ()
    created: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    device_id: str = ""       # set when the target is a device

    @property
    def progress(self) -> float:
        if self.state == JobState.COMPLETED:
            return 1.0
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    id: str                   # stable: derived from the filesystem UUID
    uuid: str
    label: str
    fs_type: str
    device: str               # /dev/sdb1
    size: int
    free: int
    mount_point: str
    state: DeviceState
    error: str = ""
    skip_reason: str = ""     # why auto-export left this stick alone (.steno-noexport, a rejected steno-export.toml)


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One message of the outbox as a person would see it listed."""

    id: int
    kind: str                 # "sessions" (a meeting by email) or "notice" (a notification or digest)
    subject: str
    recipients: tuple[str, ...]         # still to be sent to
    state: OutboxState
    created: float
    attempts: int = 0
    next_attempt: float = 0.0           # unix time of the next try while queued
    finished: float = 0.0
    size: int = 0                       # bytes of the message as sent
    error: str = ""                     # why it failed, or the last transient failure while queued
    delivered: tuple[str, ...] = ()     # recipients the server accepted
    refused: tuple[str, ...] = ()       # "address: reason" of recipients refused for good
    left_out: tuple[str, ...] = ()      # attachments left out over email.max_message_mb
    sessions: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleSnapshot:
    """One scheduled export ([[schedules]] or an SMB remote's own) and when it runs next."""

    name: str
    when: str                 # the cron expression, or "every N min"
    target: str               # a folder, smb:<remote> or email:<addresses>
    sessions: str             # new | all | since_days
    next_run: float           # unix time
    formats: tuple[str, ...] = ()
    last_run: float = 0.0     # unix time; 0: never ran
    last_result: str = ""     # "2 session(s): job 7", "nothing new", "error: ...", "skipped ..."
    catch_up: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class SessionsChanged:
    added: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class JobUpdated:
    job: JobSnapshot


@dataclasses.dataclass(frozen=True, slots=True)
class JobRemoved:
    job_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceUpdated:
    device: DeviceSnapshot


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRemoved:
    device_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxUpdated:
    entry: OutboxEntry


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxRemoved:
    entry_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulesChanged:
    """Every schedule, after a run or a reload changed one."""

    schedules: tuple[ScheduleSnapshot, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class DiskSpaceLow:
    """A filesystem the daemon cares about fell below notify.disk_low_mb (published once per crossing)."""

    path: str
    free: int
    threshold: int


@dataclasses.dataclass(frozen=True, slots=True)
class StatusChanged:
    """Daemon-wide state (config reloaded, sharing toggled, ...)."""

    key: str
    value: object


Event = (SessionsChanged | JobUpdated | JobRemoved | DeviceUpdated | DeviceRemoved | StatusChanged | OutboxUpdated
         | OutboxRemoved | DiskSpaceLow | SchedulesChanged)


class EventBus:
    """Fan-out of core events to subscribers; a slow subscriber never blocks the core."""

    def __init__(self, maxsize: int = 1000) -> None:
        # asyncio imported where used: the engine's result types live here too, and an offline export (which
        # needs those, not a bus) starts without asyncio
        self._queues: set[asyncio.Queue] = set()
        self._maxsize = maxsize

    def publish(self, event: Event) -> None:
        import asyncio
        for q in list(self._queues):
            if q.full():
                try:
                    q.get_nowait()  # drop the oldest: progress is superseded anyway
                except asyncio.QueueEmpty:
                    pass
            q.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        import asyncio
        q: asyncio.Queue = asyncio.Queue(self._maxsize)
        self._queues.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.discard(q)
