"""The D-Bus service: connects, exports the objects, owns org.silentsteno.Export1, follows core events."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import grp
import logging
import os
import pwd
import time
from pathlib import Path
from typing import Any, AsyncIterator

from dbus_fast import BusType, Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus

from steno_exportd import __version__, events, formats
from steno_exportd.dbus import BUS_NAME, ROOT_PATH, convert, device_path, job_path
from steno_exportd.dbus.objects import Device, Job, Manager
from steno_exportd.errors import InvalidArgument, NotFoundError, StenoError

log = logging.getLogger(__name__)


class BusyError(StenoError):
    """The device or target cannot take this now (mapped to Error.Busy)."""

# The unique bus name of the caller whose method runs now: noted by a message handler that sees each call before
# dbus-fast dispatches it (a method's task copies the context it was started in).
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("dbus_caller", default="")

PROGRESS_INTERVAL = 0.25          # PropertiesChanged for progress: at most 4 Hz per job
OM_IFACE = "org.freedesktop.DBus.ObjectManager"


class _Bus(MessageBus):
    """A MessageBus whose InterfacesAdded/Removed come from the ObjectManager's path (the root)."""

    def _emit_interface_added(self, path: str, interface: Any) -> None:
        if self._disconnected:
            return
        props = {}
        for name, value in getattr(interface, "_om_values", lambda: {})().items():
            props[name] = value
        self.send(Message.new_signal(path=ROOT_PATH, interface=OM_IFACE, member="InterfacesAdded",
                                     signature="oa{sa{sv}}", body=[path, {interface.name: props}]))

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self._disconnected:
            return
        self.send(Message.new_signal(path=ROOT_PATH, interface=OM_IFACE, member="InterfacesRemoved",
                                     signature="oas", body=[path, removed_interfaces]))


def _variants(iface: Any) -> dict[str, Variant]:
    """Current property values of one of our interfaces as Variants (for InterfacesAdded)."""
    from dbus_fast.service import ServiceInterface

    out = {}
    for prop in ServiceInterface._get_properties(iface):
        if prop.access.readable():
            out[prop.name] = Variant(prop.signature, prop.prop_getter(iface))
    return out


