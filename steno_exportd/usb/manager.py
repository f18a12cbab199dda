"""USB sticks: udev watcher + udisks2 mounts + auto-export policy, driving the core.

``await watch(core)`` runs until cancelled; the daemon's composition root starts it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

from steno_exportd.config import AutoExportConfig
from steno_exportd.core import Core
from steno_exportd.devices import device_id
from steno_exportd.engine.naming import root_folder
from steno_exportd.engine.options import ExportOptions
from steno_exportd.errors import StenoError, TargetError
from steno_exportd.events import DeviceState, JobSnapshot, JobState, JobUpdated
from steno_exportd.usb import policy
from steno_exportd.usb.udev import Added, Candidate, Removed, StickEvent, Unusable, Watcher, system_disks
from steno_exportd.usb.udisks import UDisks, UDisksError, UDisksUnavailable

log = logging.getLogger(__name__)

__all__ = ["watch", "UsbManager", "UDisksUnavailable"]


def _free(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _options(auto: AutoExportConfig, did: str, c: Candidate) -> ExportOptions:
    """ExportOptions for a stick export."""
    return ExportOptions(template=auto.template, include_audio=auto.include_audio, device_id=did,
                         target_name=f"{c.label or c.uuid} ({c.device.rsplit('/', 1)[-1]})")


class UsbManager:
    """One error boundary per stick: mount, auto-export, eject; states go to core.devices."""

    def __init__(self, core: Core, udisks: UDisks) -> None:
        self.core = core
        self.cfg = core.cfg.usb
        self.udisks = udisks
        self.devices = core.devices
        self._by_node: dict[str, Candidate] = {}       # device node -> candidate
        self._node: dict[str, str] = {}                # device id -> the node its handling is at
        self._tasks: dict[str, asyncio.Task] = {}      # device id -> its handling task
        self._jobs: dict[str, int] = {}                # device id -> running job id
        self._removed: set[str] = set()
        self._warned: set[str] = set()
        self._unusable: dict[str, str] = {}            # device node -> device id of an unusable stick
        self.removed_grace = 60.0                      # seconds a removed device stays listed
        self.watcher: Watcher | None = None

    # ---- events from udev ---------------------------------------------------------
    def on_event(self, ev: StickEvent) -> None:
        if isinstance(ev, Added):
            c = ev.candidate
            did = device_id(c.uuid)
            self._by_node[c.device] = c
            prev = self._tasks.get(did)
            if prev is not None and not prev.done() and did not in self._removed:
                # this insertion is already being handled, at its node: another node of the same UUID (a cloned
                # stick) is not the stick being mounted/exported, so its node is not the one eject and removal use
                return
            self._node[did] = c.device
            self._removed.discard(did)
            self._tasks[did] = asyncio.get_running_loop().create_task(self._handle(did, c, prev), name=f"usb:{did}")
        elif isinstance(ev, Removed):
            c = self._by_node.pop(ev.device, None)
            if c is not None:
                at = self._node.get(device_id(c.uuid))
                if at == ev.device:
                    self._on_removed(device_id(c.uuid), c)
                else:               # an old node of a stick that is back at another one (a late removal)
                    log.debug("%s: old node %s removed; the stick is at %s", c.label or c.uuid, ev.device, at)
            did = self._unusable.pop(ev.device, None)
            if did is not None:
                self.devices.change(did, state=DeviceState.REMOVED)
                self._forget_later(did)
        elif isinstance(ev, Unusable):
            did = "dev_" + "".join(ch if ch.isalnum() else "_" for ch in ev.key.lower())
            if did not in self._warned:          # a flapping stick logs once at WARNING
                log.warning("%s: %s", ev.device or ev.disk, ev.reason)
                self._warned.add(did)
            else:
                log.debug("%s: %s", ev.device or ev.disk, ev.reason)
            self._unusable[ev.device] = did
            self.devices.change(did, device=ev.device, state=DeviceState.ERROR, error=ev.reason)

    def _forget_later(self, did: str) -> None:
        """A removed device stays listed as 'removed' for a while, then leaves the registry."""
        def forget() -> None:
            snap = self.devices.find(did)
            if snap is not None and snap.state == DeviceState.REMOVED:
                self.devices.remove(did)
        asyncio.get_running_loop().call_later(self.removed_grace, forget)

    def _on_removed(self, did: str, c: Candidate) -> None:
        """The stick is gone: record it now; a running job fails by itself on the vanished device."""
        self._removed.add(did)
        self._node.pop(did, None)
        snap = self.devices.find(did)
        job_id = self._jobs.get(did)
        if snap is not None and snap.state != DeviceState.SAFE_TO_REMOVE:
            if job_id is not None:
                log.warning("%s (%s) removed during export job %s", c.label or c.uuid, c.device, job_id)
            else:
                log.info("%s (%s) removed", c.label or c.uuid, c.device)
        task = self._tasks.get(did)
        if job_id is None and task is not None and not task.done():
            task.cancel()
        self.devices.change(did, state=DeviceState.REMOVED, mount_point="", free=0)
        self._forget_later(did)
        if snap is not None and snap.mount_point:
            asyncio.get_running_loop().create_task(self._cleanup_mount(c))

    async def _cleanup_mount(self, c: Candidate) -> None:
        """Drop a dead mount of a pulled stick (unless the same device node came back meanwhile)."""
        await asyncio.sleep(0.2)
        if c.device in self._by_node:
            return
        with contextlib.suppress(UDisksError, OSError, asyncio.TimeoutError):
            async with asyncio.timeout(5):
                await self.udisks.unmount(c.device, force=True)

    # ---- one stick ----------------------------------------------------------------
    async def _handle(self, did: str, c: Candidate, prev: asyncio.Task | None = None) -> None:
        """The error boundary of one stick: a failure is recorded on the device, never raised."""
        if prev is not None and not prev.done():
            await asyncio.wait({prev})                  # the previous insertion is still winding down
        self.devices.change(did, uuid=c.uuid, label=c.label, fs_type=c.fs_type, device=c.device,
                            size=c.size, free=0, mount_point="", state=DeviceState.DETECTED, skip_reason="")
        try:
            await self._process(did, c)
        except asyncio.CancelledError:
            if did not in self._removed:
                raise
        except Exception as e:  # noqa: BLE001 — the boundary: one bad stick never stops the daemon
            if did in self._removed:
                return
            log.warning("%s (%s): %s", c.label or c.uuid, c.device, e)
            log.debug("details", exc_info=True)
            self.devices.change(did, state=DeviceState.ERROR, error=str(e))

    async def _process(self, did: str, c: Candidate) -> None:
        if not policy.allowed(self.cfg, c.label, c.uuid):
            log.info("%s (%s) is not in usb.allow_labels/allow_uuids; leaving it alone", c.label, c.uuid)
            self.devices.change(did, state=DeviceState.DETECTED, error="not in the allow-list")
            return
        self.devices.change(did, state=DeviceState.MOUNTING)
        mp = await self.udisks.mount(c.device, tuple(self.cfg.mount_options))
        self.devices.change(did, state=DeviceState.MOUNTED, mount_point=mp,
                            free=await asyncio.to_thread(_free, mp))
        # the core's switch: starts from usb.auto_export.enabled, set by D-Bus/steno-exportctl and reloads
        if not self.core.auto_export:
            return
        pol = await asyncio.to_thread(policy.stick_policy, Path(mp), self.cfg)
        if not pol.write:
            log.info("%s: not exporting (%s)", c.label or c.uuid, pol.reason)
            self.devices.change(did, skip_reason=pol.reason)
            return
        if c.read_only or not os.access(mp, os.W_OK) or await self._mounted_ro(mp):
            raise TargetError("the stick is read-only (write-protected or a read-only filesystem)")
        on_stick = await asyncio.to_thread(policy.sessions_on_stick, Path(mp), root_folder(self.core.cfg))
        summaries = (await self.core.listing()).sessions
        ids = policy.select_sessions(summaries, pol.auto, on_stick)
        if ids:
            job = await self._export(did, c, ids, policy.formats_for(pol.auto), mp, pol.auto)
            if self.devices.get(did).state == DeviceState.EJECTING:
                return      # an eject request took over: it ends the stick's state (also when its cancel came late)
            if job.state != JobState.COMPLETED:
                raise TargetError(job.error or f"export job {job.id} {job.state}")
        else:
            log.info("%s: nothing new to export", c.label or c.uuid)
        self.devices.change(did, free=await asyncio.to_thread(_free, mp), state=DeviceState.MOUNTED)
        if pol.auto.eject_after:
            await self.eject(did)

    @staticmethod
    async def _mounted_ro(mp: str) -> bool:
        def check() -> bool:
            st = os.statvfs(mp)
            return bool(st.f_flag & os.ST_RDONLY)
        return await asyncio.to_thread(check)

    async def _export(self, did: str, c: Candidate, ids: list[int], formats: list[str], mp: str,
                      auto: AutoExportConfig) -> JobSnapshot:
        updates: asyncio.Queue = asyncio.Queue()
        started = asyncio.Event()

        async def follow() -> None:
            agen = self.core.events.subscribe()
            nxt = asyncio.ensure_future(agen.__anext__())
            started.set()
            try:
                while True:
                    ev = await nxt
                    if isinstance(ev, JobUpdated):
                        updates.put_nowait(ev.job)
                    nxt = asyncio.ensure_future(agen.__anext__())
            finally:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
                await agen.aclose()

        follower = asyncio.create_task(follow())
        await started.wait()
        await asyncio.sleep(0)                      # the subscription exists before the job starts
        try:
            # the mount point comes from udisks, not from a caller: export.allowed_dirs does not apply. It is named
            # as a folder (a trailing '/'): the stick's label names it, and a label like 'X.zip' made it an archive
            # written beside the mount point, outside the stick
            job = await self.core.export_sessions(ids, formats, os.path.join(mp, ""), _options(auto, did, c),
                                                  trusted=True)
            self._jobs[did] = job.id
            self.devices.change(did, state=DeviceState.EXPORTING)
            log.info("%s: exporting %d session(s) as job %s", c.label or c.uuid, len(ids), job.id)
            while not job.state.finished:
                try:
                    async with asyncio.timeout(0.5):    # (wait_for on 3.11 drops a cancel that comes with an update)
                        upd = await updates.get()
                    if upd.id == job.id:
                        job = upd
                except TimeoutError:
                    job = self.core.jobs.get(job.id)
                if (not job.state.finished and job.bytes_total and job.bytes_done >= job.bytes_total
                        and self.devices.get(did).state == DeviceState.EXPORTING):
                    self.devices.change(did, state=DeviceState.VERIFYING)
            return job
        finally:
            self._jobs.pop(did, None)
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def eject(self, did: str) -> str:
        """Finish/cancel jobs on the stick, sync, unmount, power off; the device becomes safe_to_remove."""
        snap = self.devices.get(did)
        if snap.state == DeviceState.SAFE_TO_REMOVE:
            return "already safe to remove"
        c = self._by_node.get(self._node.get(did, ""))
        if c is None:
            raise TargetError(f"{snap.label or did} is not present")
        self.devices.change(did, state=DeviceState.EJECTING)
        job_id = self._jobs.get(did)
        if job_id is not None:
            await self._cancel_and_wait(did, job_id)
        await asyncio.to_thread(os.sync)
        await self.udisks.unmount(c.device)
        self.devices.change(did, mount_point="")
        how = await self.udisks.power_off(c.device)
        self.devices.change(did, state=DeviceState.SAFE_TO_REMOVE)
        log.info("%s: safe to remove (%s)", snap.label or did, how)
        return how

    async def _cancel_and_wait(self, did: str, job_id: int, timeout: float = 60.0) -> None:
        """Cancel the stick's running job and wait until it has stopped writing."""
        log.info("eject requested during job %s: cancelling it", job_id)
        self.core.jobs.cancel(job_id)
        deadline = asyncio.get_running_loop().time() + timeout
        while self._jobs.get(did) == job_id and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def _eject_request(self, did: str) -> str:
        """core.eject() entry: runs inside the stick's boundary and reports errors on the device."""
        try:
            return await self.eject(did)
        except StenoError as e:
            self.devices.change(did, state=DeviceState.ERROR, error=str(e))
            raise

    # ---- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        cfg = self.core.cfg
        excluded = system_disks(["/", cfg.recorder.db_path, cfg.recorder_data_dir])
        self.watcher = Watcher(self.on_event, excluded_disks=excluded, ignore_uuids=self.cfg.ignore_uuids,
                               prefer_labels=self.cfg.prefer_labels, settle_seconds=self.cfg.settle_seconds)
        self.core.set_ejector(self._eject_request)
        self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.core.set_ejector(None)
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(core: Core, bus_address: str | None = None):
    """Start USB handling for ``core``; yields the UsbManager and stops it on exit."""
    udisks = await UDisks.connect(bus_address)
    mgr = UsbManager(core, udisks)
    try:
        mgr.start()
        yield mgr
    finally:
        await mgr.stop()
        await udisks.close()


async def watch(core: Core, bus_address: str | None = None, retry_seconds: float = 30.0) -> None:
    """Run USB handling until cancelled (a no-op when usb.enabled is false).

    Without udisks2 on the system bus it says so (once at ERROR) and retries, so a udisks2
    that starts later during boot is picked up.
    """
    if not core.cfg.usb.enabled:
        log.info("USB sticks disabled (usb.enabled = false)")
        return
    warned = False
    while True:
        try:
            async with running(core, bus_address):
                warned = False
                await asyncio.Event().wait()
        except UDisksUnavailable as e:
            (log.debug if warned else log.error)("USB sticks unavailable: %s; retrying every %.0f s",
                                                  e, retry_seconds)
            warned = True
        await asyncio.sleep(retry_seconds)

