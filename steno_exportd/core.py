"""Core: library + jobs + devices + events; the only API adapters use."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

from steno_exportd import events as ev
from steno_exportd.config import Config
from steno_exportd.devices import DeviceRegistry
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.targets import DirectoryTarget, Target
from steno_exportd.errors import InvalidArgument, NotFoundError, StenoError
from steno_exportd.formats import DOCUMENT_TEMPLATES, FORMATS

log = logging.getLogger(__name__)

__all__ = ["Core", "ExportOptions"]

Ejector = Callable[[str], Awaitable[Any]]


def _under(path: str, dirs: list[str]) -> bool:
    real = os.path.realpath(path)
    for d in dirs:
        base = os.path.realpath(d)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return True
    return False


def is_archive_path(target: str) -> bool:
    low = target.lower()
    return low.endswith((".zip", ".tar.gz", ".tgz"))


class Core:
    """Owns the library, the state DB, the job manager, the devices and the event bus."""

    def __init__(self, cfg: Config, *, library: Any = None) -> None:
        from steno_exportd.engine.jobs import JobManager
        from steno_exportd.engine.state import StateDB

        from steno_exportd.access import Access

        self.cfg = cfg
        self.events = ev.EventBus()
        self.access = Access(cfg)          # logins, share links, audit log, the limiter for every secret
        self._library = library
        self.state = StateDB(Path(cfg.state.dir) / "state.db")
        self.devices = DeviceRegistry(self.events, lambda d: self.state.device_seen(d.uuid or d.id, d.label,
                                                                                     d.fs_type))
        self.jobs = JobManager(cfg, self.events, self.state, lambda: self.library)
        self.auto_export: bool = cfg.usb.auto_export.enabled
        self.sharing_enabled: bool = cfg.samba.enabled
        self.samba_state: str = "off"      # what the share really does: "serving", "off", "error: ..."
        self._ejector: Ejector | None = None
        self._samba_passworder: Callable[[Config, str], None] | None = None
        self._started = False
        self._session_count = 0
        self._lib_token: Any = None

    # -- lifecycle -------------------------------------------------------------------
    @property
    def library(self) -> Any:
        if self._library is None:
            from steno_exportd.library import Library
            self._library = Library.from_config(self.cfg)
        return self._library

    async def start(self) -> None:
        """Open the state DB, mark interrupted jobs, start the job workers."""
        if self._started:
            return
        self._started = True
        await asyncio.to_thread(self.state.open)
        await asyncio.to_thread(self.access.open)
        await asyncio.to_thread(self.state.prune, self.cfg.export.job_history_days)
        await self.jobs.start()

    async def stop(self) -> None:
        """Cancel running jobs safely (no partial file under a final name); idempotent."""
        if not self._started:
            return
        self._started = False
        await self.jobs.stop()
        await asyncio.to_thread(self.state.close)
        await asyncio.to_thread(self.access.close)

    async def reload(self, cfg: Config) -> None:
        old = self.cfg
        self.cfg = cfg
        self.jobs.reload(cfg)
        self.access.reload(cfg)
        if (old.recorder.db_path, old.recorder.data_dir) != (cfg.recorder.db_path, cfg.recorder.data_dir):
            lib, self._library = self._library, None
            if lib is not None and hasattr(lib, "close"):
                lib.close()
        # a switch changed in the file wins over the D-Bus/web setting; an unchanged one leaves it
        if old.usb.auto_export.enabled != cfg.usb.auto_export.enabled:
            self.set_auto_export(cfg.usb.auto_export.enabled)
        if old.samba.enabled != cfg.samba.enabled:
            self.set_sharing(cfg.samba.enabled)
        self.events.publish(ev.StatusChanged("config", "reloaded"))

    # -- sessions --------------------------------------------------------------------
    async def refresh_library(self) -> ev.SessionsChanged:
        def work() -> ev.SessionsChanged:
            delta, self._lib_token = self.library.changed_since(self._lib_token)
            ids = lambda xs: tuple(x if isinstance(x, int) else x.id for x in (xs or ()))  # noqa: E731
            return ev.SessionsChanged(ids(getattr(delta, "added", ())), ids(getattr(delta, "changed", ())),
                                      ids(getattr(delta, "removed", ())))
        change = await asyncio.to_thread(work)
        if change.added or change.changed or change.removed:
            self.events.publish(change)
        return change

    # -- exports ---------------------------------------------------------------------
    async def export_sessions(self, ids: list[str | int] | str, formats: list[str],
                              target: str | Target, options: ExportOptions | None = None,
                              *, trusted: bool = False) -> ev.JobSnapshot:
        """Validate and queue an export job. trusted=True (CLI) lifts the allowed_dirs rule."""
        from steno_exportd.engine.jobs import JobSpec

        options = options or ExportOptions()
        remote = None
        if isinstance(target, str) and target.startswith("smb:"):
            from steno_exportd.smb.job import remote_for
            remote = remote_for(self.cfg, target)      # NotFoundError names the configured remotes
        formats = list(formats or (remote.formats if remote else self.cfg.export.formats))
        for f in formats:
            if f not in FORMATS:
                raise NotFoundError(f"unknown format {f!r}; valid: {', '.join(FORMATS)}")
        template = options.template or self.cfg.export.template
        if template not in DOCUMENT_TEMPLATES and not self._user_template(template):
            raise NotFoundError(f"unknown template {template!r}; valid: {', '.join(DOCUMENT_TEMPLATES)}")
        session_ids = await asyncio.to_thread(self._resolve_sessions, ids, options)
        operation = "export"
        if remote is not None:
            operation, name = "push", target
        elif isinstance(target, str):
            if not target:
                raise InvalidArgument("no target given")
            if not trusted and not _under(target if not is_archive_path(target) else os.path.dirname(target) or ".",
                                          self.cfg.export.allowed_dirs):
                raise InvalidArgument(f"target {target!r} is not under an allowed folder "
                                      f"({', '.join(self.cfg.export.allowed_dirs)})")
            if not is_archive_path(target) and not os.path.isdir(target):
                raise InvalidArgument(f"target folder does not exist: {target}")
            name = options.target_name or target
        else:
            name = options.target_name or getattr(target, "name", "target")
        spec = JobSpec(operation=operation, target=target, target_name=name, session_ids=tuple(session_ids),
                       formats=tuple(formats), options=options, device_id=options.device_id)
        return await self.jobs.submit(spec)

    def _user_template(self, name: str) -> bool:
        d = Path(self.cfg.render.template_dir)
        return d.is_dir() and any(p.stem.split(".")[0] == name for p in d.iterdir())

    def _resolve_sessions(self, ids: list[str | int] | str, options: ExportOptions) -> list[int]:
        lib = self.library
        if isinstance(ids, str) and ids in ("new", "all", "since_days"):
            selector = ids
        elif isinstance(ids, str):
            ids = [x for x in ids.split(",") if x.strip()]
            selector = ""
        else:
            selector = ""
        if selector:
            summaries = [s for s in lib.list_sessions(exportable_only=True)]
            if selector == "since_days" or options.sessions == "since_days":
                cut = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=options.since_days)
                summaries = [s for s in summaries if s.start_time and s.start_time >= cut]
            return [s.id for s in summaries]
        out: list[int] = []
        for key in ids:
            if isinstance(key, str) and key.strip().isdigit():
                key = int(key.strip())
            s = lib.get_session(key)     # NotFoundError for an unknown one
            if s.id not in out:
                out.append(s.id)
        if not out:
            raise InvalidArgument("no sessions given")
        return out

    # -- devices ---------------------------------------------------------------------
    def set_ejector(self, ejector: Ejector | None) -> None:
        """The USB adapter installs the coroutine that unmounts and powers a device off."""
        self._ejector = ejector

    async def eject(self, device_id: str) -> ev.JobSnapshot:
        if self._ejector is None:
            raise NotFoundError("no ejector installed (USB support is off)")
        dev = self.devices.get(device_id)
        return await self.jobs.run_operation("eject", f"{dev.label or dev.device}",
                                             lambda: self._ejector(device_id), device_id=device_id)

    # -- switches --------------------------------------------------------------------
    def set_auto_export(self, on: bool) -> None:
        on = bool(on)
        if on != self.auto_export:
            self.auto_export = on
        self.events.publish(ev.StatusChanged("auto_export", on))

    def set_sharing(self, on: bool) -> None:
        on = bool(on)
        self.sharing_enabled = on
        self.events.publish(ev.StatusChanged("samba_enabled", on))

    def set_samba_state(self, state: str) -> None:
        """The samba adapter reports what the share does now."""
        self.samba_state = state
        self.events.publish(ev.StatusChanged("samba_state", state))

    def status_text(self) -> str:
        running = [j for j in self.jobs.list() if j.state == ev.JobState.RUNNING and j.operation == "export"]
        if running:
            j = running[0]
            done = sum(1 for r in j.results)
            return (f"exporting {done}/{len(j.sessions)} to {j.target} ({int(j.progress * 100)}%)"
                    + (f" +{len(running) - 1} more" if len(running) > 1 else ""))
        try:
            n = len(self._library.list_sessions()) if self._library is not None else None
        except Exception:  # noqa: BLE001 - status must never fail
            n = None
        sticks = len(self.devices)
        parts = ["idle"]
        if n is not None:
            parts.append(f"{n} sessions")
        parts.append(f"{sticks} stick" + ("" if sticks == 1 else "s"))
        return "; ".join(parts)

    # -- who may reach the meetings: web access, pairing, passwords ------------------------------
    def web_access(self) -> str:
        """How the web page is protected, in words; "open to the LAN" first when nothing protects it."""
        h = self.cfg.http
        if not h.enabled:
            return "off"
        if h.auth.mode == "none":
            from steno_exportd.config import is_loopback
            if all(is_loopback(b) for b in h.bind):
                return "no password, this machine only (loopback)"
            return "OPEN TO THE LAN: no password (http.auth.allow_open_lan = true)"
        if self.access.password_hash():
            return "password or paired browsers"
        return "paired browsers only (no web password set yet)"

    def start_pairing(self) -> Any:
        """A fresh one-time code (access.PairingCode); the previous one stops working."""
        return self.access.start_pairing()

    async def pair_browser(self, code: str, addr: str, agent: str) -> tuple[Any, str] | None:
        """(Login, cookie value) for the browser that typed the valid code; None otherwise; Throttled."""
        return await self.access.pair(code, addr, agent)

    async def paired_browsers(self) -> list[Any]:
        return await asyncio.to_thread(self.access.browsers)

    async def revoke_browser(self, login_id: str) -> Any:
        return await asyncio.to_thread(self.access.revoke_browser, login_id)

    async def set_web_password(self, password: str) -> None:
        await self.access.set_web_password(password)

    def set_samba_passworder(self, fn: Callable[[Config, str], None] | None) -> None:
        """The daemon wires what hands the share user's password to the root helper (samba/share.py)."""
        self._samba_passworder = fn

    async def set_samba_password(self, password: str) -> None:
        """The read-only share user's password (samba.share_user), applied by the root helper unit."""
        if not 8 <= len(password) <= 256 or any(c in password for c in "\n\r\0"):
            raise InvalidArgument("the share password needs 8 to 256 characters and no line breaks")
        if self._samba_passworder is None:
            raise StenoError("the Samba share is not available in this daemon")
        await asyncio.to_thread(self._samba_passworder, self.cfg, password)

    def directory_target(self, path: str, name: str = "") -> DirectoryTarget:
        return DirectoryTarget(path, name)
