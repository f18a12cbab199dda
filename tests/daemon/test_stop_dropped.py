"""The daemon stops even when one of its tasks lets a stop go by.

Python 3.11's asyncio.wait_for returns an answer that comes back in the same loop turns as a cancel and forgets the
cancel: the task goes on as if never stopped. Libraries the daemon runs on use it (aiosmtplib around every reply;
tests/mail/test_stop_at_quit.py), so the daemon's stop cannot count on one cancel landing: a task that goes on kept
the TaskGroup, and so the stop, waiting until systemd's TimeoutStopSec killed the daemon, before the web page, the
D-Bus name and the core had stopped. The package itself waits with asyncio.timeout, which never forgets a cancel."""
from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

import pytest

from steno_exportd import config, daemon

PACKAGE = Path(__file__).resolve().parents[2] / "steno_exportd"
ENDS_WITHIN = 30.0      # seconds the stopped daemon is given (it takes a second or two: this finds a hang)


def _config(tmp_path, db):
    return config.from_dict({"recorder": {"db_path": str(db)}, "state": {"dir": str(tmp_path / "state")},
                             "http": {"enabled": False}, "dbus": {"enabled": False}, "usb": {"enabled": False}})


def _mail_that_misses_a_stop(running: asyncio.Event, stops_seen: list[str]):
    async def run(core) -> None:
        """The mail adapter as it behaved when aiosmtplib's wait_for forgot the cancel: it goes on waiting for
        the next message; a second stop ends it."""
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stops_seen.append("dropped")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stops_seen.append("ended")
            raise
    return run


async def _daemon_whose_mail_misses_a_stop(tmp_path, demo_library, monkeypatch, caplog):
    """A daemon in-process, its mail task _mail_that_misses_a_stop: (it, its mail task's start, what that task saw)."""
    caplog.set_level(logging.INFO, logger="steno_exportd.daemon")
    db = await asyncio.to_thread(demo_library, tmp_path / "library")
    stops_seen: list[str] = []
    running = asyncio.Event()
    monkeypatch.setattr(daemon.mail_sender, "run", _mail_that_misses_a_stop(running, stops_seen))
    return daemon.Daemon(_config(tmp_path, db)), running, stops_seen


def _ended_at_the_second_stop(stops_seen: list[str], caplog) -> None:
    """The mail task let the first stop go by and ended at the second, which the log names once."""
    assert stops_seen == ["dropped", "ended"]
    said = [r.getMessage() for r in caplog.records if "cancelled again" in r.getMessage()]
    assert said == ["the mail task had not ended 2 s after the stop: cancelled again"], said


async def test_the_daemon_stops_when_a_task_lets_the_first_stop_go_by(tmp_path, demo_library, monkeypatch, caplog):
    d, running, stops_seen = await _daemon_whose_mail_misses_a_stop(tmp_path, demo_library, monkeypatch, caplog)
    run = asyncio.create_task(d.run())
    try:
        await asyncio.wait_for(running.wait(), 60)
        d.request_stop()
        ended, _ = await asyncio.wait([run], timeout=ENDS_WITHIN)
        assert ended, f"the daemon had not stopped {ENDS_WITHIN:.0f} s after its stop: {stops_seen}"
        assert run.result() == 0
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    _ended_at_the_second_stop(stops_seen, caplog)
    assert "stopped" in [r.getMessage() for r in caplog.records]


async def test_the_daemon_ends_when_a_task_fails_and_another_lets_that_stop_go_by(tmp_path, demo_library,
                                                                                  monkeypatch, caplog):
    """A task that fails stops the daemon without SIGTERM: the TaskGroup cancels the other tasks itself, once, and
    waited for ever for one that let that cancel go by (the daemon hung, its web page, D-Bus name and core up
    while serving nothing, until systemd's watchdog killed it). It ends now as at a stop, the failure raised (exit
    code 1 in main())."""
    d, running, stops_seen = await _daemon_whose_mail_misses_a_stop(tmp_path, demo_library, monkeypatch, caplog)

    async def samba_that_fails(core) -> None:
        await running.wait()
        raise RuntimeError("the samba adapter failed")
    monkeypatch.setattr(daemon.samba, "run", samba_that_fails)
    run = asyncio.create_task(d.run())
    try:
        await asyncio.wait_for(running.wait(), 60)
        ended, _ = await asyncio.wait([run], timeout=ENDS_WITHIN)
        assert ended, f"the daemon had not ended {ENDS_WITHIN:.0f} s after a task failed: {stops_seen}"
        with pytest.raises(BaseExceptionGroup) as failed:
            run.result()
        assert [str(e) for e in failed.value.exceptions] == ["the samba adapter failed"]
    finally:
        for t in asyncio.all_tasks():       # (before the fix the TaskGroup waited for it for ever, this test too)
            if t.get_name() == "mail" and not stops_seen[1:]:
                t.cancel()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    _ended_at_the_second_stop(stops_seen, caplog)


def test_the_package_never_waits_with_asyncio_wait_for():
    """Every bounded wait in the daemon is asyncio.timeout (or asyncio.wait, which cancels nothing): wait_for is the
    call that forgets a stop."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for" and \
                    isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, "asyncio.wait_for, which can forget a stop, in:\n" + "\n".join(found)
