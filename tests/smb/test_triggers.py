"""Cron matching and the push triggers."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import pathlib

import pytest

from steno_exportd import events
from steno_exportd.smb import triggers as schedule
from steno_exportd.errors import InvalidArgument
from tests.configs import make_config
from tests.fakes import FakeCore, FakeLibrary, make_session
from tests.parts import until

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


def _cfg(tmp_path, cloud: dict | None = None):
    return make_config(tmp_path, **{
        "smb.remotes": [dict(name="office", server="nas", share="s", schedule="30 3 * * *", push_on_new=True,
                             formats=["txt"]),
                        dict(name="other", server="nas", share="s", schedule="0 4 * * *")],
        "rclone.remotes": [cloud] if cloud else []})


def record(core: FakeCore, *ids: int, done: bool = True) -> None:
    """Sessions ``ids`` on the recorder: finished (exportable) or still recording."""
    core.library.add(*(make_session(i, status="completed" if done else "recording") for i in ids))


def pushes(core: FakeCore) -> list[tuple]:
    """(ids, formats, target) of every push asked of the core."""
    assert all(c.internal for c in core.exports), \
        "a push trigger's export is the daemon's own: never refused by the callers' bound"
    return [(c.ids, c.formats, c.target) for c in core.exports]


def marks_of(core: FakeCore) -> pathlib.Path:
    return pathlib.Path(core.cfg.state.dir) / "push" / "on-new.json"


async def test_an_rclone_remote_is_pushed_on_schedule_and_on_new_sessions(tmp_path):
    cloud = dict(name="cloud", remote="onedrive:Meetings", schedule="30 3 * * *", push_on_new=True, formats=["pdf"])
    core = FakeCore(_cfg(tmp_path, cloud), library=FakeLibrary())
    task = asyncio.create_task(schedule.run_schedules(core, clock=lambda: T.replace(second=1)))
    await until(lambda: len(core.exports) >= 2, "the scheduled pushes", in_thread=False)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pushes(core) == [("all", ("txt",), "smb:office"), ("all", ("pdf",), "rclone:cloud")]
    core = FakeCore(_cfg(tmp_path, cloud), library=FakeLibrary())
    task = asyncio.create_task(schedule.run_push_on_new(core))
    try:
        record(core, 1)
        await asyncio.sleep(0.05)
        core.events.publish(events.SessionsChanged(added=(1,)))       # the first sight: a mark, no push
        await until(marks_of(core).exists, "the first sight's mark", in_thread=False)
        record(core, 2)
        core.events.publish(events.SessionsChanged(added=(2,)))
        await until(lambda: len(core.exports) == 2, "two pushes", in_thread=False)
        assert sorted(pushes(core)) == [([2], ("pdf",), "rclone:cloud"), ([2], ("txt",), "smb:office")]
    finally:
        task.cancel()


async def test_run_schedules_pushes_due_remotes_once_per_minute(tmp_path):
    core = FakeCore(_cfg(tmp_path), library=FakeLibrary())
    task = asyncio.create_task(schedule.run_schedules(core, clock=lambda: T.replace(second=1)))
    await until(lambda: core.exports, "the scheduled push", in_thread=False)
    await asyncio.sleep(0.05)               # an absence: no second push within the same minute
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pushes(core) == [("all", ("txt",), "smb:office")]


async def test_push_on_new_session(tmp_path):
    core = FakeCore(_cfg(tmp_path), library=FakeLibrary())
    record(core, *range(1, 7))
    task = asyncio.create_task(schedule.run_push_on_new(core))
    marks = marks_of(core)

    async def publish(ev, until):
        core.events.publish(ev)
        for _ in range(100):
            if until():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"nothing happened after {ev}: {pushes(core)}")
    try:
        await asyncio.sleep(0)
        await publish(events.SessionsChanged(added=tuple(range(1, 7))), marks.exists)   # the first look
        assert pushes(core) == [] and json.loads(marks.read_text()) == {"office": 6}
        record(core, 7)
        record(core, 8, done=False)                                                 # 8 still recording
        await publish(events.SessionsChanged(changed=(1,), added=(7, 8)), lambda: core.exports)
        assert pushes(core) == [([7], ("txt",), "smb:office")]
        core.jobs.end(1, ok=True)
        await publish(events.SessionsChanged(changed=(1,)), lambda: json.loads(marks.read_text()) == {"office": 7})
        record(core, 8)
        await publish(events.SessionsChanged(changed=(8,)), lambda: len(core.exports) == 2)
        assert pushes(core)[1] == ([8], ("txt",), "smb:office")
        core.jobs.end(2, ok=True)
        await publish(events.SessionsChanged(changed=(1,)), lambda: json.loads(marks.read_text()) == {"office": 8})
        assert len(core.exports) == 2                     # nothing pushed twice
    finally:
        task.cancel()


async def test_push_on_new_pushes_a_failed_session_again_with_the_next_change(tmp_path):
    core = FakeCore(_cfg(tmp_path), library=FakeLibrary())
    record(core, *range(1, 7))
    task = asyncio.create_task(schedule.run_push_on_new(core))
    marks = marks_of(core)

    async def publish(ev, until):
        core.events.publish(ev)
        for _ in range(100):
            if until():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"nothing happened after {ev}: {pushes(core)}")
    try:
        await asyncio.sleep(0)
        await publish(events.SessionsChanged(added=tuple(range(1, 7))), marks.exists)
        record(core, 7)
        await publish(events.SessionsChanged(added=(7,)), lambda: core.exports)
        core.jobs.end(1, ok=False, error="NAS away")      # the NAS was away
        record(core, 8)
        await publish(events.SessionsChanged(added=(8,)), lambda: len(core.exports) == 2)
        assert pushes(core)[1] == ([7, 8], ("txt",), "smb:office")    # 7 goes again, with 8
        assert json.loads(marks.read_text()) == {"office": 6}        # nothing past 6 landed yet
        core.jobs.end(2, ok=True)
        await publish(events.SessionsChanged(changed=(1,)), lambda: json.loads(marks.read_text()) == {"office": 8})
    finally:
        task.cancel()


def test_advance_stops_at_a_gap():
    assert schedule.advance(6, {7, 9}, {1, 6, 7, 8, 9}) == 7
    assert schedule.advance(6, {7, 8, 9}, {7, 8, 9}) == 9
