"""Cron matching and the push triggers."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import types

import pytest

from steno_exportd import events
from steno_exportd.smb import triggers as schedule
from steno_exportd.config import Config, RcloneConfig, RcloneRemote, SmbConfig, SmbRemote, StateConfig
from tests.parts import until
from steno_exportd.errors import InvalidArgument

T = dt.datetime(2026, 11, 23, 3, 30)   # a Monday


@pytest.mark.parametrize("expr,when,ok", [
    ("* * * * *", T, True),
    ("30 3 * * *", T, True),
    ("31 3 * * *", T, False),
    ("*/15 * * * *", T, True),
    ("*/7 * * * *", T, False),
    ("0-30/10 1-5 * * *", T, True),
    ("30 3 * * 1", T, True),           # Monday
    ("30 3 * * 0,7", T, False),        # Sunday
    ("30 3 1 * 1", T, True),           # day OR weekday when both restricted
    ("30 3 1 * 2", T, False),
    ("30 3 23 11 *", T, True),
    ("30 3 * 12 *", T, False),
])
def test_matches(expr, when, ok):
    assert schedule.parse(expr).matches(when) is ok


@pytest.mark.parametrize("expr", ["* * * *", "60 * * * *", "a * * * *", "5-1 * * * *", "*/0 * * * *"])
def test_bad_expressions(expr):
    with pytest.raises(InvalidArgument):
        schedule.parse(expr)


def test_next_after():
    assert schedule.parse("0 2 * * *").next_after(T) == dt.datetime(2026, 11, 24, 2, 0)
    assert schedule.parse("*/20 * * * *").next_after(T) == dt.datetime(2026, 11, 23, 3, 40)
    assert schedule.parse("0 0 1 1 *").next_after(T) == dt.datetime(2027, 1, 1, 0, 0)


class FakeLibrary:
    def __init__(self):
        self.sessions = {}

    def list_sessions(self, exportable_only=False):
        return [types.SimpleNamespace(id=i, exportable=ok) for i, ok in sorted(self.sessions.items())
                if ok or not exportable_only]


class FakeCore:
    """Queues nothing: records each push and says, when asked, that its job ended (ok or not)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.events = events.EventBus()
        self.library = FakeLibrary()
        self.calls = []
        self.jobs = []

    async def listing(self):
        return types.SimpleNamespace(sessions=tuple(self.library.list_sessions()))

    async def export_sessions(self, ids, formats, target, options, *, internal=False):
        assert internal, "a push trigger's export is the daemon's own: never refused by the callers' bound"
        self.calls.append((ids, tuple(formats), target))
        job = events.JobSnapshot(id=len(self.jobs) + 1, operation="push", target=target,
                                 state=events.JobState.QUEUED, sessions=tuple(ids) if ids != "all" else ())
        self.jobs.append(job)
        return job

    def end(self, job, ok: bool):
        """Publish the job's end: every session pushed, or all failed."""
        results = tuple(events.SessionResult(i, f"u{i}", "", ok, error="" if ok else "NAS away")
                        for i in job.sessions)
        self.events.publish(events.JobUpdated(dataclasses.replace(
            job, state=events.JobState.COMPLETED if ok else events.JobState.FAILED, results=results)))


def _cfg(cloud: RcloneRemote | None = None):
    return Config(smb=SmbConfig(remotes=[
        SmbRemote(name="office", server="nas", share="s", schedule="30 3 * * *", push_on_new=True,
                  formats=["txt"]),
        SmbRemote(name="other", server="nas", share="s", schedule="0 4 * * *")]),
        rclone=RcloneConfig(remotes=[cloud] if cloud else []))


