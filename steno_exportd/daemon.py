"""The composition root (`steno-exportd run`): core, adapters, signals, reload, sdnotify.

Components start in dependency order inside an AsyncExitStack and a TaskGroup and stop in
reverse; SIGTERM/SIGINT stop the daemon (exit 0), SIGHUP reloads the config and the library.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, AsyncIterator

from steno_exportd import config as config_mod
from steno_exportd.config import Config
from steno_exportd.core import Core
from steno_exportd.errors import ConfigError, StenoError
from steno_exportd.mail import sender as mail_sender
from steno_exportd.notify import Notifier
from steno_exportd.rclone.kind import RcloneKind
from steno_exportd.rclone.process import config_problems as rclone_problems, forget_unused_copy
from steno_exportd.samba import adapter as samba
from steno_exportd.samba import share as samba_share
from steno_exportd.smb import triggers
from steno_exportd.smb.push import SmbKind

if TYPE_CHECKING:
    from steno_exportd.dbus.service import Service

log = logging.getLogger(__name__)

# Test-only hook: with this variable set, SIGUSR2 blocks the event loop so the watchdog fires.
TEST_BLOCK_ENV = "STENO_EXPORTD_TEST_BLOCK_ON_SIGNAL"
STOP_TIMEOUT = 3.5   # seconds the core gets to stop its jobs safely on SIGTERM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `run`."""
    parser.add_argument("--demo", action="store_true",
                        help="demo mode: with dbus.bus = 'session' and no session bus, start a private "
                             "dbus-daemon and print how to reach the daemon with steno-exportctl")


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr without timestamps (journald adds them)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    setup_logging(cfg.logging.level)
    daemon = Daemon(cfg, config_path=args.config, demo=args.demo)
    try:
        return asyncio.run(daemon.run())
    except StenoError as e:
        log.error("%s", e)
        return 1
    except BaseExceptionGroup as eg:
        steno, other = eg.split(StenoError)
        for e in (steno.exceptions if steno else ()):
            log.error("%s", e)
        if other is not None:
            log.critical("a component failed; stopping", exc_info=other)
        return 1


