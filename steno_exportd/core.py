"""Core: library + jobs + devices + events; the only API adapters use (typed: adapters take a ``Core``)."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from steno_exportd import events as ev
from steno_exportd import render, request, retention
from steno_exportd.access import Access, Login, PairingCode, ShareLink, share_url
from steno_exportd.access.store import AT_DEVICE, LINK_TOKEN_CHARS
from steno_exportd.config import Config, is_loopback
from steno_exportd.devices import DeviceRegistry
from steno_exportd.engine.identity import recorder_folder
from steno_exportd.engine.jobs import JobManager, JobSpec
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.prehash import Prehasher
from steno_exportd.engine.registry import local as local_targets
from steno_exportd.engine.state import StateDB
from steno_exportd.engine.targets import DirectoryTarget, Target
from steno_exportd.errors import (BusyError, InvalidArgument, NotFoundError, SessionReplaced, SourceLockedError,
                                  StenoError)
from steno_exportd.library import ChangeToken, Library, SessionListing, uuid_key
from steno_exportd.model import FileRef, Session, SessionSummary
from steno_exportd.outbox.content import Links
from steno_exportd.outbox.queue import Outbox
from steno_exportd.search import FILE_NAME as SEARCH_FILE, SearchIndex, SearchResults
from steno_exportd.schedules import Scheduler

log = logging.getLogger(__name__)

__all__ = ["Core", "ExportOptions", "SessionListing"]

Ejector = Callable[[str], Awaitable[Any]]
MAX_WAITING_JOBS = 100      # callers' exports (D-Bus, web API) asked for, waiting or running: one more is Busy
LINK_TIMEOUT = 60.0         # seconds a compose thread waits for a mailed share link (a row in access.db)


class Core:
    """Owns the library, the state DB, the job manager, the devices and the event bus."""

    def __init__(self, cfg: Config, *, library: Library | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.events = ev.EventBus()
        self.access = Access(cfg)          # logins, share links, audit log, the limiter for every secret
        self._library = library
        self._one_export = asyncio.Lock()  # a caller's exports are checked and queued one at a time
        self._asked = 0                    # callers' exports being checked or waiting for their turn
        self._caller_jobs: set[int] = set()   # callers' jobs not known to be finished
        self.state = StateDB(Path(cfg.state.dir) / "state.db")
        self.targets = local_targets()      # the composition root registers more kinds (smb:)
        self.devices = DeviceRegistry(self.events, lambda d: self.state.device_seen(d.uuid or d.id, d.label,
                                                                                     d.fs_type))
        self.jobs = JobManager(cfg, self.events, self.state, lambda: self.library, targets=self.targets,
                               on_finished=self._job_finished)
        self.search_index = SearchIndex(Path(cfg.state.dir) / SEARCH_FILE)
        self._listening = ""               # where the web page listens (set_web_url); "" while it is off
        self._loop: asyncio.AbstractEventLoop | None = None     # the core's loop: links made from compose threads
        # recordings hashed ahead of need (export.hash_ahead), waiting while a job runs or pause() is held
        self.prehasher = Prehasher(Path(cfg.state.dir) / "cache" / "hashes.db", cfg.retention.hash_cache_entries,
                                   self._jobs_busy)
        self.outbox = Outbox(cfg, self.events, lambda: self.library, self._mail_links)   # stored before it is sent
        self.schedules = Scheduler(self, clock)   # [[schedules]] and the SMB remotes' schedule (tests move the clock)
        self._housekeeping: asyncio.Task | None = None
        self.auto_export: bool = cfg.usb.auto_export.enabled
        self.sharing_enabled: bool = cfg.samba.enabled
        self.samba_state: str = "off"      # what the share really does: "serving", "off", "error: ..."
        self._ejector: Ejector | None = None
        self._samba_passworder: Callable[[Config, str], None] | None = None
        self._started = False
        self._lib_token: ChangeToken | None = None
        self._listing: SessionListing | None = None
        self._listing_lock = asyncio.Lock()
        self._remote_folder: tuple[Config, str] | None = None

    @property
    def remote_folder(self) -> str:
        """This recorder's folder on a NAS or cloud store (smb:, rclone:): host name and short id."""
        if self._remote_folder is None or self._remote_folder[0] is not self.cfg:
            self._remote_folder = (self.cfg, recorder_folder(self.cfg))
        return self._remote_folder[1]

    # -- lifecycle -------------------------------------------------------------------
    @property
    def library(self) -> Library:
        if self._library is None:
            self._library = Library.from_config(self.cfg)
        return self._library

    async def start(self) -> None:
        """Open the state DB, mark interrupted jobs, start the job workers."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.state.open)
        await asyncio.to_thread(self.access.open)
        await self.jobs.start()
        await self.outbox.start()
        await self.search_index.start(lambda: self.library)
        if self.cfg.export.hash_ahead:
            await self.prehasher.start(lambda: self.library)
        await retention.prune_safely(self)
        await self.schedules.start()
        self._housekeeping = asyncio.create_task(retention.run(self), name="retention")

    async def stop(self) -> None:
        """Cancel running jobs safely (no partial file under a final name); idempotent."""
        if not self._started:
            return
        self._started = False
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        await self.schedules.stop()
        # the jobs first: the search index's stop waits for the batch it is indexing (seconds for a long
        # transcript), and a job cancelled only after it ran past the daemon's stop bound (systemd's watchdog)
        await self.jobs.stop()
        await self.search_index.stop()
        await self.prehasher.stop()
        await self.outbox.stop()
        await asyncio.to_thread(self.state.close)
        await asyncio.to_thread(self.access.close)
        await asyncio.to_thread(render.shutdown)    # the render worker: not left to the interpreter's exit

    async def reload(self, cfg: Config) -> None:
        """Take a new config; its SQLite work (state, access store, the library it replaces) runs in threads."""
        old = self.cfg
        self.cfg = cfg
        self.jobs.reload(cfg)
        self.outbox.reload(cfg)
        await self.schedules.reload(cfg)
        await self.access.reload(cfg)
        if old.export.hash_ahead != cfg.export.hash_ahead:
            await (self.prehasher.start(lambda: self.library) if cfg.export.hash_ahead else self.prehasher.stop())
        if (old.recorder.db_path, old.recorder.data_dir) != (cfg.recorder.db_path, cfg.recorder.data_dir):
            lib, self._library = self._library, None
            self._listing, self._lib_token = None, None
            if lib is not None:     # waits for a read under way (a long meeting takes seconds to load)
                await asyncio.to_thread(lib.close)
        # a switch changed in the file wins over the D-Bus/web setting; an unchanged one leaves it
        if old.usb.auto_export.enabled != cfg.usb.auto_export.enabled:
            self.set_auto_export(cfg.usb.auto_export.enabled)
        if old.samba.enabled != cfg.samba.enabled:
            self.set_sharing(cfg.samba.enabled)
        self.events.publish(ev.StatusChanged("config", "reloaded"))

    # -- sessions --------------------------------------------------------------------
    async def listing(self) -> SessionListing:
        """Every session summary (newest first) with the key rule: the one cached listing, re-read only
        when the recorder's database changed. Never reads a transcript. A locked database is retried
        (export.retries, with backoff) like during a job."""
        async with self._listing_lock:
            delay = 0.2
            for attempt in range(self.cfg.export.retries + 1):
                try:
                    self._listing = await asyncio.to_thread(self._current_listing, self._listing)
                    return self._listing
                except SourceLockedError as e:
                    if attempt == self.cfg.export.retries:
                        raise
                    log.info("%s; retrying in %.1f s", e, delay)
                    await asyncio.sleep(delay)
                    delay *= 2
            raise AssertionError("unreachable")

    def _current_listing(self, cached: SessionListing | None) -> SessionListing:
        lib = self.library
        version = lib.data_version()        # before listing: a commit in between only causes a re-read
        if cached is not None and cached.version == version:
            return cached
        return SessionListing(tuple(lib.list_sessions()), version)

    async def session(self, key: Any, uuid: str | None = None) -> Session:
        """The whole session a caller's key names (id, uuid or short id; see SessionKeys), read bound to the uuid
        the listing gives it (Library.get_session): a restore of the recorder's database between the look-up and
        the read is SessionReplaced, never another meeting under this one's name (in a swap loop, 28 of 168 reads by
        uuid were the other meeting's). ``uuid``: only that meeting's (as ``summary``)."""
        summary = await self.summary(key, uuid)
        return await asyncio.to_thread(self.library.get_session, summary.id, summary.uuid)

    async def summary(self, key: Any, uuid: str | None = None) -> SessionSummary:
        """The summary of the session a caller's key names, from the cached listing (no transcript loaded);
        ``uuid``: only that meeting's (SessionReplaced when the key names another one now)."""
        listing = await self.listing()
        summary = listing.by_id[listing.resolve(request.session_key(key))]
        if uuid is not None and uuid_key(summary.uuid) != uuid_key(uuid):
            raise SessionReplaced(f"session {summary.id} is another meeting now (not uuid {uuid[:36]})")
        return summary

    async def recording(self, key: Any, uuid: str | None = None) -> tuple[SessionSummary, FileRef | None]:
        """The session a key names and its recording as ``session`` checks it, without loading its transcript
        (a download's first byte does not wait for thousands of segments); None: no usable recording. The recording
        is read bound to the summary's uuid (Library.recording), as ``session`` reads. ``uuid``: only that meeting's."""
        summary = await self.summary(key, uuid)
        return summary, await asyncio.to_thread(self.library.recording, summary.id, summary.uuid)

    async def refresh_library(self) -> ev.SessionsChanged:
        """Publish what changed in the recorder's database since the last call; keeps the listing current."""
        def work(cached: SessionListing | None) -> tuple[ev.SessionsChanged, SessionListing]:
            lib = self.library
            delta, token = lib.changed_since(self._lib_token)
            ids = lambda xs: tuple(x if isinstance(x, int) else x.id for x in xs)  # noqa: E731
            change = ev.SessionsChanged(ids(delta.added), ids(delta.changed), ids(delta.removed))
            if change.added or change.changed or change.removed:
                cached = None
            listing = self._current_listing(cached)
            self._lib_token = token         # only once the listing is read: a failure retries the change
            return change, listing
        async with self._listing_lock:
            change, self._listing = await asyncio.to_thread(work, self._listing)
        self.search_index.kick()
        if change.added or change.changed:
            self.prehasher.kick()
        if change.added or change.changed or change.removed:
            self.events.publish(change)
        return change

    async def search(self, query: str, limit: int = 20, offset: int = 0) -> SearchResults:
        """Sessions whose words match ``query``, best first; InvalidArgument for a query it cannot take."""
        return await self.search_index.search_async(query, limit, offset)

    def template_names(self) -> list[str]:
        """The document templates: built-in ones and the user's (render.template_dir/templates.toml)."""
        return request.template_names(self.cfg.render.template_dir)

    # -- exports ---------------------------------------------------------------------
    def _jobs_busy(self) -> bool:
        """A job queued or running (the background hasher waits meanwhile)."""
        return any(not j.state.finished for j in self.jobs.list())

    async def export_sessions(self, ids: Any, formats: Any, target: str | Target,
                              options: ExportOptions | Mapping[str, Any] | None = None,
                              *, trusted: bool = False, internal: bool = False) -> ev.JobSnapshot:
        """Check a caller's request (``check_export``) and queue it as a job.

        A caller's export (D-Bus, the web API) is refused at once (BusyError) while MAX_WAITING_JOBS callers'
        exports are asked for, wait or run; they are checked and queued one at a time, so the bound cannot be raced
        past and a flood waits here instead of filling the loop and its threads ahead of every other caller. The
        daemon's own (``trusted``: a stick's auto-export, schedules, the share; ``internal``: a push trigger) are
        never refused and not counted."""
        if trusted or internal:
            return await self.jobs.submit(await self.check_export(ids, formats, target, options, trusted=trusted))
        self._require_room()                    # a full queue refuses at once, before any work
        self._asked += 1
        try:
            async with self._one_export:
                job = await self.jobs.submit(await self.check_export(ids, formats, target, options))
        finally:
            self._asked -= 1
        self._caller_jobs.add(job.id)
        return job

    def _require_room(self) -> None:
        unfinished = {j.id for j in self.jobs.list() if not j.state.finished}
        self._caller_jobs &= unfinished
        waiting = len(self._caller_jobs) + self._asked
        if waiting >= MAX_WAITING_JOBS:
            raise BusyError(f"{waiting} exports are waiting or running already (at most {MAX_WAITING_JOBS}); "
                            "try again when some are done")

    async def check_export(self, ids: Any, formats: Any, target: str | Target,
                           options: ExportOptions | Mapping[str, Any] | None = None,
                           *, trusted: bool = False) -> JobSpec:
        """Resolve and validate what a caller sends, sizes and types first, before any work starts.

        ids: a list of ids/uuids/short ids, "1,2,uuid", or "new"/"all"/"since_days"; formats: names
        (empty: the target's default); target: a folder, FILE.zip/.tar.gz, smb:<remote> or a Target;
        options: ExportOptions or a caller's dictionary (strict types). trusted=True (CLI, the daemon's
        own folders and mount points) lifts the export.allowed_dirs rule.
        """
        keys = request.session_keys(ids)
        names = request.format_names(formats)
        opts = request.export_options(options)
        if isinstance(target, str) and len(target) > request.MAX_TARGET_CHARS:
            raise InvalidArgument(f"target too long ({len(target):,} characters; at most {request.MAX_TARGET_CHARS})")

        await asyncio.to_thread(request.template_name, opts.template or self.cfg.export.template,
                                self.cfg.render.template_dir)
        listing = await self.listing()
        session_ids = request.resolve_sessions(keys, listing, opts)
        if opts.device_id and not trusted:
            self._device_at(opts.device_id, target)
        operation, target, name, default_formats = await asyncio.to_thread(self._target, target, opts, trusted)
        # each meeting's uuid as resolved here goes with the job: it reads these meetings or fails them, never the
        # ones their numbers name after a restore of the recorder's database while the job waited or ran
        return JobSpec(operation=operation, target=target, target_name=name, session_ids=session_ids,
                       formats=names or tuple(default_formats), options=opts, device_id=opts.device_id,
                       trusted=trusted, session_uuids=tuple(listing.by_id[i].uuid for i in session_ids))

    def _device_at(self, device_id: str, target: str | Target) -> None:
        """A caller's options.device_id makes the job a stick's (held to its filesystem, listed under it, its free
        space refreshed): InvalidArgument unless it names a stick the daemon knows, mounted at the target (what the
        page and the touchscreen send for an export to a stick); one of the caller's choosing is refused."""
        dev = self.devices.find(device_id)
        if dev is None or not dev.mount_point or not isinstance(target, str) \
                or os.path.normpath(target) != os.path.normpath(dev.mount_point):
            shown = device_id if len(device_id) <= 40 else f"{device_id[:40]}…"
            raise InvalidArgument(f"options.device_id {shown!r} is not the stick mounted at the target: to export to "
                                  "a stick, name the stick (its device), which sets it")

    def _target(self, target: str | Target, options: ExportOptions,
                trusted: bool) -> tuple[str, str | Target, str, tuple[str, ...]]:
        """What a target names: (operation, target, the name a person sees, the default formats).

        A target string is interpreted by its kind in the registry (self.targets) and nowhere else.
        """
        if not isinstance(target, str):
            return "export", target, options.target_name or target.name, tuple(self.cfg.export.formats)
        checked = self.targets.check(target, self.cfg, trusted=trusted)
        return (checked.operation, target, options.target_name or checked.name,
                checked.formats or tuple(self.cfg.export.formats))

    async def email_sessions(self, ids: Any, formats: Any, recipients: list[str], template: str | None = None,
                             *, made_by: str = AT_DEVICE, login_id: str = "") -> ev.OutboxEntry:
        """Validate and store a message with the sessions' documents attached; it is composed and sent
        in the background (core.outbox lists it, OutboxUpdated follows it). ``made_by``, ``login_id``: who asked,
        as for Access.create_link; the share links the message carries are recorded as made by them."""
        keys = request.session_keys(ids)
        names = request.format_names(formats) or tuple(self.cfg.export.formats)
        template = template or self.cfg.export.template
        await asyncio.to_thread(request.template_name, template, self.cfg.render.template_dir)
        listing = await self.listing()
        # each meeting as resolved on this listing (its uuid, its title) goes into the message's row: the message
        # carries these meetings or fails, never the one a number names after a restore of the recorder's database
        chosen = [listing.by_id[i] for i in request.resolve_sessions(keys, listing, ExportOptions())]
        return await self.outbox.email_sessions(chosen, list(names), recipients, template,
                                                made_by=made_by, login_id=login_id)

    async def retry_mail(self, entry_id: Any, *, made_by: str = AT_DEVICE, login_id: str = "") -> ev.OutboxEntry:
        """Send a failed or cancelled message again (composed anew; its new share links made by ``made_by``,
        ``login_id``, who asked for it again), or a queued one now; InvalidArgument for an id that names no
        message, BusyError while it is being composed or sent."""
        return await self.outbox.retry(request.outbox_id(entry_id), made_by=made_by, login_id=login_id)

    async def cancel_mail(self, entry_id: Any) -> ev.OutboxEntry:
        """Withdraw a message still waiting to be sent; InvalidArgument for a bad id or a finished message."""
        return await self.outbox.cancel(request.outbox_id(entry_id))

    @property
    def web_url(self) -> str:
        """The web page's URL for people: http.public_url (the current config's) once the page listens, else
        where it listens; "" while the page is off."""
        if not self._listening:
            return ""
        return self.cfg.http.public_url.rstrip("/") or self._listening

    def set_web_url(self, url: str) -> None:
        """The web adapter says where it listens (its URL without http.public_url); "" when it stops."""
        self._listening = url.rstrip("/")

    def _mail_links(self, made_by: str = AT_DEVICE, login_id: str = "") -> Links | str:
        """Share links for files too large to mail (email.oversize = "link"), or why there can be none.

        Links are made as the web page and D-Bus make them (Access.create_link: its limits and checks), made by
        whoever asked for the message (a browser's login: revoked with that login's links), and addressed as
        they address them (access.share_url: http.public_url, else <hostname>.local)."""
        cfg, loop = self.cfg, self._loop
        sl = cfg.http.share_links
        if not self.web_url or loop is None:
            return "the recorder's web page is off (http.enabled)"
        if not sl.enabled:
            return "share links are turned off (http.share_links.enabled)"
        hours, uses = sl.default_expiry_hours, sl.default_max_downloads
        tls = cfg.http.tls.mode != "off"

        async def create(session_id: int, uuid: str) -> ShareLink:
            # the link opens the meeting the message carries only: its uuid as the compose read it (the uuid of the
            # listing of the moment was the other meeting's after a restore of the recorder's database in between,
            # and the message carried a link to it); SessionReplaced when its id names another meeting already
            await self.summary(session_id, uuid)
            return await self.access.create_link(cfg, session_id, hours, uses, made_by=made_by, login_id=login_id,
                                                 session_uuid=uuid)

        def make(session_id: int, uuid: str) -> str:
            # called from the message's compose thread: the link is made on the core's loop, as for any caller
            made = asyncio.run_coroutine_threadsafe(create(session_id, uuid), loop)
            link = made.result(LINK_TIMEOUT)
            log.info("share link %s… for session %d: a file too large to mail", link.token[:6], session_id)
            return link.token
        return Links(lambda token: share_url(cfg, token, tls=tls), hours, uses, make, LINK_TOKEN_CHARS)

    # -- devices ---------------------------------------------------------------------
    async def _job_finished(self, job: ev.JobSnapshot) -> None:
        """A device's free space is what the stick holds now, after every job (failed ones too)."""
        dev = self.devices.find(job.device_id) if job.device_id else None
        if dev is None or not dev.mount_point:
            return
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, dev.mount_point)).free
        except OSError:
            return                          # pulled: the USB adapter reports the removal
        if self.devices.find(job.device_id) is not None:
            self.devices.change(job.device_id, free=free)

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
        n = len(self._listing) if self._listing is not None else None     # the cache: never the DB here
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
            if all(is_loopback(b) for b in h.bind):
                return "no password, this machine only (loopback)"
            return "OPEN TO THE LAN: no password (http.auth.allow_open_lan = true)"
        if self.access.password_hash():
            return "password or paired browsers"
        return "paired browsers only (no web password set yet)"

    def start_pairing(self) -> PairingCode:
        """A fresh one-time code; the previous one stops working."""
        return self.access.start_pairing()

    async def pair_browser(self, code: str, addr: str, agent: str) -> tuple[Login, str] | None:
        """(Login, cookie value) for the browser that typed the valid code; None otherwise; Throttled."""
        return await self.access.pair(code, addr, agent)

    async def paired_browsers(self) -> list[Login]:
        return await asyncio.to_thread(self.access.browsers)

    async def revoke_browser(self, login_id: str) -> Login:
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