async def test_an_rclone_remote_is_pushed_on_schedule_and_on_new_sessions(tmp_path):
    cloud = RcloneRemote(name="cloud", remote="onedrive:Meetings", schedule="30 3 * * *", push_on_new=True,
                         formats=["pdf"])
    core = FakeCore(_cfg(cloud))
    task = asyncio.create_task(schedule.run_schedules(core, clock=lambda: T.replace(second=1)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert core.calls == [("all", ("txt",), "smb:office"), ("all", ("pdf",), "rclone:cloud")]
    core = FakeCore(dataclasses.replace(_cfg(cloud), state=StateConfig(dir=str(tmp_path))))
    task = asyncio.create_task(schedule.run_push_on_new(core))
    try:
        core.library.sessions = {1: True}
        await asyncio.sleep(0.05)
        core.events.publish(events.SessionsChanged(added=(1,)))       # the first sight: a mark, no push
        await asyncio.sleep(0.1)
        core.library.sessions = {1: True, 2: True}
        core.events.publish(events.SessionsChanged(added=(2,)))
        await until(lambda: len(core.calls) == 2, "two pushes", in_thread=False)
        assert sorted(core.calls) == [([2], ("pdf",), "rclone:cloud"), ([2], ("txt",), "smb:office")]
    finally:
        task.cancel()


async def test_run_schedules_pushes_due_remotes_once_per_minute():
    core = FakeCore(_cfg())
    task = asyncio.create_task(schedule.run_schedules(core, clock=lambda: T.replace(second=1)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert core.calls == [("all", ("txt",), "smb:office")]


async def test_push_on_new_session(tmp_path):
    core = FakeCore(dataclasses.replace(_cfg(), state=StateConfig(dir=str(tmp_path))))
    core.library.sessions = {i: True for i in range(1, 7)}
    task = asyncio.create_task(schedule.run_push_on_new(core))
    marks = tmp_path / "push" / "on-new.json"

    async def publish(ev, until):
        core.events.publish(ev)
        for _ in range(100):
            if until():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"nothing happened after {ev}: {core.calls}")
    try:
        await asyncio.sleep(0)
        await publish(events.SessionsChanged(added=tuple(range(1, 7))), marks.exists)   # the first look
        assert core.calls == [] and json.loads(marks.read_text()) == {"office": 6}
        core.library.sessions.update({7: True, 8: False})                           # 8 still recording
        await publish(events.SessionsChanged(changed=(1,), added=(7, 8)), lambda: core.calls)
        assert core.calls == [([7], ("txt",), "smb:office")]
        core.end(core.jobs[0], ok=True)
        await publish(events.SessionsChanged(changed=(1,)), lambda: json.loads(marks.read_text()) == {"office": 7})
        core.library.sessions[8] = True
        await publish(events.SessionsChanged(changed=(8,)), lambda: len(core.calls) == 2)
        assert core.calls[1] == ([8], ("txt",), "smb:office")
        core.end(core.jobs[1], ok=True)
        await publish(events.SessionsChanged(changed=(1,)), lambda: json.loads(marks.read_text()) == {"office": 8})
        assert len(core.calls) == 2                       # nothing pushed twice
    finally:
        task.cancel()


async def test_push_on_new_pushes_a_failed_session_again_with_the_next_change(tmp_path):
    core = FakeCore(dataclasses.replace(_cfg(), state=StateConfig(dir=str(tmp_path))))
    core.library.sessions = {i: True for i in range(1, 7)}
    task = asyncio.create_task(schedule.run_push_on_new(core))
    marks = tmp_path / "push" / "on-new.json"

    async def publish(ev, until):
        core.events.publish(ev)
        for _ in range(100):
            if until():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"nothing happened after {ev}: {core.calls}")
    try:
        await asyncio.sleep(0)
        await publish(events.SessionsChanged(added=tuple(range(1, 7))), marks.exists)
        core.library.sessions[7] = True
        await publish(events.SessionsChanged(added=(7,)), lambda: core.calls)
        core.end(core.jobs[0], ok=False)                  # the NAS was away
        core.library.sessions[8] = True
        await publish(events.SessionsChanged(added=(8,)), lambda: len(core.calls) == 2)
        assert core.calls[1] == ([7, 8], ("txt",), "smb:office")      # 7 goes again, with 8
        assert json.loads(marks.read_text()) == {"office": 6}        # nothing past 6 landed yet
        core.end(core.jobs[1], ok=True)
        await publish(events.SessionsChanged(changed=(1,)), lambda: json.loads(marks.read_text()) == {"office": 8})
    finally:
        task.cancel()


def test_advance_stops_at_a_gap():
    assert schedule.advance(6, {7, 9}, {1, 6, 7, 8, 9}) == 7
    assert schedule.advance(6, {7, 8, 9}, {7, 8, 9}) == 9