@contextlib.asynccontextmanager
async def private_bus() -> AsyncIterator[str]:
    """A private dbus-daemon as a child process; yields its address, stops it on exit."""
    proc = await asyncio.create_subprocess_exec(
        "dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True)      # a Ctrl-C at the terminal stops the daemon, which then stops its bus
    try:
        async with asyncio.timeout(10):
            line = await proc.stdout.readline()
        address = line.decode().strip()
        if not address:
            raise StenoError("the private dbus-daemon did not print its address")
        yield address
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def end_tasks(tasks: list[asyncio.Task], again_every: float = 2.0) -> None:
    """Cancel ``tasks`` and return when all have ended, cancelling again every ``again_every`` seconds those that
    have not: a task whose cancel was dropped (Python 3.11's asyncio.wait_for, used inside libraries, returns an
    answer that came in the same loop turns as the cancel and forgets the cancel) would otherwise keep the
    TaskGroup, and the daemon's stop, waiting until systemd kills it. Each task cancelled again is named once.

    A task cancelled already (the TaskGroup cancels them all when one fails) is not cancelled at once again, which
    would cut its clean-up short (the mDNS withdrawal). Cancelled itself meanwhile (the TaskGroup's cancel when a
    task fails during the stop) it still waits for them all, then raises CancelledError: the TaskGroup only cancels
    once, so a dropped cancel left it waiting for ever."""
    for t in tasks:
        if not t.cancelling():
            t.cancel()
    named: set[asyncio.Task] = set()
    cancelled = False
    pending = {t for t in tasks if not t.done()}
    while pending:
        try:
            _, pending = await asyncio.wait(pending, timeout=again_every)
        except asyncio.CancelledError:
            cancelled = True
            pending = {t for t in pending if not t.done()}
            continue
        for t in pending:
            if t not in named:
                named.add(t)
                log.warning("the %s task had not ended %g s after the stop: cancelled again", t.get_name(), again_every)
            t.cancel()
    if cancelled:
        raise asyncio.CancelledError()


class Daemon:
    """Owns the config, the core and the adapters for one run of the daemon."""

    def __init__(self, cfg: Config, config_path: str | None = None, demo: bool = False) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.demo = demo
        self.notifier = Notifier()
        self.core: Core | None = None
        self.bus_service: Service | None = None
        self.bus_address = ""
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._reload_error = ""
        self._stopping = False

    # ---- lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop in reverse order; returns the exit code."""
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            self._install_signals(loop)
            stack.callback(self._remove_signals, loop)
            stack.callback(self.notifier.close)
            stack.callback(self.notifier.stopping)

            cfg = self.cfg
            if cfg.dbus.enabled and self.demo and cfg.dbus.bus == "session" \
                    and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
                address = await stack.enter_async_context(private_bus())
                log.info("demo: started a private dbus-daemon at %s", address)
                cfg = self.cfg = config_mod.replace(cfg, **{"dbus.bus": address})

            core = self.core = Core(cfg)
            core.targets.register(SmbKind())      # smb:<remote> targets (push to a NAS)
            core.targets.register(RcloneKind())   # rclone:<remote> targets (cloud and other stores)
            core.set_samba_passworder(samba_share.request_password)   # the share user's password, to the root helper
            for problem in rclone_problems(cfg):
                log.warning("%s", problem)
            await asyncio.to_thread(forget_unused_copy, cfg)    # (no push will run rclone with it: credentials)
            await core.start()
            stack.push_async_callback(self._stop_core)
            await self._log_sessions()

            if cfg.http.enabled:
                from steno_exportd import web     # aiohttp only when the web page is on

                core.set_web_url(str(await stack.enter_async_context(web.serve(core)) or ""))
                stack.callback(core.set_web_url, "")
                log.info("web page at %s", core.web_url)
            if cfg.dbus.enabled:
                from steno_exportd.dbus import service    # dbus-fast only when the bus is on

                host = service.Host(status_text=self.status_text, reload=self._reload_for_bus)
                self.bus_service = await stack.enter_async_context(service.export(core, host))
                self.bus_address = self.bus_service.address

            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.notifier.watchdog(), name="watchdog"),
                         tg.create_task(self._reload_loop(), name="reload"),
                         tg.create_task(self._follow_events(core), name="status"),
                         tg.create_task(self._watch_library(core), name="library-watch"),
                         tg.create_task(samba.run(core), name="samba"),
                         # always on: reads core.cfg each time, so remotes added by a reload work too (the
                         # remotes' `schedule` is run by the core's scheduler, core.schedules)
                         tg.create_task(triggers.run_push_on_new(core), name="smb-push-on-new"),
                         tg.create_task(mail_sender.run(core), name="mail")]
                if cfg.usb.enabled:
                    from steno_exportd.usb import manager as usb     # pyudev only when sticks are on

                    tasks.append(tg.create_task(usb.watch(core), name="usb"))
                try:
                    self.notifier.ready(self.status_text())
                    log.info("ready in %.0f ms: %s", (time.monotonic() - t0) * 1000, self.status_text())
                    if self.demo:
                        self._print_demo_help()
                    await self._stop.wait()
                    log.info("stopping")
                    self.notifier.stopping()
                finally:
                    # also when a task failed (the TaskGroup cancelled this body and every task, once): a task that
                    # let that cancel go by kept the TaskGroup, and the daemon, from ending
                    await end_tasks(tasks)
        log.info("stopped")
        return 0

    async def _stop_core(self) -> None:
        """Stop the core (jobs stop safely); bounded so SIGTERM exits well within 5 s."""
        assert self.core is not None
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.core.stop()
        except asyncio.TimeoutError:
            log.error("the core did not stop within %.0f s", STOP_TIMEOUT)

    def request_stop(self) -> None:
        """Ask the daemon to stop (safe to call twice, from a signal handler)."""
        self._stopping = True
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if os.environ.get(TEST_BLOCK_ENV):
            log.warning("%s is set: SIGUSR2 blocks the event loop (test only)", TEST_BLOCK_ENV)
            loop.add_signal_handler(signal.SIGUSR2, self._block_forever)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            loop.remove_signal_handler(s)

    @staticmethod
    def _block_forever() -> None:
        log.warning("test hook: blocking the event loop")
        while True:
            time.sleep(3600)

    # ---- reload --------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read the config file and the library; a bad config is rejected and the old one kept."""
        self.notifier.reloading()
        try:
            try:
                cfg = await asyncio.to_thread(config_mod.load, self.config_path)
            except ConfigError as e:
                first = e.problems[0] if e.problems else str(e)
                self._reload_error = f"reload failed, old config kept: {first}"
                log.error("reload rejected, keeping the old config: %s", e)
                return False
            if self.bus_address and cfg.dbus.bus != self.cfg.dbus.bus and not self.demo:
                log.warning("dbus.bus changed: takes effect after a restart")
            if self.demo:
                cfg = config_mod.replace(cfg, **{"dbus.bus": self.cfg.dbus.bus})
            self.cfg = cfg
            setup_logging(cfg.logging.level)
            await asyncio.to_thread(forget_unused_copy, cfg)
            self._reload_error = ""
            if self.core is not None:
                try:
                    await self.core.reload(cfg)
                except Exception as e:  # noqa: BLE001 - the reload's boundary, as Manager.Reload's is
                    # the state DB locked past its 10 s busy timeout (another writer holding it) or its disk full
                    # (sqlite3.OperationalError from saving the schedules): from SIGHUP it ended the reload task, and
                    # the TaskGroup stopped the daemon (exit 1) and the jobs under way with it
                    self._reload_error = f"reload failed: {type(e).__name__}: {e}"
                    log.error("reload failed, the daemon runs on: %s: %s", type(e).__name__, e)
                    log.debug("details", exc_info=True)
                    return False
                try:
                    await self.core.refresh_library()
                except StenoError as e:     # the recorder's DB is not our config: keep the new config
                    log.warning("recorder library: %s", e)
            log.info("configuration reloaded")
            return True
        finally:
            self.notifier.send("READY=1", f"STATUS={self.status_text()}")
            if self.bus_service is not None:
                self.bus_service.refresh_status()

    async def _reload_for_bus(self) -> str:
        """Manager.Reload: "" when reloaded, else the status line that says why not."""
        return "" if await self.reload() else self.status_text()

    # ---- library and status --------------------------------------------------------

    def status_text(self) -> str:
        text = "stopping" if self._stopping else "starting"
        if self.core is not None:
            try:
                text = self.core.status_text()
            except Exception:  # noqa: BLE001 - status must never break the daemon
                log.exception("status_text failed")
        return f"{self._reload_error}; {text}" if self._reload_error else text

    async def _log_sessions(self) -> None:
        """Read the session listing once before READY (it is then cached) and log it."""
        assert self.core is not None
        try:
            sessions = (await self.core.listing()).sessions
        except StenoError as e:
            log.warning("recorder library: %s", e)
            return
        log.info("recorder library %s: %d sessions", self.cfg.recorder.db_path, len(sessions))
        for s in sessions[:50]:
            log.info("  session %s %s %s", s.id, s.start_time.isoformat() if s.start_time else "", s.title)
        if len(sessions) > 50:
            log.info("  ... and %d more", len(sessions) - 50)

    async def _watch_library(self, core: Core) -> None:
        """Notice new/changed sessions cheaply: PRAGMA data_version at recorder.poll_interval."""
        last = None
        while True:
            await asyncio.sleep(self.cfg.recorder.poll_interval)
            try:
                version = await asyncio.to_thread(core.library.data_version)
            except StenoError as e:
                log.debug("data_version: %s", e)
                continue
            if version != last:     # also the first time the database can be read
                try:
                    await core.refresh_library()
                except StenoError as e:
                    log.warning("refreshing the library failed: %s", e)
            last = version

    async def _follow_events(self, core: Core) -> None:
        async for _event in core.events.subscribe():
            self.notifier.status(self.status_text())

    def _print_demo_help(self) -> None:
        bus = self.cfg.dbus.bus
        lines = ["", "steno-exportd demo is running."]
        if self.bus_address:
            arg = "" if bus == "system" else f" --bus {bus}"
            lines.append(f"  reach it with:  steno-exportctl{arg} status")
            lines.append(f"                  steno-exportctl{arg} sessions")
        if self.core is not None and self.core.web_url:
            lines.append(f"  web page:       {self.core.web_url}")
        lines.append("  stop with Ctrl-C.")
        print("\n".join(lines), flush=True)