class Service:
    """Maps D-Bus calls onto the core and core events onto D-Bus objects and signals."""

    def __init__(self, core: Any, daemon: Any = None) -> None:
        self.core = core
        self.daemon = daemon
        self.bus: MessageBus | None = None
        self.address = ""
        self.version = __version__
        self.session_count = 0
        self.state = "idle"
        self.manager = Manager(self)
        self._jobs: dict[int, Job] = {}
        self._devices: dict[str, Device] = {}
        self._job_flush: dict[int, asyncio.TimerHandle] = {}
        self._job_last_emit: dict[int, float] = {}
        self._job_pending: dict[int, dict] = {}
        self._linger: dict[int, asyncio.TimerHandle] = {}
        self._completed: set[int] = set()
        self._follow_task: asyncio.Task | None = None
        self._generation = 0
        self._listing_cache: tuple | None = None
        self._listing_lock = asyncio.Lock()

    # ---- properties ----------------------------------------------------------------

    @property
    def cfg(self) -> Any:
        return self.core.cfg

    @property
    def http_url(self) -> str:
        return getattr(self.daemon, "http_url", "") or ""

    def status_text(self) -> str:
        if self.daemon is not None:
            return self.daemon.status_text()
        return self.core.status_text()

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect, export the objects, then own the bus name (so callers find everything)."""
        bus_cfg = self.cfg.dbus.bus
        if bus_cfg == "system":
            bus = _Bus(bus_type=BusType.SYSTEM)
        elif bus_cfg == "session":
            bus = _Bus(bus_type=BusType.SESSION)
        else:
            bus = _Bus(bus_address=bus_cfg)
        try:
            self.bus = await bus.connect()
        except (OSError, Exception) as e:  # noqa: BLE001 - dbus-fast raises several types here
            if isinstance(e, asyncio.CancelledError):
                raise
            raise StenoError(f"cannot connect to the D-Bus {bus_cfg} bus: {e}") from e
        self.address = bus_cfg
        self.bus.add_message_handler(_note_caller)
        self.bus.export(ROOT_PATH, self.manager)
        self.session_count = await self._count_sessions()
        for d in self.core.devices.list():
            self._device_updated(d)
        for j in self.core.jobs.list():
            self._job_updated(j)
        self._follow_task = asyncio.create_task(self._follow(), name="dbus-events")
        reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise StenoError(f"the D-Bus name {BUS_NAME} is already owned (another steno-exportd running?)")
        log.info("D-Bus: %s on the %s bus", BUS_NAME, bus_cfg)

    async def stop(self) -> None:
        """Release the name and disconnect; safe to call twice."""
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
            self._follow_task = None
        for h in [*self._job_flush.values(), *self._linger.values()]:
            h.cancel()
        self._job_flush.clear()
        self._linger.clear()
        if self.bus is not None:
            bus, self.bus = self.bus, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.release_name(BUS_NAME), 1)
            bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.wait_for_disconnect(), 1)

    # ---- events --------------------------------------------------------------------

    async def _follow(self) -> None:
        async for ev in self.core.events.subscribe():
            try:
                self._on_event(ev)
            except Exception:  # noqa: BLE001 - one bad event never stops the bus
                log.exception("D-Bus: handling %r failed", ev)
            if isinstance(ev, events.SessionsChanged):
                self._generation += 1
                count = await self._count_sessions()
                if count != self.session_count:
                    self.session_count = count
                    self.manager.emit_properties_changed({"SessionCount": count})

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, events.JobUpdated):
            self._job_updated(ev.job)
        elif isinstance(ev, events.JobRemoved):
            self._remove_job(ev.job_id)
        elif isinstance(ev, events.DeviceUpdated):
            self._device_updated(ev.device)
        elif isinstance(ev, events.DeviceRemoved):
            self._remove_device(ev.device_id)
        elif isinstance(ev, events.SessionsChanged):
            self.manager.SessionsChanged(ev.added, ev.changed, ev.removed)
        elif isinstance(ev, events.StatusChanged):
            if ev.key == "auto_export":
                self.manager.emit_properties_changed({"AutoExport": bool(ev.value)})
            elif ev.key == "samba_enabled":
                self.manager.emit_properties_changed({"SambaEnabled": bool(ev.value)})
            elif ev.key == "samba_state":
                self.manager.emit_properties_changed({"SambaState": str(ev.value)})
        self.refresh_status()
        self._update_state()

    def refresh_status(self) -> None:
        """Emit PropertiesChanged for Status when the status line changed."""
        if self.bus is not None and self._status_changed():
            self.manager.emit_properties_changed({"Status": self._last_status})

    _last_status = ""

    def _status_changed(self) -> bool:
        s = self.status_text()
        if s != self._last_status:
            self._last_status = s
            return True
        return False

    def _update_state(self) -> None:
        running = any(not j.props["State"] in _FINISHED for j in self._jobs.values())
        state = "exporting" if running else "idle"
        if state != self.state:
            self.state = state
            self.manager.emit_properties_changed({"State": state})

    def _export(self, path: str, iface: Any) -> None:
        iface._om_values = lambda i=iface: _variants(i)
        self.bus.export(path, iface)

    def _device_updated(self, d: Any) -> None:
        props = convert.device_properties(d)
        obj = self._devices.get(d.id)
        if obj is None:
            obj = self._devices[d.id] = Device(self, props)
            self._export(device_path(d.id), obj)
        else:
            obj.update(props)

    def _remove_device(self, device_id: str) -> None:
        if self._devices.pop(device_id, None) is not None and self.bus is not None:
            self.bus.unexport(device_path(device_id))

    def _job_updated(self, j: Any) -> None:
        dev = device_path(j.device_id) if j.device_id and j.device_id in self._devices else "/"
        props = convert.job_properties(j, dev)
        obj = self._jobs.get(j.id)
        if obj is None:
            obj = self._jobs[j.id] = Job(self, j.id, props)
            self._export(job_path(j.id), obj)
            self._job_last_emit[j.id] = time.monotonic()
        else:
            pending = self._job_pending.setdefault(j.id, {})
            pending.update({k: v for k, v in props.items() if obj.props.get(k) != v})
            obj.props = props
            now = time.monotonic()
            urgent = "State" in pending or "Error" in pending    # Results ride with progress (<= 4 Hz)
            wait = PROGRESS_INTERVAL - (now - self._job_last_emit.get(j.id, 0.0))
            if urgent or wait <= 0:
                self._flush_job(j.id)
            elif j.id not in self._job_flush:
                self._job_flush[j.id] = asyncio.get_running_loop().call_later(wait, self._flush_job, j.id)
        if j.state.finished and j.id not in self._completed:
            self._completed.add(j.id)
            self._flush_job(j.id)
            ok = j.state == events.JobState.COMPLETED
            msg = j.error or ("completed" if ok else str(j.state))
            obj.Completed(ok, msg)
            linger = self.cfg.dbus.job_linger_seconds
            self._linger[j.id] = asyncio.get_running_loop().call_later(linger, self._remove_job, j.id)

    def _flush_job(self, job_id: int) -> None:
        h = self._job_flush.pop(job_id, None)
        if h is not None:
            h.cancel()
        pending = self._job_pending.pop(job_id, None)
        obj = self._jobs.get(job_id)
        if pending and obj is not None:
            self._job_last_emit[job_id] = time.monotonic()
            obj.emit_properties_changed(pending)

    def _remove_job(self, job_id: int) -> None:
        for table in (self._job_flush, self._linger):
            h = table.pop(job_id, None)
            if h is not None:
                h.cancel()
        self._job_pending.pop(job_id, None)
        self._job_last_emit.pop(job_id, None)
        if self._jobs.pop(job_id, None) is not None and self.bus is not None:
            self.bus.unexport(job_path(job_id))
        self._update_state()

    # ---- methods -------------------------------------------------------------------

    async def _listing(self) -> tuple[list, dict]:
        """Session summaries and their ListSessions dicts, cached until the library's data_version moves."""
        lib = self.core.library

        def work() -> tuple:
            try:
                version = lib.data_version()
            except (StenoError, AttributeError):
                version = None
            key = (id(lib), self._generation, version)
            if version is not None and self._listing_cache and self._listing_cache[0] == key:
                return self._listing_cache
            sessions = lib.list_sessions()
            return key, sessions, {s.id: convert.session_listing(s) for s in sessions}
        async with self._listing_lock:
            self._listing_cache = await asyncio.to_thread(work)
            return self._listing_cache[1], self._listing_cache[2]

    async def _count_sessions(self) -> int:
        try:
            return len((await self._listing())[0])
        except StenoError as e:
            log.warning("counting sessions: %s", e)
            return 0

    async def list_sessions(self, filter_: dict) -> list[dict]:
        opts = convert.unwrap(filter_)
        sessions, dicts = await self._listing()
        return [dicts[s.id] for s in convert.session_filter(opts, sessions)]

    async def get_session(self, key: str) -> dict:
        k: int | str = int(key) if key.strip().isdigit() else key.strip()
        if not k and k != 0:
            raise InvalidArgument("empty session id")
        s = await asyncio.to_thread(self.core.library.get_session, k)
        return convert.session(s)

    def list_formats(self) -> list[str]:
        try:
            from steno_exportd import render
            return list(render.names())
        except ImportError:
            return list(formats.FORMATS)

    def list_templates(self) -> list[str]:
        return list(formats.DOCUMENT_TEMPLATES)

    async def reload(self) -> None:
        if self.daemon is None:
            raise StenoError("reload is not available")
        if not await self.daemon.reload():
            raise StenoError(self.daemon.status_text())

    async def _check_args(self, ids: list[str], fmts: list[str]) -> list[int | str]:
        """Unknown formats and sessions are NotFound before a job is queued."""
        if not ids:
            raise InvalidArgument("no sessions given")
        if not fmts:
            raise InvalidArgument("no formats given")
        valid = self.list_formats()
        for f in fmts:
            if f not in valid:
                raise NotFoundError(f"unknown format {f!r}; valid: {', '.join(valid)}")
        keys = [int(i) if str(i).isdigit() else i for i in ids]

        sessions, _ = await self._listing()
        known: set = set()
        for x in sessions:
            known.update((x.id, x.uuid, x.short_id))
        missing = [str(k) for k in keys if k not in known]
        if missing:
            raise NotFoundError(f"unknown session(s): {', '.join(missing)}")
        return keys

    def _make_options(self, options: dict) -> Any:
        opts = convert.unwrap(options)
        cls = None
        for mod in ("steno_exportd.core", "steno_exportd.engine.jobs", "steno_exportd.engine.plan"):
            try:
                cls = getattr(__import__(mod, fromlist=["ExportOptions"]), "ExportOptions", None)
            except ImportError:
                cls = None
            if cls is not None:
                break
        if cls is None:
            return opts
        import dataclasses
        if dataclasses.is_dataclass(cls):
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = set(opts) - fields
            if unknown:
                raise InvalidArgument(f"unknown option(s): {', '.join(sorted(unknown))}; "
                                      f"valid: {', '.join(sorted(fields))}")
        try:
            return cls(**opts)
        except TypeError as e:
            raise InvalidArgument(f"bad export options: {e}") from None

    def _check_directory(self, target: str) -> str:
        real = os.path.realpath(target)
        for d in self.cfg.export.allowed_dirs:
            root = os.path.realpath(d)
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return target
        raise PermissionError(f"{target}: not inside an allowed directory "
                              f"(export.allowed_dirs: {', '.join(self.cfg.export.allowed_dirs)})")

    def _device_id_for_path(self, path: str) -> str:
        for dev_id in self._devices:
            if device_path(dev_id) == path:
                return dev_id
        raise NotFoundError(f"no device at {path}")

    async def export_sessions(self, ids: list[str], fmts: list[str], target: str, options: dict) -> str:
        keys = await self._check_args(ids, fmts)
        if not target:
            raise InvalidArgument("no target given (a device object path, a directory, or smb:<remote>)")
        if target.startswith(ROOT_PATH + "/devices/"):
            return await self.export_to_device(self._device_id_for_path(target), ids, fmts, options)
        if target.startswith("/"):
            self._check_directory(target)
        elif not target.startswith("smb:"):
            raise InvalidArgument(f"{target!r}: not a device object path, an absolute directory or smb:<remote>")
        job = await self.core.export_sessions(keys, list(fmts), target, self._make_options(options))
        self._job_updated(job)
        return job_path(job.id)

    async def export_to_device(self, device_id: str, ids: list[str], fmts: list[str], options: dict) -> str:
        keys = await self._check_args(ids, fmts)
        dev = self._devices.get(device_id)
        if dev is None:
            raise NotFoundError(f"unknown device {device_id!r}")
        mount_point = dev.props["MountPoint"]
        if not mount_point:
            raise BusyError(f"device {dev.props['Label'] or device_id} is not mounted "
                            f"(state: {dev.props['State']})")
        # Like the USB auto-export: the target of a stick export is its mount point.
        job = await self.core.export_sessions(keys, list(fmts), mount_point, self._make_options(options))
        self._job_updated(job)
        return job_path(job.id)

    async def eject(self, device_id: str) -> str:
        job = await self.core.eject(device_id)
        self._job_updated(job)
        return job_path(job.id)

    async def cancel(self, job_id: int) -> None:
        res = self.core.jobs.cancel(job_id)
        if asyncio.iscoroutine(res):
            await res


    # ---- who may reach the meetings (root or the UI group only, checked here as well as by the bus policy) ----

    async def require_admin(self, what: str) -> None:
        """The caller is root or a member of dbus.ui_group; PermissionError (NotAuthorized) otherwise."""
        sender = CALLER.get()
        uid = -1
        if sender and self.bus is not None:
            reply = await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                                interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
                                                signature="s", body=[sender]))
            if reply.message_type == MessageType.METHOD_RETURN:
                uid = int(reply.body[0])
        if uid == 0 or (uid >= 0 and _in_group(uid, self.cfg.dbus.ui_group)):
            return
        log.warning("D-Bus: %s refused to %s (uid %s is neither root nor in group %s)", what, sender, uid,
                    self.cfg.dbus.ui_group)
        raise PermissionError(f"{what}: only root or members of the group {self.cfg.dbus.ui_group} may do this")

    async def start_pairing(self) -> dict:
        await self.require_admin("StartPairing")
        offer = self.core.start_pairing()
        digits = offer.code.replace("-", "")
        base = self.http_url or ""
        url = f"{base}/pair?code={digits}" if base else ""
        return {"code": Variant("s", offer.code), "url": Variant("s", url),
                "expires": Variant("t", int(offer.expires)),
                "seconds": Variant("u", max(0, int(offer.expires - time.time())))}

    async def list_browsers(self) -> list[dict]:
        await self.require_admin("ListPairedBrowsers")
        return [convert.browser(x) for x in await self.core.paired_browsers()]

    async def revoke_browser(self, login_id: str) -> None:
        await self.require_admin("RevokeBrowser")
        await self.core.revoke_browser(login_id)

    async def set_web_password(self, password: str) -> None:
        await self.require_admin("SetWebPassword")
        await self.core.set_web_password(password)

    async def set_samba_password(self, password: str) -> None:
        await self.require_admin("SetSambaPassword")
        await self.core.set_samba_password(password)


def _note_caller(msg: Message) -> None:
    if msg.message_type == MessageType.METHOD_CALL:
        CALLER.set(msg.sender or "")
    return None


def _in_group(uid: int, group: str) -> bool:
    try:
        user = pwd.getpwuid(uid)
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


_FINISHED = {str(s) for s in events.JobState if s.finished}


@contextlib.asynccontextmanager
async def export(core: Any, daemon: Any = None) -> AsyncIterator[Service]:
    """Run the D-Bus service for the core while the context is open."""
    svc = Service(core, daemon)
    try:
        await svc.start()
        yield svc
    finally:
        await svc.stop()
