"""The D-Bus service: connects, exports the objects, owns org.silentsteno.Export1, follows core events."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import grp
import inspect
import logging
import os
import pwd
import socket
import time
from typing import AsyncIterator, Awaitable, Callable

from dbus_fast import BusType, Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.aio import message_bus as _aio_bus
from dbus_fast.aio.message_bus import _MessageWriter
from dbus_fast.service import ServiceInterface

from steno_exportd import __version__, access, events, formats, request
from steno_exportd.config import Config
from steno_exportd.core import Core, SessionListing
from steno_exportd.dbus import BUS_NAME, ROOT_PATH, convert, device_path, job_path
from steno_exportd.dbus.capped import CappedSocket, capped_process
from steno_exportd.dbus.errors import STOPPING
from steno_exportd.dbus.objects import Device, Job, Manager
from steno_exportd.errors import BusyError, InvalidArgument, NotFoundError, StenoError
from steno_exportd.events import DeviceSnapshot, JobSnapshot

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Host:
    """What the service needs from the daemon beyond the core: its status line and reload."""

    status_text: Callable[[], str] | None = None         # None: the core's status line
    reload: Callable[[], Awaitable[str]] | None = None   # "" when reloaded, else why not; None: not offered


# The unique bus name of the caller whose method runs now: noted by a message handler that sees each call before
# dbus-fast dispatches it (a method's task copies the context it was started in).
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("dbus_caller", default="")

STOP_GRACE = 3.0                  # seconds calls in flight at a stop get to finish and be answered
CUT_WAIT = 0.5                    # seconds calls still running after it get to end once cancelled
PROGRESS_INTERVAL = 0.25          # PropertiesChanged for progress: at most 4 Hz per job
OM_IFACE = "org.freedesktop.DBus.ObjectManager"


class _Patient:
    """The bus socket as dbus-fast's writer sees it: a full socket buffer (EAGAIN) means "wait until writable".

    dbus-fast 5.2 writes at once when its queue looks empty, even while the previous message is only partly
    sent; the bus daemon not reading for a moment then made send() raise EAGAIN, which dbus-fast took for a
    lost bus (the daemon's D-Bus API was gone until a restart). 0 bytes sent keeps the message and waits."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: memoryview) -> int:
        try:
            return self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def sendmsg(self, buffers: list, ancdata: list) -> int:
        try:
            return self._sock.sendmsg(buffers, ancdata)
        except (BlockingIOError, InterruptedError):
            return 0


class _Bus(MessageBus):
    """A MessageBus whose InterfacesAdded/Removed come from the ObjectManager's path (the root), and whose
    writer waits for room in the socket (_Patient)."""

    async def connect(self) -> "_Bus":
        _install_capped_reader()
        await super().connect()
        if not isinstance(self._writer, _MessageWriter) or not isinstance(self._writer.sock, socket.socket):
            raise StenoError("this dbus-fast version is not the one steno-exportd was built for (5.x)")
        self._writer.sock = _Patient(self._writer.sock)
        return self

    def send(self, msg: Message) -> asyncio.Future:
        """A reply of a call that finished after our disconnect is dropped (nobody can get it): sent, it failed
        on the closed socket with a traceback in the log for every such call."""
        if self._disconnected or self._user_disconnect:
            done = self._loop.create_future()
            done.set_result(None)
            return done
        return super().send(msg)

    async def settle(self, timeout: float) -> None:
        """Wait (at most timeout) for the method calls in flight, so that they are answered before we go; the
        ones still running then are cancelled (answered STOPPING by errors.mapped), with one log line."""
        pending = [f for f in self._pending_futures if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        late = [f for f in self._pending_futures if not f.done()]
        if not late:
            return
        names = sorted(_call_name(f) for f in late)
        log.warning("D-Bus: %d call%s still running %g s after the stop began, ended (told: stopping): %s",
                    len(late), "" if len(late) == 1 else "s", timeout, ", ".join(names))
        for f in late:
            f.cancel(STOPPING)
        await asyncio.wait(late, timeout=CUT_WAIT)

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected:
            return
        props = _variants(interface)
        self.send(Message.new_signal(path=ROOT_PATH, interface=OM_IFACE, member="InterfacesAdded",
                                     signature="oa{sa{sv}}", body=[path, {interface.name: props}]))

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self._disconnected:
            return
        self.send(Message.new_signal(path=ROOT_PATH, interface=OM_IFACE, member="InterfacesRemoved",
                                     signature="oas", body=[path, removed_interfaces]))


_plain_reader = _aio_bus.build_message_reader


@functools.cache
def _install_capped_reader() -> None:
    """dbus-fast's reader replaced by _capped_reader, once per process (dbus-fast's own signature checked then: a
    version whose reader takes other arguments is refused, StenoError, and checked again at the next connect)."""
    params = list(inspect.signature(_plain_reader).parameters)
    if params != ["sock", "process", "finalize", "negotiate_unix_fd"]:
        raise StenoError("this dbus-fast version is not the one steno-exportd was built for (5.x)")
    _aio_bus.build_message_reader = _capped_reader


def _capped_reader(sock: socket.socket | None, process: Callable, finalize: Callable,
                   negotiate_unix_fd: bool) -> Callable[[], None]:
    """dbus-fast's message reader, for our service's bus reading through CappedSocket (a call too large to decode
    answered with an error, never decoded whole); any other bus of this process reads as dbus-fast does."""
    bus = getattr(process, "__self__", None)
    if not isinstance(bus, _Bus) or sock is None or negotiate_unix_fd:
        return _plain_reader(sock, process, finalize, negotiate_unix_fd)
    stream = CappedSocket(sock)
    return _plain_reader(stream, capped_process(stream, process, bus.send), finalize, negotiate_unix_fd)


def _call_name(fut: asyncio.Future) -> str:
    """The D-Bus method a call's task runs (its coroutine is errors.mapped's wrapper, named as the method)."""
    coro = fut.get_coro() if isinstance(fut, asyncio.Task) else None
    return getattr(coro, "__name__", "") or "a method call"


def _variants(iface: ServiceInterface) -> dict[str, Variant]:
    """Current property values of one of our interfaces as Variants (for InterfacesAdded)."""
    out = {}
    for prop in ServiceInterface._get_properties(iface):
        if prop.access.readable():
            out[prop.name] = Variant(prop.signature, prop.prop_getter(iface))
    return out


class Service:
    """Maps D-Bus calls onto the core and core events onto D-Bus objects and signals."""

    def __init__(self, core: Core, host: Host = Host()) -> None:
        self.core = core
        self.host = host
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
        self._job_results: dict[int, list] = {}     # job id -> [(SessionResult, its D-Bus dict)]
        self._linger: dict[int, asyncio.TimerHandle] = {}
        self._completed: set[int] = set()
        self._follow_task: asyncio.Task | None = None
        self._lost_task: asyncio.Task | None = None
        self._wire: tuple[SessionListing | None, dict[int, dict[str, Variant]]] = (None, {})
        self._next_run = 0

    # ---- properties ----------------------------------------------------------------

    @property
    def cfg(self) -> Config:
        return self.core.cfg

    @property
    def http_url(self) -> str:
        """The web page's URL (http.public_url of the current config first); "" while the page is off."""
        return self.core.web_url

    def status_text(self) -> str:
        return self.host.status_text() if self.host.status_text is not None else self.core.status_text()

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
        self._lost_task = asyncio.create_task(self._note_lost(self.bus), name="dbus-lost")

    async def _note_lost(self, bus: MessageBus) -> None:
        """One line when the bus goes away under the daemon (the touchscreen loses its API until a restart)."""
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()
        if self.bus is bus:             # not our own stop (stop() lets go of self.bus first)
            log.warning("D-Bus: the connection to the %s bus was lost; the touchscreen and steno-exportctl cannot "
                        "reach the daemon until it is restarted", self.address)

    async def stop(self) -> None:
        """Release the name and disconnect (unless the bus already went away); safe to call twice."""
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
            bus = self.bus
            if bus.connected:           # (gone already: a message sent now fails on the closed socket, unheard)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await bus.release_name(BUS_NAME)
                if isinstance(bus, _Bus):
                    await bus.settle(STOP_GRACE)     # calls that came before the stop get their answers
            self.bus = None
            bus.disconnect()
        if self._lost_task is not None:
            # it ends with the disconnect; cancelled before, it would cancel dbus-fast's own disconnect future
            lost, self._lost_task = self._lost_task, None
            await asyncio.wait([lost], timeout=1)
            lost.cancel()

    # ---- events --------------------------------------------------------------------

    async def _follow(self) -> None:
        async for ev in self.core.events.subscribe():
            try:
                self._on_event(ev)
            except Exception:  # noqa: BLE001 - one bad event never stops the bus
                log.exception("D-Bus: handling %r failed", ev)
            if isinstance(ev, events.SessionsChanged):
                count = await self._count_sessions()
                if count != self.session_count:
                    self.session_count = count
                    self.manager.emit_properties_changed({"SessionCount": count})

    def _on_event(self, ev: events.Event) -> None:
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
        elif isinstance(ev, events.SchedulesChanged):
            nxt = self.next_scheduled_run()
            if nxt != self._next_run:
                self._next_run = nxt
                self.manager.emit_properties_changed({"NextScheduledRun": nxt})
        elif isinstance(ev, events.OutboxUpdated):
            self.manager.OutboxUpdated(convert.outbox_entry(ev.entry))
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

    def _device_updated(self, d: DeviceSnapshot) -> None:
        if self.bus is None:            # stopped (a call that finished after the stop)
            return
        props = convert.device_properties(d)
        obj = self._devices.get(d.id)
        if obj is None:
            obj = self._devices[d.id] = Device(self, props)
            self.bus.export(device_path(d.id), obj)
        else:
            obj.update(props)

    def _remove_device(self, device_id: str) -> None:
        if self._devices.pop(device_id, None) is not None and self.bus is not None:
            self.bus.unexport(device_path(device_id))

    def _job_updated(self, j: JobSnapshot) -> None:
        if self.bus is None:            # stopped (a call that finished after the stop)
            return
        dev = device_path(j.device_id) if j.device_id and j.device_id in self._devices else "/"
        props = convert.job_properties(j, dev, self._converted_results(j))
        obj = self._jobs.get(j.id)
        if obj is None:
            obj = self._jobs[j.id] = Job(self, j.id, props)
            self.bus.export(job_path(j.id), obj)
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

    def _converted_results(self, j: JobSnapshot) -> list:
        """j.results as D-Bus dicts, each converted once: every update of a job carries all its results so
        far, and converting 10,000 of them per update blocked the loop for 300 ms."""
        before = self._job_results.get(j.id, [])
        out = []
        for i, r in enumerate(j.results):
            same = i < len(before) and before[i][0] is r
            out.append(before[i] if same else (r, convert.job_result(r)))
        self._job_results[j.id] = out
        return [c for _, c in out]

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
        self._job_results.pop(job_id, None)
        if self._jobs.pop(job_id, None) is not None and self.bus is not None:
            self.bus.unexport(job_path(job_id))
        self._update_state()

    # ---- methods -------------------------------------------------------------------

    async def _listing(self) -> tuple[SessionListing, dict[int, dict[str, Variant]]]:
        """The core's session listing and its ListSessions dicts (converted once per listing)."""
        listing = await self.core.listing()
        if self._wire[0] is not listing:
            dicts = await asyncio.to_thread(lambda: {s.id: convert.session_listing(s) for s in listing.sessions})
            self._wire = (listing, dicts)
        return listing, self._wire[1]

    async def _count_sessions(self) -> int:
        try:
            return len(await self.core.listing())
        except StenoError as e:
            log.warning("counting sessions: %s", e)
            return 0

    async def list_sessions(self, filter_: dict[str, Variant]) -> list[dict[str, Variant]]:
        query = request.session_query(convert.unwrap(filter_))
        listing, dicts = await self._listing()
        return [dicts[s.id] for s in query.apply(listing.sessions)]

    async def get_session(self, key: str) -> dict[str, Variant]:
        return convert.session(await self.core.session(key))

    async def search_sessions(self, query: str, limit: int) -> list:
        """Manager.SearchSessions: [sessions, total, pending]; the core checks the query and the limit."""
        r = await self.core.search(query, limit)
        return [convert.search_results(r), r.total, r.pending]

    async def create_share_link(self, key: str, options: dict[str, Variant]) -> dict[str, Variant]:
        """Manager.CreateShareLink: a share link with its full URL (the touchscreen shows it as a QR code)."""
        opts = convert.unwrap(options)
        unknown = sorted(set(opts) - {"hours", "max_downloads", "pin"})
        if unknown:
            raise InvalidArgument(f"unknown option {unknown[0][:40]!r}; allowed: hours, max_downloads, pin")
        pin = opts.get("pin", "")
        if not isinstance(pin, str):
            raise InvalidArgument("pin: a string of digits")
        s = await self.core.session(key)
        cfg = self.core.cfg
        link = await self.core.access.create_link(cfg, s.id, opts.get("hours", ""), opts.get("max_downloads", ""), pin,
                                                    session_uuid=s.uuid)
        url = access.share_url(cfg, link.token, tls=cfg.http.tls.mode != "off")
        return {"token": Variant("s", link.token), "url": Variant("s", url), "session_id": Variant("x", s.id),
                "expires": Variant("d", link.expires), "max_downloads": Variant("u", link.max_downloads),
                "pin": Variant("b", link.has_pin)}

    def list_formats(self) -> list[str]:
        return list(formats.FORMATS)

    def list_templates(self) -> list[str]:
        return self.core.template_names()

    async def reload(self) -> None:
        if self.host.reload is None:
            raise StenoError("reload is not available")
        problem = await self.host.reload()
        if problem:
            raise StenoError(problem)

    def _device_id_for_path(self, path: str) -> str:
        for dev_id in self._devices:
            if device_path(dev_id) == path:
                return dev_id
        raise NotFoundError(f"no device at {path[:200]}")

    async def export_sessions(self, ids: list[str], fmts: list[str], target: str,
                              options: dict[str, Variant]) -> str:
        """Manager.ExportSessions: every argument is checked by the core (Core.check_export)."""
        if target.startswith(ROOT_PATH + "/devices/"):
            return await self.export_to_device(self._device_id_for_path(target), ids, fmts, options)
        if not target:
            raise InvalidArgument("no target given (a device object path, a directory, or smb:<remote>)")
        return await self._submit(ids, fmts, target, options)

    async def export_to_device(self, device_id: str, ids: list[str], fmts: list[str],
                               options: dict[str, Variant]) -> str:
        dev = self._devices.get(device_id)
        if dev is None:
            raise NotFoundError(f"unknown device {device_id!r}")
        mount_point = dev.props["MountPoint"]
        if not mount_point:
            raise BusyError(f"device {dev.props['Label'] or device_id} is not mounted "
                            f"(state: {dev.props['State']})")
        # Like the USB auto-export: the target of a stick export is its mount point, and the job is the device's
        # (held to the stick's own filesystem: a stick pulled before the job opens it fails as pulled)
        return await self._submit(ids, fmts, mount_point, {**options, "device_id": Variant("s", device_id)})

    async def _submit(self, ids: list[str], fmts: list[str], target: str, options: dict[str, Variant]) -> str:
        """Queue an export: the core checks it, and bounds what callers may queue (Busy past core.MAX_WAITING_JOBS)."""
        job = await self.core.export_sessions(ids, fmts, target, convert.unwrap(options))
        self._job_updated(job)
        return job_path(job.id)

    async def eject(self, device_id: str) -> str:
        job = await self.core.eject(device_id)
        self._job_updated(job)
        return job_path(job.id)

    async def email_sessions(self, ids: list[str], fmts: list[str], recipients: list[str],
                             options: dict[str, Variant]) -> int:
        """Manager.EmailSessions: the core checks everything; returns the outbox message's id."""
        opts = convert.unwrap(options)
        unknown = sorted(set(opts) - {"template"})
        if unknown:
            raise InvalidArgument(f"unknown option(s) {', '.join(repr(k[:64]) for k in unknown[:10])}; "
                                  "EmailSessions takes: template")
        template = opts.get("template", "")
        if not isinstance(template, str):
            raise InvalidArgument("template: a string")
        entry = await self.core.email_sessions(ids, fmts, recipients, template or None)
        return entry.id

    def list_outbox(self) -> list[dict[str, Variant]]:
        return [convert.outbox_entry(e) for e in self.core.outbox.list()]

    async def retry_mail(self, entry_id: int) -> dict[str, Variant]:
        """Manager.RetryMail: the core checks the id and the message's state."""
        return convert.outbox_entry(await self.core.retry_mail(entry_id))

    async def cancel_mail(self, entry_id: int) -> dict[str, Variant]:
        """Manager.CancelMail: the core checks the id and the message's state."""
        return convert.outbox_entry(await self.core.cancel_mail(entry_id))

    def list_schedules(self) -> list[dict[str, Variant]]:
        return [convert.schedule(s) for s in self.core.schedules.list()]

    def next_scheduled_run(self) -> int:
        """The earliest next run of any schedule, microseconds since the epoch (0: none)."""
        return min((int(s.next_run * 1e6) for s in self.core.schedules.list()), default=0)

    async def cancel(self, job_id: int) -> None:
        self.core.jobs.cancel(job_id)

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

    async def start_pairing(self) -> dict[str, Variant]:
        await self.require_admin("StartPairing")
        offer = self.core.start_pairing()
        digits = offer.code.replace("-", "")
        url = f"{self.http_url}/pair?code={digits}" if self.http_url else ""
        return {"code": Variant("s", offer.code), "url": Variant("s", url),
                "expires": Variant("t", int(offer.expires)),
                "seconds": Variant("u", max(0, int(offer.expires - time.time())))}

    async def list_browsers(self) -> list[dict[str, Variant]]:
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
async def export(core: Core, host: Host = Host()) -> AsyncIterator[Service]:
    """Run the D-Bus service for the core while the context is open."""
    svc = Service(core, host)
    try:
        await svc.start()
        yield svc
    finally:
        await svc.stop()
