"""Notifications: core events matched against the [notify] rules, stored, then mailed one by one or as a digest.

Each notice is written to the state DB when its event happens and leaves it in the same transaction
that queues its message, so neither a restart nor an SMTP outage loses one.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Iterator

from steno_exportd import events as ev
from steno_exportd.config import Config
from steno_exportd.outbox.content import Notice

if TYPE_CHECKING:
    from steno_exportd.outbox.queue import Outbox

log = logging.getLogger(__name__)

MiB = 1024 * 1024
REARM = 1.1                   # disk_low fires again only after free space rose 10% above the threshold


@dataclasses.dataclass(frozen=True)
class Route:
    recipients: tuple[str, ...]
    window: float             # seconds; 0: one message per notice


def routes(cfg: Config, event: str) -> list[Route]:
    """Where a notice of this event goes under the config (none when email is off)."""
    e = cfg.email
    if not e.enabled:
        return []
    rules = cfg.notify.rules
    if not rules:
        return [Route(tuple(e.recipients), 0.0)] if event in cfg.notify.events and e.recipients else []
    return [Route(tuple(r.recipients or e.recipients), r.digest_minutes * 60) for r in rules
            if event in r.events and (r.recipients or e.recipients)]


def _bytes(n: int) -> str:
    return f"{n / MiB:,.1f} MB" if n < 1024 * MiB else f"{n / 1024 / MiB:,.2f} GB"


def notice_for(event: ev.Event, cfg: Config) -> Notice | None:
    """The notice an event makes, or None when it is not one to tell."""
    now = time.time()
    if isinstance(event, ev.JobUpdated) and event.job.state in (ev.JobState.COMPLETED, ev.JobState.FAILED):
        j = event.job
        if j.operation not in ("export", "push"):
            return None
        ok = j.state == ev.JobState.COMPLETED
        if j.operation == "export" and ok and j.target == cfg.samba.export_dir:
            return None           # the share's own refresh runs after every new session: only its failures count
        kind = f"{j.operation}_{'done' if ok else 'failed'}"
        what = "Export" if j.operation == "export" else "Push"
        n = len(j.sessions)
        subject = f"{what} to {j.target} {'finished' if ok else 'failed'}: {n} session{'s' * (n != 1)}"
        lines = [f"Target: {j.target}", f"Job: {j.id}",
                 f"Files: {j.files_done}, {_bytes(j.bytes_done)}"
                 + (f" in {j.finished - j.started:.0f} s" if j.finished and j.started else "")]
        if j.error:           # a finished job's headline is a note: a warning, or a cancel that came too late
            lines.append(f"{'Note' if ok else 'Error'}: {j.error}")
        for r in j.results[:50]:
            state = ("skipped (already there)" if r.skipped else f"FAILED: {r.error}" if not r.ok
                     else f"ok with warnings: {'; '.join(r.warnings)}" if r.warnings else "ok")
            lines.append(f"{r.title or r.uuid}: {state}")
        if len(j.results) > 50:
            lines.append(f"... and {len(j.results) - 50} more sessions")
        return Notice(kind, subject, tuple(lines), now)
    if isinstance(event, ev.DeviceUpdated) and event.device.state == ev.DeviceState.SAFE_TO_REMOVE:
        d = event.device
        name = d.label or d.device or d.id
        return Notice("stick_safe", f"{name} can be removed", (f"Device: {d.device}", f"Label: {d.label}"), now)
    if isinstance(event, ev.DiskSpaceLow):
        return Notice("disk_low", f"Low disk space: {_bytes(event.free)} free on {event.path}",
                      (f"Folder: {event.path}", f"Free: {_bytes(event.free)}",
                       f"Warning below: {_bytes(event.threshold)} (notify.disk_low_mb)"), now)
    return None


class Notifier:
    """Follows the core's events; stores notices; queues their messages when their digest window ends."""

    def __init__(self, outbox: "Outbox") -> None:
        self.outbox = outbox
        self.cfg = outbox.cfg
        self._wake = asyncio.Event()
        self._told: collections.deque[int] = collections.deque(maxlen=1000)     # job ids told: each job once
        self._devices: dict[str, ev.DeviceState] = {}     # last state seen per device: told when it *becomes* safe
        self._low: set[str] = set()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow())
            tg.create_task(self._flush_loop())
            tg.create_task(self._watch_disk())

    async def _follow(self) -> None:
        async for event in self.outbox.events.subscribe():
            try:
                await self.record(event)
            except Exception:  # noqa: BLE001 - one bad notice never stops the others
                log.exception("notification for %s failed", type(event).__name__)

    async def record(self, event: ev.Event) -> None:
        # Each occurrence once: a job's end (its updates repeat the final state), a stick's *change* to safe (the
        # same stick ejected again later is told again), each DiskSpaceLow (_watch_disk publishes one per crossing)
        if isinstance(event, ev.DeviceRemoved):
            self._devices.pop(event.device_id, None)
            return
        if isinstance(event, ev.DeviceUpdated):
            before = self._devices.get(event.device.id)
            self._devices[event.device.id] = event.device.state
            if before == event.device.state:
                return
        notice = notice_for(event, self.cfg)
        if notice is None:
            return
        if isinstance(event, ev.JobUpdated):
            if event.job.id in self._told:
                return
            self._told.append(event.job.id)
        for route in routes(self.cfg, notice.event):
            await asyncio.to_thread(self.outbox.add_notice, notice, route.recipients, route.window)
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            self._wake.clear()
            queued, next_due = await asyncio.to_thread(self._flush)
            for entry in queued:
                self.outbox.notice_queued(entry)
            try:
                timeout = None if next_due is None else max(0.0, next_due - time.time())
                async with asyncio.timeout(timeout):    # (wait_for on 3.11 drops a cancel that comes with a wake)
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _flush(self) -> tuple[list[ev.OutboxEntry], float | None]:
        """(blocking) Queue a message for each group whose window has ended; the next time one ends."""
        groups: dict[tuple[str, float], list[tuple]] = {}
        for row in self.outbox.notices():
            groups.setdefault((row[2], row[3]), []).append(row)
        queued: list[ev.OutboxEntry] = []
        next_due: float | None = None
        now = time.time()
        for (recipients, window), members in groups.items():
            due = members[0][1] + window
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            for batch in ([m] for m in members) if window == 0 else [members]:
                notices = [Notice.from_json(json.loads(m[4])) for m in batch]
                queued.append(self.outbox.queue_notices([m[0] for m in batch], notices, json.loads(recipients)))
        return queued, next_due

    async def _watch_disk(self) -> None:
        while True:
            cfg = self.cfg
            if routes(cfg, "disk_low"):
                for path, free in await asyncio.to_thread(lambda: list(_free_space(cfg))):
                    threshold = cfg.notify.disk_low_mb * MiB
                    if free < threshold and path not in self._low:
                        self._low.add(path)
                        self.outbox.events.publish(ev.DiskSpaceLow(path, free, threshold))
                    elif free > threshold * REARM:
                        self._low.discard(path)
            await asyncio.sleep(cfg.notify.disk_check_seconds)


def _free_space(cfg: Config) -> Iterator[tuple[str, int]]:
    """(folder, free bytes) per filesystem the daemon cares about, one folder per filesystem."""
    seen: set[int] = set()
    folders = [str(cfg.recorder_data_dir), cfg.state.dir] + ([cfg.samba.export_dir] if cfg.samba.enabled else [])
    for folder in folders:
        try:
            st = os.stat(folder)
            vfs = os.statvfs(folder)
        except OSError:
            continue
        if st.st_dev in seen:
            continue
        seen.add(st.st_dev)
        yield folder, vfs.f_bavail * vfs.f_frsize
