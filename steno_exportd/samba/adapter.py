"""The samba adapter: follows the core's sharing switch and config; keeps the share's folder current."""
from __future__ import annotations

import asyncio
import logging
import os

from steno_exportd import events
from steno_exportd.core import Core
from steno_exportd.engine.identity import host_name
from steno_exportd.engine.naming import root_folder
from steno_exportd.engine.options import ExportOptions
from steno_exportd.errors import ConfigError, TargetError
from steno_exportd.samba.announce import Announcer
from steno_exportd.samba.share import apply

log = logging.getLogger(__name__)


async def run(core: Core) -> None:
    """Adapter: follow core sharing on/off and config reloads; keep the export folder current."""
    announcer = Announcer()

    def publish(state: str) -> None:
        core.set_samba_state(state)
        announcer.set(state == "serving" and core.cfg.samba.announce, core.cfg.samba.announce_name)

    async def sync(reason: str) -> None:
        cfg = core.cfg.samba
        on = core.sharing_enabled
        if not on and not os.path.exists(cfg.snippet_path):
            publish("off")              # never shared: nothing to switch off, smbd left alone
            return
        try:
            res = await asyncio.to_thread(apply, cfg, on, host_name(), root_folder(core.cfg))
        except (ConfigError, TargetError, OSError) as e:
            if isinstance(e, OSError):
                e = TargetError(f"{e.filename or 'samba'}: {e.strerror or e}")
            log.error("samba share not updated (%s): %s", reason, e)
            publish(f"error: {e}")
            return
        log.info("samba share %s (%s)%s", "on" if on else "off", reason, "" if res.changed else ", unchanged")
        publish("serving" if on else "off")
        if on:
            await refresh_export(reason)

    refresh = {"job": None, "again": False}     # one refresh job at a time; changes meanwhile: one more

    async def refresh_export(reason: str) -> None:
        if refresh["job"] is not None:
            refresh["again"] = True
            return
        cfg = core.cfg.samba
        try:
            job = await core.export_sessions("all", list(cfg.formats), cfg.export_dir, _export_options(),
                                             trusted=True)
            refresh["job"] = job.id
        except Exception as e:  # error boundary: a failed export never stops the adapter
            log.warning("samba export folder not refreshed (%s): %s", reason, e)

    async def job_finished(job: events.JobSnapshot) -> None:
        if job.id != refresh["job"] or not job.state.finished:
            return
        refresh["job"] = None
        if job.state != events.JobState.COMPLETED:
            log.warning("samba export folder refresh %s: %s", job.state, job.error)
        if refresh["again"] and core.sharing_enabled:
            refresh["again"] = False
            await refresh_export("sessions changed meanwhile")

    inbox: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        async for ev in core.events.subscribe():
            inbox.put_nowait(ev)

    pump_task = asyncio.create_task(pump())
    announce_task = asyncio.create_task(announcer.run(), name="samba-announce")
    await asyncio.sleep(0)          # subscribed before the first sync: no switch is missed
    try:
        await sync("start")
        while True:
            ev = await inbox.get()
            if isinstance(ev, events.StatusChanged) and ev.key in ("samba_enabled", "config"):
                await sync(ev.key)
            elif isinstance(ev, events.SessionsChanged) and core.sharing_enabled:
                await refresh_export("sessions changed")
            elif isinstance(ev, events.JobUpdated):
                await job_finished(ev.job)
    finally:
        pump_task.cancel()
        announce_task.cancel()
        await asyncio.gather(announce_task, return_exceptions=True)     # the announcement withdrawn


def _export_options() -> ExportOptions:
    """Export options for the share folder."""
    return ExportOptions(prune=True)      # the share mirrors the recorder: deleted sessions go too
